"""One owner per run folder (issue 21): a second process is refused with the holder named, exit 2, nothing
touched; a holder that died (SIGKILL) leaves a folder the next process takes over, saying so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hhalign.engine.lock import LOCK, OWNER, owning
from hhalign.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")

HOLD = """
import sys, time
from pathlib import Path
from hhalign.engine.lock import owning
with owning(Path(sys.argv[1]), "hhalign run held-by-test"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_owner_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"{tmp_path} is in use by pid {proc.pid} on .* \(`hhalign run held-by-test`\) since "):
            with owning(tmp_path, "second"):
                pass
        assert json.loads((tmp_path / OWNER).read_text())["pid"] == proc.pid  # the holder's record is untouched
    finally:
        proc.kill()
        proc.wait()


def test_the_cli_exits_2_and_writes_nothing_while_another_process_holds_the_run(tmp_path: Path, hh_dir: Path) -> None:
    run = tmp_path / "runs" / "tiny"
    proc = _holder(run)
    try:
        done = subprocess.run([sys.executable, "-m", "hhalign", "data", TINY, "--data-dir", str(hh_dir), "--set",
                               f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert f"is in use by pid {proc.pid}" in done.stderr.strip().splitlines()[-1]
        assert sorted(p.name for p in run.iterdir()) == sorted([LOCK, OWNER])  # no stage folder, no run.log
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_is_taken_over_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / OWNER).is_file()  # a SIGKILL leaves the record; the OS released the lock itself
    with caplog.at_level("WARNING"), owning(tmp_path, "next"):
        assert json.loads((tmp_path / OWNER).read_text())["command"] == "next"
    assert f"taking over from pid {proc.pid}" in caplog.text
    assert not (tmp_path / OWNER).exists()  # released: the record goes with it
