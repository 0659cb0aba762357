"""``hhalign compare``: several runs side by side, with paired tests between runs on the same prompts.

    hhalign compare runs/a runs/b [runs/c ...] --out runs/ab-compare     # hhalign sweep calls it on its points

One table of HmR, HpR, CAS and the mean ratings, with 95% intervals, per (run, variant); paired tests between every
two comparable runs, variant by variant and prompt set by prompt set (exact McNemar on the labels, Wilcoxon and a
sign-flip permutation test on the ratings), with Holm's correction across all the comparisons made, per test; a
figure of each metric against each swept setting, with interval whiskers; compare.md and one self-contained
compare.html whose viewer shows the runs' answers side by side. Two runs are comparable only when they answered the
same prompts (each set, in order), were rated by the same judge (the same reward-model content) with the same
thresholds: otherwise they are listed, not paired, and the report says which of these differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_write_text, write_json
from hhalign.config.schema import PROMPT_SETS, VARIANT_LABELS
from hhalign.engine.folder import RunFolder
from hhalign.errors import UserError
from hhalign.report import plots
from hhalign.report.html import render_html
from hhalign.report.markdown import FigureRef, Report, render_markdown
from hhalign.stats.intervals import paired_comparison
from hhalign.stats.rates import merge_caveats, with_holm

log = logging.getLogger(__name__)
RATES = ("HmR", "HpR", "CAS")


@dataclass
class Run:
    name: str
    dir: Path
    metrics: dict[str, Any]
    data: dict[str, dict[str, list[dict[str, Any]]]]  # variant -> set -> rated entries
    judge: str  # what identifies the judge: its content hash when the score stage recorded one, else its reference
    settings: dict[str, Any]  # the swept settings (a sweep point's), else {}


def load_run(run_dir: Path) -> Run:
    run = RunFolder(run_dir)
    metrics = run.metrics()
    if metrics is None:
        raise UserError(f"{run_dir}: no {run.file('metrics', 'metrics.json').relative_to(run_dir)}: run the run to its metrics stage first")
    sweep = (run.run_info() or {}).get("sweep") or {}
    return Run(run_dir.name, run_dir, metrics, run.scored(),
               run.judge_identity() or str((metrics.get("judge") or {}).get("reward_model")), dict(sweep.get("settings") or {}))


def differences(a: Run, b: Run) -> list[str]:
    """What keeps two runs from being paired: their prompt sets, their judge, their thresholds."""
    out = []
    for s in PROMPT_SETS:
        pa, pb = _prompts(a, s), _prompts(b, s)
        if pa is not None and pb is not None and pa != pb:
            n = sum(x != y for x, y in zip(pa, pb)) + abs(len(pa) - len(pb))
            out.append(f"the {s} prompts ({n} of {max(len(pa), len(pb))} differ)")
    if a.judge != b.judge:
        out.append("the judge (another reward model)")
    if a.metrics.get("thresholds") != b.metrics.get("thresholds"):
        out.append(f"the thresholds ({a.metrics.get('thresholds')} vs {b.metrics.get('thresholds')})")
    return out


def _prompts(run: Run, prompt_set: str) -> list[str] | None:
    for sets in run.data.values():
        if prompt_set in sets:
            return [e["prompt"] for e in sets[prompt_set]]
    return None


def paired(runs: list[Run], samples: int = 10000) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the paired tests between comparable runs, with Holm's correction; the pairs of runs left unpaired and why)."""
    tests, unpaired = [], []
    for a, b in combinations(runs, 2):
        why = differences(a, b)
        if why:
            unpaired.append({"a": a.name, "b": b.name, "differ_in": why})
            continue
        thresholds = a.metrics["thresholds"]
        if only := not_shared(a, b):
            unpaired.append({"a": a.name, "b": b.name, "differ_in": [only], "variants_only": True})
        for v in [v for v in a.data if v in b.data]:
            for s in [s for s in PROMPT_SETS if s in a.data[v] and s in b.data[v]]:
                ra, rb = ([e["rating"] for e in r.data[v][s]] for r in (a, b))
                test = paired_comparison(ra, rb, thresholds[s], samples, 0)
                tests.append({"set": s, "variant": v, "a": f"{a.name}:{v}", "b": f"{b.name}:{v}", **test})
    return with_holm(tests), unpaired


def not_shared(a: Run, b: Run) -> str:
    """The variants one run has and the other lacks, as a phrase (empty when they have the same): runs with different
    variant sets are compared on the variants they share."""
    only_a, only_b = [v for v in a.data if v not in b.data], [v for v in b.data if v not in a.data]
    if not (only_a or only_b):
        return ""
    parts = [f"{', '.join(vs)} only in {r.name}" for vs, r in ((only_a, a), (only_b, b)) if vs]
    return f"their variants ({'; '.join(parts)}): compared on the {sum(v in b.data for v in a.data)} they share"


def table(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (run, variant): the exact rates with their intervals and the mean ratings."""
    rows = []
    for run in runs:
        for v, block in run.metrics["variants"].items():
            row = {"run": run.name, "variant": v, **{f"setting:{k}": val for k, val in run.settings.items()}}
            for r in RATES:
                ci = block["ci"].get(r) or {}
                row[r] = block["exact"].get(r)
                row[f"{r}_ci"] = ci.get("wilson") or ci.get("bootstrap")
            for s in PROMPT_SETS:
                row[f"mean_{s}"] = (block["sets"].get(s) or {}).get("mean_rating")
            for s, a in ((run.metrics.get("validity") or {}).get("axes") or {}).items():
                row[f"{a['rate']}_judge"] = a["status"]  # what the judge behind this rate is shown to measure
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the report


def _as_report(runs: list[Run], tests: list[dict[str, Any]], unpaired: list[dict[str, Any]]) -> Any:
    """The comparison as a report whose "variants" are (run, variant) pairs: the study's tables, the paired tests
    and the response viewer then show runs side by side."""
    variants, data = {}, {}
    for run in runs:
        for v, block in run.metrics["variants"].items():
            variants[f"{run.name}:{v}"] = {**block, "label": f"{run.name} / {block.get('label') or VARIANT_LABELS.get(v, v)}"}
            data[f"{run.name}:{v}"] = run.data[v]
    notes = [{"kind": "unpaired", "short": "", "text": (f"Partly paired: {u['a']} and {u['b']} differ in " if u.get("variants_only")
                                                        else f"Not paired: {u['a']} and {u['b']} differ in ") + "; ".join(u["differ_in"])
              + "."} for u in unpaired]
    metrics = {"thresholds": runs[0].metrics.get("thresholds"), "variants": variants, "paired": tests,
               "caveats": [*merge_caveats([(r.name, r.metrics.get("caveats") or []) for r in runs], skip=("few_prompts",)), *notes],
               "missing": []}
    return Report(title=f"comparison of {len(runs)} runs", source=", ".join(str(r.dir) for r in runs), metrics=metrics,
                  data=data)


def compare(run_dirs: list[Path], out_dir: Path, axes: list[str] | None = None, samples: int = 10000) -> dict[str, Any]:
    """Write compare.json, the figures, compare.md and compare.html to ``out_dir``; returns what compare.json holds."""
    runs = [load_run(Path(d)) for d in run_dirs]
    if len(runs) < 2:
        raise UserError("hhalign compare needs at least two runs")
    tests, unpaired = paired(runs, samples)
    rows = table(runs)
    axes = axes or sorted({k for r in runs for k in r.settings})
    result = {"runs": [str(r.dir) for r in runs], "axes": axes, "table": rows, "paired": tests, "unpaired": unpaired}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", result)
    report = _as_report(runs, tests, unpaired)
    for axis in axes:
        fig = plots.fig_against(rows, axis)
        if fig is not None:
            plots.stamp_caveats(fig, report.metrics)
            name = "against_" + "".join(c if c.isalnum() else "_" for c in axis)
            files = plots.save_figure(fig, out_dir / name, ["png"])
            report.figures.append(FigureRef(name, f"HmR, HpR and CAS against {axis}, with 95% intervals.", files,
                                            files["png"].read_bytes()))
    atomic_write_text(out_dir / "compare.md", render_markdown(report))
    atomic_write_text(out_dir / "compare.html", render_html(report))
    for c in report.metrics["caveats"]:
        log.warning(f"! {c['text']}")
    significant = [t for t in tests if (t["holm"]["mcnemar"] or 1) < 0.05]
    apart = [u for u in unpaired if not u.get("variants_only")]
    for u in unpaired:
        if u.get("variants_only"):
            log.info(f"compare: {u['a']} and {u['b']} differ in {u['differ_in'][0]}")
    log.info(f"compare: {len(runs)} runs, {len(tests)} paired comparisons ({len(significant)} significant after Holm, "
             f"McNemar), {len(apart)} pairs of runs not comparable; open {out_dir / 'compare.html'}")
    return result
