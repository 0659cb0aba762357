"""hhalign.models.loading: tiny models that save and reload like any Hugging Face model, the real architectures
built from their configurations, and clear errors for paths that are not models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hhalign.config.schema import TinyModelSection
from hhalign.data.sources import HubError
from hhalign.errors import ModelLoadError
from hhalign.models.loading import (
    build_tiny_causal_lm,
    build_tiny_reward_model,
    deberta_v3_large_config,
    load_causal_lm,
    load_reward_model,
    n_params,
    opt_350m_config,
    resolve_dtype,
    train_tokenizer,
)

TEXTS = ["\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
         "\n\nHuman: What is the capital of France?\n\nAssistant: Paris."] * 20


def test_tokenizer_round_trips_and_prepends_bos_like_opt() -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    ids = tok(TEXTS[0])["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("</s>")  # OPT's tokenizer prepends </s>
    assert tok.decode(ids, skip_special_tokens=True) == TEXTS[0]
    pair = train_tokenizer(TEXTS, vocab_size=300, kind="classifier")("a prompt", "a response")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 2  # <s> A </s> B </s>


def test_tiny_lm_saves_and_reloads(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_causal_lm(tok, TinyModelSection(hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64))
    assert 10_000 < n_params(model) < 5_000_000
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_causal_lm(str(tmp_path))
    assert tok2.pad_token == tok2.eos_token  # the study's pad = eos
    x = tok(TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**x).logits, again(**x).logits)


def test_a_float16_checkpoint_loads_in_float32_unless_asked(tmp_path: Path) -> None:
    """facebook/opt-350m is stored in float16; the study (transformers 4) ran it in float32, so must we."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    build_tiny_causal_lm(tok, TinyModelSection(hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64)).half().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    assert load_causal_lm(str(tmp_path))[0].dtype == torch.float32
    assert load_causal_lm(str(tmp_path), dtype=torch.bfloat16)[0].dtype == torch.bfloat16


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_dtype("auto", cpu) == torch.bfloat16  # a CPU that multiplies bf16 natively
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_dtype("auto", cpu) == torch.bfloat16  # AVX-512 BF16 without AMX: native too
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert resolve_dtype("auto", cpu) == torch.float32  # an AVX2-only CPU emulates bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8': use one of float32, bfloat16, float16, auto"):
        resolve_dtype("fp8", cpu)


def test_tiny_reward_model_gives_one_score(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300, kind="classifier")
    rm = build_tiny_reward_model(tok, TinyModelSection(hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64))
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_reward_model(str(tmp_path))
    out = model(**tok2(["p1", "p2"], ["r1", "r2 longer"], padding=True, return_tensors="pt")).logits
    assert out.shape == (2, 1)


def test_real_architectures_have_the_real_sizes() -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    with torch.device("meta"):
        opt = AutoModelForCausalLM.from_config(opt_350m_config())
        deberta = AutoModelForSequenceClassification.from_config(deberta_v3_large_config())
    assert 330e6 < n_params(opt) < 332e6  # facebook/opt-350m: 331M
    assert 430e6 < n_params(deberta) < 440e6  # deberta-v3-large with its 128k vocabulary: 435M


def test_paths_that_are_not_models(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_reward_model(str(tmp_path))


def test_offline_hub_id_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE=1 .*`hf download facebook/opt-350m-not-cached --local-dir DIR`"):
        load_causal_lm("facebook/opt-350m-not-cached")
