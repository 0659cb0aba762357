"""Shared fixtures: the real data in ../shared/data, tiny models built from scratch (never downloaded)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_DIR = SHARED_DATA / "hh-rlhf"
PAPER_DIR = SHARED_DATA / "paper"
ASSETS = Path(__file__).resolve().parent / "assets"


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hhalign"


def our_frames(text: str) -> list[str]:
    """The traceback frames in ``text`` that lie in hhalign's own modules: matched by the package's folder, not by
    the word "hhalign", which the checkout's path (a clone named hhalign) puts in every other frame too."""
    import hhalign

    roots = {str(Path(hhalign.__file__).resolve().parent), str(PACKAGE)}
    frames = [ln.strip() for ln in text.splitlines() if ln.lstrip().startswith('File "')]
    return [f for f in frames if any(str(Path(f.split('"')[1]).resolve()).startswith(r + os.sep) for r in roots)]


def small_run(tmp: Path, *extra: str) -> list[str]:
    """``--set`` arguments that make the tiny presets' end-to-end runs small (96 training pairs, 10 prompts a set, one
    epoch, 20 new tokens) into ``tmp``; ``extra``: more settings."""
    helpful = tmp / "helpful10.json"
    if not helpful.exists():
        helpful.write_text(json.dumps(json.loads((PAPER_DIR / "prompts" / "helpful_prompts.json").read_text())[:10]))
    sets = [f"output_dir={tmp}", f"data.source={HH_DIR}", f"data.helpful_prompts_file={helpful}",
            "data.max_train_rows=96", "data.heldout_rows=24", "data.eval_size=10", "pretrain.num_train_epochs=1",
            "sft.num_train_epochs=1", "rm.num_train_epochs=1", "metrics.bootstrap_samples=200",
            "generate.max_new_tokens=20", "report.formats=[png]", *extra]
    return sum((["--set", s] for s in sets), [])


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found at {path}: put the project's shared/ folder beside the checkout")
    return path


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    """Local HH-RLHF layout (only harmless-base/test.jsonl.gz is present)."""
    return _need(HH_DIR)


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    return _need(PAPER_DIR)


@pytest.fixture(scope="session")
def hh_rows(hh_dir: Path) -> list[dict]:
    with gzip.open(hh_dir / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, hh_rows: list[dict]) -> Path:
    """A saved tiny OPT causal LM + byte-level BPE tokenizer trained on real dialogues."""
    from hhalign.config.schema import TinyModelSection
    from hhalign.models.loading import build_tiny_causal_lm, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_lm")
    tok = train_tokenizer([r["chosen"] for r in hh_rows[:500]], vocab_size=1024)
    model = build_tiny_causal_lm(tok, TinyModelSection(hidden_size=64, num_layers=2, num_heads=2, ffn_dim=128))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory, hh_rows: list[dict]) -> Path:
    """A saved tiny DeBERTa-v2 reward model (one logit) with a pair-aware BPE tokenizer."""
    from hhalign.config.schema import TinyModelSection
    from hhalign.models.loading import build_tiny_reward_model, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_rm")
    tok = train_tokenizer([r["chosen"] for r in hh_rows[:500]], vocab_size=1024, kind="classifier")
    model = build_tiny_reward_model(tok, TinyModelSection(hidden_size=64, num_layers=2, num_heads=2, ffn_dim=128))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_lm_dir(tmp_path_factory: pytest.TempPathFactory, hh_rows: list[dict]) -> Path:
    """A saved tiny random Llama with a chat template, whose tokenizer reads "safe", "unsafe", the digits and A/B as
    one token each: the classifier and llm judges' model in tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hhalign.models.loading import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_chat_lm")
    tok = train_tokenizer([r["chosen"] for r in hh_rows[:300]], vocab_size=512)
    tok.add_tokens(["safe", "unsafe", "poison"])
    tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id or 0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
