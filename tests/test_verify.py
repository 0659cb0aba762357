"""Artifacts verified (issue 21): manifests record each output's size and sha256; a finished stage whose output
changed or went missing re-runs ("output changed: ..."), and `hhalign verify RUN` says what differs (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hhalign import pipeline
from hhalign.artifacts import read_json, sha256_path
from hhalign.config.files import load_config
from hhalign.engine.table import get, stage_dir
from hhalign.engine.work import decide, verify

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run(tmp_path: Path, hh_dir: Path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides=[f"output_dir={tmp_path}", f"data.source={hh_dir}",
                                                                "data.max_train_rows=60", "data.heldout_rows=20"])
    pipeline.run_stage("data", cfg, cfg.run_dir)
    return cfg


def _decide(cfg):
    st = get("data")
    return decide(st, cfg, cfg.run_dir, pipeline.inputs(st, cfg, cfg.run_dir))


def test_the_manifest_records_each_output(run) -> None:
    d = stage_dir(run.run_dir, "data")
    rec = read_json(d / "manifest.json")["artifacts"]
    assert set(rec) == set(read_json(d / "manifest.json")["outputs"])
    prefs = d / "prefs.jsonl"
    assert rec["prefs.jsonl"] == {"files": 1, "bytes": prefs.stat().st_size, "mtime_ns": prefs.stat().st_mtime_ns,
                                  "sha256": sha256_path(prefs)}
    assert _decide(run).action == "skip" and verify(run.run_dir) == {"01_data": []}


def test_a_damaged_output_reruns_its_stage_and_verify_names_it(run) -> None:
    prefs = stage_dir(run.run_dir, "data") / "prefs.jsonl"
    good = prefs.read_bytes()
    prefs.write_bytes(good[:100])  # cut, as in the issue
    d = _decide(run)
    assert d.action == "run" and d.reason.startswith("output changed: 01_data/prefs.jsonl (100 bytes in 1 files, recorded")
    done = subprocess.run([sys.executable, "-m", "hhalign", "verify", str(run.run_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "01_data: differs: 01_data/prefs.jsonl (100 bytes" in done.stdout
    pipeline.run_stage("data", run, run.run_dir)  # the stage re-runs and writes it whole again
    assert prefs.read_bytes() == good and _decide(run).action == "skip"


def test_same_size_other_content_and_a_missing_output_are_caught(run) -> None:
    d = stage_dir(run.run_dir, "data")
    report = d / "data_report.json"
    text = report.read_bytes()
    report.write_bytes(text[:-2] + b" }"[: 2])  # same size, other bytes, newer time
    assert "content differs from the recorded sha256" in _decide(run).reason
    report.write_bytes(text)
    os.utime(report, ns=(1, 1))  # content back, only its time moved: the hash says it is the same
    assert _decide(run).action == "skip"
    (d / "heldout.jsonl").unlink()
    assert _decide(run).reason == "output changed: 01_data/heldout.jsonl (missing)"
    assert verify(run.run_dir) == {"01_data": ["01_data/heldout.jsonl (missing)"]}


def test_verify_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hhalign", "verify", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds no finished stage" in done.stderr
