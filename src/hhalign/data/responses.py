"""Response files: the study's format, ``{variant}_{set}.json``, read and checked with clear errors.

A response file is a JSON list of ``{"prompt": str, "response": str, "rating": number}`` (the
rating appears once the score stage has run; extra fields are kept). The study's released files,
named like ``1_base_harmful.json`` and ``4_sftdpo_helpful.json``, are valid input as they are.

    data = load_scored_dir("../shared/data/paper/responses")   # {"base": {"harmful": [...], ...}, ...}
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from hhalign.config.schema import PROMPT_SETS, VARIANT_NAME, VARIANTS
from hhalign.errors import ResponseFileError

# The study spells SFT+DPO "sftdpo" in its file names (4_sftdpo_harmful.json).
_ALIASES = {"sftdpo": "sft_dpo", "sft+dpo": "sft_dpo", "sft-dpo": "sft_dpo"}
# Optional study-style number prefix, a variant (snake_case, or the study's spellings), a prompt set.
_FILENAME = re.compile(
    r"^(?:\d+_)?(?P<variant>[a-z][a-z0-9_+\-]*?)_(?P<set>" + "|".join(PROMPT_SETS) + r")\.json$",
    re.IGNORECASE,
)


def canonical_variant(name: str) -> str:
    """A variant's name as runs write it: snake_case, with the study's 'sftdpo' / 'SFT+DPO' read as sft_dpo.

    >>> canonical_variant("SFT+DPO"), canonical_variant("ipo_beta_05")
    ('sft_dpo', 'ipo_beta_05')
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if not VARIANT_NAME.fullmatch(key):
        raise ValueError(f"unknown variant {name!r}: a variant's name is snake_case (base, sft, dpo, sft_dpo, ipo, ...; "
                         "also 'sftdpo' or 'sft+dpo' for sft_dpo)")
    return key


def parse_response_filename(name: str | Path) -> tuple[str, str] | None:
    """``base_harmful.json`` or ``4_sftdpo_helpful.json`` -> (variant, set); any other name -> None."""
    m = _FILENAME.match(Path(name).name)
    if m is None:
        return None
    return canonical_variant(m["variant"]), m["set"].lower()


# ----------------------------------------------------------------------------- one file


def load_responses(path: str | Path, require_rating: bool = False) -> list[dict[str, Any]]:
    """Read and check one response file; ratings come back as floats.

    Entries are numbered from 1 in error messages, with the 0-based list index beside it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ResponseFileError(f"{path}: cannot read response file: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResponseFileError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise ResponseFileError(
            f'{path}: expected a JSON list of {{"prompt", "response", "rating"}} objects, got {type(data).__name__}'
        )
    return [_check_entry(path, i, entry, require_rating) for i, entry in enumerate(data)]


def _check_entry(path: Path, i: int, entry: Any, require_rating: bool) -> dict[str, Any]:
    where = f"{path}: entry {i + 1} (index {i})"
    if not isinstance(entry, dict):
        raise ResponseFileError(f"{where} is not an object but {type(entry).__name__}: {_short(entry)}")
    for key in ("prompt", "response"):
        if key not in entry:
            raise ResponseFileError(f'{where} has no "{key}"')
        if not isinstance(entry[key], str):
            raise ResponseFileError(f'{where}\'s "{key}" is {_short(entry[key])}, not a string')
    out = dict(entry)
    if "rating" in entry:
        out["rating"] = _number(entry["rating"], where)
    elif require_rating:
        raise ResponseFileError(f'{where} has no "rating": score the file first (hhalign score)')
    return out


def _number(value: Any, where: str) -> float:
    # bool is an int in Python and NaN/inf parse as JSON floats: none of them is a rating.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ResponseFileError(f'{where}\'s "rating" is {_short(value)}, not a number')
    return float(value)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- a folder


def discover(directory: str | Path) -> dict[tuple[str, str], Path]:
    """Map (variant, set) -> file for the response files in a folder (a run folder's are found by
    ``hhalign.engine.folder.RunFolder.scored``). Other files (``manifest.json``, notes) are ignored; two files for
    one (variant, set) is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResponseFileError(f"{directory}: no such folder of response files")
    return _scan(directory)


def response_files(directory: Path) -> list[Path]:
    """The files of a folder named like response files (``base_harmful.json``, ``4_sftdpo_helpful.json``), sorted;
    none for a folder that does not exist (a stage that has not run yet)."""
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.iterdir()) if p.is_file() and parse_response_filename(p.name)]


def _scan(directory: Path) -> dict[tuple[str, str], Path]:
    found: dict[tuple[str, str], Path] = {}
    for p in response_files(directory):
        key = parse_response_filename(p.name)
        if key in found:
            raise ResponseFileError(
                f"{directory}: both {found[key].name} and {p.name} hold {key[0]}/{key[1]} responses; keep one"
            )
        found[key] = p
    return found


def load_scored_dir(directory: str | Path, also: str = "") -> dict[str, dict[str, list[dict[str, Any]]]]:
    """variant -> set -> rated entries, for every response file in the folder (variants in study order); ``also``
    names where else the files were looked for, for the error."""
    directory = Path(directory)
    found = discover(directory)
    if not found:
        raise ResponseFileError(
            f"{directory}: no response files found{f' ({also})' if also else ''}; expected names like "
            "base_harmful.json, sft_dpo_helpful.json or the study's 1_base_harmful.json"
        )
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    names = {v for v, _ in found}
    for variant in [v for v in VARIANTS if v in names] + sorted(names - set(VARIANTS)):
        for prompt_set in PROMPT_SETS:
            if (variant, prompt_set) in found:
                entries = load_responses(found[variant, prompt_set], require_rating=True)
                if not entries:
                    raise ResponseFileError(f"{found[variant, prompt_set]}: the list is empty; there is nothing to measure")
                out.setdefault(variant, {})[prompt_set] = entries
    return out
