"""Training stages on TRL and PEFT, one module each: pretrain (tiny preset), sft, dpo (LoRA, from base),
sft_dpo (the same DPO from the SFT model), reward (the run's own reward model). Each has ``run(cfg, run_dir)``
and ``inputs(cfg, run_dir)`` like every stage (``hhalign.stages``), and runs unchanged under
``accelerate launch -m hhalign sft CONFIG``.
"""
