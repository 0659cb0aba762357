"""The data stage: preference data -> SFT texts, preference triples, eval prompt sets, a data report.

    hhalign data configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign data examples/custom.yaml                    # your own preference file(s); docs/custom_data.md
    hhalign prompts --data-dir ../shared/data/hh-rlhf --out prompts/

Pure parsing functions (``parse_hh_dialogue``, ``split_prompt``, ``study_prompt``) sit on top; the
source readers feed the same code path. Two layouts (``data.layout``): ``subsets``, HH-RLHF's own tree
(a hub id or a local ``<subset>/<split>.jsonl[.gz]`` tree), and ``single``, one preference dataset (a
local file, a folder of files, or a hub id + split), whose eval prompts are drawn from its own rows.
Each file's row format is detected (``hhalign.formats``): HH dialogues take the study's path unchanged,
TRL's standard / conversational / implicit rows are normalised and rendered into the same pairs.
Malformed rows are never fatal and never silently dropped: they are skipped, counted by reason and
listed with their line numbers in data_report.json.
"""

from __future__ import annotations

import difflib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhalign import formats
from hhalign.artifacts import atomic_write_text, read_json, write_json, write_jsonl, write_manifest
from hhalign.config import DataSection, RunConfig
# The HH dialogue primitives live in formats (its readers and renderers use them); re-exported here, where they always were.
from hhalign.formats import ASSISTANT, HUMAN, DataError, Message, RawRow, Renderer, RowError, parse_hh_dialogue, render_hh  # noqa: F401

STAGE_DIR = "01_data"

# Reasons an HH row is skipped, in the order they are checked (other formats: formats.SKIP_REASONS).
SKIP_REASONS = ("not_utf8", "invalid_json", "missing_field", "no_assistant_turn", "prefix_mismatch", "empty_final_turn")


@dataclass
class Pair:
    """One usable preference row: ``prompt + chosen`` is the original chosen dialogue, likewise rejected."""

    prompt: str
    chosen: str
    rejected: str
    subset: str
    line: int

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "subset": self.subset, "line": self.line}


@dataclass
class Skips:
    """Rows skipped or flagged, by reason, with where they came from."""

    by_reason: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, reason: str, row: RawRow, detail: str = "") -> None:
        entry = {"subset": row.subset, "line": row.line}
        if detail:
            entry["detail"] = detail
        self.by_reason.setdefault(reason, []).append(entry)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_reason.items()}

    def to_json(self) -> dict[str, Any]:
        return {k: {"count": len(v), "rows": v} for k, v in self.by_reason.items()}


# ----------------------------------------------------------------------------- parsing


def split_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen_response, rejected_response): prompt = shared prefix up to and including the final
    ``"\\n\\nAssistant:"`` of ``chosen``; responses are what follows it. Raises ValueError(reason) otherwise."""
    idx = chosen.rfind(ASSISTANT)
    if idx < 0:
        raise ValueError("no_assistant_turn")
    prompt = chosen[: idx + len(ASSISTANT)]
    if not rejected.startswith(prompt):
        raise ValueError("prefix_mismatch")
    chosen_resp, rejected_resp = chosen[len(prompt) :], rejected[len(prompt) :]
    if HUMAN in chosen_resp or HUMAN in rejected_resp:
        # the last Assistant turn is not the last turn: the pair has no final response to compare
        raise ValueError("no_assistant_turn")
    if not chosen_resp.strip() or not rejected_resp.strip():
        raise ValueError("empty_final_turn")
    return prompt, chosen_resp, rejected_resp


def study_prompt(chosen: str) -> str:
    """The study's eval prompt: split on "\\n\\n", strip, drop the last part if it starts with "Assistant:"."""
    parts = chosen.strip().split("\n\n")
    if parts and parts[-1].startswith("Assistant:"):
        parts = parts[:-1]
    return "\n\n".join(parts)


def eval_prompt(prompt: str) -> str:
    """A training prompt as an eval prompt: an HH prompt in the study's form (``study_prompt``: "Human: ..."
    without the final "Assistant:" cue, which generate's chat protocol adds back); a chat-template prompt as is."""
    return study_prompt(prompt) if prompt.endswith(ASSISTANT) else prompt


def similarity(a: str, b: str) -> float:
    """difflib ratio of two responses (1.0 = identical), with cheap upper bounds first."""
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if sm.real_quick_ratio() < 0.5 or sm.quick_ratio() < 0.5:
        return sm.quick_ratio()
    return sm.ratio()


def _norm(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- sources


def is_local(source: str) -> bool:
    p = Path(source).expanduser()
    return p.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1


def subset_file(source: str, subset: str, split: str) -> Path | None:
    base = Path(source).expanduser() / subset
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (base / name).is_file():
            return base / name
    return None


def read_rows(source: str, subset: str, split: str) -> list[RawRow] | None:
    """Rows of one subset/split, from a local tree or the hub; None when a local subset is absent."""
    if is_local(source):
        root = Path(source).expanduser()
        if not root.is_dir():
            raise DataError(f"data directory '{source}' does not exist. Pass --data-dir pointing at a folder laid out as <subset>/<split>.jsonl[.gz], e.g. ../shared/data/hh-rlhf")
        path = subset_file(source, subset, split)
        return None if path is None else formats.read_jsonl(path, subset)
    return formats.read_hub(source, split, subset, data_dir=subset, advice=(
        "If the hub is unreachable, download the dataset elsewhere and pass --data-dir with a local copy laid out "
        "as <subset>/<split>.jsonl[.gz]."))


def data_layout(d: DataSection) -> str:
    """'subsets' (HH-RLHF's <subset>/<split> tree) or 'single' (one dataset); see DataSection.layout."""
    if d.layout != "auto":
        return d.layout
    if not is_local(d.source):
        return "subsets" if d.source.lower() == formats.HH_HUB_ID.lower() else "single"
    p = Path(d.source).expanduser()
    if p.is_file() or (not p.exists() and formats.data_suffix(p)):
        return "single"
    subsets = {*d.train_subsets, d.harmful_subset, d.helpful_subset}
    if p.is_dir() and not any((p / s).is_dir() for s in subsets) and formats.data_files(p):
        return "single"
    return "subsets"


def single_files(d: DataSection) -> list[tuple[str, Path]] | None:
    """(label, path) of each local file of a single-layout source; None for a hub dataset."""
    if not is_local(d.source):
        return None
    p = Path(d.source).expanduser()
    if p.is_file():
        return [(p.name, p)]
    if p.is_dir():
        files = formats.data_files(p)
        if not files:
            raise DataError(f"folder '{d.source}' holds no data files ({', '.join(formats.SUFFIXES)})")
        return [(f.name, f) for f in files]
    raise DataError(f"data source '{d.source}' does not exist: pass a preference file ({', '.join(formats.SUFFIXES)}), "
                    "a folder of them, a folder laid out as <subset>/<split>.jsonl[.gz], or a hub dataset id")


def read_single(d: DataSection, split: str) -> list[tuple[str, list[RawRow], bool]]:
    """(label, rows, is_csv) for each file of a single-layout source (the hub split's rows for a hub id)."""
    files = single_files(d)
    if files is None:
        label = f"{d.source}:{split}"
        return [(label, formats.read_hub(d.source, split, label), False)]
    return [(label, formats.read_file(path, label), formats.data_suffix(path).startswith(".csv")) for label, path in files]


# ----------------------------------------------------------------------------- cleaning


def clean_rows(rows: list[RawRow], skips: Skips, flags: Skips, near_ratio: float) -> list[Pair]:
    """Usable pairs; every other row lands in ``skips`` by reason. Identical / near-identical pairs are
    kept but listed in ``flags`` (filters decide later whether to drop them)."""
    pairs = []
    for row in rows:
        if row.error:
            skips.add(row.error, row)
            continue
        data = row.data or {}
        chosen, rejected = data.get("chosen"), data.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            skips.add("missing_field", row, "chosen and rejected must both be strings")
            continue
        try:
            prompt, c, r = split_prompt(chosen, rejected)
        except ValueError as e:
            skips.add(str(e), row)
            continue
        if c == r:
            flags.add("identical", row)
        else:
            ratio = similarity(c, r)
            if ratio >= near_ratio:
                flags.add("near_identical", row, f"ratio={ratio:.3f}")
        pairs.append(Pair(prompt, c, r, row.subset, row.line))
    return pairs


def clean_file(rows: list[RawRow], d: DataSection, renderer: Renderer, skips: Skips, flags: Skips,
               csv_file: bool = False) -> tuple[str | None, list[Pair]]:
    """(the file's format, its usable pairs). HH files go through clean_rows unchanged (identical pairs are
    flagged); in other formats identical pairs are skipped, and every usable row is rendered."""
    if csv_file and d.format in ("conversational", "implicit"):
        raise DataError(f"{rows[0].subset if rows else 'csv file'}: data.format is {d.format}, but {formats.CSV_CONVERSATIONAL}")
    rows = [formats.map_columns(r, d.columns) for r in rows]
    fmt, detected = formats.file_format(rows, d.format)
    if fmt == "hh":
        keep = []
        for row, det in zip(rows, detected):
            if isinstance(det, str) and det != "hh":
                skips.add("mixed_format", row, f"row is {det}, the file is hh")
            else:
                keep.append(row)
        return fmt, clean_rows(keep, skips, flags, d.near_identical_ratio)
    pairs = []
    for row, det in zip(rows, detected):
        if row.error or row.data is None:
            skips.add(row.error or "invalid_json", row)
            continue
        try:
            formats.check_row(row.data, det, fmt or "", csv_file)
            prompt, c, r = renderer.render(formats.normalise(row.data, fmt or ""))
        except RowError as e:
            skips.add(e.reason, row, e.detail)
            continue
        ratio = similarity(c, r)
        if ratio >= d.near_identical_ratio:
            flags.add("near_identical", row, f"ratio={ratio:.3f}")
        pairs.append(Pair(prompt, c, r, row.subset, row.line))
    return fmt, pairs


def why_unusable(label: str, n_rows: int, fmt: str | None, skips: Skips) -> str:
    """The error for a file without a usable row: each skip reason with its first lines and detail."""
    if not n_rows:
        return f"no usable rows in {label}: the file holds no rows"
    parts = []
    for reason, entries in skips.by_reason.items():
        mine = [e for e in entries if e["subset"] == label]
        if mine:
            lines = ", ".join(str(e["line"]) for e in mine[:5]) + (", ..." if len(mine) > 5 else "")
            detail = f": {mine[0]['detail']}" if mine[0].get("detail") else ""
            parts.append(f"{reason} {len(mine)} (line{'s' if len(mine) > 1 else ''} {lines}{detail})")
    return (f"no usable rows in {label}: {n_rows} read{f' as {fmt}' if fmt else ''}, every one skipped: {'; '.join(parts)}. "
            "hhalign reads prompt/chosen/rejected strings, message lists, or HH-RLHF dialogues; data.columns maps other column names.")


# ----------------------------------------------------------------------------- eval prompts


def draw_prompt_sets(
    cfg: DataSection, source: str, notes: list[str], renderer: Renderer | None = None
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The study's eval prompt draw: one ``random.seed(eval_seed)`` stream, harmful set first, then helpful.

    A set given as a file in the config is read instead; a set with neither file nor source subset is
    skipped with a note. When the harmful set comes from a file, the helpful draw still starts at the
    state after a harmful draw would have happened only if the harmful subset is available. A subset
    file in another format than HH's is drawn from its usable rows (``draw_set``).
    """
    random.seed(cfg.eval_seed)
    sets: dict[str, list[str]] = {}
    info: dict[str, Any] = {}
    plan = [
        ("harmful", cfg.harmful_prompts_file, cfg.harmful_subset, cfg.harmful_keywords),
        ("helpful", cfg.helpful_prompts_file, cfg.helpful_subset, cfg.helpful_keywords),
    ]
    for name, file, subset, keywords in plan:
        if file:
            sets[name] = read_prompt_file(file)
            info[name] = {"source": "file", "path": str(file), "n": len(sets[name])}
            continue
        rows = read_rows(source, subset, cfg.eval_split)
        if rows is None:
            msg = f"{name} prompt set skipped: {subset}/{cfg.eval_split} is not in {source} and no data.{name}_prompts_file is set"
            notes.append(msg)
            info[name] = {"source": "skipped", "reason": msg}
            continue
        fmt, _ = formats.file_format([formats.map_columns(r, cfg.columns) for r in rows], cfg.format)
        if fmt not in ("hh", None):
            pairs = clean_file(rows, cfg, renderer or Renderer(cfg.render), Skips(), Skips())[1]
            sets[name], info[name] = draw_set(name, pairs, keywords, cfg, f"{subset}/{cfg.eval_split}")
            continue
        rows = [formats.map_columns(r, cfg.columns) for r in rows]
        eligible = [
            r.data for r in rows
            if r.data and isinstance(r.data.get("chosen"), str)
            and (not keywords or any(k in r.data["chosen"] for k in keywords))
        ]
        if len(eligible) < cfg.eval_size:
            raise DataError(f"{name} prompt set: only {len(eligible)} rows of {subset}/{cfg.eval_split} match {keywords}, need {cfg.eval_size}")
        sample = random.sample(eligible, cfg.eval_size)
        sets[name] = [study_prompt(r["chosen"]) for r in sample]
        info[name] = {"source": f"{subset}/{cfg.eval_split}", "keywords": keywords, "eligible": len(eligible), "n": cfg.eval_size, "seed": cfg.eval_seed}
    return sets, info


def draw_set(name: str, pairs: list[Pair], keywords: list[str], cfg: DataSection, where: str,
             avoid: list[str] | None = None, taken: set[str] | None = None) -> tuple[list[str], dict[str, Any]]:
    """``eval_size`` distinct eval prompts sampled from ``pairs`` (on the current ``random`` stream): those whose
    dialogue (prompt + chosen, what the study searched) holds a keyword, none of ``avoid``, and is not ``taken``."""
    eligible: list[str] = []
    seen = set(taken or ())
    for p in pairs:
        text = p.prompt + p.chosen
        if (keywords and not any(k in text for k in keywords)) or any(k in text for k in avoid or []):
            continue
        prompt = eval_prompt(p.prompt)
        if prompt not in seen:
            seen.add(prompt)
            eligible.append(prompt)
    if len(eligible) < cfg.eval_size:
        which = f"match data.{name}_keywords {keywords}" if keywords else "are eligible"
        also = f" (rows matching data.harmful_keywords {avoid} are left out of the helpful set)" if avoid else ""
        raise DataError(f"{name} prompt set: only {len(eligible)} distinct prompts in {where} {which}{also}, and data.eval_size "
                        f"is {cfg.eval_size}. Change data.{name}_keywords, lower data.eval_size, or give data.{name}_prompts_file.")
    info = {"source": where, "keywords": keywords, "eligible": len(eligible), "n": cfg.eval_size, "seed": cfg.eval_seed}
    return random.sample(eligible, cfg.eval_size), info


def draw_from_pairs(cfg: DataSection, pairs: list[Pair], where: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The single layout's draw: one ``random.seed(eval_seed)`` stream over the dataset's usable rows, harmful set
    first; the helpful set leaves out rows matching harmful_keywords and prompts already drawn. A set given as a
    file is read instead."""
    random.seed(cfg.eval_seed)
    sets: dict[str, list[str]] = {}
    info: dict[str, Any] = {}
    for name, file, keywords in (("harmful", cfg.harmful_prompts_file, cfg.harmful_keywords),
                                 ("helpful", cfg.helpful_prompts_file, cfg.helpful_keywords)):
        if file:
            sets[name] = read_prompt_file(file)
            info[name] = {"source": "file", "path": str(file), "n": len(sets[name])}
            continue
        avoid = cfg.harmful_keywords if name == "helpful" else None
        sets[name], info[name] = draw_set(name, pairs, keywords, cfg, where, avoid, {p for s in sets.values() for p in s})
    return sets, info


def read_prompt_file(path: str | Path) -> list[str]:
    """A JSON list of prompt strings (or of {"prompt": ...} objects); see hhalign.responses.load_prompts."""
    from hhalign.responses import PromptFileError, load_prompts

    try:
        return load_prompts(path)
    except PromptFileError as e:
        raise DataError(f"prompt file: {e}") from e


def write_prompts(path: Path, prompts: list[str]) -> Path:
    """A prompt set in the study's byte format (json.dumps(indent=2), ASCII-escaped, no final newline)."""
    return atomic_write_text(path, json.dumps(prompts, indent=2))


def leaks(pair: Pair, eval_prompts: set[str]) -> bool:
    """A training pair whose dialogue is an eval prompt (compared whitespace-normalised)."""
    return _norm(study_prompt(pair.prompt + pair.chosen)) in eval_prompts or _norm(pair.prompt.removesuffix(ASSISTANT)) in eval_prompts


# ----------------------------------------------------------------------------- stage


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


def _read_pairs(d: DataSection, split: str, renderer: Renderer, skips: Skips, flags: Skips) -> tuple[dict[str, Any], dict[str, str | None], list[Pair]]:
    """Every file of a single-layout source, cleaned; a file without one usable row is an error that says why."""
    sources: dict[str, Any] = {}
    fmts: dict[str, str | None] = {}
    pairs: list[Pair] = []
    for label, rows, csv_file in read_single(d, split):
        sources[label] = {"rows": len(rows)}
        fmts[label], usable = clean_file(rows, d, renderer, skips, flags, csv_file)
        if not usable:
            raise DataError(why_unusable(label, len(rows), fmts[label], skips))
        pairs += usable
    return sources, fmts, pairs


def _load_single(d: DataSection, renderer: Renderer) -> Loaded:
    """One dataset: its rows train, and the eval sets are drawn from them (a hub dataset: from eval_split)."""
    skips, flags = Skips(), Skips()
    sources, fmts, pairs = _read_pairs(d, d.train_split, renderer, skips, flags)
    pool, where = pairs, ", ".join(sources)
    both_files = d.harmful_prompts_file and d.helpful_prompts_file
    if single_files(d) is None and d.eval_split != d.train_split and not both_files:
        pool = _read_pairs(d, d.eval_split, renderer, Skips(), Skips())[2]
        where = f"{d.source}:{d.eval_split}"
    prompt_sets, prompt_info = draw_from_pairs(d, pool, where)
    return Loaded(pairs, skips, flags, sources, fmts, prompt_sets, prompt_info)


def prepare(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Read, clean, split and write every data artifact; return the data report."""
    d = cfg.data
    notes: list[str] = []
    layout = data_layout(d)
    renderer = Renderer(d.render, cfg.model.name_or_path)
    loaded = _load_single(d, renderer) if layout == "single" else _load_subsets(d, renderer, notes)
    prompt_sets, prompt_info, sources = loaded.prompt_sets, loaded.prompt_info, loaded.sources
    skips, flags, pairs = loaded.skips, loaded.flags, loaded.pairs
    eval_norm = {_norm(p) for ps in prompt_sets.values() for p in ps}

    dropped: dict[str, int] = {}
    flagged = {(e["subset"], e["line"]) for e in flags.by_reason.get("identical", [])} if d.drop_identical else set()
    if d.drop_identical:
        dropped["identical"] = len(flagged)
    if d.drop_near_identical:
        near = {(e["subset"], e["line"]) for e in flags.by_reason.get("near_identical", [])}
        dropped["near_identical"] = len(near)
        flagged |= near
    pairs = [p for p in pairs if (p.subset, p.line) not in flagged]
    held_eval = [p for p in pairs if leaks(p, eval_norm)]
    pairs = [p for p in pairs if not leaks(p, eval_norm)]

    rng = random.Random(cfg.seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_held = min(d.heldout_rows, len(pairs) // 5)
    held_idx = set(order[:n_held])
    heldout = [p for i, p in enumerate(pairs) if i in held_idx]
    train = [p for i, p in enumerate(pairs) if i not in held_idx]
    if d.max_train_rows is not None:
        train = train[: d.max_train_rows]
    if not train:
        raise DataError(f"no usable training rows in {d.source} ({sum(s['rows'] for s in sources.values())} read; skipped: {skips.counts()})")

    write_jsonl(out_dir / "prefs.jsonl", (p.to_json() for p in train))
    write_jsonl(out_dir / "heldout.jsonl", (p.to_json() for p in heldout))
    write_jsonl(out_dir / "sft.jsonl", ({"text": p.prompt + p.chosen, "prompt": p.prompt, "completion": p.chosen} for p in train))
    for name, prompts in prompt_sets.items():
        write_prompts(out_dir / "prompts" / f"{name}.json", prompts)

    report = {
        "source": d.source,
        "layout": layout,
        "subsets": sources,
        "formats": loaded.formats,
        "render": renderer.resolved,
        "rows_read": sum(s["rows"] for s in sources.values()),
        "usable_pairs": len(train) + len(heldout) + len(held_eval),
        "skipped": skips.to_json(),
        "skipped_counts": skips.counts(),
        "flagged": flags.to_json(),
        "flagged_counts": flags.counts(),
        "dropped_by_filter": dropped,
        "eval_leakage_held_out": len(held_eval),
        "heldout_pairs": len(heldout),
        "train_pairs": len(train),
        "prompt_sets": prompt_info,
        "notes": notes,
    }
    write_json(out_dir / "data_report.json", report)
    return report


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


def outputs(report: dict[str, Any]) -> list[str]:
    sets = [f"prompts/{k}.json" for k, v in report["prompt_sets"].items() if v.get("source") != "skipped"]
    return ["prefs.jsonl", "heldout.jsonl", "sft.jsonl", "data_report.json", *sets]


def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The data stage: write 01_data/ and its manifest (last). Returns the manifest."""
    started = time.time()
    out_dir = Path(run_dir) / STAGE_DIR
    report = prepare(cfg, out_dir)
    inputs = {}
    if report["layout"] == "single":
        inputs.update(single_files(cfg.data) or {})
    for key in report["subsets"] if report["layout"] == "subsets" else []:
        subset, split = key.split("/")
        if is_local(cfg.data.source):
            inputs[key] = subset_file(cfg.data.source, subset, split)
    for name in ("harmful", "helpful"):
        file = getattr(cfg.data, f"{name}_prompts_file")
        if file:
            inputs[f"{name}_prompts_file"] = Path(file)
    return write_manifest(
        out_dir,
        stage="data",
        config={"data": cfg.to_dict()["data"], "seed": cfg.seed},
        inputs=inputs,
        outputs=outputs(report),
        started=started,
        extra={"summary": summary_line(report), "notes": report["notes"]},
    )


def write_prompt_sets(source: str, out_dir: Path, seed: int = 100, eval_size: int = 50, split: str = "test") -> dict[str, Any]:
    """``hhalign prompts``: only the eval prompt sets, named as the study's files."""
    d = DataSection(source=source, eval_seed=seed, eval_size=eval_size, eval_split=split)
    notes: list[str] = []
    if data_layout(d) == "single":
        sets, info = draw_from_pairs(d, _read_pairs(d, split, Renderer("hh"), Skips(), Skips())[2], source)
    else:
        sets, info = draw_prompt_sets(d, source, notes)
    for name, prompts in sets.items():
        write_prompts(Path(out_dir) / f"{name}_prompts.json", prompts)
    return {"sets": info, "notes": notes}
