"""ORPO (``method: orpo``): TRL's experimental ORPOTrainer (``trl.experimental.orpo``: imported here alone, so its
experimental warning shows once, when a variant trains with it). No reference model: SFT on the chosen answer plus
an odds-ratio term that prefers it to the rejected one (``beta`` weighs that term).

    variants: {orpo: {method: orpo, from: base}}

Its held-out figure is per token (ORPO compares the responses' mean log-probabilities): the length-normalised
reward accuracy against the model it started from, beta * (mean log pi(y) - mean log pi_start(y)) of chosen above
that of rejected; train_report.json also gives the reference-free accuracy (mean log-probability of chosen above
rejected) before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input
from hhalign.methods.preference import Method, pairs_dataset
from hhalign.methods.preference import train as train_preference


def _trainer() -> type:
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer


# remove_unused_columns=False: its collator needs the text columns (TRL sets it with a warning otherwise)
METHOD = Method("orpo", _trainer, pairs_dataset, normalised=True, fixed={"remove_unused_columns": False})


def train(variant: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    return train_preference(METHOD, variant, cfg, run_dir, ins, resume)
