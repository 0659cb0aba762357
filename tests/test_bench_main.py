"""benchmarks/bench_main.py's before/after table (--compare): the figures a speed change is judged by."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_main.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_main", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _saved(machine: str, rows: list[dict]) -> dict:
    return {"machine": machine, "config": "smol", "set": [], "rows": rows}


BEFORE = _saved("EPYC", [{"stage": "sft", "wall_s": 259.0, "train_s": 198.0, "peak_rss_gb": 5.97},
                         {"stage": "dpo", "wall_s": 293.0, "train_s": 176.0, "peak_rss_gb": 6.1},
                         {"stage": "whole process", "wall_s": 1250.0, "peak_rss_gb": 6.1}])
AFTER = _saved("EPYC", [{"stage": "sft", "wall_s": 97.0, "train_s": 79.0, "peak_rss_gb": 5.6},
                        {"stage": "rm", "wall_s": 117.0, "train_s": 96.0, "peak_rss_gb": 6.58},
                        {"stage": "whole process", "wall_s": 1000.0, "peak_rss_gb": 7.05}])


def test_compare_puts_each_stage_before_and_after_with_how_many_times_faster():
    lines = _bench().compare(BEFORE, AFTER).splitlines()
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[2:] if ln.startswith("| ")}
    assert rows["sft"] == ["259", "198", "5.97", "97", "79", "5.60", "2.67"]
    assert rows["whole process"] == ["1250", "", "6.10", "1000", "", "7.05", "1.25"]
    assert rows["dpo"] == ["293", "176", "6.10", "", "", "", ""]  # only before has it: blanks, no ratio
    assert rows["rm"] == ["", "", "", "117", "96", "6.58", ""]
    assert list(rows) == ["sft", "dpo", "whole process", "rm"]
    assert "different machines" not in "\n".join(lines)


def test_compare_says_when_the_two_tables_come_from_different_machines():
    text = _bench().compare(BEFORE, {**AFTER, "machine": "Xeon with AMX"})
    assert "! measured on different machines" in text and "Xeon with AMX" in text and "EPYC" in text


def test_compare_from_the_command_line_reads_two_saved_tables(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(BEFORE))
    (tmp_path / "a.json").write_text(json.dumps(AFTER))
    out = subprocess.run([sys.executable, str(SCRIPT), "--compare", str(tmp_path / "b.json"), str(tmp_path / "a.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "| sft | 259 | 198 | 5.97 | 97 | 79 | 5.60 | 2.67 |" in out


def test_a_revision_that_does_not_exist_is_one_line_and_leaves_no_worktree():
    if not shutil.which("git") or subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("needs git and a git checkout")
    before = subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "worktree", "list"], capture_output=True, text=True).stdout
    done = subprocess.run([sys.executable, str(SCRIPT), "--rev", "no-such-revision-0123"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("bench_main: cannot check out --rev no-such-revision-0123: ")
    assert "Traceback" not in done.stderr
    after = subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before
