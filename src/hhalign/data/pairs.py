"""Preference rows -> usable pairs: each row split or rendered into (prompt, chosen, rejected), every
unusable row skipped with its reason and line, identical and near-identical pairs flagged.

    skips, flags = Skips(), Skips()
    fmt, pairs = clean_file(rows, cfg.data, Renderer(cfg.data.render), skips, flags)

Malformed rows are never fatal and never silently dropped: the data report lists them by reason.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from hhalign.config.schema import DataSection
from hhalign.data import formats
from hhalign.data.formats import Renderer, RowError
from hhalign.data.hh import parse_hh_dialogue, split_prompt
from hhalign.data.readers import RawRow, read_single
from hhalign.errors import DataError

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
    turns: list[dict[str, str]] | None = None  # the prompt's turns, when it was rendered through a chat template
    source: dict[str, str] | None = None  # then also the study's text of the pair, which a judge reads

    def to_json(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "subset": self.subset, "line": self.line}
        return out | ({"turns": self.turns, "source": self.source} if self.turns else {})


def template_pair(pair: Pair, renderer: Renderer) -> Pair:
    """An HH-RLHF pair (the study's text) rendered through the model's chat template instead: the prompt's turns,
    then each reply as the assistant's turn. RowError("render_failed") when the template refuses the turns."""
    turns = [m for m in parse_hh_dialogue(pair.prompt) if m.content or m.role != "assistant"]  # drop the final cue
    prompt, chosen, rejected = renderer.render(formats.Conversation(turns, pair.chosen.strip(), pair.rejected.strip()))
    return Pair(prompt, chosen, rejected, pair.subset, pair.line, [{"role": m.role, "content": m.content} for m in turns],
                {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})


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


def similarity(a: str, b: str) -> float:
    """difflib ratio of two responses (1.0 = identical), with cheap upper bounds first."""
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if sm.real_quick_ratio() < 0.5 or sm.quick_ratio() < 0.5:
        return sm.quick_ratio()
    return sm.ratio()


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


def read_pairs(d: DataSection, split: str, renderer: Renderer, skips: Skips, flags: Skips) -> tuple[dict[str, Any], dict[str, str | None], list[Pair]]:
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
