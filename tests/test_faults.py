"""Faults injected (issue 21): a disk that fills up mid-write leaves no half-written artifact and one line naming
the stage and the file; the stage re-runs cleanly once there is space."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hhalign import artifacts
from hhalign.cli import main
from hhalign.engine.table import stage_dir

REPO = Path(__file__).resolve().parents[1]


def test_a_full_disk_leaves_no_half_written_artifact(tmp_path: Path, hh_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    args = ["data", str(REPO / "configs" / "tiny.yaml"), "--data-dir", str(hh_dir), "--set", f"output_dir={tmp_path}",
            "--set", "data.max_train_rows=60", "--set", "data.heldout_rows=20"]
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".prefs.jsonl.tmp-%d" % os.getpid()):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(artifacts.os, "fsync", full)
    assert main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("hhalign data: stage 'data' failed: the disk is full") and "01_data/prefs.jsonl" in line
    d = stage_dir(tmp_path / "tiny", "data")
    assert not (d / "prefs.jsonl").exists() and not (d / "manifest.json").exists()
    assert not list(d.glob(".*.tmp*"))  # the temporary file went with the failed write
    monkeypatch.setattr(artifacts.os, "fsync", real_fsync)
    assert main(args) == 0 and (d / "manifest.json").is_file() and (d / "prefs.jsonl").stat().st_size > 0
