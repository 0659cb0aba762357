"""SimPO (``method: simpo``): TRL's experimental CPOTrainer (``trl.experimental.cpo``, imported here alone) with
``loss_type: simpo`` and ``cpo_alpha: 0``, the SimPO paper's loss: a reference-free margin between the responses'
mean log-probabilities, scaled by ``beta``, with a target margin ``simpo_gamma``. A config may raise ``cpo_alpha``
for CPO-SimPO (a behaviour-cloning term on the chosen); ``loss_type`` is simpo by definition.

    variants: {simpo: {method: simpo, from: sft, beta: 2.0}}

Its held-out figure is per token, as ORPO's (``hhalign.methods.orpo``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input
from hhalign.methods.preference import Method, pairs_dataset
from hhalign.methods.preference import train as train_preference


def _trainer() -> type:
    from trl.experimental.cpo import CPOTrainer

    return CPOTrainer


# remove_unused_columns=False: its collator needs the text columns (TRL sets it with a warning otherwise)
METHOD = Method("simpo", _trainer, pairs_dataset, normalised=True, fixed={"remove_unused_columns": False})


def train(variant: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    return train_preference(METHOD, variant, cfg, run_dir, ins, resume)
