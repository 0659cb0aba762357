"""Variants as data: the methods preset end to end on the tiny models (every method trains, changes its LoRA, is
generated, scored, tested against every other and shown in the report), a variant added to a finished run trains
alone, a removed one leaves the report; bad declarations fail in one line before anything runs; the study's
presets keep their four variants and their stage keys."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
from conftest import small_run

from hhalign.artifacts import read_json
from hhalign.cli import main
from hhalign.config.files import load_config
from hhalign.engine import table
from hhalign.engine.table import settings, stage_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
METHODS = REPO / "configs" / "tiny_methods.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
VARIANTS = ["base", "sft", "dpo", "sft_dpo", "ipo", "kto", "orpo", "simpo"]


def _settings(tmp: Path) -> list[str]:
    return small_run(tmp, "dpo.num_train_epochs=1", "orpo.num_train_epochs=1", "simpo.num_train_epochs=1")


def _run(config: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hhalign", "run", str(config), *_settings(tmp), *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1800)


def _config(tmp: Path, name: str, variants: str, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"extends: {METHODS}\nname: tiny_methods\n{variants}\n{extra}")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny methods preset run once, through the real CLI."""
    if not SHARED.exists():
        pytest.skip(f"reference data not found at {SHARED}")
    tmp = tmp_path_factory.mktemp("methods")
    done = _run(METHODS, tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("You are importing from 'trl.experimental'") == 1  # shown once, not silenced
    return tmp


@pytest.mark.slow
def test_every_method_trains_is_judged_tested_and_reported(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = finished / "tiny_methods"
    for variant, method in (("sft", "sft"), ("dpo", "dpo"), ("sft_dpo", "dpo"), ("ipo", "dpo"), ("kto", "kto"),
                            ("orpo", "orpo"), ("simpo", "simpo")):
        report = read_json(stage_dir(run_dir, variant) / "train_report.json")
        assert report["method"] == method, variant
        if method != "sft":
            params = report["parameters"]
            assert params["lora_tensors"] > 0 and params["lora_unchanged"] == [], (variant, params)
            assert report["after"]["pairs"] == 24 and 0 <= report["after"]["implicit_reward_accuracy"] <= 1
            assert (stage_dir(run_dir, variant) / "adapter" / "adapter_config.json").is_file()
    assert read_json(stage_dir(run_dir, "ipo") / "train_report.json")["loss_type"] == ["ipo"]
    assert read_json(stage_dir(run_dir, "simpo") / "train_report.json")["loss_type"] == "simpo"
    assert read_json(stage_dir(run_dir, "orpo") / "train_report.json")["figure"] == "held-out length-normalised reward accuracy"
    for v in VARIANTS:
        for s in ("harmful", "helpful"):
            rows = read_json(stage_dir(run_dir, "score") / f"{v}_{s}.json")
            assert len(rows) == 10 and all(isinstance(r["rating"], float) for r in rows)
    metrics = read_json(stage_dir(run_dir, "metrics") / "metrics.json")
    assert list(metrics["variants"]) == VARIANTS
    assert metrics["variants"]["simpo"]["label"] == "SimPO"
    pairs = {(p["set"], p["a"], p["b"]) for p in metrics["paired"]}
    assert pairs == {(s, a, b) for s in ("harmful", "helpful") for a, b in combinations(VARIANTS, 2)}
    md = (stage_dir(run_dir, "report") / "report.md").read_text()
    for shown in ("Base", "SFT", "DPO", "SFT+DPO", "IPO", "KTO", "ORPO", "SimPO"):
        assert f"| {shown} |" in md, shown
    assert "What each variant gained, and what it cost" in md
    cost = next(ln for ln in md.splitlines() if ln.startswith("| KTO | kto | SFT |"))
    assert float(cost.split("|")[10]) > 0  # its training wall seconds, from its manifest
    capsys.readouterr()
    assert main(["verify", str(run_dir)]) == 0  # every variant's stage folder checked against its manifest
    verified = capsys.readouterr().out
    assert all(f"{stage_dir(run_dir, v).name}: ok" in verified for v in ("ipo", "kto", "orpo", "simpo")), verified


@pytest.mark.slow
def test_a_variant_added_to_a_finished_run_trains_alone_and_a_removed_one_leaves_the_report(finished: Path) -> None:
    run_dir = finished / "tiny_methods"
    added = _config(finished, "added", "variants: {base: {}, sft: {method: sft, from: base}, dpo: {method: dpo, from: base}, "
                    "sft_dpo: {method: dpo, from: sft}, ipo: {method: dpo, from: sft, loss_type: [ipo], label: IPO}, "
                    "kto: {method: kto, from: sft, label: KTO}, orpo: {method: orpo, from: base, label: ORPO}, "
                    "simpo: {method: simpo, from: sft, label: SimPO}, hinge: {method: dpo, from: base, loss_type: [hinge]}}")
    dry = _run(added, finished, "--dry-run")
    plan = {ln.split()[1]: ln for ln in dry.stdout.splitlines() + dry.stderr.splitlines() if ln.strip().startswith("[")}
    assert "run (not done yet)" in plan["hinge"]
    assert all("skip" in plan[v] for v in ("sft", "dpo", "sft_dpo", "ipo", "kto", "orpo", "simpo", "rm")), plan
    assert "upstream hinge re-runs" in plan["generate"]
    done = _run(added, finished)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    gen = read_json(stage_dir(run_dir, "generate") / "manifest.json")
    assert sorted(gen["kept"]) == sorted(f"{v}_{s}.json" for v in VARIANTS for s in ("harmful", "helpful"))
    assert read_json(stage_dir(run_dir, "score") / "manifest.json")["summary"].startswith("score: 2 files rated")
    assert "hinge" in read_json(stage_dir(run_dir, "metrics") / "metrics.json")["variants"]

    removed = _config(finished, "removed", "variants: {base: {}, sft: {method: sft, from: base}, dpo: {method: dpo, from: base}, "
                      "kto: {method: kto, from: sft, label: KTO}}")
    done = _run(removed, finished)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "data: skipped" in out and "kto: skipped" in out and "kto: run" not in out
    summary = read_json(stage_dir(run_dir, "score") / "manifest.json")["summary"]
    assert summary.startswith("score: 0 files rated") and summary.endswith("8 kept from before"), summary
    metrics = read_json(stage_dir(run_dir, "metrics") / "metrics.json")
    assert list(metrics["variants"]) == ["base", "sft", "dpo", "kto"]
    md = (stage_dir(run_dir, "report") / "report.md").read_text()
    assert "| KTO |" in md and "| SimPO |" not in md and "| hinge |" not in md
    assert not (stage_dir(run_dir, "score") / "simpo_harmful.json").exists()


# ----------------------------------------------------------------------------- declarations


def _bad(tmp: Path, capsys: pytest.CaptureFixture[str], variants: str, extra: str = "") -> str:
    path = _config(tmp, "bad", variants, extra)
    code = main(["run", str(path), "--set", f"output_dir={tmp / 'runs'}", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp / "runs").exists()
    return err


@pytest.mark.parametrize("variants, extra, message", [
    ("variants: {base: {}, ipo: {method: dpo, from: sft}}", "", "variant 'ipo' starts from 'sft', which is not a declared variant"),
    ("variants: {base: {}, a: {method: dpo, from: b}, b: {method: dpo, from: a}}", "",
     "variants start from each other in a cycle: a -> b -> a"),
    ("variants: {base: {}, ppo: {method: ppo, from: base}}", "",
     "variant 'ppo': unknown method 'ppo'; known methods: sft, dpo, kto, orpo, simpo"),
    ("variants: {base: {}, score: {method: dpo, from: base}}", "", "variant name 'score' is a stage or a command of hhalign"),
    ("variants:\n  base: {}\n  ipo: {method: dpo, from: base}\n  ipo: {method: kto, from: base}", "", "'ipo' is given twice"),
    ("variants: {base: {}, ipo: {method: dpo, from: base, betta: 0.2}}", "",
     "unknown key 'variants.ipo.betta': neither an hhalign setting nor a field of trl.DPOConfig (installed version). Did you mean 'beta'"),
    ("variants: {base: {}, simpo: {method: simpo, from: base, loss_type: sigmoid}}", "",
     "'variants.simpo.loss_type' is 'simpo' by definition of the method"),
    ("variants: {base: {}, kto: {method: kto, from: base, per_device_train_batch_size: 1}}", "",
     "'variants.kto.per_device_train_batch_size' is 1: KTO estimates its KL term from the other examples of a batch"),
    ("variants: {base: {from: sft}}", "", "variant 'base' has no method (it is the base model) but sets from"),
    ("variants: {base: {}, My-Model: {method: dpo, from: base}}", "", "variant name 'My-Model' must be snake_case"),
    ("variants: [base, ipo]", "", "the list form picks from the study's base, sft, dpo, sft_dpo"),
    ("variants: {base: {}, x: {method: dpo}}", "", "variant 'x' needs 'from'"),
])
def test_a_bad_declaration_is_one_line_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            variants: str, extra: str, message: str) -> None:
    assert message in _bad(tmp_path, capsys, variants, extra)


def test_training_a_variant_the_config_does_not_declare_names_those_it_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(METHODS), "ppo", "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no variant 'ppo' in this config; its variants: base, sft, dpo, sft_dpo, ipo, kto, orpo, simpo" in err
    code = main(["ppo", str(METHODS), "--set", f"output_dir={tmp_path}"])  # hhalign VARIANT CONFIG is the same command
    assert code == 2 and "no variant 'ppo'" in capsys.readouterr().err
    assert main(["train", str(METHODS), "base", "--set", f"output_dir={tmp_path}"]) == 2
    assert "is the base model (no method): nothing to train" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the table, from the declarations


def test_the_table_has_one_training_row_per_variant_after_its_start() -> None:
    cfg = load_config(METHODS)
    names = [st.name for st in table.active(cfg)]
    assert names == ["data", "pretrain", "sft", "dpo", "sft_dpo", "ipo", "kto", "orpo", "simpo", "rm", "generate", "score",
                     "metrics", "report"]
    ipo = table.get("ipo", cfg)
    assert ipo.folder == "05_ipo" and ipo.upstream == ("data", "sft") and ipo.runner == "train"
    assert settings(ipo, cfg)["dpo"]["loss_type"] == ["ipo"] and cfg.dpo.args["loss_type"] == ["sigmoid"]
    assert set(table.get("generate", cfg).upstream) >= {"sft", "dpo", "sft_dpo", "ipo", "kto", "orpo", "simpo"}
    swept = load_config(METHODS, grid=["variants.simpo.beta=2.5"])
    assert settings(table.get("simpo", swept), swept)["simpo"]["beta"] == 2.5


def test_the_list_form_trains_what_its_variants_start_from() -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides=["variants=[base, sft_dpo]"])
    assert list(cfg.variants) == ["base", "sft_dpo"] and list(cfg.trained()) == ["sft", "sft_dpo"]


@pytest.mark.parametrize("preset", ["tiny", "smol", "paper", "paper_fast"])
def test_the_study_presets_keep_their_four_variants_and_stage_keys(preset: str) -> None:
    """The study's presets declare the list form, and their training rows keep the keys a run folder made before
    variants were data recorded, so such a folder resumes instead of training again."""
    cfg = load_config(preset)
    assert cfg.to_dict()["variants"] == ["base", "sft", "dpo", "sft_dpo"]
    expected = {"sft": ("03_sft", ("model", "sft", "seed")), "dpo": ("04_dpo", ("model", "dpo", "seed")),
                "sft_dpo": ("05_sft_dpo", ("model.pad_token", "dpo", "seed"))}
    for name, (folder, keys) in expected.items():
        st = table.get(name, cfg)
        assert (st.folder, st.settings) == (folder, keys)
        assert settings(st, cfg)[keys[1]] == cfg.to_dict()[keys[1]]


def test_a_setting_added_since_a_manifest_was_written_counts_as_unchanged_at_its_default() -> None:
    """A run folder made before ``dpo.adapter`` (or the report's ``labels``) existed resumes; another value re-runs."""
    from hhalign.engine.work import changed_settings

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    row = table.get("dpo", cfg)
    now = settings(row, cfg)
    old = {**now, "dpo": {k: v for k, v in now["dpo"].items() if k != "adapter"}}
    assert changed_settings(old, now) == []
    full = load_config(REPO / "configs" / "tiny.yaml", overrides=["dpo.adapter=full"])
    assert changed_settings(old, settings(row, full)) == ["dpo.adapter"]
    metrics = settings(table.get("metrics", cfg), cfg)
    assert changed_settings({"metrics": metrics["metrics"]}, metrics) == []  # the study's labels, as before
    labelled = load_config(REPO / "configs" / "tiny.yaml", overrides=["variants={base: {label: Pretrained}}"])
    assert changed_settings({"metrics": metrics["metrics"]}, settings(table.get("metrics", labelled), labelled)) != []
