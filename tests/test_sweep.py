"""hhalign sweep on the tiny preset (issue 14): a 2 x 2 grid over DPO settings makes data, pretrain and SFT once,
the DPO stages and what follows them per point; every point's metrics and the comparison report; killed
mid-way, the same command resumes; a bad grid value fails before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hhalign.artifacts import read_json
from hhalign.engine.table import stage_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
GRID = ["--grid", "dpo.beta=0.1,0.5", "--grid", "dpo.loss_type=sigmoid,ipo"]


def _cmd(tmp: Path, *extra: str) -> list[str]:
    helpful = tmp / "helpful8.json"
    if not helpful.exists():
        helpful.write_text(json.dumps(json.loads((SHARED / "paper" / "prompts" / "helpful_prompts.json").read_text())[:8]))
    sets = [f"output_dir={tmp}", f"data.helpful_prompts_file={helpful}", "data.max_train_rows=64", "data.heldout_rows=16",
            "data.eval_size=8", "pretrain.num_train_epochs=1", "sft.num_train_epochs=1", "dpo.num_train_epochs=1",
            "rm.num_train_epochs=1", "metrics.bootstrap_samples=200", "generate.max_new_tokens=12", "report.formats=[png]"]
    return [sys.executable, "-m", "hhalign", "sweep", "configs/tiny.yaml", "--data-dir", str(SHARED / "hh-rlhf"), *GRID,
            *sum((["--set", s] for s in sets), []), *extra]


def _shared(sweep: Path, stage: str) -> list[Path]:
    return sorted((sweep / "_shared").glob(f"{stage_dir('', stage).name}-*"))


@pytest.mark.slow
def test_a_2x2_sweep_shares_the_common_stages_and_resumes(tmp_path: Path) -> None:
    if not SHARED.exists():
        pytest.skip(f"reference data not found at {SHARED}")
    sweep = tmp_path / "tiny-sweep"
    plan = subprocess.run(_cmd(tmp_path, "--dry-run"), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "stage executions: 28 for the sweep (28 still to run), against 40 if each point ran alone" in plan.stdout
    assert not sweep.exists()
    # kill it once the first point is past its SFT stage and the second point's DPO has started
    proc = subprocess.Popen(_cmd(tmp_path), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if sum((p / "manifest.json").is_file() for p in _shared(sweep, "dpo")) >= 1 and len(_shared(sweep, "dpo")) >= 2:
            break
        time.sleep(0.05)  # polling for the condition
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_cmd(tmp_path), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # shared once: data, pretrain, sft, rm; per point: dpo, sft_dpo, generate, score, metrics, report
    for folder, n in (("data", 1), ("pretrain", 1), ("sft", 1), ("rm", 1), ("dpo", 4), ("sft_dpo", 4),
                      ("generate", 4), ("metrics", 4), ("report", 4)):
        found = _shared(sweep, folder)
        assert len(found) == n and all((p / "manifest.json").is_file() for p in found), (folder, found)
    resumed = int(next(line for line in done.stdout.splitlines() if "stage executions in this call" in line).split()[1])
    assert 0 < resumed < 28  # the killed call had done some of the work
    points = read_json(sweep / "sweep.json")["points"]
    assert [p["settings"] for p in points] == [{"dpo.beta": b, "dpo.loss_type": t} for b in (0.1, 0.5) for t in ("sigmoid", "ipo")]
    for p in points:
        run = sweep / p["name"]
        metrics = read_json(stage_dir(run, "metrics") / "metrics.json")
        assert list(metrics["variants"]) == ["base", "sft", "dpo", "sft_dpo"]
        assert (stage_dir(run, "sft")).is_symlink() and (stage_dir(run, "sft")).resolve() == _shared(sweep, "sft")[0].resolve()
        assert read_json(run / "run.json")["sweep"]["settings"] == p["settings"]
    compared = read_json(sweep / "compare" / "compare.json")
    assert len(compared["runs"]) == 4 and compared["unpaired"] == []
    assert len(compared["paired"]) == 6 * 4 * 2  # 6 pairs of points x 4 variants x 2 prompt sets
    # base and sft are shared, so their answers (and ratings) are the same at every point
    same = [t for t in compared["paired"] if t["variant"] in ("base", "sft")]
    assert same and all(t["mcnemar"]["a_only"] == t["mcnemar"]["b_only"] == 0 for t in same)
    for name in ("compare.md", "compare.html", "against_dpo_beta.png", "against_dpo_loss_type.png"):
        assert (sweep / "compare" / name).is_file(), name
    again = subprocess.run(_cmd(tmp_path), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "sweep: 0 stage executions in this call" in again.stdout


def test_a_bad_grid_value_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.cli import main

    code = main(["sweep", "configs/tiny.yaml", "--grid", "dpo.beta=0.1,fast", "--set", f"output_dir={tmp_path}"])
    assert code == 2
    assert "--grid dpo.beta=fast: 'dpo.beta' must be float, got 'fast'" in capsys.readouterr().err
    code = main(["sweep", "configs/tiny.yaml", "--grid", "dpo.betta=0.1,0.2", "--set", f"output_dir={tmp_path}"])
    assert code == 2 and "--grid dpo.betta=0.1: unknown key 'dpo.betta'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_file_with_an_axis_of_several_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.cli import main

    code = main(["sweep", "examples/sweep_noise.yaml", "--set", f"output_dir={tmp_path}", "--data-dir", str(SHARED / "hh-rlhf"),
                 "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "12 points = dpo.beta (2) x dpo loss (3) x data.drop_near_identical (2)" in out
    assert "  data               2  6 points each" in out and "  dpo               12  one point each" in out
    assert "dpo loss={'dpo.loss_type': 'robust', 'dpo.label_smoothing': 0.1}" in out
