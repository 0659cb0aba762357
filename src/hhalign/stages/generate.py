"""The generate stage: each variant answers each eval prompt set (``hhalign.models.generation``: greedy, in
length-sorted left-padded batches) into 07_generate/{variant}_{set}.json.

    hhalign generate configs/tiny.yaml

When the stage re-runs because the set of variants or one variant's model changed, a variant whose model, prompts
and generation settings are those the previous manifest recorded keeps its answers (``_reusable``): adding a
variant to a finished run generates for that variant alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hhalign import parallel
from hhalign.artifacts import read_json, read_manifest, sha256_path, write_json
from hhalign.config.schema import PROMPT_SETS, RunConfig, section_hash
from hhalign.data.prompts import load_prompts
from hhalign.engine.table import artifact, model_stage, stage_dir
from hhalign.engine.work import Input, begin, model_input
from hhalign.models.generation import generate_responses
from hhalign.models.loading import load_causal_lm, pick_device, resolve_dtype

log = logging.getLogger(__name__)


def variant_model(variant: str, cfg: RunConfig, run_dir: Path) -> Input:
    """The model a variant answers with: the base model as configured, else the stage's model/ folder."""
    stage = model_stage(cfg, variant)
    if stage is None:
        return model_input(cfg.model.name_or_path, run_dir, "--set model.name_or_path=DIR")
    return Input(str(artifact(run_dir, stage, "model")))


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    files = {s: artifact(run_dir, "data", f"prompts/{s}.json") for s in PROMPT_SETS}
    out = {f"prompts/{s}": Input(str(f)) for s, f in files.items() if f.is_file()}
    return out | {f"model/{v}": variant_model(v, cfg, run_dir) for v in cfg.variants}


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Every variant answers every prompt set into 07_generate/{variant}_{set}.json; each model loads once. A
    resumed stage keeps the files it finished (each was written atomically)."""
    ins = inputs(cfg, run_dir)
    reuse = _reusable(cfg, run_dir, ins)
    work = begin("generate", cfg, run_dir, ins, resume=resume)
    if work.main:
        for name, rows in reuse.items():
            if not (work.dir / name).is_file():
                write_json(work.dir / name, rows)
    parallel.barrier("kept answers")  # every rank sees what is kept before deciding what is left
    sets = {name.split("/", 1)[1]: Path(i.ref) for name, i in work.inputs.items() if name.startswith("prompts/")}
    dev = pick_device(cfg.generate.device)
    outputs, kept, answers = [], [], []
    # what is left to do, seen by every rank of a launch before rank 0 writes anything (generate_responses gathers)
    todo = {v: {s: p for s, p in sets.items() if not (work.dir / f"{v}_{s}.json").is_file()} for v in cfg.variants}
    for variant in cfg.variants:
        kept += [f"{variant}_{s}.json" for s in sets if s not in todo[variant]]
        if todo[variant]:
            model, tok = load_causal_lm(work.inputs[f"model/{variant}"].ref, device=dev, dtype=resolve_dtype(cfg.generate.dtype, dev))
            for name, path in todo[variant].items():
                rows = generate_responses(model, tok, load_prompts(path), cfg.generate, device=dev, desc=f"generate {variant}/{name}")
                if work.main:
                    write_json(work.dir / f"{variant}_{name}.json", rows)
                answers += rows
            del model
        outputs += [f"{variant}_{s}.json" for s in sets]
    answers += [r for name in kept if work.main for r in read_json(work.dir / name)]  # the counts cover every answer
    cut, total = sum(r.get("n_prompt_dropped", 0) > 0 for r in answers), len(answers)
    reasons: dict[str, int] = {}
    for r in answers:
        reasons[r.get("finish_reason", "?")] = reasons.get(r.get("finish_reason", "?"), 0) + 1
    summary = (f"generate: {len(outputs) - len(kept)} response files written" + (f", {len(kept)} kept from before" if kept else "")
               + f"; {cut} of {total} prompts cut to fit the model's positions (oldest tokens dropped); finish reasons {reasons}")
    log.info(summary)
    return work.finish(outputs, extra={"summary": summary, "prompts_cut": cut, "prompts": total, "finish_reasons": reasons,
                                       "kept": kept, "device": str(dev), "dtype": cfg.generate.dtype,
                                       "generated_with": section_hash(cfg.to_dict()["generate"])})


def _reusable(cfg: RunConfig, run_dir: Path, ins: dict[str, Input]) -> dict[str, list[dict[str, Any]]]:
    """The response files of the previous finished stage that are still right: the same generation settings, the
    same prompt files, and for each variant the same model (by content hash); {file name: its rows}."""
    d = stage_dir(run_dir, "generate")
    manifest = read_manifest(d)
    if manifest is None or manifest.get("generated_with") != section_hash(cfg.to_dict()["generate"]):
        return {}
    old = {n: v.get("sha256") for n, v in (manifest.get("inputs") or {}).items()}
    if any(old.get(n) != i.digest() for n, i in ins.items() if n.startswith("prompts/")):
        return {}
    out = {}
    for variant in cfg.variants:
        key = f"model/{variant}"
        if key not in old or old[key] is None or old[key] != ins[key].digest():
            continue
        for s in PROMPT_SETS:
            f, rec = d / f"{variant}_{s}.json", (manifest.get("artifacts") or {}).get(f"{variant}_{s}.json") or {}
            if f.is_file() and rec.get("sha256") == sha256_path(f):
                out[f.name] = read_json(f)
    return out
