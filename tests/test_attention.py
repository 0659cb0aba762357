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
