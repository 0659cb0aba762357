"""``<stage>.attention``: which attention a training stage uses (auto: eager on a CPU), and a clear error for one
that cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from hhalign.config.schema import DPOSection, SFTSection
from hhalign.errors import TrainingError
from hhalign.models.loading import load_causal_lm
from hhalign.models.training import set_attention


def test_auto_is_eager_on_a_cpu_and_a_named_one_is_kept(tiny_lm_dir: Path) -> None:
    model, _ = load_causal_lm(str(tiny_lm_dir))
    assert model.config._attn_implementation == "sdpa"  # transformers' default, which auto replaces on a CPU
    assert set_attention(model, SFTSection(), "sft") == "eager"
    assert model.config._attn_implementation == "eager"
    assert set_attention(model, SFTSection(attention="sdpa"), "sft") == "sdpa"
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("impl, says", [("bogus", "is not supported"), ("flash_attention_2", "FlashAttention2")])
def test_an_attention_that_cannot_be_used_is_one_clear_line(tiny_lm_dir: Path, impl: str, says: str) -> None:
    pytest.importorskip("torch")
    if impl == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
            pytest.skip("flash-attn is installed here")
        except ImportError:
            pass
    model, _ = load_causal_lm(str(tiny_lm_dir))
    with pytest.raises(TrainingError) as e:
        set_attention(model, DPOSection(attention=impl), "dpo")
    msg = str(e.value)
    assert "\n" not in msg and f"dpo.attention={impl!r}" in msg and says in msg and "auto, eager or sdpa" in msg


# ----------------------------------------------------------------------------- decoding attention by span


def _brute_cost(first: tuple[int, ...], last: tuple[int, ...], call_cost: float) -> float:
    """The least cost over every split of the rows into runs of consecutive rows, by enumeration."""
    import itertools

    n, best = len(first), float("inf")
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        cost = sum(call_cost + (b - a) * (max(last[a:b]) - min(first[a:b])) for a, b in zip(bounds, bounds[1:]))
        best = min(best, cost)
    return best


def test_spans_cover_every_row_at_the_least_cost() -> None:
    import random

    from hhalign.models.attention import spans

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        first = tuple(sorted(rng.randint(0, 90) for _ in range(n)))
        last = tuple(f + rng.randint(1, 40) for f in first)
        call_cost = rng.choice([0, 5, 40, 1000])
        runs = spans(first, last, call_cost)
        assert [a for a, *_ in runs] == [0] + [b for _, b, *_ in runs[:-1]] and runs[-1][1] == n  # consecutive, all rows
        for a, b, s, e in runs:
            assert all(s <= first[i] and last[i] <= e for i in range(a, b))  # every row's keys are in its run's span
        cost = sum(call_cost + (b - a) * (e - s) for a, b, s, e in runs)
        assert cost == _brute_cost(first, last, call_cost)
    assert spans((0, 0, 500, 500), (600, 600, 600, 600), call_cost=10) == [(0, 2, 0, 600), (2, 4, 500, 600)]  # the docstring's


def test_attention_by_span_equals_sdpa_on_left_padded_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """One decoding step of a grouped-query layer over a left-padded static cache (unwritten slots at the end):
    the same output as transformers' SDPA over the whole width, from several kernel calls on narrower keys."""
    import torch
    from transformers.integrations import sdpa_attention

    import hhalign.models.attention as att

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    batch, kv_heads, width, dim = 6, 2, 300, 16
    query = torch.randn(batch, kv_heads * 3, 1, dim)
    key, value = torch.randn(batch, kv_heads, width, dim), torch.randn(batch, kv_heads, width, dim)
    starts = torch.tensor([0, 10, 150, 160, 250, 255])  # longest first, as generation orders a batch
    mask = (torch.arange(width)[None] >= starts[:, None]) & (torch.arange(width)[None] < 280)  # written up to 280
    mask = mask[:, None, None, :]
    calls: list[int] = []
    real = att.sdpa_attention_forward
    monkeypatch.setattr(att, "sdpa_attention_forward", lambda m, q, k, *a, **kw: calls.append(k.shape[2]) or real(m, q, k, *a, **kw))
    got, _ = att.sdpa_by_span(module, query, key, value, mask, scaling=0.25)
    want, _ = sdpa_attention.sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    # at 360 a call: rows 0-1 over the 280 written slots, rows 2-5 from 150 on (one call more costs less than 4 x 150 keys)
    assert calls == [280, 130]
    calls.clear()
    prefill, _ = att.sdpa_by_span(module, torch.randn(batch, 6, 4, dim), key, value, None, scaling=0.25)
    assert calls == [width] and prefill.shape == (batch, 4, 6, dim)  # queries of several tokens: SDPA as it is
