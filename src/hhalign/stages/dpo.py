"""DPO with LoRA, from the base model (04_dpo) or from the SFT model (05_sft_dpo, the study's SFT+DPO).

    hhalign dpo configs/tiny.yaml                 # from base
    hhalign sft_dpo configs/tiny.yaml             # from this run's SFT model (also: hhalign dpo CONFIG --from sft)

The reference model is the frozen starting model, obtained by disabling the adapter (TRL does this
when given a peft_config): no second copy of the weights. Any loss the installed TRL offers is
selected with ``dpo.loss_type``. The held-out figures (``training.dpo_heldout``: implicit-reward accuracy with its
95% interval, margin, loss) are measured after training, on the merged model against the model it started from
(in bfloat16 weights where training used bfloat16); before it they are known without a forward pass when the
adapter starts at zero (peft's default), and measured otherwise. The adapter is saved (adapter/) and
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
    dpo_figures,
    dpo_heldout,
    finish_training,
    fit_rows,
    frozen_to_bf16,
    last_checkpoint,
    load_rows,
    pair_inputs,
    rows_reached,
    save_model_atomically,
    set_attention,
    token_len,
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


def _pairs(rows: list[dict[str, Any]], tok: Any, max_length: int | None) -> Dataset:
    """The pairs as TRL reads them, with a "length" column: what a step pads the pair's two sequences to, which
    ``dpo.train_sampling_strategy: group_by_length`` sorts by (TRL's DPO collator reads only the token ids)."""
    data = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
    cap = max_length or float("inf")
    data["length"] = [int(min(cap, max(token_len(tok, r["prompt"] + r[k]) for k in ("chosen", "rejected")))) for r in rows]
    return Dataset.from_dict(data)


def starts_at_zero(model: torch.nn.Module) -> bool:
    """Whether every LoRA B matrix is zero (peft's default ``init_lora_weights=True``): the adapter then adds
    nothing, so before training the policy is the reference and every held-out margin is 0 by construction."""
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(b) and all(not p.detach().any() for p in b)


def acts_text(after: dict[str, Any]) -> str:
    """One line: the held-out accuracy with its interval, and whether the treatment measurably acted."""
    if not after:
        return "no held-out pairs, so nothing shows whether it acted"
    low, high = after["accuracy_interval"]
    verdict = "acted" if after["acts"] else "did not measurably act (the interval reaches 50%)"
    return (f"held-out implicit-reward accuracy {after['implicit_reward_accuracy']:.2f} [{low:.2f}, {high:.2f}] on "
            f"{after['pairs']} pairs, margin {after['implicit_reward_margin']:.3f}: {verdict}")


def train(stage: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    """DPO (LoRA) from ``ins["start"]`` into the folder of ``stage`` (dpo, or sft_dpo started from the SFT model)."""
    from trl import DPOTrainer

    work = begin_training(stage, cfg, run_dir, ins, resume)
    # --- inputs
    source = work.inputs["start"].ref
    model, tok = load_causal_lm(source, pad_token=cfg.model.pad_token)
    check_lora_targets(model, cfg.dpo.lora.args.get("target_modules"))
    attention = set_attention(model, cfg.dpo, "dpo")
    max_length = cfg.dpo.args.get("max_length", 1024)
    fit = dict(tok=tok, max_length=max_length, keep=cfg.dpo.keep_responses, keys=("chosen", "rejected"))
    rows, lengths = fit_rows(rows_reached(load_rows(work, "prefs"), cfg.dpo), **fit)
    heldout, _ = fit_rows(load_rows(work, "heldout", cfg.dpo), **fit)
    beta = cfg.dpo.args.get("beta", 0.1)
    # --- model: TRL wraps it in the LoRA adapter; the reference is the same weights with the adapter disabled
    lora = library_class("dpo.lora")(task_type="CAUSAL_LM", **cfg.dpo.lora.args)
    evaluates = cfg.dpo.args.get("eval_strategy", "no") != "no"  # the held-out figures below need no eval_dataset
    # remove_unused_columns=False: the Trainer would drop "length" before its length-grouped sampler reads it
    args = trl_args(stage, cfg.dpo, work.dir, cfg.seed, remove_unused_columns=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=_pairs(rows, tok, max_length),
                         eval_dataset=_pairs(heldout, tok, max_length) if heldout and evaluates else None, processing_class=tok,
                         peft_config=lora, callbacks=[StopOnInterrupt()])
    frozen_bf16 = frozen_to_bf16(trainer)  # the same products, without autocast casting them in every pass
    policy = trainer.accelerator.unwrap_model(trainer.model)
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}  # small: r x width
    if not heldout:
        before: dict[str, Any] = {}
    elif starts_at_zero(policy):  # no forward pass needed: policy == reference, every margin 0, loss ln 2
        before = dpo_figures([0.0] * len(heldout), [0.0] * len(heldout)) | {"by_construction": "the LoRA adapter starts at zero"}
    else:
        before = dpo_heldout(policy, tok, heldout, beta, bf16=trainer.args.bf16)
    # --- train
    trainer.train(resume_from_checkpoint=last_checkpoint(work))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    params = dict(policy.named_parameters())
    unchanged = sorted(n for n, p in lora_before.items() if torch.equal(p, params[n].detach()))
    _save(trainer, tok, work)
    bf16, device = trainer.args.bf16, trainer.accelerator.device
    after = _check(work, cfg, source, tok, heldout, beta, bf16, device) if heldout and work.main else {}
    # --- report
    report = {
        "stage": stage, "from": source, "train_pairs": len(rows), "heldout_pairs": len(heldout),
        "beta": beta, "attention": attention, "frozen_weights_bf16": frozen_bf16, "loss_type": cfg.dpo.args.get("loss_type", ["sigmoid"]), "lengths": lengths,
        "before": before, "after": after,
        "parameters": {"lora_tensors": len(lora_before), "lora_changed": len(lora_before) - len(unchanged), "lora_unchanged": unchanged},
        "reference": "adapter disabled" if trainer.ref_model is None else "separate copy",
        "summary": f"{stage}: {acts_text(after)}; {lengths['would_lose_response_tokens']} rows over max_length",
    }
    log.info(report["summary"])
    return finish_training(work, report, ["adapter", "model"], trainer)


def _check(work: StageRun, cfg: RunConfig, source: str, tok: Any, heldout: list[dict[str, Any]], beta: float,
           bf16: bool, device: torch.device) -> dict[str, Any]:
    """The held-out figures after training, on the merged model the stage saved (the one generation answers with)
    against the model it started from, both loaded in bfloat16 weights where the trainer computed in bfloat16.

    Not on the trainer's own model: under autocast every linear layer casts its float32 weight to bfloat16 in each
    forward pass (a fifth of the pass), and LoRA adds two products per layer (SmolLM2-135M, 2-core EPYC, 96 held-out
    pairs, one pass: 22.2 s with float32 weights under autocast, 13.9 s with bfloat16 weights; the adapter another third).
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    policy, _ = load_causal_lm(str(work.dir / "model"), dtype=dtype, device=device)
    start, _ = load_causal_lm(source, dtype=dtype, device=device)
    for model in (policy, start):
        set_attention(model, cfg.dpo, "dpo")
    return dpo_heldout(policy, tok, heldout, beta, bf16=bf16, ref=start) | {"weights": str(dtype).removeprefix("torch.")}


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
