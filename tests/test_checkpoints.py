"""A checkpoint cut short inside a training stage (issue 21): resume passes over it to the one before, with a
message; with none whole the stage starts over."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from hhalign.models.training import damaged_checkpoint, last_checkpoint


def _checkpoint(root: Path, step: int) -> Path:
    d = root / "checkpoints" / f"checkpoint-{step}"
    d.mkdir(parents=True)
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(d / "model.safetensors"))
    torch.save({"state": {}, "step": step}, d / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_cut_checkpoint_is_passed_over_for_the_one_before(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    work = SimpleNamespace(dir=tmp_path, resumed=True, stage=SimpleNamespace(name="sft"))
    first, second = _checkpoint(tmp_path, 2), _checkpoint(tmp_path, 10)
    assert last_checkpoint(work) == str(second) and damaged_checkpoint(second) is None
    _cut(second / "model.safetensors")
    assert "model.safetensors" in damaged_checkpoint(second)
    monkeypatch.setattr(logging.getLogger("hhalign"), "propagate", True)  # the CLI's console may have turned it off
    with caplog.at_level(logging.WARNING, logger="hhalign"):
        assert last_checkpoint(work) == str(first)
        _cut(first / "optimizer.pt")
        assert damaged_checkpoint(first) == "optimizer.pt: not a whole torch file"
        assert last_checkpoint(work) is None
    assert f"{second} is damaged" in caplog.text and "no whole checkpoint" in caplog.text and "starts over" in caplog.text
    (first / "trainer_state.json").write_text("{")
    assert damaged_checkpoint(first).startswith("trainer_state.json:")


def test_a_fresh_stage_never_resumes(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2)
    assert last_checkpoint(SimpleNamespace(dir=tmp_path, resumed=False, stage=SimpleNamespace(name="sft"))) is None
