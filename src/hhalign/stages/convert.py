"""The convert stage: each .gguf model the config names, as a plain, trainable Hugging Face folder, made once per
file (the conversion itself is ``hhalign.models.gguf``).

    hhalign convert configs/smol.yaml            # 00_convert/<name>-<sha12>/ for each .gguf the config names
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.config.schema import RunConfig
from hhalign.data.sources import folder_name, is_gguf, resolve
from hhalign.engine.work import Input, begin
from hhalign.models.gguf import SOURCE_FILE, convert

GGUF_REFS = ("model.name_or_path", "rm.model")  # the config keys whose model may be a .gguf file


def gguf_refs(cfg: RunConfig) -> dict[str, str]:
    """{config key: the .gguf file it names (resolved)} for the keys of GGUF_REFS that name one."""
    refs = {"model.name_or_path": cfg.model.name_or_path, "rm.model": cfg.rm.model if cfg.rm.enabled else ""}
    return {k: resolve(v) for k, v in refs.items() if is_gguf(v)}


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    return {key: Input(path, "model", f"--set {key}=FILE") for key, path in gguf_refs(cfg).items()}


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Each .gguf file the config names, converted into 00_convert/<name>-<sha12>/ (kept when already whole)."""
    work = begin("convert", cfg, run_dir, inputs(cfg, run_dir), resume=resume)
    outputs, sources = [], {}
    for key, inp in work.inputs.items():
        name = folder_name(inp.ref)
        out = work.dir / name
        if name not in outputs:
            sources[key] = convert(Path(inp.ref), out) if not (out / SOURCE_FILE).is_file() else {"gguf": inp.ref, "kept": True}
            outputs.append(name)
    return work.finish(outputs, extra={"converted": sources})
