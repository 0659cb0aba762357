"""The generate stage: each variant answers each eval prompt set (``hhalign.models.generation``: greedy, in
length-sorted left-padded batches) into 07_generate/{variant}_{set}.json.

    hhalign generate configs/tiny.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hhalign.artifacts import write_json
from hhalign.config.schema import PROMPT_SETS, TINY, RunConfig
from hhalign.data.prompts import load_prompts
from hhalign.engine.table import VARIANT_STAGE, artifact
from hhalign.engine.work import Input, begin, model_input
from hhalign.models.generation import generate_responses
from hhalign.models.loading import load_causal_lm, pick_device, resolve_dtype

log = logging.getLogger(__name__)


def variant_model(variant: str, cfg: RunConfig, run_dir: Path) -> Input:
    """The model a variant answers with: the base model as configured, else the stage's model/ folder."""
    if variant == "base" and cfg.model.name_or_path != TINY:
        return model_input(cfg.model.name_or_path, run_dir, "--set model.name_or_path=DIR")
    return Input(str(artifact(run_dir, VARIANT_STAGE[variant], "model")))


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    files = {s: artifact(run_dir, "data", f"prompts/{s}.json") for s in PROMPT_SETS}
    out = {f"prompts/{s}": Input(str(f)) for s, f in files.items() if f.is_file()}
    return out | {f"model/{v}": variant_model(v, cfg, run_dir) for v in cfg.variants}


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Every variant answers every prompt set into 07_generate/{variant}_{set}.json; each model loads once. A
    resumed stage keeps the files it finished (each was written atomically)."""
    work = begin("generate", cfg, run_dir, inputs(cfg, run_dir), resume=resume)
    sets = {name.split("/", 1)[1]: Path(i.ref) for name, i in work.inputs.items() if name.startswith("prompts/")}
    dev = pick_device(cfg.generate.device)
    outputs, kept, cut, total, reasons = [], [], 0, 0, {}
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
                cut += sum(r["n_prompt_dropped"] > 0 for r in rows)
                total += len(rows)
                for r in rows:
                    reasons[r["finish_reason"]] = reasons.get(r["finish_reason"], 0) + 1
            del model
        outputs += [f"{variant}_{s}.json" for s in sets]
    summary = (f"generate: {len(outputs) - len(kept)} response files written" + (f", {len(kept)} kept from before" if kept else "")
               + f"; {cut} of {total} prompts cut to fit the model's positions (oldest tokens dropped); finish reasons {reasons}")
    log.info(summary)
    return work.finish(outputs, extra={"summary": summary, "prompts_cut": cut, "prompts": total, "finish_reasons": reasons,
                                       "kept": kept, "device": str(dev), "dtype": cfg.generate.dtype})
