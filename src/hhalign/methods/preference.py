"""What the preference methods share (dpo, kto, orpo, simpo): one training flow from (start model, pairs, section)
to a saved adapter and merged model (or a full model), with the held-out figure before and after.

    report = train(METHOD, "ipo", cfg, run_dir, ins, resume)      # inside hhalign.methods.dpo.train

A method module gives a ``Method``: its TRL trainer class (import it there: TRL's experimental trainers stay in
their own module), how it turns the pairs into its dataset, and which held-out figure it reports. With
``adapter: lora`` TRL wraps the model in the LoRA adapter and the reference is the same weights with the adapter
disabled (no second copy); ``adapter: full`` trains every weight and TRL keeps a frozen copy as reference where the
method has one. The held-out figures (``hhalign.models.training.dpo_heldout``) are measured after training on the
model the stage saved (the one generation answers with) against the model it started from; before training they
are zero by construction (peft's zero-initialised adapter, or a full copy of the start) and measured otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from hhalign import parallel
from hhalign.artifacts import atomic_dir
from hhalign.config.files import library_class
from hhalign.config.schema import PreferenceSection, RunConfig
from hhalign.engine.work import Input, StageRun
from hhalign.errors import TrainingError
from hhalign.models.loading import load_causal_lm
from hhalign.models.training import (
    StopOnInterrupt,
    begin_training,
    dpo_figures,
    dpo_heldout,
    finish_training,
    fit_rows,
    frozen_to_bf16,
    last_checkpoint,
    load_rows,
    rows_reached,
    save_model_atomically,
    set_attention,
    token_len,
    trl_args,
)

log = logging.getLogger(__name__)
IMPLICIT = "held-out implicit-reward accuracy"  # beta * log(pi / pi_ref), summed over the response's tokens
NORMALISED = "held-out length-normalised reward accuracy"  # the same per token: SimPO's and ORPO's own scale


@dataclass(frozen=True)
class Method:
    """A preference method as hhalign runs it: its TRL trainer (a callable: imported only when it trains), how the
    pairs become its dataset, the TRL settings it fixes, and whether its held-out figure is per token."""

    name: str
    trainer: Callable[[], type]
    dataset: Callable[[list[dict[str, Any]], Any, int | None, int], Dataset]
    normalised: bool = False
    fixed: dict[str, Any] = field(default_factory=dict)


def pairs_dataset(rows: list[dict[str, Any]], tok: Any, max_length: int | None, seed: int) -> Dataset:
    """The pairs as TRL reads them (prompt, chosen, rejected)."""
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})


def pairs_with_length(rows: list[dict[str, Any]], tok: Any, max_length: int | None, seed: int) -> Dataset:
    """The pairs with a "length" column: what a step pads the pair's two sequences to, which
    ``train_sampling_strategy: group_by_length`` sorts by (TRL's DPO collator reads only the token ids; the method
    keeps the column with ``remove_unused_columns=False``)."""
    data = pairs_dataset(rows, tok, max_length, seed).to_dict()
    cap = max_length or float("inf")
    data["length"] = [int(min(cap, max(token_len(tok, r["prompt"] + r[k]) for k in ("chosen", "rejected")))) for r in rows]
    return Dataset.from_dict(data)


def check_lora_targets(model: torch.nn.Module, targets: Any, key: str) -> None:
    if targets in (None, "all-linear") or isinstance(targets, str):
        return
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise TrainingError(f"{key}.lora.target_modules {missing} do not exist in {type(model).__name__}; its linear layers are: {', '.join(linear)}")


def starts_at_zero(model: torch.nn.Module) -> bool:
    """Whether every LoRA B matrix is zero (peft's default ``init_lora_weights=True``): the adapter then adds
    nothing, so before training the policy is the reference and every held-out margin is 0 by construction."""
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(b) and all(not p.detach().any() for p in b)


def acts_text(after: dict[str, Any], figure: str = IMPLICIT) -> str:
    """One line: the held-out accuracy with its interval, and whether the treatment measurably acted."""
    if not after:
        return "no held-out pairs, so nothing shows whether it acted"
    low, high = after["accuracy_interval"]
    verdict = ("acted" if after["acts"] else "moved against the preference (the interval lies below 50%)" if high < 0.5
               else "did not measurably act (the interval reaches 50%)")
    return (f"{figure} {after['implicit_reward_accuracy']:.2f} [{low:.2f}, {high:.2f}] on "
            f"{after['pairs']} pairs, margin {after['implicit_reward_margin']:.3f}: {verdict}")


def train(method: Method, variant: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    """Train ``variant`` (a variant of ``method``) from ``ins["start"]`` into its stage folder."""
    section: PreferenceSection = cfg.variant(variant).section
    key = f"variants.{variant}" if cfg.variant(variant).overrides else method.name  # where errors point
    work = begin_training(variant, cfg, run_dir, ins, resume)
    model, tok, attention = _load_model(work, cfg, section, key)
    max_length = section.args.get("max_length", 1024)
    fit = dict(tok=tok, max_length=max_length, keep=section.keep_responses, keys=("chosen", "rejected"))
    rows, lengths = fit_rows(rows_reached(load_rows(work, "prefs"), section), **fit)
    heldout, _ = fit_rows(load_rows(work, "heldout", section), **fit)
    trainer = _trainer(method, section, work, cfg.seed, model, tok, rows, heldout, max_length)
    frozen_bf16 = frozen_to_bf16(trainer)  # the same products, without autocast casting them in every pass
    policy = trainer.accelerator.unwrap_model(trainer.model)
    lora = section.adapter == "lora"
    tracked = {n: p.detach().clone() for n, p in _trainable(policy, lora)}  # LoRA: small, r x width
    before = _before(policy, tok, heldout, trainer.args, lora, method.normalised)
    # --- train
    trainer.train(resume_from_checkpoint=last_checkpoint(work))
    params = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    unchanged = sorted(n for n, p in tracked.items() if torch.equal(p, params[n].detach()))
    outputs = _save(trainer, tok, work, lora)
    source, bf16, device = work.inputs["start"].ref, trainer.args.bf16, trainer.accelerator.device
    after = _check(work, section, key, source, tok, heldout, trainer.args.beta, bf16, device, method.normalised) if heldout and work.main else {}
    # --- report
    figure = NORMALISED if method.normalised else IMPLICIT
    changed = {"trained_tensors": len(tracked), "changed": len(tracked) - len(unchanged), "unchanged": unchanged[:20]}
    if lora:
        changed |= {"lora_tensors": len(tracked), "lora_changed": len(tracked) - len(unchanged), "lora_unchanged": unchanged}
    report = {
        "stage": variant, "method": method.name, "from": source, "figure": figure, "train_pairs": len(rows),
        "heldout_pairs": len(heldout), "beta": trainer.args.beta, "adapter": section.adapter, "attention": attention,
        "frozen_weights_bf16": frozen_bf16, "loss_type": getattr(trainer.args, "loss_type", None), "lengths": lengths,
        "before": before, "after": after, "parameters": changed,
        "reference": "none (reference-free)" if method.normalised else "adapter disabled" if getattr(trainer, "ref_model", None) is None else "separate copy",
        "summary": f"{variant} ({method.name}): {acts_text(after, figure)}; {lengths['would_lose_response_tokens']} rows over max_length",
    }
    log.info(report["summary"])
    return finish_training(work, report, outputs, trainer)


def _load_model(work: StageRun, cfg: RunConfig, section: PreferenceSection, key: str) -> tuple[Any, Any, str]:
    """The model the variant starts from, its tokenizer, and the attention it trains with; LoRA targets checked."""
    model, tok = load_causal_lm(work.inputs["start"].ref, pad_token=cfg.model.pad_token)
    if section.adapter == "lora":
        check_lora_targets(model, section.lora.args.get("target_modules"), key)
    return model, tok, set_attention(model, section, key)


def _trainer(method: Method, section: PreferenceSection, work: StageRun, seed: int, model: Any, tok: Any,
             rows: list[dict[str, Any]], heldout: list[dict[str, Any]], max_length: int | None) -> Any:
    """The method's TRL trainer on the pairs; with LoRA, TRL wraps the model in the adapter and the reference is the
    same weights with the adapter disabled."""
    lora = section.adapter == "lora"
    peft_config = library_class(f"{method.name}.lora")(task_type="CAUSAL_LM", **section.lora.args) if lora else None
    evaluates = section.args.get("eval_strategy", "no") != "no"  # the held-out figures need no eval_dataset
    args = trl_args(method.name, section, work.dir, seed, **method.fixed)
    return method.trainer()(model=model, args=args, train_dataset=method.dataset(rows, tok, max_length, seed),
                            eval_dataset=method.dataset(heldout, tok, max_length, seed) if heldout and evaluates else None,
                            processing_class=tok, peft_config=peft_config, callbacks=[StopOnInterrupt()])


def _before(policy: Any, tok: Any, heldout: list[dict[str, Any]], args: Any, lora: bool, normalised: bool) -> dict[str, Any]:
    """The held-out figures before training: by construction when the policy starts as its reference (a zero LoRA
    adapter, or a full copy: every margin 0, loss ln 2), else measured."""
    if not heldout:
        return {}
    if not lora or starts_at_zero(policy):
        why = "the LoRA adapter starts at zero" if lora else "the policy starts as a copy of the reference"
        return dpo_figures([0.0] * len(heldout), [0.0] * len(heldout)) | {"by_construction": why}
    return dpo_heldout(policy, tok, heldout, args.beta, bf16=args.bf16, normalised=normalised)


def _trainable(model: torch.nn.Module, lora: bool) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters whose change shows that training acted: the LoRA tensors, or (full training) a handful of the
    trained weights spread over the model (a copy of every weight would double the memory)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if lora:
        return [(n, p) for n, p in named if "lora_" in n]
    step = max(1, len(named) // 8)
    return named[::step]


def _check(work: StageRun, section: PreferenceSection, key: str, source: str, tok: Any, heldout: list[dict[str, Any]],
           beta: float, bf16: bool, device: torch.device, normalised: bool) -> dict[str, Any]:
    """The held-out figures after training, on the model the stage saved (the one generation answers with) against
    the model it started from, both loaded in bfloat16 weights where the trainer computed in bfloat16: not on the
    trainer's own model, whose float32 weights autocast would cast in every forward pass, with LoRA's two extra
    products per layer (docs/performance.md measures the difference)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    policy, _ = load_causal_lm(str(work.dir / "model"), dtype=dtype, device=device)
    start, _ = load_causal_lm(source, dtype=dtype, device=device)
    for model in (policy, start):
        set_attention(model, section, key)
    return dpo_heldout(policy, tok, heldout, beta, bf16=bf16, ref=start, normalised=normalised) | {"weights": str(dtype).removeprefix("torch.")}


def _save(trainer: Any, tok: Any, work: StageRun, lora: bool) -> list[str]:
    """Every rank calls the trainer's save (under FSDP it gathers the sharded weights): a LoRA adapter into adapter/,
    from which the main rank builds the merged model for generation (both from full weights); a fully trained
    model straight into model/. Returns the outputs written."""
    if not lora:
        save_model_atomically(trainer, tok, work.dir / "model")
        return ["model"]
    save_model_atomically(trainer, tok, work.dir / "adapter")
    if work.main:
        merged, _ = load_causal_lm(str(work.dir / "adapter"))
        with atomic_dir(work.dir / "model") as tmp:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    parallel.barrier(f"saving {work.dir / 'model'}")
    return ["adapter", "model"]
