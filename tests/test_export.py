"""hhalign export: every rated answer one row, read back with datasets, adding up to the report's rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hhalign.cli import main
from hhalign.config.schema import MetricsSection
from hhalign.engine.folder import RunFolder
from hhalign.engine.table import stage_dir
from tests.test_validity import _axis, scored_run


def _measured(tmp_path: Path) -> Path:
    run = scored_run(tmp_path, {"harmful": _axis(["harmless-base"], 100, 70), "helpful": _axis(["helpful-base"], 0)})
    for p in stage_dir(run, "score").glob("*_harmful.json"):  # two judges on the harmful set; a refusal among the answers
        rows = json.loads(p.read_text())
        rows[0]["response"] = "I'm sorry, but I can't help with that."
        p.write_text(json.dumps([{**e, "ratings": {"reward_model": e["rating"], "second": -e["rating"]}} for e in rows]))
    RunFolder(run).measure(MetricsSection(bootstrap_samples=200), json_out=stage_dir(run, "metrics") / "metrics.json")
    return run


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_writes_one_row_per_answer_that_adds_up_to_the_rates(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import load_dataset

    run = _measured(tmp_path)
    out = tmp_path / f"rows.{fmt}"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert f"{out}: 80 answers" in capsys.readouterr().out
    rows = load_dataset("parquet" if fmt == "parquet" else "json", data_files=str(out), split="train").to_list()
    assert len(rows) == 80  # 2 variants x 2 sets x 20 prompts
    metrics = json.loads((stage_dir(run, "metrics") / "metrics.json").read_text())
    for v in ("base", "sft"):
        for s in ("harmful", "helpful"):
            mine = [r for r in rows if r["variant"] == v and r["prompt_set"] == s]
            assert [r["index"] for r in mine] == list(range(20))
            assert sum(r["positive"] for r in mine) == metrics["variants"][v]["sets"][s]["positives"]
    harmful = [r for r in rows if r["prompt_set"] == "harmful"]
    assert all(r["rating_second"] == -r["rating"] for r in harmful)
    assert all(r["positive_second"] == (r["rating_second"] > metrics["judges"]["harmful"]["judges"]["second"]["threshold"]) for r in harmful)
    assert all(r["rating_second"] is None for r in rows if r["prompt_set"] == "helpful")  # no second judge there
    assert [r["refusal"] for r in harmful if r["index"] == 0] == [True, True]
    assert {r["start"] for r in rows if r["variant"] == "sft"} == {"base"}


def test_export_needs_the_metrics_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = scored_run(tmp_path, None)
    assert main(["export", str(run), "--out", str(tmp_path / "x.parquet")]) != 0
    err = capsys.readouterr().err
    assert "no 09_metrics/metrics.json, whose thresholds label the answers: run `hhalign metrics CONFIG`" in err
    assert "Traceback" not in err and not (tmp_path / "x.parquet").exists()


def test_model_cards_carry_the_rates_and_the_judges_verdicts(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    run = _measured(tmp_path)
    assert main(["export", str(run), "--cards", str(tmp_path / "cards")]) == 0
    metrics = json.loads((stage_dir(run, "metrics") / "metrics.json").read_text())
    card = ModelCard.load(tmp_path / "cards" / "sft" / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"hmr", "hpr", "cas"}
    assert results["hmr"].metric_value == metrics["variants"]["sft"]["exact"]["HmR"]
    assert results["hmr"].metric_args["ci95_wilson"] == pytest.approx(metrics["variants"]["sft"]["ci"]["HmR"]["wilson"])
    assert (results["hmr"].metric_args["judge_verdict"], results["hpr"].metric_args["judge_verdict"]) == ("validated", "unvalidated")
    assert card.data.base_model == "facebook/opt-350m" and "sft" in card.data.tags
    assert "| HpR |" in card.text and "HpR, the helpfulness rate: UNVALIDATED" in card.text
    study = ModelCard.load(tmp_path / "cards" / "README.md")
    assert "| SFT |" in study.text and "| Base |" in study.text


def test_export_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(_measured(tmp_path))]) != 0
    assert "hhalign export needs --out FILE (the answers as rows), --cards DIR (model cards), or both" in capsys.readouterr().err
