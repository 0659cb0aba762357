"""Preference data in the field's formats: detect each row's format, normalise it, render it as text.

    rows = read_file(Path("prefs.jsonl"), "prefs.jsonl")          # hhalign.data.readers
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
  split by ``hhalign.data.hh.split_prompt`` and kept verbatim (the study's data path).

Rendering (``data.render``) turns a normalised row into the internal training pair, whose ``prompt`` ends
with the assistant cue so that ``prompt + chosen`` is the SFT text: ``hh`` writes the study's
"\\n\\nHuman: / \\n\\nAssistant:" dialogue (what OPT saw), ``chat_template`` applies the model tokenizer's
chat template. HH rows are already rendered text and are never re-rendered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hhalign.data.hh import ASSISTANT, HUMAN, Message, parse_hh_dialogue, render_hh
from hhalign.data.readers import RawRow
from hhalign.errors import DataError, UserError

FORMATS = ("hh", "standard", "conversational", "implicit")
RENDERS = ("auto", "hh", "chat_template")
FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")

SKIP_REASONS = ("not_utf8", "invalid_json", "missing_field", "wrong_type", "mixed_format", "wrong_role", "no_assistant_turn",
                "prefix_mismatch", "empty_prompt", "empty_response", "identical", "render_failed")
CSV_CONVERSATIONAL = ("conversational data in .csv is not supported (csv cells are text, not message lists): "
                      "save it as .jsonl, .json or .parquet")


class RowError(ValueError):
    """Why one row is unusable: a skip reason and a detail for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Conversation:
    """A non-HH row, normalised: the prompt turns and the two competing assistant replies."""

    prompt: list[Message]
    chosen: str
    rejected: str


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
    'tiny', which is built later from the data). The tokenizer is loaded on first use only, by ``load_tokenizer``
    (the data stage passes ``hhalign.models.loading.load_tokenizer``: this library loads no model itself)."""

    def __init__(self, setting: str = "auto", model: str | None = None, tokenizer: Any = None,
                 load_tokenizer: Callable[[str], Any] | None = None) -> None:
        self.setting, self.model, self.tokenizer, self.load_tokenizer = setting, model, tokenizer, load_tokenizer
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
        if self.load_tokenizer is None:
            raise DataError(f"data.render={self.setting} needs the tokenizer of '{self.model}', and nothing here loads one; "
                            "render through the data stage, or set data.render: hh")
        try:
            return self.load_tokenizer(self.model)
        except (UserError, OSError, ValueError) as e:  # ModelLoadError, or what a broken tokenizer folder raises
            raise DataError(f"data.render={self.setting} needs the tokenizer of model.name_or_path '{self.model}' to "
                            f"render conversational rows: {str(e).rstrip('.')}. Set data.render: hh to use the Human/Assistant dialogue "
                            "without the model.") from e

    def render(self, conv: Conversation) -> tuple[str, str, str]:
        """(prompt ending in the assistant cue, chosen reply, rejected reply); ``prompt + chosen`` is the SFT text."""
        from jinja2 import TemplateError

        if self.mode == "hh":
            system = "\n\n".join(m.content for m in conv.prompt if m.role == "system")
            prompt = system + render_hh([m for m in conv.prompt if m.role != "system"]) + ASSISTANT
            return prompt, " " + conv.chosen, " " + conv.rejected
        turns = [{"role": m.role, "content": m.content} for m in conv.prompt]
        try:
            prompt = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            replies = [self.tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": reply}], tokenize=False)
                       for reply in (conv.chosen, conv.rejected)]
        except (TemplateError, ValueError, TypeError) as e:  # the template's raise_exception ("roles must alternate")
            raise RowError("render_failed", f"chat template: {type(e).__name__}: {e}") from e
        if not all(r.startswith(prompt) for r in replies):
            raise RowError("render_failed", "the chat template renders the prompt differently with and without a reply")
        return prompt, replies[0][len(prompt) :], replies[1][len(prompt) :]
