"""Tiny preset only: build an OPT-architecture model and a byte-level BPE tokenizer from scratch and
pretrain it briefly on all dialogue text (chosen and rejected alike), so that "base" is a language model.

    hhalign pretrain configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset

from hhalign.artifacts import atomic_dir
from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input
from hhalign.models.loading import build_tiny_causal_lm, train_tokenizer
from hhalign.models.training import (
    StopOnInterrupt,
    begin_training,
    finish_training,
    heldout_nll,
    last_checkpoint,
    load_rows,
    pair_inputs,
    save_model_atomically,
    set_attention,
    trl_args,
)

log = logging.getLogger(__name__)


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    return pair_inputs(run_dir)


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any] | None:
    from trl import SFTTrainer

    work = begin_training("pretrain", cfg, run_dir, inputs(cfg, run_dir), resume)
    # --- inputs
    rows, heldout = load_rows(work, "prefs"), load_rows(work, "heldout", cfg.pretrain)
    texts = [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")][: cfg.pretrain.max_rows]
    # --- model: the tokenizer is trained on the training texts only, so held-out rows stay unseen
    tok = train_tokenizer(texts, vocab_size=cfg.model.tiny.vocab_size)
    tok.model_max_length = cfg.model.tiny.max_positions
    model = build_tiny_causal_lm(tok, cfg.model.tiny, seed=cfg.seed)
    attention = set_attention(model, cfg.pretrain, "pretrain")
    before = heldout_nll(model, tok, heldout)
    report: dict[str, Any] = {"stage": "pretrain", "params": sum(p.numel() for p in model.parameters()), "attention": attention,
                              "texts": len(texts), "heldout_pairs": len(heldout)}
    # --- train
    trainer = None
    if cfg.pretrain.enabled:
        model.train()
        args = trl_args("pretrain", cfg.pretrain, work.dir, cfg.seed, dataset_text_field="text")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tok,
                             callbacks=[StopOnInterrupt()])
        trainer.train(resume_from_checkpoint=last_checkpoint(work))
        save_model_atomically(trainer, tok, work.dir / "model")
    elif work.main:
        with atomic_dir(work.dir / "model") as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    # --- report
    after = heldout_nll(model, tok, heldout)
    report.update(heldout_nll_chosen={"before": before, "after": after},
                  summary=f"pretrain: held-out NLL of chosen responses {before:.3f} -> {after:.3f}")
    log.info(report["summary"])
    return finish_training(work, report, ["model"], trainer)
