"""KTO (``method: kto``): TRL's KTOTrainer, fed from the preference pairs as TRL documents: each pair becomes a
desirable example (prompt, chosen, label True) and an undesirable one (prompt, rejected, label False) by TRL's
``unpair_preference_dataset``, then shuffled with the run's seed. KTO estimates its KL term from neighbouring
examples in a fixed-order batch (TRL requires ``train_sampling_strategy: sequential``), and unpairing lists a
batch's chosen answers before its rejected ones: unshuffled, training would see only desirable examples first.

    variants: {kto: {method: kto, from: sft}}

Its held-out figure is DPO's implicit-reward accuracy (KTO's reward is the same log-ratio to the reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input
from hhalign.methods.preference import Method
from hhalign.methods.preference import train as train_preference


def _trainer() -> type:
    from trl import KTOTrainer

    return KTOTrainer


def unpaired(rows: list[dict[str, Any]], tok: Any, max_length: int | None, seed: int) -> Dataset:
    """Two labelled examples per pair, in a seeded random order."""
    from trl.data_utils import unpair_preference_dataset

    pairs = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})
    return unpair_preference_dataset(pairs).shuffle(seed=seed)


METHOD = Method("kto", _trainer, unpaired)


def train(variant: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    return train_preference(METHOD, variant, cfg, run_dir, ins, resume)
