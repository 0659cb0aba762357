"""DPO with LoRA, from the base model (04_dpo) or from the SFT model (05_sft_dpo, the study's SFT+DPO).

    hhalign dpo configs/tiny.yaml                 # from base
    hhalign dpo configs/tiny.yaml --from sft      # from this run's SFT model

The reference model is the frozen starting model, obtained by disabling the adapter (TRL does this
when given a peft_config): no second copy of the weights. Any loss the installed TRL offers is
selected with ``dpo.loss_type``. The adapter is saved (adapter/) and merged for generation (model/).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from hhalign.config import RunConfig, library_class
from hhalign.modeling import load_causal_lm
from hhalign.train.common import (
    STAGE_DIRS, TrainingError, base_model_path, data_dir, finish_stage, fit_rows, is_main_process, last_checkpoint,
    load_pairs, log_history, response_logps, save_model_atomically, stage_model_path, StopOnInterrupt, trl_args,
)


def resolve_start(cfg: RunConfig, run_dir: Path, from_model: str | None) -> tuple[str, str]:
    """(variant, model path): 'base' -> 04_dpo from the base model; 'sft' -> 05_sft_dpo from 03_sft/model."""
    if from_model in (None, "base"):
        return "dpo", base_model_path(cfg, run_dir)
    if from_model in ("sft", "sft_dpo"):
        return "sft_dpo", str(stage_model_path(run_dir, "sft"))
    sft_path = Path(run_dir) / STAGE_DIRS["sft"] / "model"
    if Path(from_model).resolve() == sft_path.resolve():
        return "sft_dpo", from_model
    if not Path(from_model).exists() and from_model.startswith((".", "/")):
        raise TrainingError(f"--from {from_model}: no such model directory")
    return "dpo", from_model


def check_lora_targets(model: torch.nn.Module, targets: Any) -> None:
    if targets in (None, "all-linear") or isinstance(targets, str):
        return
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise TrainingError(f"dpo.lora.target_modules {missing} do not exist in {type(model).__name__}; its linear layers are: {', '.join(linear)}")


@torch.inference_mode()
def preference_figures(model: Any, tok: Any, rows: list[dict[str, Any]], beta: float) -> dict[str, float]:
    """Held-out DPO figures. Implicit reward r = beta * (log pi(y|x) - log pi_ref(y|x)); the reference is the
    same model with its adapter disabled. margin = r(chosen) - r(rejected); accuracy = share with margin > 0,
    ties counting half (so an untrained adapter, margin 0 everywhere, scores 0.5); logp_accuracy = share where
    the policy gives chosen a higher log-probability than rejected."""
    model.eval()
    prompts = [r["prompt"] for r in rows]
    pc = response_logps(model, tok, prompts, [r["chosen"] for r in rows])
    pr = response_logps(model, tok, prompts, [r["rejected"] for r in rows])
    with model.disable_adapter():
        rc = response_logps(model, tok, prompts, [r["chosen"] for r in rows])
        rr = response_logps(model, tok, prompts, [r["rejected"] for r in rows])
    margins = [beta * ((a[0] - b[0]) - (c[0] - d[0])) for a, b, c, d in zip(pc, rc, pr, rr)]
    n = max(len(rows), 1)
    return {
        "implicit_reward_margin": sum(margins) / n,
        "implicit_reward_accuracy": (sum(m > 0 for m in margins) + 0.5 * sum(m == 0 for m in margins)) / n,
        "logp_accuracy": sum(a[0] > c[0] for a, c in zip(pc, pr)) / n,
    }


def run(cfg: RunConfig, run_dir: Path, from_model: str | None = None, resume: bool = False) -> dict[str, Any] | None:
    from trl import DPOTrainer

    started = time.time()
    variant, source = resolve_start(cfg, run_dir, from_model)
    stage_dir = Path(run_dir) / STAGE_DIRS[variant]
    # --- inputs
    rows, heldout = load_pairs(run_dir), load_pairs(run_dir, "heldout.jsonl")
    model, tok = load_causal_lm(source, pad_token=cfg.model.pad_token)
    lora_cfg = library_class("dpo.lora")(task_type="CAUSAL_LM", **cfg.dpo.lora.args)
    check_lora_targets(model, cfg.dpo.lora.args.get("target_modules"))
    max_length = cfg.dpo.args.get("max_length", 1024)
    rows, lengths = fit_rows(rows, tok, max_length, keep=cfg.dpo.keep_responses, keys=("chosen", "rejected"))
    dataset = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})
    beta = cfg.dpo.args.get("beta", 0.1)
    # --- model: TRL wraps it in the LoRA adapter; the reference is the same weights with the adapter disabled
    args = trl_args(variant, cfg.dpo, stage_dir, cfg.seed)
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=lora_cfg, callbacks=[StopOnInterrupt()]
    )
    model = trainer.model
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    before = preference_figures(model, tok, heldout, beta)
    # --- train
    model.train()
    trainer.train(resume_from_checkpoint=last_checkpoint(stage_dir) if resume else None)
    after = preference_figures(model, tok, heldout, beta)
    changes = _param_changes(model, frozen_before, lora_before)
    # --- save: adapter, then the merged model for generation
    _save(trainer, tok, stage_dir)
    report = {
        "stage": variant, "from": source, "train_pairs": len(rows), "heldout_pairs": len(heldout), "beta": beta,
        "loss_type": cfg.dpo.args.get("loss_type", ["sigmoid"]), "lengths": lengths, "before": before, "after": after,
        "parameters": changes, "reference": "adapter disabled" if trainer.ref_model is None else "separate copy",
        "log_history": log_history(trainer),
        "summary": f"{variant}: held-out implicit-reward margin {before['implicit_reward_margin']:.4f} -> "
                   f"{after['implicit_reward_margin']:.4f}, accuracy {before['implicit_reward_accuracy']:.2f} -> "
                   f"{after['implicit_reward_accuracy']:.2f}; {lengths['would_lose_response_tokens']} rows over max_length",
    }
    print(report["summary"])
    return finish_stage(variant, cfg, stage_dir, report, {"prefs": data_dir(run_dir) / "prefs.jsonl", "start": Path(source)},
                        ["adapter", "model"], started, {"dpo": cfg.to_dict()["dpo"], "from": variant})


def _param_changes(model: Any, frozen: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> dict[str, Any]:
    params = dict(model.named_parameters())
    lora_changed = [n for n, p in lora.items() if not torch.equal(p, params[n].detach())]
    frozen_changed = [n for n, p in frozen.items() if not torch.equal(p, params[n].detach())]
    return {"lora_tensors": len(lora), "lora_changed": len(lora_changed), "lora_unchanged": sorted(set(lora) - set(lora_changed)),
            "frozen_tensors": len(frozen), "frozen_changed": frozen_changed}


def _save(trainer: Any, tok: Any, stage_dir: Path) -> None:
    """Every rank calls the trainer's save (under FSDP it gathers the sharded adapter) into adapter/; the main
    rank then builds the merged model for generation from that saved adapter, so both come from full weights."""
    from accelerate import PartialState

    from hhalign.artifacts import atomic_dir

    save_model_atomically(trainer, tok, stage_dir / "adapter")
    if is_main_process():
        merged, _ = load_causal_lm(str(stage_dir / "adapter"))
        with atomic_dir(stage_dir / "model") as tmp:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    PartialState().wait_for_everyone()
