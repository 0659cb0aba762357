"""The report stage: 10_report/ holds the run's figures, report.md and one self-contained report.html
(``hhalign.report.build``).

    hhalign report configs/tiny.yaml                     # the stage: 10_report/ of the run
    hhalign report runs/NAME --out somewhere/            # any run folder or folder of rated response files
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hhalign.artifacts import read_json
from hhalign.config.schema import RunConfig
from hhalign.data.responses import response_files
from hhalign.engine.table import artifact, stage_dir
from hhalign.engine.work import Input, begin
from hhalign.report.build import build

log = logging.getLogger(__name__)


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    out = {"metrics": Input(str(artifact(run_dir, "metrics", "metrics.json")))}
    out |= {f"scored/{p.name}": Input(str(artifact(run_dir, "score", p.name))) for p in response_files(stage_dir(run_dir, "score"))}
    data_report = artifact(run_dir, "data", "data_report.json")
    out |= {"data_report": Input(str(data_report))} if data_report.is_file() else {}
    trained = {v: artifact(run_dir, v, "train_report.json") for v in cfg.trained()}  # "did it act?", and its cost
    return out | {f"train_report/{v}": Input(str(p)) for v, p in trained.items() if p.is_file()}


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """10_report/: the figures, report.md and report.html of the run."""
    work = begin("report", cfg, run_dir, inputs(cfg, run_dir), resume=False)
    files = build(run_dir, work.dir, cfg.report, cfg.metrics, metrics=read_json(work.inputs["metrics"].ref))
    log.info(f"report: open {work.dir / 'report.html'}")
    return work.finish([str(Path(f).relative_to(work.dir)) for f in files])
