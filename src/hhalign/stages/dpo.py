"""DPO with LoRA, from the base model (04_dpo) or from the SFT model (05_sft_dpo, the study's SFT+DPO).

    hhalign dpo configs/tiny.yaml                 # from base
    hhalign sft_dpo configs/tiny.yaml             # from this run's SFT model (also: hhalign dpo CONFIG --from sft)

The reference model is the frozen starting model, obtained by disabling the adapter (TRL does this
when given a peft_config): no second copy of the weights. Any loss the installed TRL offers is
selected with ``dpo.loss_type``. Held-out figures before and after training are DPOTrainer.evaluate's
on the held-out pairs (implicit-reward margin and accuracy, loss). The adapter is saved (adapter/) and
merged for generation (model/).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from hhalign import parallel
from hhalign.artifacts import atomic_dir
from hhalign.config.files import library_class
from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input, StageRun
from hhalign.errors import TrainingError
from hhalign.models.loading import load_causal_lm
from hhalign.models.training import (
    StopOnInterrupt,
    base_model,
    begin_training,
    finish_training,
    fit_rows,
    last_checkpoint,
    load_rows,
    pair_inputs,
    save_model_atomically,
    trl_args,
)

log = logging.getLogger(__name__)


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    return {**pair_inputs(run_dir), "start": base_model(cfg, run_dir)}


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True, start: str | None = None) -> dict[str, Any] | None:
    """DPO from the base model into 04_dpo; ``start`` (``hhalign dpo --from PATH``) starts from another model."""
    ins = inputs(cfg, run_dir)
    if start:
        ins["start"] = Input(start, "model", "--from PATH")
    return train("dpo", cfg, run_dir, ins, resume)


def check_lora_targets(model: torch.nn.Module, targets: Any) -> None:
    if targets in (None, "all-linear") or isinstance(targets, str):
        return
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise TrainingError(f"dpo.lora.target_modules {missing} do not exist in {type(model).__name__}; its linear layers are: {', '.join(linear)}")


def _pairs(rows: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})


def heldout_figures(trainer: Any) -> dict[str, float]:
    """DPOTrainer.evaluate on the held-out pairs: implicit reward r = beta * (log pi(y|x) - log pi_ref(y|x)),
    margin = r(chosen) - r(rejected), accuracy = share with margin > 0 (TRL's: a tie counts as wrong, so an
    adapter that has not moved scores 0), each averaged over evaluation batches by TRL; and the DPO loss."""
    m = trainer.evaluate()
    return {"implicit_reward_margin": m["eval_rewards/margins"], "implicit_reward_accuracy": m["eval_rewards/accuracies"],
            "loss": m["eval_loss"]}


def train(stage: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    """DPO (LoRA) from ``ins["start"]`` into the folder of ``stage`` (dpo, or sft_dpo started from the SFT model)."""
    from trl import DPOTrainer

    work = begin_training(stage, cfg, run_dir, ins, resume)
    # --- inputs
    source = work.inputs["start"].ref
    model, tok = load_causal_lm(source, pad_token=cfg.model.pad_token)
    check_lora_targets(model, cfg.dpo.lora.args.get("target_modules"))
    max_length = cfg.dpo.args.get("max_length", 1024)
    fit = dict(tok=tok, max_length=max_length, keep=cfg.dpo.keep_responses, keys=("chosen", "rejected"))
    rows, lengths = fit_rows(load_rows(work, "prefs"), **fit)
    heldout, _ = fit_rows(load_rows(work, "heldout", cfg.dpo), **fit)
    # --- model: TRL wraps it in the LoRA adapter; the reference is the same weights with the adapter disabled
    lora = library_class("dpo.lora")(task_type="CAUSAL_LM", **cfg.dpo.lora.args)
    trainer = DPOTrainer(model=model, args=trl_args(stage, cfg.dpo, work.dir, cfg.seed), train_dataset=_pairs(rows),
                         eval_dataset=_pairs(heldout) if heldout else None, processing_class=tok, peft_config=lora,
                         callbacks=[StopOnInterrupt()])
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}  # small: r x width
    before = heldout_figures(trainer) if heldout else {}
    # --- train
    trainer.train(resume_from_checkpoint=last_checkpoint(work))
    after = heldout_figures(trainer) if heldout else {}
    params = dict(trainer.model.named_parameters())
    unchanged = sorted(n for n, p in lora_before.items() if torch.equal(p, params[n].detach()))
    _save(trainer, tok, work)
    # --- report
    report = {
        "stage": stage, "from": source, "train_pairs": len(rows), "heldout_pairs": len(heldout),
        "beta": cfg.dpo.args.get("beta", 0.1), "loss_type": cfg.dpo.args.get("loss_type", ["sigmoid"]), "lengths": lengths,
        "before": before, "after": after,
        "parameters": {"lora_tensors": len(lora_before), "lora_changed": len(lora_before) - len(unchanged), "lora_unchanged": unchanged},
        "reference": "adapter disabled" if trainer.ref_model is None else "separate copy",
        "summary": f"{stage}: " + (f"held-out implicit-reward margin {before['implicit_reward_margin']:.4f} -> "
                                   f"{after['implicit_reward_margin']:.4f}, accuracy {before['implicit_reward_accuracy']:.2f} -> "
                                   f"{after['implicit_reward_accuracy']:.2f}; " if heldout else "no held-out pairs; ")
                   + f"{lengths['would_lose_response_tokens']} rows over max_length",
    }
    log.info(report["summary"])
    return finish_training(work, report, ["adapter", "model"], trainer)


def _save(trainer: Any, tok: Any, work: StageRun) -> None:
    """Every rank calls the trainer's save (under FSDP it gathers the sharded adapter) into adapter/; the main
    rank then builds the merged model for generation from that saved adapter, so both come from full weights."""
    save_model_atomically(trainer, tok, work.dir / "adapter")
    if work.main:
        merged, _ = load_causal_lm(str(work.dir / "adapter"))
        with atomic_dir(work.dir / "model") as tmp:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    parallel.barrier(f"saving {work.dir / 'model'}")
