"""What every judge is: a name, a kind, and ``rate(prompts, responses) -> ratings``, a rating above the judge's
threshold being a positive label (harmless for the harmful prompts, helpful for the helpful ones, a refusal for the
refusal count). The kinds (``hhalign.judges.reward_model``, ``classifier``, ``llm``, ``distilled``) differ in what
they read and how a number comes out; the score stage rates, checks and compares them through this interface only.

Two things every judge gets from here: its check on held-out preference pairs (``heldout``: the same pairwise
accuracy the reward model has always had, for any kind), and its invariance (``invariance``: the same answers rated
at batch size 1 and with left padding must give the same ratings and labels; RewardBench users report scores that
change with both).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hhalign.config.schema import JudgeSpec, ScoreSection
from hhalign.errors import ModelLoadError
from hhalign.models.judge import check, judge_view
from hhalign.models.loading import load_causal_lm, local_folder, pick_device, resolve_dtype

# a rating change below this share of the ratings' spread (or of 1, for ratings that do not spread) is rounding
INVARIANCE_TOLERANCE = 1e-3


@dataclass
class Judge:
    """A loaded judge. Subclasses implement ``rate``; ``threshold(use, default)`` says where its labels turn."""

    name: str
    spec: JudgeSpec
    batch_size: int

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def pairwise(self) -> bool:
        return self.spec.kind == "llm" and self.spec.mode == "pairwise"

    def rate(self, prompts: list[str], responses: list[str], *, use: str, against: list[str] | None = None,
             batch_size: int | None = None, padding_side: str = "right", desc: str = "judge") -> list[float]:
        raise NotImplementedError

    def threshold(self, use: str, default: float) -> float:
        """A rating above this is positive. ``default``: the run's metrics threshold of that axis."""
        return self.spec.threshold if self.spec.threshold is not None else default

    def scale(self) -> str:
        """'own' (the judge's own numbers) or 'reference' (it rates on the reference judge's scale)."""
        return "own"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model": self.spec.model, **({"mode": self.spec.mode} if self.kind == "llm" else {})}


def heldout(judge: Judge, rows: list[dict[str, Any]], use: str) -> dict[str, Any]:
    """``hhalign.models.judge.check`` of any judge on held-out pairs: a pointwise judge rates chosen and rejected
    replies alone; a pairwise one says how likely the chosen reply is the better (both orders averaged), its rating of
    the rejected reply being the rest."""
    if not judge.pairwise:
        return check(None, None, rows, rate=lambda p, r, desc: judge.rate(p, r, use=use, desc=f"{judge.name}: {desc}"))
    views = [judge_view(r) for r in rows]
    p = judge.rate([v[0] for v in views], [v[1] for v in views], use=use, against=[v[2] for v in views], desc=f"{judge.name}: held-out pairs")
    return check(None, None, rows, rate=lambda prompts, replies, desc: p if desc.endswith("chosen") else [1.0 - x for x in p])


def invariance(judge: Judge, prompts: list[str], responses: list[str], use: str, threshold: float,
               against: list[str] | None = None) -> dict[str, Any]:
    """The same answers rated at the judge's batch size with right padding (how the stage rates), at batch size 1,
    and with left padding: the largest rating change and the labels that flip under each. ``invariant`` when no
    label flips and no rating moves by more than INVARIANCE_TOLERANCE of the ratings' spread."""
    kw = {"use": use, "against": against}
    ref = np.asarray(judge.rate(prompts, responses, desc=f"{judge.name}: invariance", **kw))
    one = np.asarray(judge.rate(prompts, responses, batch_size=1, desc=f"{judge.name}: invariance, batch 1", **kw))
    left = np.asarray(judge.rate(prompts, responses, padding_side="left", desc=f"{judge.name}: invariance, left padding", **kw))
    tolerance = INVARIANCE_TOLERANCE * max(float(np.ptp(ref)) if ref.size else 0.0, 1.0)
    out: dict[str, Any] = {"answers": int(ref.size), "batch_size": judge.batch_size, "padding": "right", "use": use,
                           "tolerance": tolerance, "max_change": {}, "label_flips": {}}
    for what, other in (("batch_size_1", one), ("left_padding", left)):
        out["max_change"][what] = float(np.max(np.abs(other - ref))) if ref.size else 0.0
        out["label_flips"][what] = int(np.sum((other > threshold) != (ref > threshold)))
    out["depends_on"] = [what for what in ("batch_size_1", "left_padding")
                         if out["label_flips"][what] or out["max_change"][what] > tolerance]
    out["invariant"] = not out["depends_on"]
    return out


# ----------------------------------------------------------------------------- next-token judges (classifier, llm)


def load_chat_lm(model: str, cfg: ScoreSection, where: str, why: str) -> tuple[Any, Any]:
    """A next-token judge's model and tokenizer (a hub id, folder or .gguf file), which must have a chat template;
    ``why``: what the judge reads through it, and what to use instead, for the error."""
    device = pick_device(cfg.device)
    lm, tok = load_causal_lm(local_folder(model), device=device, dtype=resolve_dtype(cfg.dtype, device))
    if not getattr(tok, "chat_template", None):
        raise ModelLoadError(f"{where}: '{model}' has no chat template, and {why}")
    return lm, tok


def clip(tok: Any, text: str, limit: int, keep: str) -> str:
    """``text`` cut to ``limit`` tokens, keeping its end (a dialogue: the newest turns) or its start (an answer)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return text
    return tok.decode(ids[-limit:] if keep == "end" else ids[:limit])


def single_token(tok: Any, text: str, what: str) -> int:
    """The one token id of ``text`` as an answer's first token (a leading space is tried too: some vocabularies
    have a word token only with one); a text that is several tokens either way is an error."""
    for candidate in (text, " " + text):
        ids = tok(candidate, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return ids[0]
    raise ValueError(f"{what} {text!r} is not a single token of this tokenizer")


def next_token_logprobs(model: Any, tok: Any, texts: list[str], token_ids: list[int], batch_size: int,
                        padding_side: str = "right", desc: str = "judge") -> np.ndarray:
    """(texts, token_ids) log-probabilities of each of ``token_ids`` as the next token after each text (its
    template already applied). Length-sorted batches; pads on ``padding_side``; positions counted from each text's
    first real token (transformers' plain forward counts from the batch's first column, which left padding
    would shift), so a text reads the same alone or in any batch."""
    encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    params = inspect.signature(model.forward).parameters
    takes_positions, keeps = "position_ids" in params, "logits_to_keep" in params
    out = np.zeros((len(texts), len(token_ids)))
    bar = tqdm(total=len(texts), desc=desc, unit="answer", disable=len(texts) < 2 * batch_size)
    with torch.inference_mode(), bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, padding_side=padding_side, return_tensors="pt")
            mask = batch["attention_mask"].to(model.device)
            extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if takes_positions else {}
            last = mask.sum(-1) - 1 if padding_side == "right" else torch.full_like(mask[:, 0], mask.shape[1] - 1)
            if keeps:  # the vocabulary projection at each text's last position only, not at all of them
                extra["logits_to_keep"] = last.unsqueeze(1)
            logits = model(input_ids=batch["input_ids"].to(model.device), attention_mask=mask, **extra).logits.float()
            rows = logits[:, 0] if keeps else logits[torch.arange(len(idx), device=logits.device), last]  # (B, vocab)
            lp = torch.log_softmax(rows, dim=-1)[:, token_ids]
            out[idx] = lp.cpu().numpy()
            bar.update(len(idx))
    return out
