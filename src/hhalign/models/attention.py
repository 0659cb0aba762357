"""Decoding attention over each group of rows' own keys: what generation uses on a CPU (``hhalign.models.generation``).

A batch of prompts decodes from one left-padded static cache as wide as its longest prompt plus the new tokens,
and every step attends over that whole width for every row. PyTorch's CPU attention kernel costs about as much
per masked position as per real one (0.11 us per row and position in bfloat16 on 2 Zen 5 cores, 20 us a call), so
with 50 prompts of 37 to 755 tokens half of generation's operator time went to attention, two thirds of it over
pads and not-yet-written slots.

``sdpa_by_span`` handles one-token queries: it splits the batch into runs of consecutive rows (the caller sorts
them longest first, so each run holds prompts of similar lengths), cuts each run's keys and values to the
positions its rows' masks cover (views, no copies) and runs transformers' own SDPA attention on each run. Every
row attends to the same keys with the same mask, so the result is the same up to rounding: in float32 the same
answers; in bfloat16 about one output in ten differs in its last bit, which flips greedy tokens where two
logits tie at bfloat16's resolution (as any change of batch shape does). Prefill (longer queries) and any
mask that is not boolean go to SDPA unchanged.

What transformers lacks, and this adds: attention whose key length differs between groups of rows in a batch.
It plugs in through transformers' ``AttentionInterface`` (with SDPA's own mask function), for the duration of a
``with by_span(model):`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "hhalign_sdpa_by_span"
# One more kernel call (with its slicing and the concatenation) costs about 40 us, one row and position about
# 0.11 us (bfloat16, 2 cores): a run is worth splitting off when it saves more than about 360 rows x positions.
CALL_COST = 360


def spans(first: tuple[int, ...], last: tuple[int, ...], call_cost: float = CALL_COST) -> list[tuple[int, int, int, int]]:
    """Runs ``(row_start, row_end, key_start, key_end)`` of consecutive rows covering every row, with the least
    ``call_cost * runs + sum(rows x key span)``; row ``i`` needs keys ``first[i]:last[i]``.

    >>> spans((0, 0, 500, 500), (600, 600, 600, 600), call_cost=10)
    [(0, 2, 0, 600), (2, 4, 500, 600)]
    """
    return list(_spans(first, last, call_cost))


@lru_cache(maxsize=256)
def _spans(first: tuple[int, ...], last: tuple[int, ...], call_cost: float) -> tuple[tuple[int, int, int, int], ...]:
    n = len(first)
    best = [0.0] + [float("inf")] * n  # best[e]: least cost of rows [0, e)
    start_of = [0] * (n + 1)
    for end in range(1, n + 1):
        lo, hi = first[end - 1], last[end - 1]
        for start in range(end - 1, -1, -1):  # the run [start, end), grown leftwards
            lo, hi = min(lo, first[start]), max(hi, last[start])
            cost = best[start] + call_cost + (end - start) * (hi - lo)
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    runs, end = [], n
    while end:
        start = start_of[end]
        runs.append((start, end, min(first[start:end]), max(last[start:end])))
        end = start
    return tuple(runs[::-1])


def sdpa_by_span(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run per span of rows on the keys their masks cover (one-token queries with
    a boolean (batch, 1, 1, keys) mask); anything else goes to SDPA as it is."""
    if (query.shape[2] != 1 or attention_mask is None or attention_mask.dtype != torch.bool
            or attention_mask.shape[0] != query.shape[0] or query.shape[0] < 2):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask[:, 0, -1, :]
    n_keys = mask.shape[-1]
    seen = mask.to(torch.uint8)
    first = seen.argmax(-1)  # the first True (argmax gives the first of equal maxima)
    last = n_keys - seen.flip(-1).argmax(-1)  # one past the last True
    runs = _spans(tuple(first.tolist()), tuple(last.tolist()), CALL_COST)
    if len(runs) == 1 and runs[0][2] == 0 and runs[0][3] == n_keys:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [
        sdpa_attention_forward(module, query[a:b], key[a:b, :, s:e], value[a:b, :, s:e], attention_mask[a:b, :, :, s:e], **kwargs)[0]
        for a, b, s, e in runs
    ]
    return torch.cat(outputs, dim=0), None


AttentionInterface.register(NAME, sdpa_by_span)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets


@contextmanager
def by_span(model: PreTrainedModel) -> Iterator[bool]:
    """Within the block, a model that computes with SDPA through transformers' attention interface attends with
    ``sdpa_by_span``; yields whether it does. Any other model is left as it is."""
    before = model.config._attn_implementation
    if before != "sdpa" or not getattr(model, "_supports_attention_backend", False):
        yield False
        return
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation(before)
