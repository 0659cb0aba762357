"""HH-RLHF's dialogue text, as pure functions: turns, the shared prompt of a pair, the study's eval prompt.

    parse_hh_dialogue("\\n\\nHuman: hi\\n\\nAssistant: hello")   # [Message("user", "hi"), Message("assistant", "hello")]
    prompt, chosen, rejected = split_prompt(row["chosen"], row["rejected"])
    study_prompt(row["chosen"])                                # the dialogue without its last Assistant turn

Compare TRL's examples/datasets/hh-rlhf-helpful-base.py (``common_start``, ``extract_dialogue``): the same
split, kept here so that ``prompt + chosen`` is exactly the original chosen dialogue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_HUB_ID = "Anthropic/hh-rlhf"


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


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


def eval_prompt(prompt: str) -> str:
    """A training prompt as an eval prompt: an HH prompt in the study's form (``study_prompt``: "Human: ..."
    without the final "Assistant:" cue, which generate's chat protocol adds back); a chat-template prompt as is."""
    return study_prompt(prompt) if prompt.endswith(ASSISTANT) else prompt
