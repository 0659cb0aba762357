"""Training stages on the tiny preset with real harmless-base data: each moves its held-out figure the right
way, LoRA weights change while frozen weights do not, a killed stage resumes to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hhalign import pipeline
from hhalign.artifacts import read_json
from hhalign.config.files import load_config
from hhalign.engine.table import stage_dir
from hhalign.errors import TrainingError, UserError

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.max_train_rows=240", "data.heldout_rows=60", "generate.batch_size=25"]


def _cfg(out: Path, *extra: str):
    return load_config(REPO / "configs" / "tiny.yaml", overrides=[f"output_dir={out}", f"data.source={REPO.parent / 'shared' / 'data' / 'hh-rlhf'}",
                                                                 f"data.helpful_prompts_file={REPO.parent / 'shared' / 'data' / 'paper' / 'prompts' / 'helpful_prompts.json'}",
                                                                 *SMALL, *extra])


class FrozenWatch:
    """Wraps DPOTrainer.train: snapshots every frozen (non-LoRA) weight before training and records which changed
    after, so the check costs memory in the tests only, not in the stage."""

    seen: dict[str, tuple[int, list[str]]] = {}  # TRL output_dir -> (frozen tensors, those that changed)

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> None:
        from trl import DPOTrainer

        original = DPOTrainer.train

        def train(self, *args, **kwargs):
            frozen = {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" not in n}
            out = original(self, *args, **kwargs)
            params = dict(self.model.named_parameters())
            cls.seen[self.args.output_dir] = (len(frozen), [n for n, p in frozen.items() if not torch.equal(p, params[n].detach())])
            return out

        monkeypatch.setattr(DPOTrainer, "train", train)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, hh_dir: Path) -> Path:
    """One tiny run through the data stage and every training stage (about a minute on 2 cores)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train")
    cfg = _cfg(out)
    with pytest.MonkeyPatch.context() as mp:
        FrozenWatch.install(mp)
        for stage in ("data", "pretrain", "sft", "dpo", "sft_dpo", "rm"):
            pipeline.run_stage(stage, cfg, cfg.run_dir)
    return cfg.run_dir


def _report(run_dir: Path, stage: str) -> dict:
    return read_json(stage_dir(run_dir, stage) / "train_report.json")


def test_pretrain_makes_base_a_language_model(trained: Path) -> None:
    r = _report(trained, "pretrain")
    assert r["heldout_nll_chosen"]["after"] < r["heldout_nll_chosen"]["before"] - 1.0


def test_sft_lowers_heldout_nll(trained: Path) -> None:
    r = _report(trained, "sft")
    assert r["heldout_nll_chosen"]["after"] < r["heldout_nll_chosen"]["before"]
    assert r["lengths"]["rows"] == r["train_pairs"] and r["lengths"]["would_lose_response_tokens"] > 0
    m = read_json(stage_dir(trained, "sft") / "manifest.json")
    assert set(m["outputs"]) == {"model", "train_report.json"} and (stage_dir(trained, "sft") / "model" / "config.json").is_file()
    assert not (stage_dir(trained, "sft") / "checkpoints").exists()


@pytest.mark.parametrize("stage", ["dpo", "sft_dpo"])
def test_dpo_raises_heldout_preference(trained: Path, stage: str) -> None:
    r = _report(trained, stage)
    before, after = r["before"], r["after"]
    # an adapter that has not moved gives every pair margin 0, which TRL's accuracy counts as wrong
    assert before["implicit_reward_margin"] == 0.0 and before["implicit_reward_accuracy"] == 0.0
    assert after["implicit_reward_margin"] > before["implicit_reward_margin"]
    assert after["implicit_reward_accuracy"] > 0.5
    params = r["parameters"]
    assert params["lora_tensors"] > 0 and params["lora_unchanged"] == [], "Parameter has not changed"
    n_frozen, changed = FrozenWatch.seen[str(stage_dir(trained, stage) / "checkpoints")]
    assert n_frozen > params["lora_tensors"] and changed == [], f"frozen weights changed during DPO: {changed}"
    for sub in ("adapter", "model"):
        assert (stage_dir(trained, stage) / sub).is_dir()
    assert (stage_dir(trained, stage) / "adapter" / "adapter_config.json").is_file()
    assert r["reference"] == "adapter disabled" and not (stage_dir(trained, stage) / "adapter" / "ref").exists()
    assert Path(r["from"]) == stage_dir(trained, "pretrain" if stage == "dpo" else "sft") / "model"


def test_merged_dpo_model_differs_from_its_start_only_in_lora_targets(trained: Path) -> None:
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(stage_dir(trained, "pretrain") / "model").state_dict()
    merged = AutoModelForCausalLM.from_pretrained(stage_dir(trained, "dpo") / "model").state_dict()
    changed = {k for k in start if not torch.equal(start[k], merged[k])}
    assert changed and all(("q_proj.weight" in k or "v_proj.weight" in k) for k in changed)


def test_reward_model_learns(trained: Path) -> None:
    r = _report(trained, "rm")
    assert r["after"]["pairwise_accuracy"] > r["before"]["pairwise_accuracy"]
    assert r["after"]["pairwise_accuracy"] > 0.5


def test_dpo_from_missing_sft_model_fails_before_training(tmp_path: Path, trained: Path) -> None:
    run_dir = tmp_path / "tiny"
    shutil.copytree(stage_dir(trained, "data"), stage_dir(run_dir, "data"))
    shutil.copytree(stage_dir(trained, "pretrain"), stage_dir(run_dir, "pretrain"))
    cfg = _cfg(tmp_path)
    with pytest.raises(UserError, match="stage 'sft_dpo' needs .*03_sft/model .*run `hhalign sft CONFIG` first"):
        pipeline.run_stage("sft_dpo", cfg, run_dir)
    with pytest.raises(TrainingError, match=r"target_modules \['attn_qkv'\] do not exist.*q_proj"):
        pipeline.run_stage("dpo", _cfg(tmp_path, "dpo.lora.target_modules=[attn_qkv]"), run_dir)
    assert not (stage_dir(run_dir, "dpo") / "model").exists()
    with pytest.raises(TrainingError, match="OPT .* cannot separate"):
        pipeline.run_stage("sft", _cfg(tmp_path, "sft.padding_free=true"), run_dir)


def test_bad_model_path_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.cli import main

    code = main(["sft", str(REPO / "configs" / "tiny.yaml"), "--set", f"output_dir={tmp_path}",
                 "--set", f"model.name_or_path={tmp_path / 'no_such_model'}"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "not_a_model").mkdir()
    code = main(["sft", str(REPO / "configs" / "tiny.yaml"), "--set", f"output_dir={tmp_path}",
                 "--set", f"model.name_or_path={tmp_path / 'not_a_model'}"])
    assert code == 2 and "is not a model directory" in capsys.readouterr().err


def _complete_json(path: Path) -> bool:
    """The trainer writes trainer_state.json last in a checkpoint, in place: the checkpoint is whole once it parses."""
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_killed_sft_resumes_to_the_same_weights(tmp_path: Path, trained: Path) -> None:
    """SIGKILL mid-training (not a flag), then --resume: same weights as the uninterrupted run."""
    run_dir = tmp_path / "tiny"
    shutil.copytree(stage_dir(trained, "data"), stage_dir(run_dir, "data"))
    shutil.copytree(stage_dir(trained, "pretrain"), stage_dir(run_dir, "pretrain"))
    args = [sys.executable, "-m", "hhalign", "sft", str(REPO / "configs" / "tiny.yaml"), "--set", f"output_dir={tmp_path}",
            "--set", f"data.source={REPO.parent / 'shared' / 'data' / 'hh-rlhf'}", *sum((["--set", s] for s in SMALL), []),
            "--set", "sft.save_steps=10", "--set", f"data.helpful_prompts_file={REPO.parent / 'shared' / 'data' / 'paper' / 'prompts' / 'helpful_prompts.json'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = stage_dir(run_dir, "sft") / "checkpoints" / "checkpoint-20"
    deadline = time.time() + 300
    while not _complete_json(ck / "trainer_state.json") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # polling for the condition, not waiting a fixed time
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.is_dir(), "no checkpoint was written before the kill"
    assert not (stage_dir(run_dir, "sft") / "model").exists() and not (stage_dir(run_dir, "sft") / "manifest.json").exists()
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed, reference = _state(stage_dir(run_dir, "sft") / "model"), _state(stage_dir(trained, "sft") / "model")
    assert resumed.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=1e-4, atol=1e-5)


def test_dpo_with_full_weights_trains_every_weight_against_a_frozen_copy(tmp_path: Path, trained: Path) -> None:
    """``adapter: full``: no adapter, the reference a separate frozen copy, model/ the trained weights themselves."""
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "tiny"
    for stage in ("data", "pretrain"):
        shutil.copytree(stage_dir(trained, stage), stage_dir(run_dir, stage))
    cfg = _cfg(tmp_path, "dpo.adapter=full", "dpo.max_steps=3")
    pipeline.run_stage("dpo", cfg, run_dir)
    r = _report(run_dir, "dpo")
    assert r["adapter"] == "full" and r["reference"] == "separate copy" and "lora_tensors" not in r["parameters"]
    assert r["parameters"]["changed"] == r["parameters"]["trained_tensors"] > 0
    assert r["before"]["by_construction"] == "the policy starts as a copy of the reference" and r["after"]["pairs"] > 0
    assert not (stage_dir(run_dir, "dpo") / "adapter").exists()
    assert set(read_json(stage_dir(run_dir, "dpo") / "manifest.json")["outputs"]) == {"model", "train_report.json"}
    start = AutoModelForCausalLM.from_pretrained(stage_dir(run_dir, "pretrain") / "model").state_dict()
    trained_full = AutoModelForCausalLM.from_pretrained(stage_dir(run_dir, "dpo") / "model").state_dict()
    assert any("fc1" in k and not torch.equal(start[k], trained_full[k]) for k in start)  # beyond q_proj and v_proj
