"""Every rate shown with evidence that its judge measures that axis (issue 17): agreement with a reference judge,
per-axis checks on held-out pairs, length-controlled effects, and the caveats wherever rates appear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hhalign.config.schema import MetricsSection, ReportSection, RunConfig, ScoreSection
from hhalign.engine.folder import RunFolder
from hhalign.engine.table import stage_dir
from hhalign.errors import UserError
from hhalign.stats import validity
from hhalign.stats.rates import format_table

FAST = MetricsSection(bootstrap_samples=300)


# ----------------------------------------------------------------------------- the statistics, by hand


def test_kappa_and_pairwise_agreement_by_hand() -> None:
    assert validity.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert validity.cohen_kappa([1, 1], [1, 1]) is None  # one label only: undefined
    judge, ref = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]]), np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    # prompt 1: all 3 pairs reversed; prompt 2: (0,1) agrees, (0,2) agrees, (1,2) judge tie -> disagreement
    assert validity.pairwise_agreement(judge, ref) == (2, 6)


def test_a_judge_that_is_the_reference_agrees_perfectly_and_a_negated_one_is_inverted() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 4))
    same = validity.agreement(ref, ref, (0.0, 0.0), samples=300)
    assert same["spearman"]["value"] == pytest.approx(1.0) and same["kendall"]["value"] == pytest.approx(1.0)
    assert same["pairwise"]["value"] == 100.0 and same["pairwise"]["compared"] == 30 * 6
    assert same["kappa"]["value"] == pytest.approx(1.0) and same["verdict"] == "agrees"
    assert same["spearman"]["ci95"] == pytest.approx([1.0, 1.0])
    negated = validity.agreement(-ref, ref, (0.0, 0.0), samples=300)
    assert negated["spearman"]["value"] == pytest.approx(-1.0) and negated["pairwise"]["value"] == 0.0
    assert negated["verdict"] == "inverted"
    noise = validity.agreement(rng.normal(size=(30, 4)), ref, (0.0, 0.0), samples=300)
    assert noise["verdict"] == "not shown to agree" and noise["spearman"]["ci95"][0] < 0 < noise["spearman"]["ci95"][1]


def test_one_answer_per_prompt_gives_correlation_only() -> None:
    ref = np.arange(20, dtype=float).reshape(20, 1)
    a = validity.agreement(ref + 0.5, ref, (5.0, 5.0), samples=200)
    assert a["spearman"]["value"] == pytest.approx(1.0) and a["verdict"] == "agrees"
    assert a["pairwise"]["value"] is None and "not computable" in a["pairwise"]["note"]


def test_length_controlled_effects_recover_a_planted_effect() -> None:
    rng = np.random.default_rng(1)
    n = 60
    words = rng.integers(10, 60, size=(n, 3)).astype(float)
    words[:, 1] += 40  # "sft" answers are 40 words longer
    y = 0.05 * words + rng.normal(scale=0.2, size=(n, 3)) + rng.normal(size=(n, 1))  # per-prompt offsets too
    y[:, 1] += 1.0  # the planted effect of sft at equal length
    out = validity.length_controlled(y, words, ["base", "sft", "dpo"], samples=300)
    sft, dpo = out["effects"]["sft"], out["effects"]["dpo"]
    assert out["slope"] == pytest.approx(0.05, abs=0.01)
    assert sft["raw"] == pytest.approx(3.0, abs=0.3)  # 1.0 + 0.05 * 40
    assert sft["controlled"] == pytest.approx(1.0, abs=0.2) and sft["controlled_ci95"][0] < 1.0 < sft["controlled_ci95"][1]
    assert sft["length_share"] == pytest.approx(2 / 3, abs=0.07)
    assert dpo["controlled_ci95"][0] < 0 < dpo["controlled_ci95"][1]  # nothing planted: its interval holds 0


# ----------------------------------------------------------------------------- per axis, wherever rates appear


def _axis(subsets: list[str], pairs: int, correct: int = 0) -> dict:
    if not pairs:
        return {"subsets": subsets, "pairs": 0, "at_chance": None}
    from hhalign.stats.intervals import wilson_interval

    lo, hi = wilson_interval(correct, pairs)
    return {"subsets": subsets, "pairs": pairs, "correct": correct, "pairwise_accuracy": correct / pairs, "ci95": [lo, hi],
            "at_chance": lo <= 50}


def scored_run(root: Path, axes: dict | None, reference: dict | None = None, n: int = 20) -> Path:
    """A run folder with a score stage's files: base and sft answers to n harmful and n helpful prompts."""
    run = root / "run"
    (stage_dir(run, "score")).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for v in ("base", "sft"):
        for s in ("harmful", "helpful"):
            entries = [{"prompt": f"Human: {s} {i}", "response": " ".join(f"w{k}" for k in range(int(rng.integers(1, 30)))), "rating": float(rng.normal())}
                       for i in range(n)]
            (stage_dir(run, "score") / f"{v}_{s}.json").write_text(json.dumps(entries))
    judge = {"reward_model": "runs/x/06_rm/model", "pairs": 100, "correct": 70, "pairwise_accuracy": 0.7, "ci95": [60.4, 78.0],
             "at_chance": False, "chosen_ratings": [0.1, 0.4], "rejected_ratings": [0.0, 0.2]}
    if axes is not None:
        judge["axes"] = axes
    if reference is not None:
        judge["reference"] = reference
    (stage_dir(run, "score") / "judge.json").write_text(json.dumps(judge))
    (run / "run.json").write_text(json.dumps({"config": {"model": {"name_or_path": "facebook/opt-350m"}}}))
    return run


def test_an_axis_without_held_out_pairs_is_unvalidated_everywhere(tmp_path: Path) -> None:
    from hhalign.report.build import build
    from hhalign.report.plots import make_figures

    run = scored_run(tmp_path, {"harmful": _axis(["harmless-base"], 100, 70), "helpful": _axis(["helpful-base"], 0)})
    m = RunFolder(run).measure(FAST, json_out=tmp_path / "metrics.json")
    assert m["validity"]["axes"]["harmful"]["status"] == "validated"
    assert m["validity"]["axes"]["helpful"]["status"] == "unvalidated"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [c["kind"] for c in saved["caveats"]] == ["HpR_unvalidated", "few_prompts"]  # metrics.json
    assert "none of the held-out pairs is from helpful-base" in saved["caveats"][0]["text"]
    console = format_table(m)
    assert console.startswith("! HpR, the helpfulness rate: UNVALIDATED") and "HmR," not in console.split("\n")[0]
    assert "judge behind HpR (helpfulness): unvalidated" in console
    build(run, tmp_path / "out", ReportSection(formats=["png"]), FAST, metrics=m)
    top = (tmp_path / "out" / "report.md").read_text().split("\n## ")[0]
    assert "HpR, the helpfulness rate: UNVALIDATED" in top and "HmR," not in top  # the top of the report
    assert "| HpR | helpfulness | 0 | helpful-base | – | no reference | unvalidated |" in (tmp_path / "out" / "report.md").read_text()
    assert "HpR, the helpfulness rate: UNVALIDATED" in (tmp_path / "out" / "report.html").read_text()
    figs = make_figures(m, RunFolder(run).scored())
    assert {"rates", "ratings_box", "length"} <= set(figs)
    for name, (_, fig) in figs.items():  # on every figure
        assert "HpR: UNVALIDATED" in fig._suptitle.get_text(), name


def test_an_axis_at_chance_on_its_own_pairs_says_so(tmp_path: Path) -> None:
    run = scored_run(tmp_path, {"harmful": _axis(["harmless-base"], 100, 52), "helpful": _axis(["helpful-base"], 100, 75)})
    m = RunFolder(run).measure(FAST)
    assert [c["kind"] for c in m["caveats"]] == ["HmR_at_chance", "few_prompts"]
    assert "52.0% pairwise accuracy on 100 held-out harmless-base pairs" in m["caveats"][0]["text"]


def _reference_block(judge: list[list[float]], reference: list[list[float]]) -> dict:
    return {"variants": ["base", "sft"], "judge": judge, "reference": reference, "words": [[3, 5]] * len(judge)}


def test_a_negated_judge_is_flagged_inverted_on_that_axis_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(20, 2)).tolist()
    reference = {"source": "paper/responses", "thresholds": {"harmful": -3.0, "helpful": -2.0},
                 "sets": {"harmful": _reference_block(ref, ref), "helpful": _reference_block((-np.asarray(ref)).tolist(), ref)}}
    run = scored_run(tmp_path, {"harmful": _axis(["harmless-base"], 0), "helpful": _axis(["helpful-base"], 0)}, reference)
    m = RunFolder(run).measure(FAST)
    axes = m["validity"]["axes"]
    assert axes["harmful"]["status"] == "validated" and axes["harmful"]["reference_verdict"] == "agrees"
    assert axes["helpful"]["status"] == "inverted"
    assert m["validity"]["reference"]["sets"]["harmful"]["spearman"]["value"] == pytest.approx(1.0)
    assert [c["kind"] for c in m["caveats"]] == ["HpR_inverted", "few_prompts"]
    assert "INVERTED against the reference judge" in m["caveats"][0]["text"]


def test_compare_carries_each_runs_axis_caveats(tmp_path: Path) -> None:
    from hhalign.multirun.compare import compare

    a = scored_run(tmp_path / "a", {"harmful": _axis(["harmless-base"], 100, 70), "helpful": _axis(["helpful-base"], 0)})
    b = scored_run(tmp_path / "b", {"harmful": _axis(["harmless-base"], 100, 70), "helpful": _axis(["helpful-base"], 100, 75)})
    for run in (a, b):
        (stage_dir(run, "metrics")).mkdir()
        RunFolder(run).measure(FAST, json_out=stage_dir(run, "metrics") / "metrics.json")
    out = compare([a, b], tmp_path / "cmp", samples=200)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.count("HpR, the helpfulness rate: UNVALIDATED") == 1 and f"{a.name}: HpR, the helpfulness rate: UNVALIDATED" in md.replace("\\_", "_")
    assert {(r["run"], r["HpR_judge"]) for r in out["table"]} == {(str(a.name), "unvalidated"), (str(b.name), "validated")}


# ----------------------------------------------------------------------------- the score stage with a reference


def _generated_run(root: Path, hh_rows: list[dict], n: int = 8) -> Path:
    run = root / "runs" / "ref"
    gen = stage_dir(run, "generate")
    gen.mkdir(parents=True)
    for v in ("base", "sft"):
        for s, off in (("harmful", 0), ("helpful", 50)):
            rows = [{"prompt": hh_rows[off + i]["chosen"].rsplit("\n\nAssistant:", 1)[0].strip(),
                     "response": hh_rows[off + i + (0 if v == "base" else 100)]["chosen"].rsplit("Assistant:", 1)[1].strip()}
                    for i in range(n)]
            (gen / f"{v}_{s}.json").write_text(json.dumps(rows))
    return run


def _cfg(run: Path, rm: Path, **score: object) -> RunConfig:
    return RunConfig(name=run.name, output_dir=str(run.parent), variants=["base", "sft"],
                     score=ScoreSection(reward_model=str(rm), judge_pairs=0, **score))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_score_stage_rates_the_reference_and_its_own_judge_agrees_perfectly(tmp_path: Path, tiny_rm_dir: Path,
                                                                                  hh_rows: list[dict]) -> None:
    from hhalign.config.schema import ScoreSection as S
    from hhalign.stages import score

    run = _generated_run(tmp_path, hh_rows)
    ref = tmp_path / "reference"
    ref.mkdir()
    for p in (stage_dir(run, "generate")).iterdir():  # the reference judge here is the run's own judge
        (ref / f"1_{p.name}").write_bytes(p.read_bytes())
    from hhalign.models.judge import rate_files

    rate_files(str(tiny_rm_dir), sorted(ref.iterdir()), S())
    cfg = _cfg(run, tiny_rm_dir, reference=str(ref))
    cfg.metrics = MetricsSection(bootstrap_samples=300)
    score.run(cfg, run)
    judge = json.loads((stage_dir(run, "score") / "judge.json").read_text())
    assert judge["reference"]["sets"]["helpful"]["variants"] == ["base", "sft"]
    assert np.allclose(judge["reference"]["sets"]["helpful"]["judge"], judge["reference"]["sets"]["helpful"]["reference"], atol=1e-5)
    helpful = {"subsets": ["helpful-base"], "pairs": 0, "at_chance": None, "judge": "reward_model", "kind": "reward_model",
               "scale": "own", "threshold": None}
    assert judge["axes"]["helpful"] == {**helpful, "judges": {"reward_model": helpful}}
    m = RunFolder(run).measure(FAST)
    for s in ("harmful", "helpful"):
        a = m["validity"]["reference"]["sets"][s]
        assert a["spearman"]["value"] == pytest.approx(1.0) and a["pairwise"]["value"] == 100.0 and a["verdict"] == "agrees"
        assert m["validity"]["axes"][s]["status"] == "validated"  # no held-out pairs, but an agreeing reference


def test_a_reference_for_other_prompts_fails_before_anything_changes(tmp_path: Path, tiny_rm_dir: Path, hh_rows: list[dict]) -> None:
    from hhalign.stages import score

    run = _generated_run(tmp_path, hh_rows)
    ref = tmp_path / "reference"
    ref.mkdir()
    for p in (stage_dir(run, "generate")).iterdir():
        rows = [{**e, "rating": 1.0} for e in json.loads(p.read_text())]
        if p.name == "sft_helpful.json":
            rows[2]["prompt"] = "Human: something else entirely"
        (ref / p.name).write_text(json.dumps(rows))
    before = _tree(run)
    with pytest.raises(UserError, match=r"sft_helpful.json: prompt 3 \('Human: something else entirely'\) is not the run's helpful prompt 3"):
        score.run(_cfg(run, tiny_rm_dir, reference=str(ref)), run)
    assert _tree(run) == before


@pytest.mark.parametrize("rating, message", [(None, r'base_harmful.json: entry 2 \(index 1\) has no "rating"'),
                                             ("high", r'base_harmful.json: entry 2 \(index 1\)\'s "rating" is "high", not a number')])
def test_a_reference_without_numeric_ratings_names_the_file_and_row(tmp_path: Path, rating: object, message: str) -> None:
    from hhalign.engine.work import Input

    ref = tmp_path / "reference"
    ref.mkdir()
    rows = [{"prompt": "Human: a", "response": "b", "rating": 1.0}, {"prompt": "Human: c", "response": "d"}]
    if rating is not None:
        rows[1]["rating"] = rating
    (ref / "base_harmful.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=message):
        Input(str(ref), "reference").check()


def test_the_judge_is_checked_on_each_axis_own_pairs() -> None:
    from hhalign.stages.score import judge_rows

    rows = [{"subset": "harmless-base", "i": i} for i in range(5)] + [{"subset": "helpful-base", "i": i} for i in range(5)]
    picked = judge_rows(rows, ScoreSection(judge_pairs=3))  # the first 3 of each axis, not the first 3 of the file
    assert [(r["subset"], r["i"]) for r in picked] == [("harmless-base", i) for i in range(3)] + [("helpful-base", i) for i in range(3)]
    mine = [{"subset": "mine.jsonl", "i": i} for i in range(5)]  # no row of either axis: the first judge_pairs
    assert judge_rows(mine, ScoreSection(judge_pairs=2)) == mine[:2]


# ----------------------------------------------------------------------------- a judge distilled from the reference


def _reference(root: Path, run: Path, seed: int = 5) -> Path:
    """Reference ratings for the run's own prompts and answers (rated at random)."""
    ref = root / "reference"
    ref.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for p in sorted((stage_dir(run, "generate")).iterdir()):
        rows = [{**e, "rating": float(rng.normal())} for e in json.loads(p.read_text())]
        (ref / p.name).write_text(json.dumps(rows))
    return ref


def test_a_distilled_judge_never_rates_an_answer_with_a_fit_on_its_own_prompt(tmp_path: Path, tiny_rm_dir: Path,
                                                                             hh_rows: list[dict]) -> None:
    from hhalign.data.responses import load_scored_dir
    from hhalign.models.distill import Distilled, load_encoder

    run = _generated_run(tmp_path, hh_rows)
    reference = load_scored_dir(_reference(tmp_path, run))
    encoder = load_encoder(str(tiny_rm_dir))
    answers = reference["base"]["helpful"]
    prompts, responses, index = [e["prompt"] for e in answers], [e["response"] for e in answers], list(range(len(answers)))
    before = Distilled.fit(encoder, reference).rate(prompts, responses, index)
    for sets in reference.values():  # change what the reference says of the even-indexed prompts only
        for entries in sets.values():
            for i in range(0, len(entries), 2):
                entries[i]["rating"] += 10.0
    after = Distilled.fit(encoder, reference).rate(prompts, responses, index)
    assert np.allclose(before[0::2], after[0::2])  # even prompts: rated by the fit on the odd ones, unchanged
    assert not np.allclose(before[1::2], after[1::2])  # odd prompts: rated by the fit on the even ones, moved


def test_the_score_stage_rates_an_axis_with_the_distilled_judge(tmp_path: Path, tiny_rm_dir: Path, hh_rows: list[dict]) -> None:
    from hhalign.data.responses import load_scored_dir
    from hhalign.models.distill import Distilled, load_encoder
    from hhalign.stages import score

    run = _generated_run(tmp_path, hh_rows)
    ref = _reference(tmp_path, run)
    cfg = _cfg(run, tiny_rm_dir, reference=str(ref), helpful_judge="distilled", distill_encoder=str(tiny_rm_dir))
    score.run(cfg, run)
    judge = json.loads((stage_dir(run, "score") / "judge.json").read_text())
    assert (judge["axes"]["helpful"]["judge"], judge["axes"]["helpful"]["scale"]) == ("distilled", "reference")
    assert judge["axes"]["harmful"]["judge"] == "reward_model"
    helpful_only = {v: {"helpful": sets["helpful"]} for v, sets in load_scored_dir(ref).items()}  # fitted on its own set
    distilled = Distilled.fit(load_encoder(str(tiny_rm_dir)), helpful_only)
    rated = json.loads((stage_dir(run, "score") / "sft_helpful.json").read_text())
    want = distilled.rate([e["prompt"] for e in rated], [e["response"] for e in rated], list(range(len(rated))))
    assert [e["rating"] for e in rated] == pytest.approx(want, abs=1e-6)
    harmful = json.loads((stage_dir(run, "score") / "sft_harmful.json").read_text())  # the reward model's, unchanged
    assert [e["rating"] for e in harmful] != pytest.approx([e["rating"] for e in json.loads((ref / "sft_harmful.json").read_text())])


def test_a_distilled_judge_needs_a_reference() -> None:
    from hhalign.errors import ConfigError

    with pytest.raises(ConfigError, match="score.helpful_judge is 'distilled', which learns from reference ratings, but score.reference is not set"):
        RunConfig(score=ScoreSection(helpful_judge="distilled"))


def test_score_files_says_its_judge_is_unchecked(tmp_path: Path, tiny_rm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.cli import main

    f = tmp_path / "base_harmful.json"
    f.write_text(json.dumps([{"prompt": "Human: hi", "response": "hello"}, {"prompt": "Human: go", "response": "no"}]))
    assert main(["score", "--reward-model", str(tiny_rm_dir), str(f)]) == 0
    err = capsys.readouterr().err
    assert "is unchecked on both axes here: nothing shows that its ratings measure harmlessness or helpfulness" in err
    assert all(isinstance(e["rating"], float) for e in json.loads(f.read_text()))
