"""SFT+DPO (05_sft_dpo): the same DPO as ``hhalign.stages.dpo``, started from this run's SFT model (03_sft).

    hhalign sft_dpo configs/tiny.yaml         # or: hhalign dpo configs/tiny.yaml --from sft
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.config.schema import RunConfig
from hhalign.engine.table import artifact
from hhalign.engine.work import Input
from hhalign.models.training import pair_inputs
from hhalign.stages import dpo


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    return {**pair_inputs(run_dir), "start": Input(str(artifact(run_dir, "sft", "model")))}


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any] | None:
    return dpo.train("sft_dpo", cfg, run_dir, inputs(cfg, run_dir), resume)
