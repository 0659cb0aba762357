"""hhalign: align a causal LM with SFT, DPO and SFT+DPO on HH-RLHF and measure harmlessness and helpfulness."""

__version__ = "0.1.0"
