"""Across-seed aggregation for ``hhalign run --seeds 1,2,3``: mean, spread and a per-seed table.

A 50-prompt study moves by several points between training seeds; this puts that spread next to the
rates. Pure: reads each seed's 09_metrics/metrics.json, writes seeds.json and seeds_report.md.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_write_text, write_json
from hhalign.config.schema import VARIANT_LABELS
from hhalign.engine.folder import RunFolder, seed_folder
from hhalign.engine.table import artifact
from hhalign.stats.rates import merge_caveats

KEYS = ("HmR", "HpR", "CAS")
log = logging.getLogger(__name__)


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """{variant: {key: {mean, std, min, max, values}}} over the seeds where the value exists.

    std is the sample standard deviation (n - 1), 0.0 with one seed: e.g. HmR 40, 44, 48 -> mean 44, std 4."""
    out: dict[str, Any] = {}
    variants = list(dict.fromkeys(v for m in per_seed.values() for v in m["variants"]))
    for v in variants:
        out[v] = {}
        for k in KEYS:
            values = [m["variants"][v]["exact"][k] for m in per_seed.values() if v in m["variants"] and m["variants"][v]["exact"].get(k) is not None]
            if not values:
                continue
            out[v][k] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "min": min(values), "max": max(values), "values": values}
    return out


def _label(variant: str, per_seed: dict[int, dict[str, Any]]) -> str:
    """The variant's label as its metrics give it (a declared label), else the study's name, else the name."""
    given = next((m["variants"][variant].get("label") for m in per_seed.values() if variant in m["variants"]), None)
    return str(given or VARIANT_LABELS.get(variant, variant))


def caveats(per_seed: dict[int, dict[str, Any]]) -> list[str]:
    """Every seed's caveats (toy models, a rate whose judge is not shown to measure its axis, few prompts), each once."""
    return [c["text"] for c in merge_caveats([(seed_folder("", s).name, m.get("caveats") or []) for s, m in per_seed.items()])]


def to_markdown(summary: dict[str, Any], per_seed: dict[int, dict[str, Any]]) -> str:
    seeds = list(per_seed)
    lines = ["# Across seeds", "", *(f"> **{text}**\n" for text in caveats(per_seed)),
             f"Seeds: {', '.join(map(str, seeds))}. Exact rates in percent; mean ± sample std (min to max).", "",
             "| model | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for v, stats in summary.items():
        cells = [f"{s['mean']:.1f} ± {s['std']:.1f} ({s['min']:.0f} to {s['max']:.0f})" if (s := stats.get(k)) else "n/a" for k in KEYS]
        lines.append(f"| {_label(v, per_seed)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed", "", "| seed | model | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    for seed, m in per_seed.items():
        for v, data in m["variants"].items():
            cells = [f"{data['exact'][k]:.1f}" if data["exact"].get(k) is not None else "n/a" for k in KEYS]
            lines.append(f"| {seed} | {_label(v, per_seed)} | " + " | ".join(cells) + " |")
    lines += ["", f"Each seed's full report: {artifact(seed_folder('', 'N'), 'report', 'report.html')}.", ""]
    return "\n".join(lines)


def aggregate(run_dir: Path, seeds: list[int]) -> dict[str, Any]:
    per_seed = {s: RunFolder(run_dir).seed(s).metrics() for s in seeds}
    summary = summarise(per_seed)
    write_json(run_dir / "seeds.json", {"seeds": seeds, "summary": summary, "caveats": caveats(per_seed)})
    text = to_markdown(summary, per_seed)
    atomic_write_text(run_dir / "seeds_report.md", text)
    log.info(text)
    return summary
