"""Tiny preset only: build an OPT-architecture model and a byte-level BPE tokenizer from scratch and
pretrain it briefly on all dialogue text (chosen and rejected alike), so that "base" is a language model.

    hhalign pretrain configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from datasets import Dataset

from hhalign.config import RunConfig
from hhalign.modeling import build_tiny_causal_lm, train_tokenizer
from hhalign.train.common import (
    STAGE_DIRS, data_dir, finish_stage, last_checkpoint, load_pairs, log_history, mean_nll, response_logps,
    save_model_atomically, StopOnInterrupt, trl_args,
)


def _texts(rows: list[dict[str, Any]]) -> list[str]:
    return [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")]


def run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any] | None:
    from trl import SFTTrainer

    started = time.time()
    stage_dir = Path(run_dir) / STAGE_DIRS["pretrain"]
    # --- inputs
    rows = load_pairs(run_dir)
    heldout = load_pairs(run_dir, "heldout.jsonl")
    texts = _texts(rows)
    if cfg.pretrain.max_rows:
        texts = texts[: cfg.pretrain.max_rows]
    # --- model: the tokenizer is trained on the training texts only, so held-out rows stay unseen
    tok = train_tokenizer(texts, vocab_size=cfg.model.tiny.vocab_size)
    tok.model_max_length = cfg.model.tiny.max_positions
    model = build_tiny_causal_lm(tok, cfg.model.tiny, seed=cfg.seed)
    before = mean_nll(response_logps(model, tok, [r["prompt"] for r in heldout], [r["chosen"] for r in heldout]))
    report: dict[str, Any] = {"stage": "pretrain", "params": sum(p.numel() for p in model.parameters()),
                              "texts": len(texts), "heldout_pairs": len(heldout)}
    if cfg.pretrain.enabled:
        args = trl_args("pretrain", cfg.pretrain, stage_dir, cfg.seed, dataset_text_field="text")
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tok, callbacks=[StopOnInterrupt()]
        )
        trainer.train(resume_from_checkpoint=last_checkpoint(stage_dir) if resume else None)
        report["log_history"] = log_history(trainer)
        save_model_atomically(trainer, tok, stage_dir / "model")
    else:
        from hhalign.artifacts import atomic_dir

        with atomic_dir(stage_dir / "model") as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    # --- held-out figures
    model.eval()
    after = mean_nll(response_logps(model, tok, [r["prompt"] for r in heldout], [r["chosen"] for r in heldout]))
    report.update(heldout_nll_chosen={"before": before, "after": after},
                  summary=f"pretrain: held-out NLL of chosen responses {before:.3f} -> {after:.3f}")
    print(report["summary"])
    return finish_stage("pretrain", cfg, stage_dir, report, {"prefs": data_dir(run_dir) / "prefs.jsonl"},
                        ["model"], started, {"pretrain": cfg.to_dict()["pretrain"], "model": cfg.to_dict()["model"]})
