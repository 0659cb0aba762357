"""The metrics stage: 09_metrics/metrics.json from the score stage's rated responses (``hhalign.stats.rates``),
and the study's table on the console.

    hhalign metrics configs/tiny.yaml                                   # the stage, in a run
    hhalign metrics ../shared/data/paper/responses --json metrics.json   # any folder of rated response files
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hhalign.config.schema import TINY, RunConfig
from hhalign.data.responses import response_files
from hhalign.engine.folder import RunFolder
from hhalign.engine.table import JUDGE_FILE, artifact, stage_dir
from hhalign.engine.work import Input, begin
from hhalign.stats.rates import format_table

log = logging.getLogger(__name__)


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    judge = artifact(run_dir, "score", JUDGE_FILE)
    scored = {f"scored/{p.name}": Input(str(artifact(run_dir, "score", p.name))) for p in response_files(stage_dir(run_dir, "score"))}
    return scored | ({"judge": Input(str(judge))} if judge.is_file() else {})


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """09_metrics/metrics.json from 08_score's rated responses, and the study's table on the console."""
    work = begin("metrics", cfg, run_dir, inputs(cfg, run_dir), resume=False)
    base = cfg.base_variant()  # first: the length-controlled effects are measured against the first variant
    labels = {n: v.shown for n, v in sorted(cfg.variants.items(), key=lambda item: item[0] != base)}
    metrics = RunFolder(stage_dir(run_dir, "score")).measure(cfg.metrics, work.dir / "metrics.json", toy=cfg.model.name_or_path == TINY,
                                                             labels=labels)
    log.info(format_table(metrics))
    return work.finish(["metrics.json"])
