"""Preference data in the field's formats: read a file, detect each row's format, normalise, render.

    rows = read_file(Path("prefs.jsonl"), "prefs.jsonl")          # .jsonl[.gz] .json[.gz] .parquet .csv[.gz]
    fmt = detect(rows[0].data)                                     # "standard" | "conversational" | "implicit" | "hh"
    conv = normalise(rows[0].data, fmt)                            # Conversation(prompt=[Message...], chosen, rejected)
    prompt, chosen, rejected = Renderer("hh").render(conv)         # prompt ends with "\\n\\nAssistant:"

The four row formats (TRL's names, plus HH-RLHF's own):

- ``standard``: ``prompt``, ``chosen``, ``rejected`` strings (TRL's standard explicit-prompt form). A prompt
  that already reads as an HH dialogue ("Human: ... Assistant:") is parsed into its turns; any other prompt
  is one user turn.
- ``conversational``: ``prompt`` a list of ``{"role", "content"}`` messages, ``chosen`` and ``rejected``
  one assistant message each (TRL's conversational form). A string prompt is read as one user turn.
- ``implicit``: ``chosen`` and ``rejected`` whole dialogues as message lists, no separate prompt (TRL's
  implicit-prompt form; a ``prompt`` column beside whole dialogues, as in UltraFeedback, is ignored). The
  prompt is every message before the final assistant turn, which both dialogues must share.
- ``hh``: ``chosen`` and ``rejected`` HH-RLHF text dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ..."),
  split by ``hhalign.data.split_prompt`` and kept verbatim (the study's data path).

Rendering (``data.render``) turns a normalised row into the internal training pair, whose ``prompt`` ends
with the assistant cue so that ``prompt + chosen`` is the SFT text: ``hh`` writes the study's
"\\n\\nHuman: / \\n\\nAssistant:" dialogue (what OPT saw), ``chat_template`` applies the model tokenizer's
chat template. HH rows are already rendered text and are never re-rendered.

Line numbers in skip reports are 1-based: the file line for .jsonl, .json (where the row's object starts)
and .csv (the header is line 1, so the first data row is line 2); the row number for .parquet and hub data.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_HUB_ID = "Anthropic/hh-rlhf"

FORMATS = ("hh", "standard", "conversational", "implicit")
RENDERS = ("auto", "hh", "chat_template")
FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")
# Readable file types, by how the name ends (checked in this order).
SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet", ".csv.gz", ".csv")
# Why a non-HH row is skipped, in the order they are checked (HH rows use hhalign.data.SKIP_REASONS).
SKIP_REASONS = ("not_utf8", "invalid_json", "missing_field", "wrong_type", "mixed_format", "wrong_role", "no_assistant_turn",
                "prefix_mismatch", "empty_prompt", "empty_response", "identical", "render_failed")
CSV_CONVERSATIONAL = ("conversational data in .csv is not supported (csv cells are text, not message lists): "
                      "save it as .jsonl, .json or .parquet")


class DataError(RuntimeError):
    """The data cannot be read at all (missing source, unreachable hub, nothing usable)."""


class RowError(ValueError):
    """Why one row is unusable: a skip reason and a detail for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass
class RawRow:
    subset: str  # the subset/split or file the row came from
    line: int  # 1-based line number in the file (row number for parquet and hub data; see the module docstring)
    data: dict[str, Any] | None = None
    error: str | None = None  # a skip reason when the row could not even be decoded


@dataclass
class Conversation:
    """A non-HH row, normalised: the prompt turns and the two competing assistant replies."""

    prompt: list[Message]
    chosen: str
    rejected: str


# ----------------------------------------------------------------------------- HH dialogues


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


# ----------------------------------------------------------------------------- readers


def data_suffix(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def data_files(folder: Path) -> list[Path]:
    """The readable data files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and data_suffix(p))


def read_file(path: Path, label: str) -> list[RawRow]:
    """Every row of a local data file; rows that cannot be decoded carry their skip reason in ``error``."""
    suffix = data_suffix(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    if suffix is None:
        raise DataError(f"'{path}': unsupported file type; hhalign reads {', '.join(SUFFIXES)}")
    if suffix.startswith(".jsonl"):
        return read_jsonl(path, label)
    if suffix == ".parquet":
        return _read_parquet(path, label)
    text = _decode(gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes())
    if suffix.startswith(".csv"):
        return _read_csv(text, path, label)
    if not text.lstrip().startswith("["):
        return read_jsonl(path, label)  # JSON Lines saved as .json
    return _read_json_list(text, path, label)


def read_jsonl(path: Path, label: str) -> list[RawRow]:
    """JSON Lines, one object per line; blank lines are ignored, bad lines kept as errors."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                rows.append(RawRow(label, i, error="not_utf8"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                rows.append(RawRow(label, i, error="invalid_json"))
                continue
            rows.append(RawRow(label, i, data=obj if isinstance(obj, dict) else None, error=None if isinstance(obj, dict) else "invalid_json"))
    return rows


def _decode(raw: bytes) -> str:
    """UTF-8 text; undecodable bytes become lone surrogates, so the rows holding them can be skipped alone."""
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


_SURROGATE = re.compile("[\udc80-\udcff]")


def _has_bad_bytes(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    return False


def _row(label: str, line: int, obj: Any) -> RawRow:
    if not isinstance(obj, dict):
        return RawRow(label, line, error="invalid_json")
    if _has_bad_bytes(obj):
        return RawRow(label, line, error="not_utf8")
    return RawRow(label, line, data=obj)


def _read_json_list(text: str, path: Path, label: str) -> list[RawRow]:
    """A JSON list of row objects; each row's line is where its object starts."""
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    i, line, counted = text.index("[") + 1, 1, 0
    try:
        while True:
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if i >= len(text) or text[i] == "]":
                break
            line, counted = line + text.count("\n", counted, i), i
            obj, i = decoder.raw_decode(text, i)
            rows.append(_row(label, line, obj))
    except json.JSONDecodeError as e:
        raise DataError(f"'{path}' is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}. A JSON list is read "
                        "whole, so one broken row stops it; in JSON Lines (.jsonl) a broken line is skipped and reported.") from e
    return rows


def _read_csv(text: str, path: Path, label: str) -> list[RawRow]:
    """A CSV file with a header row; cells are strings, a row's line is the file line where it starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        rows, end = [], reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if any(cell.strip() for cell in record):
                rows.append(_row(label, start, dict(zip(header or [], record))))
    except csv.Error as e:
        raise DataError(f"'{path}' is not a readable CSV file (line {reader.line_num}): {e}") from e
    return rows


def _read_parquet(path: Path, label: str) -> list[RawRow]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except ImportError as e:
        raise DataError(f"reading '{path}' needs pyarrow: pip install pyarrow") from e
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError... on a damaged file
        raise DataError(f"'{path}' is not a readable Parquet file: {type(e).__name__}: {e}") from e
    return [_row(label, i, r) for i, r in enumerate(table.to_pylist(), start=1)]


def read_hub(source: str, split: str, label: str, data_dir: str | None = None, advice: str = "") -> list[RawRow]:
    """Every row of one split of a hub dataset (row numbers as lines); ``data_dir`` picks a subset (HH-RLHF's)."""
    try:
        import datasets

        subset = {"data_dir": data_dir} if data_dir else {}
        ds = datasets.load_dataset(source, split=split, **subset)
    except Exception as e:  # the hub raises many types: connection, offline mode, missing repo
        where = f"data_dir={data_dir}, split={split}" if data_dir else f"split={split}"
        raise DataError(
            f"could not load '{source}' ({where}) from the Hugging Face hub: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. "
            + (advice or "If the hub is unreachable, save the split elsewhere (e.g. ds.to_json('prefs.jsonl')) "
               "and pass the file as data.source (or --data-dir).")
        ) from e
    return [_row(label, i + 1, dict(r)) for i, r in enumerate(ds)]


# ----------------------------------------------------------------------------- detection


def map_columns(row: RawRow, columns: dict[str, str]) -> RawRow:
    """The row with ``data.columns`` applied: {"chosen": "good"} reads the file's "good" column as chosen."""
    if not columns or row.data is None:
        return row
    data = {k: v for k, v in row.data.items() if k not in columns}
    for name, column in columns.items():
        if column in row.data:
            data[name] = row.data[column]
    return RawRow(row.subset, row.line, data, row.error)


def detect(data: dict[str, Any]) -> str:
    """The format of one row (see the module docstring); RowError(missing_field | wrong_type) when it has none."""
    missing = [k for k in ("chosen", "rejected") if data.get(k) is None]
    if missing:
        raise RowError("missing_field", f"no {' or '.join(missing)}")
    chosen, rejected, prompt = data["chosen"], data["rejected"], data.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            return "hh"
        if isinstance(prompt, str):
            return "standard"
        raise RowError("wrong_type", f"prompt is {_kind(prompt)} but chosen and rejected are strings")
    if isinstance(chosen, list) and isinstance(rejected, list):
        if isinstance(prompt, list):
            return "conversational"
        if prompt is None:
            return "implicit"
        if isinstance(prompt, str):  # a string prompt beside replies (conversational) or whole dialogues (implicit)
            first = chosen[0] if chosen else None
            return "conversational" if isinstance(first, dict) and first.get("role") == "assistant" else "implicit"
        raise RowError("wrong_type", f"prompt is {_kind(prompt)}; expected a string or a list of messages")
    raise RowError("wrong_type", f"chosen is {_kind(chosen)} and rejected is {_kind(rejected)}; both must be strings or both message lists")


def _kind(value: Any) -> str:
    return {str: "a string", list: "a list", dict: "an object", bool: "a boolean"}.get(type(value), type(value).__name__)


def file_format(rows: list[RawRow], wanted: str = "auto") -> tuple[str | None, list[str | RowError | None]]:
    """(the file's format, each row's detection). With ``wanted="auto"`` the format most rows have (ties: the
    first seen); rows of another format are then skipped as mixed_format. None when no row has a format."""
    detected: list[str | RowError | None] = []
    for row in rows:
        if row.error or row.data is None:
            detected.append(None)
            continue
        try:
            detected.append(detect(row.data))
        except RowError as e:
            detected.append(e)
    if wanted != "auto":
        return wanted, detected
    counts = Counter(d for d in detected if isinstance(d, str))
    if not counts:
        return None, detected
    best = max(counts.values())
    return next(d for d in detected if isinstance(d, str) and counts[d] == best), detected


def check_row(data: dict[str, Any], detected: str | RowError | None, fmt: str, csv_file: bool = False) -> None:
    """Raise the RowError that makes a decoded row unusable in a file of format ``fmt`` (before normalising)."""
    if csv_file:
        for key in FIELDS:
            value = data.get(key)
            if isinstance(value, str) and value.lstrip().startswith("[{"):
                raise RowError("wrong_type", f"{key} looks like a list of messages: {CSV_CONVERSATIONAL}")
    if isinstance(detected, RowError):
        raise detected
    if detected != fmt:
        if fmt in ("standard", "conversational") and detected in ("hh", "implicit") and not _whole_dialogue(data["chosen"]):
            raise RowError("missing_field", "no prompt")  # replies without a prompt, not dialogues of another format
        raise RowError("mixed_format", f"row is {detected}, the file is {fmt}")


def _whole_dialogue(chosen: Any) -> bool:
    if isinstance(chosen, str):
        return HUMAN in chosen or chosen.lstrip().startswith("Human:")
    return any(isinstance(m, dict) and m.get("role") == "user" for m in chosen)


# ----------------------------------------------------------------------------- normalising


def normalise(data: dict[str, Any], fmt: str) -> Conversation:
    """A standard, conversational or implicit row as prompt turns + two replies; RowError when unusable."""
    if fmt == "standard":
        conv = Conversation(prompt_messages(data["prompt"]), data["chosen"].strip(), data["rejected"].strip())
    elif fmt == "conversational":
        prompt = data["prompt"]
        turns = _messages(prompt, "prompt") if isinstance(prompt, list) else prompt_messages(prompt)
        conv = Conversation(turns, _reply(data["chosen"], "chosen"), _reply(data["rejected"], "rejected"))
    elif fmt == "implicit":
        conv = split_dialogues(_messages(data["chosen"], "chosen"), _messages(data["rejected"], "rejected"))
    else:
        raise ValueError(f"normalise() takes standard, conversational or implicit rows, not {fmt!r}")
    _check_prompt(conv.prompt)
    if not conv.chosen or not conv.rejected:
        raise RowError("empty_response", "chosen is empty" if not conv.chosen else "rejected is empty")
    if conv.chosen == conv.rejected:
        raise RowError("identical", "chosen == rejected")
    return conv


def prompt_messages(text: str) -> list[Message]:
    """A prompt string as turns: an HH dialogue ("Human: ... Assistant:") is parsed, any other text is one user turn."""
    text = text.strip()
    if text.startswith("Human:"):
        turns = parse_hh_dialogue("\n\n" + text)
        if turns and turns[-1].role == "assistant" and not turns[-1].content:
            turns = turns[:-1]  # the trailing "Assistant:" cue
        if turns:
            return turns
    return [Message("user", text)] if text else []


def _messages(value: Any, name: str) -> list[Message]:
    if not isinstance(value, list):
        raise RowError("wrong_type", f"{name} is {_kind(value)}, not a list of messages")
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise RowError("wrong_type", f"{name}[{i}] is not a {{\"role\", \"content\"}} object with string values")
        if m["role"] not in ROLES:
            raise RowError("wrong_role", f"{name}[{i}] has role {m['role']!r}; allowed: {', '.join(ROLES)}")
        out.append(Message(m["role"], m["content"].strip()))
    return out


def _reply(value: Any, name: str) -> str:
    messages = _messages(value, name)
    if len(messages) != 1:
        raise RowError("wrong_type", f"{name} holds {len(messages)} messages; expected one assistant message")
    if messages[0].role != "assistant":
        raise RowError("wrong_role", f"{name}[0] has role {messages[0].role!r}; expected 'assistant'")
    return messages[0].content


def split_dialogues(chosen: list[Message], rejected: list[Message]) -> Conversation:
    """Implicit prompt: the turns before chosen's final assistant turn, which rejected must share (as split_prompt does for HH text)."""
    if not chosen or chosen[-1].role != "assistant":
        raise RowError("no_assistant_turn", "chosen does not end with an assistant message")
    prompt = chosen[:-1]
    if rejected[: len(prompt)] != prompt:
        raise RowError("prefix_mismatch", "chosen and rejected differ before their final assistant message")
    rest = rejected[len(prompt) :]
    if len(rest) != 1 or rest[0].role != "assistant":
        raise RowError("no_assistant_turn", "rejected does not end with one assistant message after the shared prompt")
    return Conversation(prompt, chosen[-1].content, rest[0].content)


def _check_prompt(prompt: list[Message]) -> None:
    if not prompt or not prompt[-1].content:
        raise RowError("empty_prompt", "the prompt is empty")
    if any(m.role == "system" for m in prompt[1:]):
        raise RowError("wrong_role", "a system message may only come first")
    if prompt[-1].role != "user":
        raise RowError("wrong_role", f"the prompt ends with a {prompt[-1].role} message; it must end with a user message")


# ----------------------------------------------------------------------------- rendering


class Renderer:
    """Turns Conversations into (prompt, chosen, rejected) text. ``setting`` is ``data.render``; "auto" uses the
    chat template of ``model``'s tokenizer when it has one and the HH rendering otherwise (always HH for
    'tiny', which is built later from the data). The tokenizer is loaded on first use only."""

    def __init__(self, setting: str = "auto", model: str | None = None, tokenizer: Any = None) -> None:
        self.setting, self.model, self.tokenizer = setting, model, tokenizer
        self._mode: str | None = None

    @property
    def resolved(self) -> str | None:
        """The rendering used so far (None while no row needed rendering)."""
        return self._mode

    @property
    def mode(self) -> str:
        if self._mode is None:
            self._mode = self._resolve()
        return self._mode

    def _resolve(self) -> str:
        if self.setting == "hh":
            return "hh"
        if self.tokenizer is None:
            if self.model in (None, "tiny"):
                if self.setting == "chat_template":
                    raise DataError("data.render is chat_template but model.name_or_path is 'tiny', built from scratch "
                                    "without a chat template; use data.render: hh (or auto)")
                return "hh"
            self.tokenizer = self._load_tokenizer()
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.setting == "chat_template" and not has:
            raise DataError(f"data.render is chat_template but the tokenizer of '{self.model}' has no chat template; "
                            "use data.render: hh (the study's Human/Assistant dialogue) or auto")
        return "chat_template" if has else "hh"

    def _load_tokenizer(self) -> Any:
        from hhalign.modeling import load_tokenizer

        try:
            return load_tokenizer(self.model)
        except Exception as e:  # ModelLoadError, or whatever a broken tokenizer folder raises
            raise DataError(f"data.render={self.setting} needs the tokenizer of model.name_or_path '{self.model}' to "
                            f"render conversational rows: {e}. Set data.render: hh to use the Human/Assistant dialogue "
                            "without the model.") from e

    def render(self, conv: Conversation) -> tuple[str, str, str]:
        """(prompt ending in the assistant cue, chosen reply, rejected reply); ``prompt + chosen`` is the SFT text."""
        if self.mode == "hh":
            system = "\n\n".join(m.content for m in conv.prompt if m.role == "system")
            prompt = system + render_hh([m for m in conv.prompt if m.role != "system"]) + ASSISTANT
            return prompt, " " + conv.chosen, " " + conv.rejected
        turns = [{"role": m.role, "content": m.content} for m in conv.prompt]
        try:
            prompt = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            replies = [self.tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": reply}], tokenize=False)
                       for reply in (conv.chosen, conv.rejected)]
        except Exception as e:  # jinja's raise_exception (e.g. "roles must alternate"), template syntax errors
            raise RowError("render_failed", f"chat template: {type(e).__name__}: {e}") from e
        if not all(r.startswith(prompt) for r in replies):
            raise RowError("render_failed", "the chat template renders the prompt differently with and without a reply")
        return prompt, replies[0][len(prompt) :], replies[1][len(prompt) :]
