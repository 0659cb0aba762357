"""SFT (``method: sft``): full fine-tune on the chosen dialogues (the study: plain text, loss on every token), with
TRL's SFTTrainer. Its held-out figure is the per-token NLL of the held-out chosen responses, before and after.

    hhalign sft configs/tiny.yaml --data-dir ../shared/data/hh-rlhf

``sft.loss_on: assistant`` trains on the final assistant turn only (TRL's prompt-completion format).
Over-long dialogues lose their oldest prompt turns, never response tokens (counted in train_report.json).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset

from hhalign.config.schema import RunConfig
from hhalign.engine.work import Input
from hhalign.errors import TrainingError
from hhalign.models.loading import load_causal_lm
from hhalign.models.training import (
    StopOnInterrupt,
    begin_training,
    finish_training,
    fit_rows,
    heldout_nll,
    last_checkpoint,
    load_rows,
    rows_reached,
    save_model_atomically,
    set_attention,
    trl_args,
)

log = logging.getLogger(__name__)


def check_padding_free(model: Any, args: dict[str, Any]) -> None:
    """OPT ignores position_ids outside flash-attention, so padding-free batches (padding_free, or packing with
    the default 'bfd' strategy) would let packed sequences attend to each other: refuse rather than train wrong."""
    flattened = args.get("padding_free") or (args.get("packing") and args.get("packing_strategy", "bfd") == "bfd")
    attn = str(getattr(model.config, "_attn_implementation", ""))
    if flattened and model.config.model_type == "opt" and not attn.startswith("flash"):
        raise TrainingError(
            f"sft.padding_free / packing (bfd) flatten a batch into one sequence, which OPT with '{attn}' attention "
            "cannot separate (it ignores position_ids): use flash-attention "
            "(--set sft.model_init_kwargs='{attn_implementation: flash_attention_2}' with flash-attn installed), "
            "packing_strategy: wrapped, or group_by_length instead"
        )


def train(variant: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> dict[str, Any] | None:
    """Fine-tune ``ins["start"]`` on the chosen dialogues into the variant's stage folder."""
    from trl import SFTTrainer

    section = cfg.variant(variant).section
    work = begin_training(variant, cfg, run_dir, ins, resume)
    # --- inputs
    source = work.inputs["start"].ref
    rows, heldout = rows_reached(load_rows(work, "prefs"), section), load_rows(work, "heldout", section)
    model, tok = load_causal_lm(source, pad_token=cfg.model.pad_token)
    attention = set_attention(model, section, f"variants.{variant}" if cfg.variant(variant).overrides else "sft")
    check_padding_free(model, section.args)
    max_length = section.args.get("max_length", 1024)
    rows, lengths = fit_rows(rows, tok, max_length, keep=True, keys=("chosen",))
    heldout, _ = fit_rows(heldout, tok, max_length, keep=True, keys=("chosen",))  # measured as trained: bounded lengths
    if section.loss_on == "all":
        dataset = Dataset.from_dict({"text": [r["prompt"] + r["chosen"] for r in rows]})
        fixed: dict[str, Any] = {"dataset_text_field": "text"}
    else:
        dataset = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "completion": [r["chosen"] for r in rows]})
        fixed = {"completion_only_loss": True}
    # --- train
    args = trl_args("sft", section, work.dir, cfg.seed, **fixed)
    before = heldout_nll(model, tok, heldout, bf16=args.bf16)  # in the precision the trainer computes in
    model.train()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[StopOnInterrupt()])
    trainer.train(resume_from_checkpoint=last_checkpoint(work))
    save_model_atomically(trainer, tok, work.dir / "model")
    # --- report
    after = heldout_nll(model, tok, heldout, bf16=args.bf16)
    report = {
        "stage": variant, "method": "sft", "figure": "held-out NLL of chosen responses", "from": source, "loss_on": section.loss_on, "attention": attention, "train_pairs": len(rows), "heldout_pairs": len(heldout),
        "lengths": lengths, "heldout_nll_chosen": {"before": before, "after": after},
        "summary": f"{variant} (sft): held-out NLL of chosen responses {before:.3f} -> {after:.3f}; "
                   f"{lengths['prompt_trimmed']} prompts trimmed to keep responses whole, {lengths['still_truncated']} still truncated",
    }
    log.info(report["summary"])
    return finish_training(work, report, ["model"], trainer)
