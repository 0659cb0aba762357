"""DPO (``method: dpo``): TRL's DPOTrainer with any of its losses (``loss_type``: sigmoid, ipo, robust, hinge, ...,
and weighted mixes with ``loss_weights``), LoRA or full, the reference being the model the variant starts from.

    variants: {dpo: {method: dpo, from: base}, ipo: {method: dpo, from: sft, loss_type: [ipo]}}
    hhalign dpo configs/tiny.yaml                 # one variant's stage (also: hhalign train CONFIG ipo)

Its held-out figure is the implicit-reward accuracy: beta * log(pi / pi_ref) of chosen above that of rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input
from hhalign.methods.preference import Method, pairs_with_length
from hhalign.methods.preference import train as train_preference


def _trainer() -> type:
    from trl import DPOTrainer

    return DPOTrainer


# remove_unused_columns=False: the Trainer would drop "length" before its length-grouped sampler reads it
METHOD = Method("dpo", _trainer, pairs_with_length, fixed={"remove_unused_columns": False})


def train(variant: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    return train_preference(METHOD, variant, cfg, run_dir, ins, resume)
