"""A run's results as data: every answer one row, with its variant, prompt set, every judge's rating and label, its
length and its refusal and loop flags, for pandas and datasets users (``hhalign export RUN``).

    rows = export_rows(RunFolder("runs/smol"))
    write(rows, Path("smol.parquet"), "parquet")          # datasets.load_dataset("parquet", data_files="smol.parquet")

The labels use the thresholds the metrics stage used (09_metrics/metrics.json), so the rows add up to the report's
rates: the share of ``positive`` over one variant and prompt set is its HmR or HpR.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_write_bytes, write_jsonl
from hhalign.engine.folder import RunFolder
from hhalign.errors import UserError
from hhalign.stats.rates import is_degenerate
from hhalign.stats.safety import is_refusal
from hhalign.stats.validity import words

FORMATS = ("parquet", "jsonl")


def export_rows(folder: RunFolder) -> list[dict[str, Any]]:
    """One row per rated answer; a judge that does not rate a prompt set leaves its columns empty (None) there."""
    metrics = folder.metrics()
    if metrics is None:
        raise UserError(f"{folder.path}: no {folder.stage('metrics').name}/metrics.json, whose thresholds label the answers: "
                        "run `hhalign metrics CONFIG` (or `hhalign run CONFIG`) first")
    starts, thresholds, panel = folder.starts(), metrics["thresholds"], metrics.get("judges") or {}
    rows: list[dict[str, Any]] = []
    for variant, sets in folder.scored().items():
        label = (metrics["variants"].get(variant) or {}).get("label", variant)
        for prompt_set, entries in sets.items():
            judges = (panel.get(prompt_set) or {}).get("judges") or {}
            for i, e in enumerate(entries):
                row = {"run": folder.path.name, "variant": variant, "label": label, "start": starts.get(variant),
                       "prompt_set": prompt_set, "index": i, "prompt": e["prompt"], "response": e["response"],
                       "rating": float(e["rating"]), "positive": float(e["rating"]) > thresholds[prompt_set],
                       "words": words(e["response"]), "refusal": is_refusal(e["response"]),
                       "refusal_rating": e.get("refusal_rating"), "degenerate": is_degenerate(e["response"])}
                for name, value in (e.get("ratings") or {}).items():
                    row[f"rating_{name}"] = float(value)
                    if name in judges:
                        row[f"positive_{name}"] = float(value) > judges[name]["threshold"]
                rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))  # every row with every column, in first-seen order
    return [{k: r.get(k) for k in columns} for r in rows]


def write(rows: list[dict[str, Any]], out: Path, fmt: str) -> Path:
    """``rows`` as a Parquet file (through datasets, so it loads back as it was written) or JSON lines, atomically."""
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        return write_jsonl(out, rows)
    from datasets import Dataset

    buffer = io.BytesIO()
    Dataset.from_list(rows).to_parquet(buffer)
    return atomic_write_bytes(out, buffer.getvalue())
