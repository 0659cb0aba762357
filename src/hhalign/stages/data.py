"""The data stage: preference data -> SFT texts, preference triples, eval prompt sets, a data report.

    hhalign data configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign data examples/custom.yaml                    # your own preference file(s)

Two layouts (``data.layout``): ``subsets``, HH-RLHF's own tree (a hub id or a local
``<subset>/<split>.jsonl[.gz]`` tree), and ``single``, one preference dataset (a local file, a folder of
files, or a hub id + split), whose eval prompts are drawn from its own rows. Reading is ``hhalign.data.readers``,
row formats ``hhalign.data.formats``, cleaning ``hhalign.data.pairs``, the eval prompt draw ``hhalign.data.prompts``.
Everything is read and checked before the stage folder is touched; then 01_data/ is written and its
manifest last.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhalign import usage
from hhalign.artifacts import write_json, write_jsonl
from hhalign.config.schema import PROMPT_SETS, TINY, DataSection, RunConfig
from hhalign.data.formats import Renderer, RowError
from hhalign.data.hh import ASSISTANT, study_prompt
from hhalign.data.pairs import Pair, Skips, clean_file, read_pairs, template_pair
from hhalign.data.prompts import draw_from_pairs, draw_prompt_sets, write_prompts
from hhalign.data.readers import (
    RawRow,
    data_files,
    data_layout,
    read_rows,
    single_files,
    subset_file,
)
from hhalign.data.sources import is_local_data
from hhalign.engine.work import Input, begin, model_input
from hhalign.errors import DataError
from hhalign.models.loading import load_tokenizer

log = logging.getLogger(__name__)

def _norm(text: str) -> str:
    return " ".join(text.split())


def leaks(pair: Pair, eval_prompts: set[str]) -> bool:
    """A training pair whose dialogue is an eval prompt (compared whitespace-normalised)."""
    return _norm(study_prompt(pair.prompt + pair.chosen)) in eval_prompts or _norm(pair.prompt.removesuffix(ASSISTANT)) in eval_prompts


# ----------------------------------------------------------------------------- reading


@dataclass
class Loaded:
    """What a layout's reader hands the stage: usable pairs, skipped and flagged rows, eval sets, provenance."""

    pairs: list[Pair]
    skips: Skips
    flags: Skips
    sources: dict[str, Any]  # subset/split or file label -> {"rows": n}
    formats: dict[str, str | None]  # the same keys -> detected row format
    prompt_sets: dict[str, list[str]]
    prompt_info: dict[str, Any]


def _load_subsets(d: DataSection, renderer: Renderer, notes: list[str]) -> Loaded:
    """HH-RLHF's layout: the eval prompt draw first (the study's stream), then each training subset."""
    prompt_sets, prompt_info = draw_prompt_sets(d, d.source, notes, renderer)
    loaded = Loaded([], Skips(), Skips(), {}, {}, prompt_sets, prompt_info)
    for subset in d.train_subsets:
        rows = read_rows(d.source, subset, d.train_split)
        if rows is None:
            notes.append(f"training subset {subset}/{d.train_split} is not in {d.source}: skipped")
            continue
        key = f"{subset}/{d.train_split}"
        loaded.sources[key] = {"rows": len(rows)}
        loaded.formats[key], pairs = clean_file(rows, d, renderer, loaded.skips, loaded.flags)
        loaded.pairs += pairs
    if not loaded.sources:
        raise DataError(f"none of the training subsets {d.train_subsets} (split {d.train_split}) exist in {d.source}")
    return loaded


def _load_single(d: DataSection, renderer: Renderer) -> Loaded:
    """One dataset: its rows train, and the eval sets are drawn from them (a hub dataset: from eval_split)."""
    skips, flags = Skips(), Skips()
    sources, fmts, pairs = read_pairs(d, d.train_split, renderer, skips, flags)
    pool, where = pairs, ", ".join(sources)
    both_files = d.harmful_prompts_file and d.helpful_prompts_file
    if single_files(d) is None and d.eval_split != d.train_split and not both_files:
        pool = read_pairs(d, d.eval_split, renderer, Skips(), Skips())[2]
        where = f"{d.source}:{d.eval_split}"
    prompt_sets, prompt_info = draw_from_pairs(d, pool, where)
    return Loaded(pairs, skips, flags, sources, fmts, prompt_sets, prompt_info)


# ----------------------------------------------------------------------------- selecting


def _filtered(d: DataSection, loaded: Loaded) -> tuple[list[Pair], dict[str, int]]:
    """The pairs the label-noise filters keep (drop_identical, drop_near_identical), and how many each dropped."""
    dropped: dict[str, int] = {}
    drop: set[tuple[str, int]] = set()
    for reason, on in (("identical", d.drop_identical), ("near_identical", d.drop_near_identical)):
        if on:
            rows = {(e["subset"], e["line"]) for e in loaded.flags.by_reason.get(reason, [])}
            dropped[reason] = len(rows)
            drop |= rows
    return [p for p in loaded.pairs if (p.subset, p.line) not in drop], dropped


def _templated(pairs: list[Pair], loaded: Loaded, renderer: Renderer) -> list[Pair]:
    """data.render: chat_template puts HH-RLHF rows (the study's text) through the model's chat template too;
    rows the template refuses are skipped as render_failed."""
    out = []
    for p in pairs:
        if not p.prompt.endswith(ASSISTANT):
            out.append(p)  # another format, rendered through the template when it was read
            continue
        try:
            out.append(template_pair(p, renderer))
        except RowError as e:
            loaded.skips.add(e.reason, RawRow(p.subset, p.line), e.detail)
    return out


def prepare(cfg: RunConfig, model: str | None = None) -> tuple[dict[str, Any], dict[str, list[Pair]], dict[str, list[str]]]:
    """Read, clean and split the data (nothing written): (data report, {train, heldout}, prompt sets). ``model``:
    the folder whose tokenizer renders chat-template rows (the converted one for a .gguf model)."""
    d = cfg.data
    notes: list[str] = []
    layout = data_layout(d)
    renderer = Renderer(d.render, model or cfg.model.name_or_path, load_tokenizer=load_tokenizer)
    loaded = _load_single(d, renderer) if layout == "single" else _load_subsets(d, renderer, notes)
    eval_norm = {_norm(p) for ps in loaded.prompt_sets.values() for p in ps}
    pairs, dropped = _filtered(d, loaded)
    held_eval = [p for p in pairs if leaks(p, eval_norm)]
    pairs = [p for p in pairs if not leaks(p, eval_norm)]
    order = list(range(len(pairs)))
    random.Random(cfg.seed).shuffle(order)
    held_idx = set(order[: min(d.heldout_rows, len(pairs) // 5)])
    heldout = [p for i, p in enumerate(pairs) if i in held_idx]
    train = [p for i, p in enumerate(pairs) if i not in held_idx][: d.max_train_rows]
    if d.render == "chat_template":
        train, heldout = _templated(train, loaded, renderer), _templated(heldout, loaded, renderer)
    rows_read = sum(s["rows"] for s in loaded.sources.values())
    if not train:
        raise DataError(f"no usable training rows in {d.source} ({rows_read} read; skipped: {loaded.skips.counts()})")
    report = {
        "source": d.source, "layout": layout, "subsets": loaded.sources, "formats": loaded.formats,
        "render": renderer.resolved, "rows_read": rows_read, "usable_pairs": len(train) + len(heldout) + len(held_eval),
        "skipped": loaded.skips.to_json(), "skipped_counts": loaded.skips.counts(),
        "flagged": loaded.flags.to_json(), "flagged_counts": loaded.flags.counts(), "dropped_by_filter": dropped,
        "eval_leakage_held_out": len(held_eval), "heldout_pairs": len(heldout), "train_pairs": len(train),
        "prompt_sets": loaded.prompt_info, "notes": notes,
    }
    return report, {"train": train, "heldout": heldout}, loaded.prompt_sets


def summary_line(report: dict[str, Any]) -> str:
    skipped = sum(report["skipped_counts"].values())
    reasons = ", ".join(f"{k} {v}" for k, v in report["skipped_counts"].items()) or "none"
    flagged = ", ".join(f"{k} {v}" for k, v in report["flagged_counts"].items()) or "none"
    sets = ", ".join(f"{k} {v.get('n', 0)}" for k, v in report["prompt_sets"].items() if v.get("source") != "skipped")
    by_format: dict[str, list[str]] = {}
    for label, fmt in report.get("formats", {}).items():
        by_format.setdefault(fmt or "no usable rows", []).append(label)
    formats_text = ", ".join(f"{fmt} ({', '.join(labels)})" for fmt, labels in by_format.items())
    render = f", rendered {report['render']}" if report.get("render") else ""
    return (
        f"data: {report['rows_read']} rows read, {report['train_pairs']} train pairs, {report['heldout_pairs']} held out, "
        f"{report['eval_leakage_held_out']} held out as eval prompts; skipped {skipped} ({reasons}); flagged {flagged}; "
        f"prompt sets: {sets or 'none'}" + (f"; format: {formats_text}{render}" if formats_text else "")
    )


# ----------------------------------------------------------------------------- stage


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    """The files the stage reads (a local HH tree: each subset file it uses), or the hub id; the prompt files."""
    d = cfg.data
    out: dict[str, Input] = {}
    source = Path(d.source).expanduser()
    if is_local_data(d.source) and source.is_dir():
        if data_layout(d) == "subsets":
            wanted = [(s, d.train_split) for s in d.train_subsets]
            wanted += [(getattr(d, f"{n}_subset"), d.eval_split) for n in PROMPT_SETS if not getattr(d, f"{n}_prompts_file")]
            for subset, split in dict.fromkeys(wanted):
                if (f := subset_file(d.source, subset, split)) is not None:
                    out[f"{subset}/{split}"] = Input(str(f), "file")
        else:
            out.update({f.name: Input(str(f), "file") for f in data_files(source)})
    if not out:  # a hub id, a single file, or a path that does not exist (checked as a data source)
        out["source"] = Input(d.source, "data", "--data-dir DIR")
    for name in PROMPT_SETS:
        if file := getattr(d, f"{name}_prompts_file"):
            out[f"{name}_prompts"] = Input(file, "prompts")
    renders = d.render == "chat_template" or (d.render == "auto" and data_layout(d) == "single")
    if renders and cfg.model.name_or_path != TINY:  # the model's tokenizer renders rows through its chat template
        out["model"] = model_input(cfg.model.name_or_path, run_dir, "--set model.name_or_path=DIR")
    return out


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Write 01_data/ (prefs.jsonl, heldout.jsonl, prompts/, data_report.json) and its manifest. The SFT stage
    trains on the chosen side of prefs.jsonl."""
    started, cost = time.time(), usage.snapshot()
    ins = inputs(cfg, run_dir)
    model = ins.get("model")
    report, pairs, prompt_sets = prepare(cfg, model.ref if model else None)  # a data problem fails here, before the folder is touched
    work = begin("data", cfg, run_dir, ins, resume=False, started=started, cost=cost)
    write_jsonl(work.dir / "prefs.jsonl", (p.to_json() for p in pairs["train"]))
    write_jsonl(work.dir / "heldout.jsonl", (p.to_json() for p in pairs["heldout"]))
    for name, prompts in prompt_sets.items():
        write_prompts(work.dir / "prompts" / f"{name}.json", prompts)
    write_json(work.dir / "data_report.json", report)
    outputs = ["prefs.jsonl", "heldout.jsonl", "data_report.json", *(f"prompts/{n}.json" for n in prompt_sets)]
    for note in report["notes"]:
        log.info(f"note: {note}")
    log.info(summary_line(report))
    return work.finish(outputs, extra={"summary": summary_line(report), "notes": report["notes"]})
