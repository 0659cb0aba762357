"""Score stage: a reward model rates every (prompt, response) pair; ratings are written into the files.

    hhalign score --reward-model OpenAssistant/reward-model-deberta-v3-large-v2 base_harmful.json base_helpful.json

    ratings = run("runs/tiny/06_rm/model", [Path("base_harmful.json")], ScoreSection())

The study scored one pair at a time::

    inputs = tokenizer(prompt, response, truncation=True, return_tensors="pt")
    score = reward_model(**inputs).logits[0]          # the first (only) logit

``score_pairs`` gives the same numbers (within 1e-5, ``tests/test_score.py``) in length-sorted,
right-padded batches: every pair is tokenized alone exactly as above, then padded, and the
attention mask keeps the pads out of every real token's attention.

``run`` checks every file before it loads the model, loads the model once, then rewrites each file
in place with a "rating" on every entry, atomically (a temporary file renamed over the original):
a run stopped part-way leaves each file either fully rated or exactly as it was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hhalign.artifacts import write_json
from hhalign.config import ScoreSection
from hhalign.generate import length_batches
from hhalign.modeling import load_reward_model, pick_device, resolve_dtype
from hhalign.responses import load_responses

# What one more forward pass costs, in tokens, when grouping pairs by length (see
# hhalign.generate.length_batches). On a CPU the pass is compute-bound already at batch size 1, so a
# pad costs as much as a real token, but each pass also has a fixed part: DeBERTa-v3 projects its
# 512 relative-position embeddings in every layer of every pass, and the weights are read once per
# pass (DeBERTa-v3-large, 2 cores: 50 tokens 0.65 s, 200 tokens 1.6 s in float32; 0.22 s and
# 0.42 s in bfloat16). On a GPU pads are nearly free: full batches.
OVERHEAD_CPU = 64.0


def pass_overhead(device: torch.device) -> float:
    return OVERHEAD_CPU if device.type == "cpu" else math.inf


def score_pairs(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    batch_size: int,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[float]:
    """The reward model's first logit for each (prompt, response) pair, in input order."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    device = torch.device(device) if device is not None else model.device
    if model.device != device:
        model.to(device)
    # Each pair tokenized alone, as the study did (truncation=True: the tokenizer's model_max_length).
    encoded = [tok(p, r, truncation=True) for p, r in zip(prompts, responses)]
    scores: list[float] = [0.0] * len(encoded)
    bar = tqdm(total=len(encoded), desc="score", unit="pair", disable=not progress)
    with torch.inference_mode(), bar:
        for idx in length_batches([len(e["input_ids"]) for e in encoded], batch_size, pass_overhead(device)):
            batch = tok.pad([encoded[i] for i in idx], padding=True, padding_side="right", return_tensors="pt")
            logits = model(**batch.to(device)).logits  # (B, num_labels)
            for i, s in zip(idx, logits[:, 0].float().tolist()):
                scores[i] = s
            bar.update(len(idx))
    return scores


def _score_one_at_a_time(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]) -> list[float]:
    """The study's scoring loop (the reference that ``score_pairs`` must match)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        inputs = tok(prompt, response, truncation=True, return_tensors="pt").to(model.device)
        scores.append(model(**inputs).logits[0].item())
    return scores


def run(
    reward_model: str | Path,
    paths: list[Path],
    cfg: ScoreSection,
    device: str = "auto",
) -> dict[Path, list[float]]:
    """Rate every entry of every response file in place; returns each file's ratings in entry order."""
    paths = list(dict.fromkeys(Path(p) for p in paths))
    # --- check every file before any work: a bad third file must not leave the first two rated
    entries = {p: load_responses(p) for p in paths}
    # --- load once, score and rewrite file by file
    dev = pick_device(device)
    model, tok = load_reward_model(str(reward_model), device=dev, dtype=resolve_dtype(cfg.dtype, dev))
    ratings: dict[Path, list[float]] = {}
    for p in paths:
        rows = entries[p]
        scores = score_pairs(
            model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows], cfg.batch_size, device=dev
        )
        write_json(p, [_rated(r, s) for r, s in zip(rows, scores)])
        ratings[p] = scores
    return ratings


def _rated(entry: dict[str, Any], score: float) -> dict[str, Any]:
    return {**entry, "rating": score}
