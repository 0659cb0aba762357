"""A run's report from a run folder or any folder of rated response files: figures, report.md and one
self-contained report.html.

Reads, through ``hhalign.engine.folder.RunFolder``, the rated responses, metrics.json, the data report and
run.json: whatever exists. Metrics come from metrics.json when the run has one, else they are measured here as
``hhalign metrics`` would. A missing variant or prompt set gives a report of what exists with a visible note,
not an error.

    build(Path("runs/NAME"), Path("out"), cfg.report, cfg.metrics)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_write_text, read_json
from hhalign.config.schema import PROMPT_SETS, VARIANTS, MetricsSection, ReportSection
from hhalign.engine.folder import RunFolder
from hhalign.engine.table import RUN_FILE
from hhalign.errors import UserError
from hhalign.report import plots
from hhalign.report.html import render_html
from hhalign.report.markdown import FigureRef, Report, render_markdown
from hhalign.stats.treatments import treatments

log = logging.getLogger(__name__)


def build(
    in_dir: Path,
    out_dir: Path,
    cfg: ReportSection,
    metrics_cfg: MetricsSection,
    metrics: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the figures (each of ``cfg.formats``), report.md and report.html to ``out_dir``.

    ``metrics`` (the dict of ``hhalign.stats.rates.compute_metrics``) is used as given; when None it is
    read from ``in_dir/09_metrics/metrics.json``, or computed from the responses with ``metrics_cfg``.
    Returns the files written.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    report = _load_inputs(in_dir, metrics_cfg, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _write_figures(report, out_dir, list(cfg.formats))
    fmt = "png" if "png" in cfg.formats else "svg" if "svg" in cfg.formats else (cfg.formats or ["png"])[0]
    written.append(atomic_write_text(out_dir / "report.md", render_markdown(report, fmt)))
    written.append(atomic_write_text(out_dir / "report.html", render_html(report)))
    return written


# ----------------------------------------------------------------------------- inputs


def _load_inputs(in_dir: Path, metrics_cfg: MetricsSection, metrics: dict[str, Any] | None) -> Report:
    if not in_dir.is_dir():
        raise UserError(f"{in_dir}: no such folder; give a run folder or a folder of scored response files")
    data, problems = _load_responses(in_dir)
    if metrics is None:
        metrics = RunFolder(in_dir).metrics()
    if metrics is None:
        metrics = _compute_metrics(in_dir, metrics_cfg) if data else {}
    metrics = dict(metrics)
    metrics.setdefault("thresholds", {"harmful": metrics_cfg.harmful_threshold, "helpful": metrics_cfg.helpful_threshold})
    run_info = _read_optional(in_dir / RUN_FILE, problems)
    folder = RunFolder(in_dir)
    starts = folder.starts()
    train_reports = {v: _read_optional(folder.file(v, "train_report.json"), problems) for v in starts}
    return Report(
        title=_title(in_dir, run_info),
        source=str(in_dir),
        metrics=metrics,
        data=data,
        missing=problems + _missing(data, metrics, run_info),
        data_report=_read_optional(RunFolder(in_dir).file("data", "data_report.json"), problems),
        run_info=run_info,
        treatments=treatments(data, train_reports, lambda v: plots.label(v, metrics), starts),
        costs=costs(folder, starts),
    )


def costs(folder: RunFolder, starts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What each trained variant cost, from its training stage's manifest: wall seconds, CPU seconds, GPU seconds
    (wall time x processes on GPUs) and peak memory; {} for a variant whose stage has no manifest."""
    out = {}
    for variant in starts:
        m = folder.manifest(variant) or {}
        if not m:
            continue
        use = m.get("usage") or {}
        cpu = use.get("user_s", 0) + use.get("system_s", 0) if "user_s" in use else None
        out[variant] = {"wall_seconds": m.get("wall_seconds"), "cpu_seconds": cpu,
                        "gpu_seconds": use.get("gpu_seconds"), "peak_gb": use.get("peak_rss_gb"),
                        "gpu_peak_gb": use.get("gpu_peak_gb"), "precision": m.get("precision")}
    return out


def _load_responses(in_dir: Path) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """variant -> set -> entries, and a note per problem (no files, an unreadable file)."""
    try:
        return RunFolder(in_dir).scored(), []
    except ValueError as e:  # ResponseFileError: no files, bad JSON, unrated entries
        return {}, [f"scored responses ({e})"]


def _compute_metrics(in_dir: Path, metrics_cfg: MetricsSection) -> dict[str, Any]:
    """Measured as ``hhalign metrics`` would: with the judge's record and the caveats, each rate's validity included."""
    return RunFolder(in_dir).measure(metrics_cfg)


def _read_optional(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = read_json(path)
    except (OSError, ValueError) as e:
        problems.append(f"{path.name} (unreadable: {e})")
        return None
    return obj if isinstance(obj, dict) else None


def _missing(data: dict[str, Any], metrics: dict[str, Any], run_info: dict[str, Any] | None) -> list[str]:
    """variant/set pairs without responses: the metrics' own list, plus every pair of the run's
    variants (all four when there is no run.json) and both prompt sets that has no file."""
    config = (run_info or {}).get("config") or {}
    declared = config.get("variants") or VARIANTS
    variants = [v for v in declared if isinstance(v, str)]
    listed = metrics.get("missing") if isinstance(metrics.get("missing"), list) else []
    grid = [f"{v}/{s}" for v in variants for s in PROMPT_SETS if s not in (data.get(v) or {})]
    out = [str(m) for m in listed]
    return out + [m for m in grid if m not in out]


def _title(in_dir: Path, run_info: dict[str, Any] | None) -> str:
    if run_info:
        name = run_info.get("name") or (run_info.get("config") or {}).get("name")
        if name:
            return str(name)
    return in_dir.resolve().name


# ----------------------------------------------------------------------------- figures


def _write_figures(report: Report, out_dir: Path, formats: list[str]) -> list[Path]:
    figs = plots.make_figures(report.metrics, report.data)
    written: list[Path] = []
    for name, (caption, fig) in figs.items():
        files = plots.save_figure(fig, out_dir / name, formats)
        png = plots.figure_bytes(fig, "png") if "png" not in files else files["png"].read_bytes()
        report.figures.append(FigureRef(name, caption, files, png))
        written.extend(files.values())
    return written
