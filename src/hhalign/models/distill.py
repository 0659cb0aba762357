"""A judge distilled from a reference judge's ratings, cross-fitted so that no answer is rated by a fit on its prompt.

Offline there is no helpfulness preference data to train or check a helpfulness judge on, but the study's released
files hold its judge's ratings of 400 answers to the same eval prompts. ``score.helpful_judge: distilled`` rates the
answers to the helpful prompts with a ridge regression of the reference's ratings of its answers to those prompts
(the score stage fits one judge per axis, on that prompt set only) on sentence embeddings of
(the prompt's last Human turn, the answer): features [e_turn, e_answer, e_turn * e_answer, 1] from a
sentence-transformers encoder (mean pooling over the last hidden states, L2-normalised, as sentence-transformers
does; all-MiniLM-L6-v2 in the smol preset). Measured against the reference judge on the study's answers
(benchmarks/helpful_judges.py), this was the only candidate whose agreement on helpful prompts lies above none.

Cross-fitting: the prompts of each set are split by index parity; answers to even-indexed prompts are rated by a
fit on the reference answers to odd-indexed prompts, and the other way round. So every rating, of
the run's answers and of the reference's own answers (the agreement figures), comes from a fit that never saw that
prompt. The fit rates on the reference judge's scale, so its thresholds are the reference's.

    judge = Distilled.fit(encoder, reference)      # reference: variant -> set -> rated entries
    ratings = judge.rate(prompts, responses, index)  # index: each answer's prompt index in its set

scikit-learn's Ridge would do the fit; it is one closed-form line here, not worth a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from hhalign.data.formats import prompt_messages

ALPHA = 3.0  # ridge penalty (features are unit-norm embeddings; 1 to 10 measured alike on the study's answers)


def last_turn(prompt: str) -> str:
    """The prompt's last Human turn: what an answer must address ("Human: a\\n\\nAssistant: b\\n\\nHuman: c" -> "c")."""
    turns = prompt_messages(prompt)
    return turns[-1].content if turns else prompt


@torch.inference_mode()
def embed(encoder: tuple[Any, Any], texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), hidden) L2-normalised mean-pooled sentence embeddings."""
    tok, model = encoder
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok([t or "." for t in texts[i : i + batch_size]], padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = model(**enc).last_hidden_state  # (B, T, H)
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1))


def load_encoder(path: str) -> tuple[Any, Any]:
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def features(encoder: tuple[Any, Any], prompts: list[str], responses: list[str]) -> np.ndarray:
    q, a = embed(encoder, [last_turn(p) for p in prompts]), embed(encoder, responses)
    return np.hstack([q, a, q * a, np.ones((len(prompts), 1))])


@dataclass
class Distilled:
    """Two ridge fits, one per prompt-index parity: ``weights[f]`` was fitted on the answers to prompts whose index
    parity is not ``f``, so it rates answers to prompts of parity ``f``."""

    encoder: tuple[Any, Any]
    weights: list[np.ndarray]
    means: list[float]

    @classmethod
    def fit(cls, encoder: tuple[Any, Any], reference: dict[str, dict[str, list[dict[str, Any]]]], alpha: float = ALPHA) -> Distilled:
        rows = [(e, i) for sets in reference.values() for entries in sets.values() for i, e in enumerate(entries)]
        x = features(encoder, [e["prompt"] for e, _ in rows], [e["response"] for e, _ in rows])
        y = np.array([float(e["rating"]) for e, _ in rows])
        parity = np.array([i % 2 for _, i in rows])
        weights, means = [], []
        for f in (0, 1):
            xt, yt = x[parity != f], y[parity != f]
            mean = float(yt.mean()) if yt.size else 0.0
            weights.append(np.linalg.solve(xt.T @ xt + alpha * np.eye(x.shape[1]), xt.T @ (yt - mean)))
            means.append(mean)
        return cls(encoder, weights, means)

    def rate(self, prompts: list[str], responses: list[str], index: list[int]) -> list[float]:
        """Each answer rated by the fit that never saw its prompt (``index``: the prompt's index in its set)."""
        if not prompts:
            return []
        x = features(self.encoder, prompts, responses)
        return [float(x[k] @ self.weights[i % 2] + self.means[i % 2]) for k, i in enumerate(index)]
