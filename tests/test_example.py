"""examples/custom.yaml end to end through the real CLI: the whole study on the hand-written preference files
in examples/preferences/ (one standard, one conversational), with the tiny preset's models (issue 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hhalign.artifacts import read_json
from hhalign.engine.table import stage_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_custom_example_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hhalign", "run", "examples/custom.yaml", "--set", f"output_dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "custom"
    report = read_json(stage_dir(run_dir, "data") / "data_report.json")
    assert report["formats"] == {"conversational.jsonl": "conversational", "standard.jsonl": "standard"}
    assert report["skipped_counts"] == {} and report["render"] == "hh"
    assert "format: conversational (conversational.jsonl), standard (standard.jsonl), rendered hh" in done.stdout
    metrics = read_json(stage_dir(run_dir, "metrics") / "metrics.json")
    assert list(metrics["variants"]) == ["base", "sft", "dpo", "sft_dpo"]
    for v in metrics["variants"].values():
        assert set(v["sets"]) == {"harmful", "helpful"} and v["sets"]["harmful"]["n"] == 5 and v["sets"]["helpful"]["n"] == 5
    assert (stage_dir(run_dir, "report") / "report.html").is_file()
