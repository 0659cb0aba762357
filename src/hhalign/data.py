"""The data stage: HH-RLHF dialogues -> SFT texts, preference triples, eval prompt sets, a data report.

    hhalign data configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign prompts --data-dir ../shared/data/hh-rlhf --out prompts/

Pure parsing functions (``parse_hh_dialogue``, ``split_prompt``, ``study_prompt``) sit on top; the
source readers (a hub id or a local ``<subset>/<split>.jsonl[.gz]`` tree) feed the same code path.
Malformed rows are never fatal and never silently dropped: they are skipped, counted by reason and
listed with their line numbers in data_report.json.
"""

from __future__ import annotations

import difflib
import gzip
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_write_text, read_json, write_json, write_jsonl, write_manifest
from hhalign.config import DataSection, RunConfig

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
STAGE_DIR = "01_data"

# Reasons a row is skipped, in the order they are checked.
SKIP_REASONS = ("not_utf8", "invalid_json", "missing_field", "no_assistant_turn", "prefix_mismatch", "empty_final_turn")


class DataError(RuntimeError):
    """The data cannot be read at all (missing source, unreachable hub, nothing usable)."""


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


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
class RawRow:
    subset: str
    line: int  # 1-based line number in the file (row index + 1 for hub data)
    data: dict[str, Any] | None = None
    error: str | None = None  # a SKIP_REASONS entry when the row could not even be decoded


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


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH dialogue ``"\\n\\nHuman: a\\n\\nAssistant: b"`` into turns; text before the first marker is dropped."""
    parts = _TURN.split(text)
    # parts = [preamble, role1, content1, role2, content2, ...]
    return [
        Message("user" if role == "Human" else "assistant", content.strip())
        for role, content in zip(parts[1::2], parts[2::2])
    ]


def render_hh(messages: list[Message]) -> str:
    """Inverse of parse_hh_dialogue for clean turns: ``"\\n\\nHuman: a\\n\\nAssistant: b"``."""
    return "".join(f"{HUMAN if m.role == 'user' else ASSISTANT} {m.content}" for m in messages)


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
        return None if path is None else _read_local(path, subset)
    return _read_hub(source, subset, split)


def _read_local(path: Path, subset: str) -> list[RawRow]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                rows.append(RawRow(subset, i, error="not_utf8"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                rows.append(RawRow(subset, i, error="invalid_json"))
                continue
            rows.append(RawRow(subset, i, data=obj if isinstance(obj, dict) else None, error=None if isinstance(obj, dict) else "invalid_json"))
    return rows


def _read_hub(source: str, subset: str, split: str) -> list[RawRow]:
    try:
        import datasets

        ds = datasets.load_dataset(source, data_dir=subset, split=split)
    except Exception as e:  # the hub raises many types: connection, offline mode, missing repo
        raise DataError(
            f"could not load '{source}' (data_dir={subset}, split={split}) from the Hugging Face hub: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. If the hub is unreachable, download the "
            "dataset elsewhere and pass --data-dir with a local copy laid out as <subset>/<split>.jsonl[.gz]."
        ) from e
    return [RawRow(subset, i + 1, data=dict(r)) for i, r in enumerate(ds)]


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


# ----------------------------------------------------------------------------- eval prompts


def draw_prompt_sets(
    cfg: DataSection, source: str, notes: list[str]
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The study's eval prompt draw: one ``random.seed(eval_seed)`` stream, harmful set first, then helpful.

    A set given as a file in the config is read instead; a set with neither file nor source subset is
    skipped with a note. When the harmful set comes from a file, the helpful draw still starts at the
    state after a harmful draw would have happened only if the harmful subset is available.
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


def read_prompt_file(path: str | Path) -> list[str]:
    """A JSON list of prompt strings (or of {"prompt": ...} objects)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file '{p}' not found")
    try:
        items = read_json(p)
    except json.JSONDecodeError as e:
        raise DataError(f"prompt file '{p}' is not valid JSON: {e}") from e
    if not isinstance(items, list):
        raise DataError(f"prompt file '{p}' must hold a JSON list of strings, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            item = item["prompt"]
        if not isinstance(item, str):
            raise DataError(f"prompt file '{p}': entry {i} is not a string (nor an object with a string 'prompt')")
        out.append(item)
    return out


def write_prompts(path: Path, prompts: list[str]) -> Path:
    """A prompt set in the study's byte format (json.dumps(indent=2), ASCII-escaped, no final newline)."""
    return atomic_write_text(path, json.dumps(prompts, indent=2))


def leaks(pair: Pair, eval_prompts: set[str]) -> bool:
    """A training pair whose dialogue is an eval prompt (compared whitespace-normalised)."""
    return _norm(study_prompt(pair.prompt + pair.chosen)) in eval_prompts or _norm(pair.prompt.removesuffix(ASSISTANT)) in eval_prompts


# ----------------------------------------------------------------------------- stage


def prepare(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Read, clean, split and write every data artifact; return the data report."""
    d = cfg.data
    notes: list[str] = []
    prompt_sets, prompt_info = draw_prompt_sets(d, d.source, notes)
    eval_norm = {_norm(p) for ps in prompt_sets.values() for p in ps}

    skips, flags = Skips(), Skips()
    sources: dict[str, Any] = {}
    pairs: list[Pair] = []
    for subset in d.train_subsets:
        rows = read_rows(d.source, subset, d.train_split)
        if rows is None:
            notes.append(f"training subset {subset}/{d.train_split} is not in {d.source}: skipped")
            continue
        sources[f"{subset}/{d.train_split}"] = {"rows": len(rows)}
        pairs += clean_rows(rows, skips, flags, d.near_identical_ratio)
    if not sources:
        raise DataError(f"none of the training subsets {d.train_subsets} (split {d.train_split}) exist in {d.source}")

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
        "subsets": sources,
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
    return (
        f"data: {report['rows_read']} rows read, {report['train_pairs']} train pairs, {report['heldout_pairs']} held out, "
        f"{report['eval_leakage_held_out']} held out as eval prompts; skipped {skipped} ({reasons}); flagged {flagged}; "
        f"prompt sets: {sets or 'none'}"
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
    for key in report["subsets"]:
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
    d = DataSection(eval_seed=seed, eval_size=eval_size, eval_split=split)
    notes: list[str] = []
    sets, info = draw_prompt_sets(d, source, notes)
    for name, prompts in sets.items():
        write_prompts(Path(out_dir) / f"{name}_prompts.json", prompts)
    return {"sets": info, "notes": notes}
