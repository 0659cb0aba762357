"""hhalign.usage: what a stage cost the process (CPU seconds, page faults, peak memory), in every manifest."""

from __future__ import annotations

import mmap
import sys
import time
from pathlib import Path

import pytest

from hhalign import usage
from hhalign.artifacts import read_json
from hhalign.config.files import load_config
from hhalign.engine.table import MANIFEST, stage_dir
from hhalign.pipeline import run_stage


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-stage peak memory needs Linux's clear_refs")
def test_cpu_faults_and_peak_memory_of_a_stretch_of_work() -> None:
    before = usage.snapshot()
    # 300 MiB of fresh pages from the kernel (not from malloc, which may hold freed memory: hhalign.memory), touched
    block = mmap.mmap(-1, 300 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    start = time.process_time()
    while time.process_time() - start < 0.3:
        pass
    got = usage.since(before)
    assert got["user_s"] + got["system_s"] >= 0.3  # the kernel splits CPU time between the two by sampling
    assert got["minor_faults"] >= 0.9 * len(block) / 4096  # one fault per page touched
    assert got["peak_of"] == "stage" and got["peak_rss_gb"] >= 0.29
    block.close()
    again = usage.since(usage.snapshot())  # the mark was reset: a new stretch does not inherit the 300 MiB
    assert again["peak_rss_gb"] < got["peak_rss_gb"] and again["minor_faults"] < 1000


def test_every_manifest_records_what_its_stage_cost(tmp_path: Path, hh_dir: Path) -> None:
    cfg = load_config("tiny", overrides=[f"output_dir={tmp_path}", f"data.source={hh_dir}", "data.max_train_rows=32",
                                         "data.heldout_rows=8", "data.eval_size=6"])
    run_stage("data", cfg, cfg.run_dir)
    cost = read_json(stage_dir(cfg.run_dir, "data") / MANIFEST)["usage"]
    assert set(cost) == {"user_s", "system_s", "minor_faults", "major_faults", "peak_rss_gb", "peak_of"}
    assert cost["user_s"] > 0 and cost["peak_rss_gb"] > 0.05  # reading and parsing 2,312 dialogues


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_every_allocator_setting() -> None:
    from hhalign.memory import tune_allocator

    assert tune_allocator() == {"trim_threshold": True, "top_pad": True, "mmap_threshold": True, "mmap_max": True}
