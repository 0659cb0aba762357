"""Held-out figures computed by hand (``hhalign.models.training``): response log-probs with logits only at
response positions equal the full forward pass's, and the per-pair DPO figures equal TRL's own evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hhalign.models.loading import load_causal_lm
from hhalign.models.training import dpo_figures, dpo_heldout, pair_logps, response_logps
from hhalign.methods.preference import starts_at_zero


def _pairs(hh_rows: list[dict], n: int) -> list[dict]:
    out = []
    for r in hh_rows[:n]:
        cut = r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        out.append({"prompt": r["chosen"][:cut], "chosen": r["chosen"][cut:], "rejected": r["rejected"][cut:]})
    return out


def _full_logps(model, tok, prompts, responses) -> list[float]:
    """The plain way: one sequence at a time, every position's logits."""
    out = []
    with torch.inference_mode():
        for p, r in zip(prompts, responses):
            ids = tok(p + r, return_tensors="pt")["input_ids"]
            n = len(tok(p)["input_ids"])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            out.append(float(logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum()))
    return out


def test_response_logps_match_one_at_a_time(tiny_lm_dir: Path, hh_rows: list[dict]) -> None:
    model, tok = load_causal_lm(str(tiny_lm_dir))
    model.eval()
    pairs = _pairs(hh_rows, 12)
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    batched = response_logps(model, tok, prompts, responses, batch_size=5)  # sorted by prompt, padded, logits kept
    assert [n for _, n in batched] == [len(tok(p + r)["input_ids"]) - len(tok(p)["input_ids"]) for p, r in zip(prompts, responses)]
    for (lp, _), want in zip(batched, _full_logps(model, tok, prompts, responses)):
        assert lp == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_pair_logps_equal_response_logps_of_each_side(tiny_lm_dir: Path, hh_rows: list[dict]) -> None:
    """The prompt computed once (left-padded, cached) gives each response the log-prob of its own full pass."""
    model, tok = load_causal_lm(str(tiny_lm_dir))
    model.eval()
    pairs = _pairs(hh_rows, 12)
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = pair_logps(model, tok, prompts, [p["chosen"] for p in pairs], [p["rejected"] for p in pairs], batch_size=5)
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 3  # prompts of several lengths share a batch
    for side, got in (("chosen", chosen), ("rejected", rejected)):
        want = response_logps(model, tok, prompts, [p[side] for p in pairs], batch_size=5)
        assert [n for _, n in got] == [n for _, n in want]
        for (lp, _), (w, _) in zip(got, want):
            assert lp == pytest.approx(w, rel=1e-4, abs=1e-3)


def test_dpo_figures_of_known_margins() -> None:
    f = dpo_figures([0.3, 0.1, -0.2, 0.0], [0.1, 0.2, -0.5, 0.0])  # margins 0.2, -0.1, 0.3, 0 (a tie is wrong)
    assert f["pairs"] == 4 and f["implicit_reward_accuracy"] == 0.5 and f["acts"] is False
    assert f["implicit_reward_margin"] == pytest.approx(0.1)
    want_loss = sum(math.log1p(math.exp(-m)) for m in (0.2, -0.1, 0.3, 0.0)) / 4
    assert f["loss"] == pytest.approx(want_loss, rel=1e-6)
    low, high = f["accuracy_interval"]
    assert 0.0 < low < 0.5 < high < 1.0
    sure = dpo_figures([1.0] * 100, [0.0] * 100)
    assert sure["acts"] is True and sure["accuracy_interval"][0] > 0.95


def test_dpo_heldout_matches_trl_evaluate(tiny_lm_dir: Path, hh_rows: list[dict], tmp_path: Path) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model, tok = load_causal_lm(str(tiny_lm_dir))
    pairs = _pairs(hh_rows, 16)
    args = DPOConfig(output_dir=str(tmp_path), per_device_eval_batch_size=len(pairs), report_to="none", use_cpu=True, max_length=None)
    ds = Dataset.from_dict({k: [p[k] for p in pairs] for k in ("prompt", "chosen", "rejected")})
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, processing_class=tok, peft_config=lora)
    policy = trainer.model  # as the stage has it: TRL's LoRA wrapper, the reference is the adapter disabled
    assert starts_at_zero(policy)
    zero = dpo_heldout(policy, tok, pairs, beta=0.1)  # a zero adapter: policy is the reference, every margin exactly 0
    assert zero["implicit_reward_margin"] == 0.0 and zero["implicit_reward_accuracy"] == 0.0
    assert zero["loss"] == pytest.approx(math.log(2))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert not starts_at_zero(policy)
    ours = dpo_heldout(policy, tok, pairs, beta=0.1)
    trl = trainer.evaluate()
    # TRL appends an end-of-sequence token to each response; the margins differ by that token's log-ratio only
    assert ours["implicit_reward_margin"] != 0.0
    assert ours["implicit_reward_margin"] == pytest.approx(trl["eval_rewards/margins"], rel=0.2, abs=0.01)
    assert abs(ours["implicit_reward_accuracy"] - trl["eval_rewards/accuracies"]) <= 2 / len(pairs)


def test_dpo_heldout_against_a_reference_model_of_its_own(tiny_lm_dir: Path, hh_rows: list[dict]) -> None:
    """The stage checks the merged model it saved against the model it started from: the same figures (float32) as
    the trainer's LoRA model with its adapter disabled for the reference."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal_lm(str(tiny_lm_dir))
    policy = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    pairs = _pairs(hh_rows, 12)
    lora = dpo_heldout(policy, tok, pairs, beta=0.1)
    merged = policy.merge_and_unload()
    start, _ = load_causal_lm(str(tiny_lm_dir))
    separate = dpo_heldout(merged, tok, pairs, beta=0.1, ref=start)
    assert lora["implicit_reward_margin"] != 0.0
    for key in ("implicit_reward_margin", "chosen_reward", "rejected_reward", "loss"):
        assert separate[key] == pytest.approx(lora[key], rel=1e-4, abs=1e-6)
    assert separate["implicit_reward_accuracy"] == lora["implicit_reward_accuracy"]
    same = dpo_heldout(start, tok, pairs, beta=0.1, ref=start)  # the reference against itself: every margin 0
    assert same["implicit_reward_margin"] == 0.0 and same["implicit_reward_accuracy"] == 0.0


def _dpo_trainer(tiny_lm_dir: Path, hh_rows: list[dict], tmp_path: Path, bf16: bool):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model, tok = load_causal_lm(str(tiny_lm_dir))
    pairs = _pairs(hh_rows, 4)
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=bf16, max_length=None)
    ds = Dataset.from_dict({k: [p[k] for p in pairs] for k in ("prompt", "chosen", "rejected")})
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return trainer, tok, pairs


def test_frozen_weights_stored_in_bfloat16_give_the_same_products(tiny_lm_dir: Path, hh_rows: list[dict], tmp_path: Path) -> None:
    """Under bfloat16 autocast the LoRA layers' frozen base weights are stored in bfloat16: the policy's and the
    reference's (adapter disabled) logits are bit for bit those of float32 weights cast by autocast."""
    from hhalign.models.training import frozen_to_bf16

    trainer, tok, pairs = _dpo_trainer(tiny_lm_dir, hh_rows, tmp_path, bf16=True)
    policy = trainer.model
    ids = tok([p["prompt"] + p["chosen"] for p in pairs[:2]], return_tensors="pt", padding=True)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            own = policy(**ids).logits
            with policy.disable_adapter():
                ref = policy(**ids).logits
        return own, ref

    before = logits()
    assert frozen_to_bf16(trainer) == 2 * 3  # 2 layers x (q_proj, v_proj, fc1)
    after = logits()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[0], before[1])  # the adapter changes the policy: the comparison means something
    dtypes = {n: p.dtype for n, p in policy.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "embed" in n or "layer_norm" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "base_layer" in n)


def test_frozen_weights_kept_in_float32_without_bfloat16(tiny_lm_dir: Path, hh_rows: list[dict], tmp_path: Path) -> None:
    from hhalign.models.training import frozen_to_bf16

    trainer, _, _ = _dpo_trainer(tiny_lm_dir, hh_rows, tmp_path, bf16=False)
    assert frozen_to_bf16(trainer) == 0
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
