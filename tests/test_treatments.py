"""The report says when a treatment did not act: held-out figures and answers identical to the starting model."""

from __future__ import annotations

import json
from pathlib import Path

from hhalign.config.schema import MetricsSection, ReportSection
from hhalign.models.training import dpo_figures
from hhalign.report.build import build
from hhalign.stats.treatments import caveats, identical_share, treatments


def _answers(texts: list[str], rating: float = 0.0) -> list[dict]:
    return [{"prompt": f"Human: q{i}", "response": t, "rating": rating + i / 10} for i, t in enumerate(texts)]


BASE = [f"answer {i}" for i in range(10)]
DATA = {
    "base": {"harmful": _answers(BASE), "helpful": _answers(BASE)},
    "sft": {"harmful": _answers([f"new {i}" for i in range(10)]), "helpful": _answers([f"new {i}" for i in range(10)])},
    "dpo": {"harmful": _answers(BASE[:7] + ["x", "y", "z"]), "helpful": _answers(BASE[:2] + [f"d{i}" for i in range(8)])},
}
SFT_REPORT = {"heldout_nll_chosen": {"before": 2.8, "after": 2.5}, "heldout_pairs": 64}
ACTED = dpo_figures([0.2] * 80 + [-0.1] * 20, [0.0] * 100, [True] * 50 + [False] * 50)  # 80/100, interval above 50%
IDLE = dpo_figures([0.01] * 52 + [-0.01] * 48, [0.0] * 100)  # 52/100: the interval reaches 50%


def test_identical_share_matches_by_prompt() -> None:
    assert identical_share(DATA["dpo"]["harmful"], DATA["base"]["harmful"]) == (7, 10)
    assert identical_share(_answers(["a"]), []) is None


def test_a_treatment_that_did_not_act_is_named_with_its_reasons() -> None:
    rows = treatments(DATA, {"sft": SFT_REPORT, "dpo": {"before": {}, "after": IDLE}})
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"sft", "dpo"}  # no sft_dpo answers, no report
    assert by["sft"]["doubts"] == [] and by["sft"]["identical"]["harmful"] == (0, 10)
    assert by["dpo"]["heldout"]["acts"] is False and by["dpo"]["identical"] == {"harmful": (7, 10), "helpful": (2, 10)}
    assert len(by["dpo"]["doubts"]) == 2  # the interval, and 7 of 10 harmful answers unchanged
    lines = caveats(rows)
    assert len(lines) == 1 and lines[0].startswith("dpo may not have acted") and "0.52 [" in lines[0]
    assert "7 of its 10 harmful answers are word for word base's" in lines[0]


def test_an_acting_treatment_has_no_caveat_and_shows_its_length_split() -> None:
    data = {k: v for k, v in DATA.items() if k != "dpo"} | {"dpo": DATA["sft"]}
    rows = treatments(data, {"sft": SFT_REPORT, "dpo": {"after": ACTED}})
    assert caveats(rows) == []
    text = next(r for r in rows if r["variant"] == "dpo")["heldout"]["text"]
    assert text.startswith("accuracy 0.80 [") and "1.00 on the 50 where chosen is shorter, 0.60 on the 50 where it is not" in text


def test_a_treatment_that_learned_mostly_length_says_so() -> None:
    """Held-out accuracy above 50% overall, at or below it where the chosen answer is the longer: acted, mostly by length."""
    by_length = dpo_figures([0.2] * 90 + [-0.1] * 10 + [0.2] * 20 + [-0.1] * 30, [0.0] * 150, [True] * 100 + [False] * 50)
    assert by_length["acts"] and by_length["accuracy_chosen_longer"]["accuracy"] == 0.4
    data = {k: v for k, v in DATA.items() if k != "dpo"} | {"dpo": DATA["sft"]}
    rows = treatments(data, {"sft": SFT_REPORT, "dpo": {"after": by_length}})
    lines = caveats(rows)
    assert lines == ["dpo acted, mostly by length: its held-out accuracy is 0.40 on the 50 pairs whose chosen answer is "
                     "the longer: what it learned is mostly that shorter answers are preferred. Differences between it "
                     "and base may be answer length more than harmlessness."]
    assert next(r for r in rows if r["variant"] == "dpo")["doubts"] == []
    assert treatments(data, {"sft": SFT_REPORT, "dpo": {"after": ACTED}})[1]["by_length"] is None  # 0.60 where longer


def test_response_files_alone_raise_no_doubt_about_training() -> None:
    rows = treatments({k: v for k, v in DATA.items() if k != "dpo"}, {})
    assert [r["variant"] for r in rows] == ["sft"] and rows[0]["doubts"] == [] and rows[0]["heldout"] is None


def test_report_shows_the_treatments_table_and_the_caveat(tmp_path: Path) -> None:
    run = tmp_path / "run"
    scored = run / "08_score"
    scored.mkdir(parents=True)
    names = {"base": "1_base", "sft": "2_sft", "dpo": "3_dpo"}
    for v, sets in DATA.items():
        for s, entries in sets.items():
            (scored / f"{names[v]}_{s}.json").write_text(json.dumps(entries))
    (run / "04_dpo").mkdir()
    (run / "04_dpo" / "train_report.json").write_text(json.dumps({"before": {}, "after": IDLE}))
    build(run, tmp_path / "out", ReportSection(formats=["svg"]), MetricsSection(bootstrap_samples=200))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Treatments" in md and "Did each treatment act?" in md
    assert "> **DPO may not have acted:" in md and "7 of its 10 harmful answers are word for word Base's" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="treatments"' in html and "DPO may not have acted" in html


def test_a_training_record_without_a_held_out_figure_is_a_doubt() -> None:
    rows = treatments({"base": DATA["base"], "dpo": DATA["sft"]}, {"dpo": {"before": {}, "after": {}}})
    assert rows[0]["heldout"] is None and rows[0]["doubts"] == ["no held-out figure shows whether it acted"]


def test_a_treatment_whose_interval_starts_a_hair_above_half_acted_at_the_edge() -> None:
    """167 of 300 (the smol study's SFT+DPO): the interval starts at 0.5001; shown to 3 decimals, and said."""
    from hhalign.stats.treatments import verdict

    edge = dpo_figures([0.2] * 167 + [-0.1] * 133, [0.0] * 300)
    assert edge["acts"] and 0.5 < edge["accuracy_interval"][0] < 0.501
    data = {k: v for k, v in DATA.items() if k != "dpo"} | {"dpo": DATA["sft"]}
    row = treatments(data, {"sft": SFT_REPORT, "dpo": {"after": edge}})[1]
    assert row["heldout"]["text"].startswith("accuracy 0.56 [0.500, 0.61] on 300 pairs")
    assert verdict(row) == "yes, at the edge"
    assert caveats([row]) == ["dpo acted, at the edge (its held-out accuracy's 95% interval starts at 0.500, a hair above "
                              "50%: another seed or machine may not show it acting). Differences between it and base "
                              "measure little more than that."]
    assert verdict(treatments(data, {"sft": SFT_REPORT, "dpo": {"after": ACTED}})[1]) == "yes"


def test_a_treatment_that_moved_against_the_preference_says_so_with_its_declared_start() -> None:
    against = dpo_figures([0.1] * 35 + [-0.1] * 65, [0.0] * 100)  # 35/100: the interval lies below 50%
    report = {"method": "simpo", "figure": "held-out length-normalised reward accuracy", "after": against}
    rows = treatments(DATA, {"simpo": report}, starts={"simpo": "sft"})
    (row,) = rows
    assert (row["variant"], row["start"], row["method"]) == ("simpo", "sft", "simpo")
    assert row["heldout"]["figure"] == "held-out length-normalised reward accuracy"
    assert "the interval lies below 50%, against the preference" in row["doubts"][0]
