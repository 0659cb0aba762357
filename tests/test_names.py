"""Run names, --name and sweep names are plain folder names: nothing is written outside output_dir (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hhalign.config.files import load_config
from hhalign.errors import ConfigError
from hhalign.multirun.sweep import Axis, build

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", "/abs/run", "a\\b", ""])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be a plain folder name under output_dir"):
        load_config(TINY, overrides=[f"output_dir={tmp_path}"], name=name)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_an_escaping_name_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "runs"
    done = subprocess.run([sys.executable, "-m", "hhalign", "data", TINY, "--set", f"output_dir={out}", "--name", "../../escaped"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("hhalign data: error:") and "'../../escaped'" in done.stderr
    assert not (tmp_path / "escaped").exists() and not out.exists()


def test_a_sweep_name_is_a_plain_name_too(tmp_path: Path) -> None:
    axes = [Axis("dpo.beta", [{"dpo.beta": 0.1}, {"dpo.beta": 0.2}])]
    with pytest.raises(ConfigError, match=r"sweep name '\.\./up' must be a plain folder name"):
        build(TINY, axes, None, [f"output_dir={tmp_path}"], name="../up")
    assert build(TINY, axes, None, [f"output_dir={tmp_path}"], name="ok").dir == tmp_path / "ok"
