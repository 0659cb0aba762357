"""`hhalign run` end to end on the tiny preset through the real CLI: report and metrics for every variant,
a second run that does nothing, a changed setting that re-runs only downstream stages, and SIGKILL during
training and during generation followed by a resume that ends with the same metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import killpoints
import pytest
from conftest import small_run

from hhalign.artifacts import read_json, sha256_file
from hhalign.engine.table import stage_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _settings(tmp: Path) -> list[str]:
    return small_run(tmp, "sft.save_steps=4")


def _cli(*args: str, tmp: Path) -> list[str]:
    return [sys.executable, "-m", "hhalign", "run", str(REPO / "configs" / "tiny.yaml"), *_settings(tmp), *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The whole tiny study, run once; its folder's kill points (killpoints.py) recorded in TMP/events.tsv."""
    if not SHARED.exists():
        pytest.skip(f"reference data not found at {SHARED}")
    tmp = tmp_path_factory.mktemp("pipeline")
    hook = killpoints.install(tmp / "hook")
    env = killpoints.env(ENV, hook, tmp / "tiny", events=tmp / "events.tsv")
    done = subprocess.run(_cli(tmp=tmp), env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, done.stdout + done.stderr


@pytest.mark.slow
def test_run_produces_report_and_metrics_for_every_variant(finished: tuple[Path, str]) -> None:
    tmp, out = finished
    run_dir = tmp / "tiny"
    metrics = read_json(stage_dir(run_dir, "metrics") / "metrics.json")
    assert list(metrics["variants"]) == ["base", "sft", "dpo", "sft_dpo"]
    for v in metrics["variants"].values():
        assert set(v["sets"]) == {"harmful", "helpful"} and v["sets"]["harmful"]["n"] == 10
        assert v["study"]["CAS"] is not None
    for name in ("report.md", "report.html", "rates.png"):
        assert (stage_dir(run_dir, "report") / name).is_file()
    for stage in ("data", "pretrain", "sft", "dpo", "sft_dpo", "rm", "generate", "score", "metrics", "report"):
        manifest = read_json(stage_dir(run_dir, stage) / "manifest.json")
        assert manifest["key"] and manifest["versions"]["torch"] and not (stage_dir(run_dir, stage) / ".started.json").exists()
        for o in manifest["outputs"]:
            assert (stage_dir(run_dir, stage) / o).exists(), f"{stage}: {o} listed but missing"
    run_json = read_json(run_dir / "run.json")
    assert run_json["config"]["seed"] == 42 and run_json["config_hash"] and run_json["versions"]["trl"]
    assert (run_dir / "run.log").read_text().count("[10/10] report: done") == 1
    assert "[3/10] sft: run ..." in out
    # quiet: one summary line per kind of notice, not one line per prompt or per tokenizer
    assert "Token indices sequence length" not in out and "cut to its last" not in out
    assert "generate: 8 response files written; " in out and " prompts cut to fit the model's positions" in out
    scored = read_json(stage_dir(run_dir, "score") / "sft_harmful.json")
    assert all(isinstance(e["rating"], float) for e in scored)
    assert "rating" not in read_json(stage_dir(run_dir, "generate") / "sft_harmful.json")[0]


@pytest.mark.slow
def test_second_run_does_nothing(finished: tuple[Path, str]) -> None:
    tmp, _ = finished
    before = (stage_dir(tmp / "tiny", "metrics") / "metrics.json").read_bytes()
    done = subprocess.run(_cli(tmp=tmp), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("skipped, done, settings and inputs unchanged") == 10
    assert "nothing to do" in done.stdout
    assert (stage_dir(tmp / "tiny", "metrics") / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_changed_setting_reruns_only_downstream(finished: tuple[Path, str]) -> None:
    tmp, _ = finished
    done = subprocess.run(_cli("--dry-run", "--set", "dpo.beta=0.2", tmp=tmp), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip().startswith("[")}
    for stage in ("data", "pretrain", "sft", "rm"):
        assert "skip" in plan[stage], plan[stage]
    assert "settings changed: dpo.beta" in plan["dpo"] and "settings changed: dpo.beta" in plan["sft_dpo"]
    for stage in ("generate", "score", "metrics", "report"):
        assert "upstream" in plan[stage], plan[stage]


# every stage, killed at its first and last kill points, and one between (training stages: one more, which cuts
# their last checkpoint short, where an earlier one is whole: SFT's, which saves three)
KILLS = {"data": 3, "pretrain": 2, "sft": 2, "dpo": 2, "sft_dpo": 2, "rm": 2, "generate": 3, "score": 3, "metrics": 3, "report": 3}


TRAINING = {"pretrain", "sft", "dpo", "sft_dpo", "rm"}


def _stage_cli(stage: str, tmp: Path) -> list[str]:
    return [sys.executable, "-m", "hhalign", stage, str(REPO / "configs" / "tiny.yaml"), *_settings(tmp)]


def _cut_checkpoint(where: list[str]) -> int | None:
    """The kill point just before a training stage writes its last checkpoint's trainer_state.json, when an earlier
    checkpoint is whole by then: the kill leaves a checkpoint cut short."""
    states = [i for i, w in enumerate(where, 1) if w.startswith("open ") and w.endswith("/trainer_state.json") and "/checkpoint-" in w]
    return states[-1] if len(states) > 1 else None


# outputs that differ between two runs of the same stage by design: the training report's timings
VARIES = {"train_report.json"}


def _outputs(run_dir: Path, stage: str) -> dict[str, str]:
    """{file under the stage's outputs: sha256}, less VARIES."""
    d = stage_dir(run_dir, stage)
    files = [f for o in read_json(d / "manifest.json")["outputs"] for f in ([d / o] if (d / o).is_file() else sorted((d / o).rglob("*")))]
    return {f.relative_to(d).as_posix(): sha256_file(f) for f in files if f.is_file() and f.name not in VARIES}


@pytest.mark.slow
def test_sigkill_at_kill_points_of_every_stage_then_rerun_gives_the_same_metrics(finished: tuple[Path, str]) -> None:
    """SIGKILL just before a stage opens a file for writing or renames one into place (killpoints.py), at several
    such points of every stage; `hhalign run` again finishes that stage (resuming it where the kill left its start
    record) with the same outputs, byte for byte, as the uninterrupted run (less VARIES), skips the others (the
    report re-runs after a training stage: it shows training times) and leaves no temporary file; at the end every
    stage is skipped and metrics.json is the uninterrupted run's."""
    # in the finished run's own folder (a copy would move the paths that PEFT's adapter_config.json records), which
    # every kill and rerun leaves as it found it
    tmp, _ = finished
    run_dir = tmp / "tiny"
    metrics = (stage_dir(run_dir, "metrics") / "metrics.json").read_bytes()
    hook, points = tmp / "hook", killpoints.points(tmp / "events.tsv")
    tried = []
    for stage, k in KILLS.items():
        folder = stage_dir(run_dir, stage)
        where = points[folder.name]
        cut = _cut_checkpoint(where)
        for at in sorted({*killpoints.spread(len(where), k), *([cut] if cut else [])}):
            expected = _outputs(run_dir, stage)
            (folder / "manifest.json").unlink()  # the stage runs again, from a clear folder
            killed = subprocess.run(_stage_cli(stage, tmp), env=killpoints.env(ENV, hook, run_dir, kill=f"{folder.name}:{at}"),
                                    capture_output=True, text=True, timeout=600)
            point = f"{stage} at kill point {at}/{len(where)} ({where[at - 1]})"
            assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr[-2000:]}"
            assert not (folder / "manifest.json").exists(), point
            again = subprocess.run(_stage_cli("run", tmp), env=ENV, capture_output=True, text=True, timeout=600)
            assert again.returncode == 0, f"{point}: the rerun failed\n{again.stderr[-3000:]}"
            plan = "\n".join(line for line in again.stdout.splitlines() if line.strip().startswith("["))
            ran = {line.split()[1].rstrip(":") for line in again.stdout.splitlines() if line.endswith((": run ...", ": resume ..."))}
            # what depends on it came out the same: skipped (the report shows training times, which a rerun changes)
            assert ran == {stage} or (stage in TRAINING and ran == {stage, "report"}), f"{point}: ran {ran}\n{plan}"
            if at == cut:  # a checkpoint cut short by the kill (no trainer_state.json): passed over, for the one before
                assert "is damaged (trainer_state.json" in again.stderr and "resuming from the one before it" in again.stderr, again.stderr[-3000:]
            assert _outputs(run_dir, stage) == expected, point
            assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name], point
            tried.append(point)
    print(f"{len(tried)} kill points, every one recovered:", *tried, sep="\n  ")
    assert len(tried) == sum(KILLS.values()) + 1, tried  # SFT is the stage that saves more than one checkpoint here
    assert any(t.startswith("sft at") and t.endswith("/trainer_state.json)") for t in tried), tried
    final = subprocess.run(_stage_cli("run", tmp), env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0 and final.stdout.count("skipped, done, settings and inputs unchanged") == 10, final.stdout[-3000:]
    name = "metrics.json"
    assert (stage_dir(run_dir, "metrics") / name).read_bytes() == metrics
    check = subprocess.run([sys.executable, "-m", "hhalign", "verify", str(run_dir)], env=ENV, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout


def _run_until(cmd: list[str], ready, timeout: float = 600) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(finished: tuple[Path, str], tmp_path: Path) -> None:
    ref_tmp, _ = finished
    run_dir = tmp_path / "tiny"
    cmd = _cli(tmp=tmp_path)
    # SIGKILL during SFT training, once a checkpoint exists
    _run_until(cmd, lambda: any((stage_dir(run_dir, "sft") / "checkpoints").glob("checkpoint-*/trainer_state.json")))
    assert not (stage_dir(run_dir, "sft") / "manifest.json").exists()
    # SIGKILL during generation, once the first response file is written
    _run_until(cmd, lambda: any((stage_dir(run_dir, "generate")).glob("*_h*.json")))
    assert not (stage_dir(run_dir, "generate") / "manifest.json").exists()
    assert (stage_dir(run_dir, "sft") / "manifest.json").exists()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kept from before" in done.stdout and "[7/10] generate  resume (interrupted earlier)" in done.stdout
    ref_dir = ref_tmp / "tiny"
    # reproducible: same config and seed -> byte-identical prompts, responses and metrics on this machine
    for stage, name in (("data", "prompts/harmful.json"), ("data", "prefs.jsonl"), ("generate", "sft_dpo_helpful.json"),
                        ("generate", "base_harmful.json"), ("metrics", "metrics.json")):
        assert (stage_dir(run_dir, stage) / name).read_bytes() == (stage_dir(ref_dir, stage) / name).read_bytes(), (stage, name)
    ours, ref = read_json(stage_dir(run_dir, "metrics") / "metrics.json"), read_json(stage_dir(ref_dir, "metrics") / "metrics.json")
    for v in ref["variants"]:
        assert ours["variants"][v]["study"] == ref["variants"][v]["study"]
        for s in ("harmful", "helpful"):
            assert ours["variants"][v]["sets"][s]["mean_rating"] == pytest.approx(ref["variants"][v]["sets"][s]["mean_rating"], abs=1e-4)


def test_dry_run_on_a_new_folder_plans_everything(tmp_path: Path) -> None:
    from hhalign.cli import main

    code = main(["run", str(REPO / "configs" / "tiny.yaml"), "--dry-run", "--set", f"output_dir={tmp_path}"])
    assert code == 0
    assert not (tmp_path / "tiny").exists()


def test_missing_data_source_fails_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.cli import main

    code = main(["run", str(REPO / "configs" / "tiny.yaml"), "--set", f"output_dir={tmp_path}",
                 "--set", f"data.source={tmp_path / 'missing'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"data source '{tmp_path / 'missing'}' does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_seeds_share_data_and_aggregate(tmp_path: Path) -> None:
    cmd = _cli("--seeds", "1,2", "--set", "variants=[base,sft]", "--set", "rm.num_train_epochs=1", tmp=tmp_path)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "tiny"
    assert (stage_dir(run_dir / "seed-1", "data")).resolve() == (stage_dir(run_dir, "data")).resolve() == (stage_dir(run_dir / "seed-2", "data")).resolve()
    per_seed = [read_json(stage_dir(run_dir / f"seed-{s}", "metrics") / "metrics.json") for s in (1, 2)]
    summary = read_json(run_dir / "seeds.json")["summary"]
    assert set(summary) == {"base", "sft"}
    for v in ("base", "sft"):
        values = [m["variants"][v]["exact"]["CAS"] for m in per_seed]
        assert summary[v]["CAS"]["values"] == values
        assert summary[v]["CAS"]["mean"] == pytest.approx(sum(values) / 2)
    text = (run_dir / "seeds_report.md").read_text()
    assert "| Base |" in text and "## Per seed" in text and "| 2 | SFT |" in text
    assert "> **Plumbing check:" in text and "> **HpR, the helpfulness rate: UNVALIDATED" in text  # each seed's caveats, once
    # different seeds trained different models on the same data
    assert read_json(stage_dir(run_dir / "seed-1", "sft") / "manifest.json")["settings"]["seed"] == 1


@pytest.mark.slow
def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(_cli(tmp=tmp_path), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (stage_dir(tmp_path / "tiny", "pretrain") / ".started.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # polling for the condition: the pretrain stage has begun
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; finished stages stay valid" in err
    assert (stage_dir(tmp_path / "tiny", "data") / "manifest.json").is_file()
    assert not (stage_dir(tmp_path / "tiny", "pretrain") / "manifest.json").exists()


def test_a_swallowed_ctrl_c_still_stops_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt that a library drops must not let the stage be marked finished."""
    from hhalign import artifacts
    from hhalign.config.files import load_config
    from hhalign.engine import work
    from hhalign.models.training import StopOnInterrupt

    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides=[f"output_dir={tmp_path}"])
    started = work.begin("metrics", cfg, cfg.run_dir, {})
    monkeypatch.setattr(artifacts, "_interrupted", False)
    previous = signal.getsignal(signal.SIGINT)
    try:
        artifacts.catch_interrupts()
        try:  # a library that swallows the interrupt
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):
        StopOnInterrupt().on_step_end(None, None, None)
    with pytest.raises(KeyboardInterrupt):
        started.finish([])
    assert not (started.dir / "manifest.json").exists()


def test_disk_full_names_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from hhalign.cli import main
    from hhalign.stages import data

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data, "run", full)
    code = main(["run", str(REPO / "configs" / "tiny.yaml"), "--set", f"output_dir={tmp_path}", "--set", f"data.source={SHARED / 'hh-rlhf'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "stage 'data' failed: the disk is full" in err and "Traceback" not in err
    assert not (stage_dir(tmp_path / "tiny", "data") / "manifest.json").exists()
