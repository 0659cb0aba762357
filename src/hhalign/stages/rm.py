"""Reward model: a sequence classifier trained on the preference pairs with TRL's RewardTrainer.

    hhalign rm configs/tiny.yaml

Pairs are encoded exactly as scoring reads them, ``tokenizer(prompt, response, truncation=True)``, so
the trained model (06_rm/model) is a valid ``--reward-model``. train_report.json has held-out pairwise
accuracy (share of pairs where chosen scores above rejected) before and after training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from hhalign.config.schema import TINY, RunConfig
from hhalign.engine.work import Input, model_input
from hhalign.models.judge import judge_view, pairwise
from hhalign.models.loading import (
    build_tiny_reward_model,
    load_reward_model,
    train_tokenizer,
)
from hhalign.models.training import (
    StopOnInterrupt,
    begin_training,
    finish_training,
    last_checkpoint,
    load_rows,
    pair_inputs,
    save_model_atomically,
    set_attention,
    trl_args,
)

log = logging.getLogger(__name__)


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    backbone = {} if cfg.rm.model == TINY else {"backbone": model_input(cfg.rm.model, run_dir, "--set rm.model=DIR")}
    return {**pair_inputs(run_dir), **backbone}


def pairwise_accuracy(model: Any, tok: Any, rows: list[dict[str, Any]], batch_size: int = 16, bf16: bool = False) -> dict[str, float]:
    """The held-out figure: share of pairs the model ranks right, and the mean margin (``hhalign.models.judge.pairwise``),
    in the precision the trainer computes in (``bf16``: bfloat16 autocast; MiniLM on 300 held-out pairs, 2-core EPYC:
    6.4 s against 14 s in float32, accuracy of a fresh head 0.503 against 0.507)."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = pairwise(model, tok, rows, batch_size)
    return {"pairwise_accuracy": out["pairwise_accuracy"] or 0.0, "mean_margin": out["mean_margin"] or 0.0}


def fresh_judge(backbone: str, seed: int) -> tuple[Any, Any]:
    """The backbone with a fresh one-output head whose initial weights come from the run's seed. Unseeded, they came
    from whatever the process had drawn before (in `hhalign run`, the SFT and DPO stages), so `hhalign rm` alone and
    a whole run trained different judges, and any change to an earlier stage changed the judge."""
    from transformers import set_seed

    set_seed(seed)
    return load_reward_model(backbone, num_labels=1)


def _build(cfg: RunConfig, rows: list[dict[str, Any]], work: Any) -> tuple[Any, Any]:
    if cfg.rm.model == TINY:
        tok = train_tokenizer([" ".join(judge_view(r)) for r in rows], vocab_size=cfg.model.tiny.vocab_size, kind="classifier")
        tok.model_max_length = cfg.model.tiny.max_positions
        return build_tiny_reward_model(tok, cfg.model.tiny, seed=cfg.seed), tok
    model, tok = fresh_judge(work.inputs["backbone"].ref, cfg.seed)
    if cfg.rm.args.get("max_length"):  # saved with the tokenizer: scoring's tokenizer(prompt, response, truncation=True) keeps it
        tok.model_max_length = cfg.rm.args["max_length"]
    return model, tok


def _encode(tok: Any, rows: list[dict[str, Any]], max_length: int) -> Dataset:
    """Each pair as scoring reads it: tokenizer(prompt, reply, truncation=True), the study's text (``judge_view``)."""
    def ids(prompt: str, response: str) -> list[int]:
        return tok(prompt, response, truncation=True, max_length=max_length)["input_ids"]

    views = [judge_view(r) for r in rows]
    chosen, rejected = [ids(p, c) for p, c, _ in views], [ids(p, r) for p, _, r in views]
    # "length": what a step pads its batch's pairs to, for rm.train_sampling_strategy: group_by_length
    return Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected,
                              "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected)]})


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any] | None:
    from trl import RewardTrainer

    work = begin_training("rm", cfg, run_dir, inputs(cfg, run_dir), resume)
    rows, heldout = load_rows(work, "prefs"), load_rows(work, "heldout", cfg.rm)
    model, tok = _build(cfg, rows, work)
    attention = set_attention(model, cfg.rm, "rm")
    max_length = cfg.rm.args.get("max_length") or tok.model_max_length
    # remove_unused_columns=False: the Trainer would drop "length" before its length-grouped sampler reads it; TRL's
    # collator reads only the pairs' ids
    args = trl_args("rm", cfg.rm, work.dir, cfg.seed, remove_unused_columns=False)
    before = pairwise_accuracy(model, tok, heldout, bf16=args.bf16)
    model.train()
    trainer = RewardTrainer(model=model, args=args, train_dataset=_encode(tok, rows, max_length),
                            processing_class=tok, callbacks=[StopOnInterrupt()])
    trainer.train(resume_from_checkpoint=last_checkpoint(work))
    save_model_atomically(trainer, tok, work.dir / "model")
    model.eval()
    after = pairwise_accuracy(model, tok, heldout, bf16=args.bf16)
    report = {"stage": "rm", "backbone": cfg.rm.model, "attention": attention, "train_pairs": len(rows), "heldout_pairs": len(heldout),
              "before": before, "after": after,
              "summary": f"rm: held-out pairwise accuracy {before['pairwise_accuracy']:.3f} -> {after['pairwise_accuracy']:.3f}"}
    log.info(report["summary"])
    return finish_training(work, report, ["model"], trainer)
