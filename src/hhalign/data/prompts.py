"""The eval prompt sets: drawn exactly as the study drew them, or read from a file.

    sets, info = draw_prompt_sets(cfg.data, cfg.data.source, notes)      # HH-RLHF's layout
    hhalign prompts --data-dir ../shared/data/hh-rlhf --out prompts/   # write_prompt_sets

The study: rows of harmless-base test whose ``chosen`` holds "kill", "murder" or "rape", ``random.seed(100)``,
``random.sample(rows, 50)``, last Assistant turn dropped; then 50 from helpful-base test on the same random
stream. ``write_prompts`` writes a set in the study's byte format.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_write_text
from hhalign.config.schema import DataSection
from hhalign.data import formats
from hhalign.data.formats import Renderer
from hhalign.data.hh import eval_prompt, study_prompt
from hhalign.data.pairs import Pair, Skips, clean_file, read_pairs
from hhalign.data.readers import data_layout, read_rows
from hhalign.errors import DataError, PromptFileError


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
            sets[name] = load_prompts(file)
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
            sets[name] = load_prompts(file)
            info[name] = {"source": "file", "path": str(file), "n": len(sets[name])}
            continue
        avoid = cfg.harmful_keywords if name == "helpful" else None
        sets[name], info[name] = draw_set(name, pairs, keywords, cfg, where, avoid, {p for s in sets.values() for p in s})
    return sets, info


def load_prompts(path: str | Path) -> list[str]:
    """A JSON list of prompt strings, or of ``{"prompt": str, ...}`` objects (a response file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PromptFileError(f"prompts file {path} does not exist") from e
    except OSError as e:
        raise PromptFileError(f"{path}: cannot read prompts file: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise PromptFileError(f'{path}: expected a JSON list of prompt strings (or of {{"prompt": ...}}), got {type(data).__name__}')
    prompts = []
    for i, item in enumerate(data):
        where = f"{path}: entry {i + 1} (index {i})"
        if isinstance(item, dict):
            if "prompt" not in item:
                raise PromptFileError(f'{where} is an object without "prompt"')
            item = item["prompt"]
        if not isinstance(item, str):
            raise PromptFileError(f"{where} is {type(item).__name__}, not a prompt string: {json.dumps(item)[:60]}")
        if not item.strip():
            raise PromptFileError(f"{where} is an empty prompt")
        prompts.append(item)
    return prompts


def write_prompts(path: Path, prompts: list[str]) -> Path:
    """A prompt set in the study's byte format (json.dumps(indent=2), ASCII-escaped, no final newline)."""
    return atomic_write_text(path, json.dumps(prompts, indent=2))


def write_prompt_sets(source: str, out_dir: Path, seed: int = 100, eval_size: int = 50, split: str = "test") -> dict[str, Any]:
    """``hhalign prompts``: only the eval prompt sets, named as the study's files."""
    d = DataSection(source=source, eval_seed=seed, eval_size=eval_size, eval_split=split)
    notes: list[str] = []
    if data_layout(d) == "single":
        sets, info = draw_from_pairs(d, read_pairs(d, split, Renderer("hh"), Skips(), Skips())[2], source)
    else:
        sets, info = draw_prompt_sets(d, source, notes)
    for name, prompts in sets.items():
        write_prompts(Path(out_dir) / f"{name}_prompts.json", prompts)
    return {"sets": info, "notes": notes}
