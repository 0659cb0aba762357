"""A training stage: one per trained variant (its row in ``hhalign.engine.table``), run by the variant's method
(``hhalign.methods.<method>.train``) from the model it starts from into its folder.

    hhalign train configs/methods.yaml ipo       # or: hhalign ipo configs/methods.yaml
    hhalign sft configs/tiny.yaml                # the study's variants keep their own commands
    hhalign dpo configs/tiny.yaml --from DIR     # start from another model (a folder, or a variant's name)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.config.schema import RunConfig
from hhalign.engine.table import artifact
from hhalign.engine.work import Input
from hhalign.methods import module
from hhalign.models.training import base_model, pair_inputs


def start_model(cfg: RunConfig, run_dir: Path, variant: str) -> Input:
    """The model a variant trains from: the run's base model, or the model/ of the variant it starts from."""
    start = cfg.start_of(cfg.variant(variant))
    if start.method is None:
        return base_model(cfg, run_dir)
    return Input(str(artifact(run_dir, start.name, "model")))


def inputs(cfg: RunConfig, run_dir: Path, variant: str) -> dict[str, Input]:
    return {**pair_inputs(run_dir), "start": start_model(cfg, run_dir, variant)}


def run(cfg: RunConfig, run_dir: Path, *, variant: str, resume: bool = True, start: str | None = None) -> dict[str, Any] | None:
    """Train ``variant``; ``start`` (``--from PATH``) starts it from another model than its declared one."""
    ins = inputs(cfg, run_dir, variant)
    if start:
        ins["start"] = Input(start, "model", "--from PATH")
    return module(str(cfg.variant(variant).method)).train(variant, cfg, run_dir, ins, resume)
