"""Response files: names, validation errors, folder discovery (hhalign.data.responses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hhalign.data.responses import (
    ResponseFileError,
    canonical_variant,
    discover,
    load_responses,
    load_scored_dir,
    parse_response_filename,
)
from hhalign.engine.folder import RunFolder
from hhalign.engine.table import stage_dir

PAPER_RESPONSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper" / "responses"


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _entries(n: int = 2, rating: bool = True) -> list[dict]:
    return [{"prompt": f"p{i}", "response": f"r{i}", **({"rating": -1.0 * i} if rating else {})} for i in range(n)]


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, want",
    [("base", "base"), ("SFT", "sft"), ("dpo", "dpo"), ("sft_dpo", "sft_dpo"), ("sftdpo", "sft_dpo"), ("SFT+DPO", "sft_dpo")],
)
def test_canonical_variant(name, want):
    assert canonical_variant(name) == want


def test_canonical_variant_takes_any_snake_case_name_and_refuses_others():
    assert canonical_variant("ipo") == "ipo" and canonical_variant("KTO_beta2") == "kto_beta2"
    with pytest.raises(ValueError, match="unknown variant 'my model'.*snake_case"):
        canonical_variant("my model")


@pytest.mark.parametrize(
    "name, want",
    [
        ("base_harmful.json", ("base", "harmful")),
        ("sft_dpo_helpful.json", ("sft_dpo", "helpful")),
        ("sft_helpful.json", ("sft", "helpful")),
        ("1_base_harmful.json", ("base", "harmful")),
        ("4_sftdpo_helpful.json", ("sft_dpo", "helpful")),
        (Path("/x/3_dpo_harmful.json"), ("dpo", "harmful")),
        ("manifest.json", None),
        ("base_harmful.jsonl", None),
        ("ppo_harmful.json", ("ppo", "harmful")),  # any declared variant's name
        ("ipo_beta_05_helpful.json", ("ipo_beta_05", "helpful")),
        ("Bad Name_harmful.json", None),
        ("base_other.json", None),
        (".base_harmful.json.tmp-12", None),
        ("x_base_harmful.json", ("x_base", "harmful")),
        ("base_harmful_2.json", None),
    ],
)
def test_parse_response_filename(name, want):
    assert parse_response_filename(name) == want


# ----------------------------------------------------------------------------- one file


def test_load_responses_keeps_extra_fields_and_floats_ratings(tmp_path):
    p = _write(tmp_path / "base_harmful.json", [{"prompt": "a", "response": "b", "rating": -3, "id": 7}])
    assert load_responses(p) == [{"prompt": "a", "response": "b", "rating": -3.0, "id": 7}]
    assert isinstance(load_responses(p)[0]["rating"], float)


def test_load_responses_rating_optional_unless_required(tmp_path):
    p = _write(tmp_path / "base_harmful.json", _entries(3, rating=False))
    assert len(load_responses(p)) == 3
    with pytest.raises(ResponseFileError, match=r'base_harmful.json: entry 1 \(index 0\) has no "rating"'):
        load_responses(p, require_rating=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"prompt": "a"}, "expected a JSON list.*got dict"),
        ([{"prompt": "a", "response": "b"}] * 6 + ["text"], r"entry 7 \(index 6\) is not an object but str"),
        ([{"prompt": "a", "response": "b"}] * 6 + [{"prompt": "a"}], r'entry 7 \(index 6\) has no "response"'),
        ([{"response": "b"}], r'entry 1 \(index 0\) has no "prompt"'),
        ([{"prompt": 3, "response": "b"}], r'entry 1 \(index 0\)\'s "prompt" is 3, not a string'),
        ([{"prompt": "a", "response": "b"}] * 6 + [{"prompt": "a", "response": "b", "rating": "abc"}], r'entry 7 \(index 6\)\'s "rating" is "abc", not a number'),
        ([{"prompt": "a", "response": "b", "rating": True}], r'"rating" is true, not a number'),
        ([{"prompt": "a", "response": "b", "rating": None}], r'"rating" is null, not a number'),
        ('[{"prompt": "a", "response": "b", "rating": NaN}]', r'"rating" is nan, not a number'),
        ('[{"prompt": "a", "response": "b", "rating": -Infinity}]', r'"rating" is -inf, not a number'),
        ('[{"prompt": "a",\n  "response": "b",,}]', r"not valid JSON at line 2, column"),
    ],
)
def test_load_responses_errors_name_file_entry_and_problem(tmp_path, content, message):
    p = _write(tmp_path / "sft_helpful.json", content)
    with pytest.raises(ResponseFileError, match=message) as err:
        load_responses(p)
    assert str(p) in str(err.value)


def test_load_responses_missing_file(tmp_path):
    with pytest.raises(ResponseFileError, match="cannot read response file"):
        load_responses(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- folders


def test_discover_ignores_other_files(tmp_path):
    _write(tmp_path / "base_harmful.json", _entries())
    _write(tmp_path / "4_sftdpo_helpful.json", _entries())
    _write(tmp_path / "manifest.json", {})
    (tmp_path / "sft_harmful.json").mkdir()  # a folder is not a response file
    assert discover(tmp_path) == {
        ("base", "harmful"): tmp_path / "base_harmful.json",
        ("sft_dpo", "helpful"): tmp_path / "4_sftdpo_helpful.json",
    }


def test_a_run_folder_is_read_from_its_score_stage(tmp_path):
    stage_dir(tmp_path, "score").mkdir()
    stage_dir(tmp_path, "generate").mkdir()
    _write(stage_dir(tmp_path, "generate") / "base_harmful.json", _entries(rating=False))
    _write(stage_dir(tmp_path, "score") / "base_harmful.json", _entries())
    _write(tmp_path / "run.json", {})
    assert discover(tmp_path) == {}  # the data library knows folders of files, not run folders
    run = RunFolder(tmp_path)
    assert run.scored_dir() == stage_dir(tmp_path, "score")
    assert run.scored()["base"]["harmful"][0]["rating"] == 0.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResponseFileError, match=r"no response files found \(nor in 08_score/\)"):
        RunFolder(tmp_path / "empty").scored()


def test_discover_two_files_for_one_pair(tmp_path):
    _write(tmp_path / "sft_dpo_harmful.json", _entries())
    _write(tmp_path / "4_sftdpo_harmful.json", _entries())
    with pytest.raises(ResponseFileError, match="both 4_sftdpo_harmful.json and sft_dpo_harmful.json hold sft_dpo/harmful"):
        discover(tmp_path)


def test_discover_not_a_folder(tmp_path):
    with pytest.raises(ResponseFileError, match="no such folder"):
        discover(tmp_path / "missing")


def test_load_scored_dir_orders_and_requires_ratings(tmp_path):
    for name in ("dpo_helpful.json", "base_harmful.json", "base_helpful.json"):
        _write(tmp_path / name, _entries())
    data = load_scored_dir(tmp_path)
    assert list(data) == ["base", "dpo"]
    assert list(data["base"]) == ["harmful", "helpful"]
    assert data["dpo"]["helpful"][1] == {"prompt": "p1", "response": "r1", "rating": -1.0}
    _write(tmp_path / "sft_harmful.json", _entries(rating=False))
    with pytest.raises(ResponseFileError, match='sft_harmful.json: entry 1 .*has no "rating"'):
        load_scored_dir(tmp_path)


def test_load_scored_dir_empty_folder_and_empty_file(tmp_path):
    _write(tmp_path / "notes.json", [])
    with pytest.raises(ResponseFileError, match="no response files found.*base_harmful.json"):
        load_scored_dir(tmp_path)
    _write(tmp_path / "base_harmful.json", [])
    with pytest.raises(ResponseFileError, match="base_harmful.json: the list is empty"):
        load_scored_dir(tmp_path)


def test_load_scored_dir_reads_the_study_files():
    if not PAPER_RESPONSES.is_dir():
        pytest.skip(f"the study's released responses are not at {PAPER_RESPONSES} (../shared/data beside the checkout)")
    data = load_scored_dir(PAPER_RESPONSES)
    assert list(data) == ["base", "sft", "dpo", "sft_dpo"]
    assert all(list(sets) == ["harmful", "helpful"] and all(len(e) == 50 for e in sets.values()) for sets in data.values())
