"""Training stages on TRL and PEFT: pretrain (tiny preset), sft, dpo (LoRA; from base or SFT), rm.

Each is callable from Python (``run_stage("sft", cfg, run_dir)``) and from the CLI (``hhalign sft CONFIG``),
and under ``accelerate launch -m hhalign sft CONFIG`` unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.train.common import STAGE_DIRS, TrainingError, check_trl_version

__all__ = ["STAGE_DIRS", "TrainingError", "run_stage"]


def run_stage(name: str, cfg: Any, run_dir: Path, resume: bool = False, from_model: str | None = None) -> dict[str, Any] | None:
    """Run one training stage; the data stage runs first (main process first) when 01_data is missing."""
    from accelerate import PartialState

    from hhalign import data
    from hhalign.artifacts import read_manifest
    from hhalign.modeling import check_model_source

    check_trl_version()
    if name != "pretrain" and cfg.model.name_or_path != "tiny":
        check_model_source(cfg.model.name_or_path)
    import torch

    # cpu=True on CPU-only machines makes accelerate form the gloo group, so main_process_first really waits
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():
        if state.is_main_process and read_manifest(Path(run_dir) / data.STAGE_DIR) is None:
            data.run(cfg, run_dir)
    if name == "pretrain":
        from hhalign.train.pretrain import run
    elif name == "sft":
        from hhalign.train.sft import run
    elif name == "rm":
        from hhalign.train.reward import run
    elif name in ("dpo", "sft_dpo"):
        from hhalign.train.dpo import run as dpo_run

        return dpo_run(cfg, run_dir, from_model=from_model or ("sft" if name == "sft_dpo" else None), resume=resume)
    else:
        raise ValueError(f"unknown training stage {name!r}; one of pretrain, sft, dpo, sft_dpo, rm")
    return run(cfg, run_dir, resume=resume)
