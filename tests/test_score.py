"""Score stage: batched ratings equal the study's one-pair-at-a-time ratings; files are rewritten atomically."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

import hhalign.models.judge as score_mod
from hhalign.config.schema import ScoreSection
from hhalign.errors import ResponseFileError
from hhalign.models.judge import _score_one_at_a_time, rate_files, score_pairs
from hhalign.models.loading import load_reward_model


@pytest.fixture(scope="module")
def rm(tiny_rm_dir: Path):
    """The tiny reward model, its head scaled so that ratings are about 1 (a real RM's scale).

    (A random head gives ratings near 0.003, where any tolerance would pass.)
    """
    model, tok = load_reward_model(str(tiny_rm_dir))
    with torch.no_grad():
        model.classifier.weight.mul_(300)
    return model, tok


@pytest.fixture(scope="module")
def pairs(paper_dir: Path) -> tuple[list[str], list[str]]:
    """Real prompts and responses of varied lengths; some pairs pass 512 tokens and are truncated."""
    rows = json.loads((paper_dir / "responses" / "2_sft_helpful.json").read_text())[:10]
    rows += json.loads((paper_dir / "responses" / "1_base_harmful.json").read_text())[:10]
    return [r["prompt"] for r in rows], [r["response"] for r in rows]


# 0: equal lengths only; 64: the CPU default; inf: full batches, pads and all (a GPU's way)
@pytest.mark.parametrize("overhead", [0.0, score_mod.OVERHEAD_CPU, math.inf])
def test_batched_scores_equal_single_scores(rm, pairs, overhead, monkeypatch):
    monkeypatch.setattr(score_mod, "OVERHEAD_CPU", overhead)
    model, tok = rm
    prompts, responses = pairs
    lengths = [len(tok(p, r, truncation=True)["input_ids"]) for p, r in zip(prompts, responses)]
    assert max(lengths) == tok.model_max_length and min(lengths) < 100  # truncation and heavy padding both occur
    with torch.inference_mode():
        want = _score_one_at_a_time(model, tok, prompts, responses)
    assert max(want) - min(want) > 0.01  # the ratings differ, so a mix-up of order would show
    for bs in (1, 3, 16):
        got = score_pairs(model, tok, prompts, responses, batch_size=bs, progress=False)
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(got, want)), (bs, got, want)


def test_score_pairs_rejects_mismatched_lists(rm):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score_pairs(*rm, ["a", "b"], ["c"], batch_size=2)


# ----------------------------------------------------------------------------- stage: files


def _write(path: Path, n: int, extra: dict | None = None) -> Path:
    rows = [{"prompt": f"Human: question {i}?", "response": f"Answer number {i}." * (i + 1), **(extra or {})} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def test_run_adds_ratings_in_place(tiny_rm_dir: Path, tmp_path: Path):
    a = _write(tmp_path / "base_harmful.json", 3, {"n_new_tokens": 7})
    b = _write(tmp_path / "base_helpful.json", 2, {"rating": 123})  # an earlier rating is replaced
    before = json.loads(a.read_text())
    ratings = rate_files(str(tiny_rm_dir), [a, b], ScoreSection(batch_size=2, device="cpu"))
    assert list(ratings) == [a, b]
    after = json.loads(a.read_text())
    assert [r["rating"] for r in after] == ratings[a]
    assert [{k: v for k, v in r.items() if k != "rating"} for r in after] == before  # other fields kept, order kept
    model, tok = load_reward_model(str(tiny_rm_dir))
    with torch.inference_mode():
        want = _score_one_at_a_time(model, tok, [r["prompt"] for r in before], [r["response"] for r in before])
    assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(ratings[a], want))
    assert [r["rating"] for r in json.loads(b.read_text())] == ratings[b] != [123, 123]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base_harmful.json", "base_helpful.json"]


def test_interrupted_run_loses_nothing(tiny_rm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Identical entries: each file is one batch, so the model's second call is the second file.
    a = tmp_path / "sft_harmful.json"
    a.write_text(json.dumps([{"prompt": "Human: why?", "response": "Because."}] * 3))
    b = tmp_path / "sft_helpful.json"
    b.write_text(json.dumps([{"prompt": "Human: how?", "response": "Like this."}] * 3))
    b_before = b.read_bytes()
    real_load = score_mod.load_reward_model

    def load_failing_on_second_file(name, **kw):
        model, tok = real_load(name, **kw)
        forward, calls = model.forward, []

        def forward_once(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("simulated crash while scoring the second file")
            return forward(*args, **kwargs)

        model.forward = forward_once
        return model, tok

    monkeypatch.setattr(score_mod, "load_reward_model", load_failing_on_second_file)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rate_files(str(tiny_rm_dir), [a, b], ScoreSection(batch_size=8, device="cpu"))
    assert all(isinstance(r["rating"], float) for r in json.loads(a.read_text()))  # first file fully rated
    assert b.read_bytes() == b_before  # second file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft_harmful.json", "sft_helpful.json"]  # no temp files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p", "response": "r"}', "expected a JSON list"),
        ('[{"prompt": "p", "response": "r"}, {"prompt": "p"}]', 'entry 2 (index 1) has no "response"'),
        ('[{"prompt": "p", "response": 5}]', 'entry 1 (index 0)\'s "response" is 5, not a string'),
        ('["p"]', "entry 1 (index 0) is not an object but str"),
        ('[{"prompt": "p", "response": "r"}', "not valid JSON"),
    ],
)
def test_a_bad_file_is_rejected_before_any_scoring(tmp_path: Path, monkeypatch, content: str, message: str):
    good = _write(tmp_path / "base_harmful.json", 2)
    good_before = good.read_bytes()
    bad = tmp_path / "base_helpful.json"
    bad.write_text(content)
    monkeypatch.setattr(score_mod, "load_reward_model", lambda *a, **k: pytest.fail("the model must not load"))
    with pytest.raises(ResponseFileError, match=re.escape(message)) as err:
        rate_files("unused", [good, bad], ScoreSection(device="cpu"))
    assert str(bad) in str(err.value)
    assert good.read_bytes() == good_before


def test_bfloat16_scores_stay_close_to_float32(rm, pairs):
    """bfloat16 (several times faster on an AMX CPU or a GPU) moves ratings of about 1 by a few hundredths."""
    model, tok = rm
    prompts, responses = pairs
    want = score_pairs(model, tok, prompts, responses, batch_size=8, progress=False)
    half = copy.deepcopy(model).to(torch.bfloat16)
    got = score_pairs(half, tok, prompts, responses, batch_size=8, progress=False)
    diffs = [abs(a - b) for a, b in zip(got, want)]
    assert min(abs(w) for w in want) > 0.5  # ratings of a real reward model's size
    assert 0 < max(diffs) < 0.1, diffs  # it did change precision, and only a little


def test_run_in_bfloat16_loads_the_reward_model_in_bfloat16(tiny_rm_dir: Path, tmp_path: Path, monkeypatch):
    seen = []
    real = score_mod.score_pairs
    monkeypatch.setattr(score_mod, "score_pairs", lambda model, *a, **k: seen.append(model.dtype) or real(model, *a, **k))
    a = _write(tmp_path / "base_harmful.json", 3)
    ratings = rate_files(str(tiny_rm_dir), [a], ScoreSection(dtype="bfloat16", device="cpu"))
    assert seen == [torch.bfloat16] and len(ratings[a]) == 3
    assert [r["rating"] for r in json.loads(a.read_text())] == ratings[a]
