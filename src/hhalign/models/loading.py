"""Load models and tokenizers by hub id or local path; build tiny ones from scratch.

    model, tok = load_causal_lm("facebook/opt-350m")          # hub (where reachable)
    model, tok = load_causal_lm("runs/tiny/04_dpo/merged")    # local dir, or a LoRA adapter dir
    tok = train_tokenizer(texts, vocab_size=2048)              # byte-level BPE, offline
    lm = build_tiny_causal_lm(tok, TinyModelSection())         # a few-million-parameter OPT
    rm = build_tiny_reward_model(train_tokenizer(texts, kind="classifier"), TinyModelSection())

Benchmarks build the real architectures with random weights (same compute, no download):
``build_random(opt_350m_config())`` and ``build_random(deberta_v3_large_config(), reward=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from hhalign.config.schema import TinyModelSection
from hhalign.data.sources import (
    check_model,
    is_adapter_dir,
    is_gguf,
    looks_local_model,
    resolve,
)
from hhalign.errors import ModelLoadError
from hhalign.models.gguf import cached

# OPT's special-token layout: <s>=0, <pad>=1, </s>=2 (bos and eos), <unk>=3.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]


# ----------------------------------------------------------------------------- tiny models


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, kind: str = "causal") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``kind="causal"`` prepends ``</s>`` to every sequence as OPT's tokenizer does; ``kind="classifier"``
    renders pairs as ``<s> A </s> B </s>`` for a sequence-classification reward model.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if kind == "causal":
        tok.post_processor = processors.TemplateProcessing(
            single="</s> $A", pair="</s> $A $B:1", special_tokens=[("</s>", eos)]
        )
    elif kind == "classifier":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
    else:
        raise ValueError(f"kind must be 'causal' or 'classifier', got {kind!r}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>" if kind == "causal" else "<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="<s>" if kind == "classifier" else None,
        sep_token="</s>" if kind == "classifier" else None,
        model_max_length=TinyModelSection().max_positions,
    )


def build_tiny_causal_lm(tokenizer: PreTrainedTokenizerBase, spec: TinyModelSection, seed: int = 0) -> OPTForCausalLM:
    """An OPT-architecture causal LM of a few million parameters, randomly initialised."""
    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        word_embed_proj_dim=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        ffn_dim=spec.ffn_dim,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("</s>"),
        eos_token_id=tokenizer.eos_token_id,
        dropout=0.0,
        attention_dropout=0.0,
        do_layer_norm_before=True,
    )
    return OPTForCausalLM(config)


def build_tiny_reward_model(
    tokenizer: PreTrainedTokenizerBase, spec: TinyModelSection, seed: int = 0
) -> DebertaV2ForSequenceClassification:
    """A DeBERTa-v2 sequence classifier with one output (the reward), randomly initialised."""
    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.ffn_dim,
        max_position_embeddings=spec.max_positions,
        relative_attention=True,
        position_buckets=64,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return DebertaV2ForSequenceClassification(config)


def opt_350m_config() -> OPTConfig:
    """facebook/opt-350m's architecture (331M parameters), written out so no download is needed."""
    return OPTConfig(
        vocab_size=50272,
        hidden_size=1024,
        word_embed_proj_dim=512,
        num_hidden_layers=24,
        num_attention_heads=16,
        ffn_dim=4096,
        max_position_embeddings=2048,
        do_layer_norm_before=False,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        dropout=0.1,
        attention_dropout=0.0,
    )


def deberta_v3_large_config() -> DebertaV2Config:
    """microsoft/deberta-v3-large's architecture (the OpenAssistant reward model's backbone), one output."""
    return DebertaV2Config(
        vocab_size=128100,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        layer_norm_eps=1e-7,
        max_relative_positions=-1,
        type_vocab_size=0,
        num_labels=1,
        pad_token_id=0,
    )


def build_random(config: Any, reward: bool = False, seed: int = 0) -> PreTrainedModel:
    """A model of ``config``'s architecture with random weights (for benchmarks)."""
    torch.manual_seed(seed)
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    return cls.from_config(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# name -> (architecture, a reward model?, the real tokenizer's model_max_length)
REAL_SHAPES = {"opt-350m": (opt_350m_config, False, 2048), "deberta-v3-large": (deberta_v3_large_config, True, 512)}


def save_random_checkpoint(name: str, out_dir: Path, texts: Iterable[str], seed: int = 0) -> Path:
    """A loadable folder of a real architecture with random weights (``REAL_SHAPES``: opt-350m, the study's policy;
    deberta-v3-large, its judge's backbone) and a byte-level BPE tokenizer trained on ``texts`` with the real
    tokenizer's length limit: the same compute and lengths as the real models, without the hub."""
    make_config, reward, max_length = REAL_SHAPES[name]
    tok = train_tokenizer(texts, vocab_size=8000, kind="classifier" if reward else "causal")
    tok.model_max_length = max_length
    model = build_random(make_config(), reward=reward, seed=seed)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- loading


def _load_error(name_or_path: str, what: str, err: Exception) -> ModelLoadError:
    """A loader's OSError as one line: a hub id that failed to download, or a local folder missing files."""
    first = str(err).splitlines()[0] if str(err) else ""
    if looks_local_model(name_or_path):
        return ModelLoadError(f"could not load {what} from '{name_or_path}': {type(err).__name__}: {first}. "
                              "Is the folder complete (config.json, weights, tokenizer files)?")
    return ModelLoadError(f"could not load {what} '{name_or_path}' from the Hugging Face hub: {type(err).__name__}: {first}. "
                          f"Download it where the hub is reachable (`hf download {name_or_path} --local-dir DIR`) and pass "
                          "DIR instead.")


def local_folder(name_or_path: str) -> str:
    """A model reference as transformers can load it: a ``pkg:`` path resolved, a .gguf file converted (once, into
    the user cache; a run converts its own into its convert stage), anything else as it is."""
    ref = resolve(name_or_path)
    return str(cached(ref)) if is_gguf(ref) else ref


def load_tokenizer(name_or_path: str, pad_token: str = "eos", padding_side: str = "right") -> PreTrainedTokenizerBase:
    check_model(name_or_path, "tokenizer")
    name_or_path = local_folder(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        raise _load_error(name_or_path, "tokenizer", e) from e
    if pad_token == "eos" or tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    pad_token: str = "eos",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a hub id, a local model dir, or a PEFT LoRA adapter dir.

    Weights load in ``dtype``, float32 unless asked (the study's transformers 4 default; transformers 5
    would use the checkpoint's own type, float16 for facebook/opt-350m). An adapter is loaded onto its
    base by PEFT's AutoPeftModelForCausalLM and merged, so generation runs at the base model's speed.
    """
    check_model(name_or_path)
    name_or_path = local_folder(name_or_path)
    try:
        if is_adapter_dir(name_or_path):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).merge_and_unload()
            has_tok = (Path(name_or_path) / "tokenizer_config.json").is_file()
            tok_src = name_or_path if has_tok else _adapter_base(name_or_path)
        else:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
            tok_src = name_or_path
    except OSError as e:
        raise _load_error(name_or_path, "model", e) from e
    tok = load_tokenizer(tok_src, pad_token=pad_token)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok


def _adapter_base(adapter_dir: str) -> str:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]


def load_reward_model(
    name_or_path: str, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
    num_labels: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification reward model (score = logits[0]) and its tokenizer, weights in ``dtype``.
    ``num_labels=1`` makes a fresh one-output head on a backbone (a base encoder or causal LM) that has none."""
    check_model(name_or_path, "reward model")
    if is_gguf(resolve(name_or_path)):
        raise ModelLoadError(f"'{name_or_path}' is a GGUF file, which holds a causal LM, not a reward model: train a judge on "
                             "it (rm.enabled: true, rm.model: this file) and score with it (score.reward_model: rm)")
    name_or_path = resolve(name_or_path)
    try:
        labels = {"num_labels": num_labels} if num_labels else {}
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=dtype, **labels)
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        raise _load_error(name_or_path, "reward model", e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU with bf16, or a CPU with AMX or AVX-512
    BF16. Elsewhere bfloat16 is emulated: on a 2-core AVX2 EPYC a 1024x1024 matmul takes 2.6 s in bfloat16 against
    0.02 s in float32 (a SmolLM2 SFT step: 300 s against about 20 s), so "auto" must mean float32 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a config's ``dtype``: float32, bfloat16, float16, or auto (bf16 where native, else float32)."""
    if name == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {', '.join([*DTYPES, 'auto'])}")
    return DTYPES[name]


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: a GPU if there is one, else the CPU. Under a launch of several processes "cuda" means this
    process's own GPU (``LOCAL_RANK``), as Accelerate places the training stages' models."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev
