"""Preference data beyond HH-RLHF (issue 7): file types, per-row format detection, column mapping, every skip
reason with its line, rendering (HH text or a chat template), the eval prompt draw, and clear errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from hhalign.artifacts import read_json, read_jsonl
from hhalign.config.files import load_config
from hhalign.config.schema import TinyModelSection
from hhalign.data.formats import Conversation, Renderer, RowError, detect, normalise
from hhalign.data.hh import Message, eval_prompt
from hhalign.data.readers import data_layout, read_file
from hhalign.engine.table import stage_dir
from hhalign.errors import ConfigError, DataError
from hhalign.stages.data import run as data_run

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _std(i: int) -> dict[str, Any]:
    return {"prompt": f"Question number {i}?", "chosen": f"A careful answer {i}.", "rejected": f"No idea {i}."}


def _conv(i: int) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": f"Question number {i}?"}],
            "chosen": [{"role": "assistant", "content": f"A careful answer {i}."}],
            "rejected": [{"role": "assistant", "content": f"No idea {i}."}]}


def _implicit(i: int) -> dict[str, Any]:
    user = {"role": "user", "content": f"Question number {i}?"}
    return {"chosen": [user, {"role": "assistant", "content": f"A careful answer {i}."}],
            "rejected": [user, {"role": "assistant", "content": f"No idea {i}."}]}


def _hh(i: int) -> dict[str, Any]:
    return {"chosen": f"\n\nHuman: Question number {i}?\n\nAssistant: A careful answer {i}.",
            "rejected": f"\n\nHuman: Question number {i}?\n\nAssistant: No idea {i}."}


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _prompts(tmp_path: Path) -> list[str]:
    p = tmp_path / "eval_prompts.json"
    p.write_text(json.dumps(["Human: an eval prompt nobody trains on"]))
    return [f"data.harmful_prompts_file={p}", f"data.helpful_prompts_file={p}"]


def _cfg(tmp_path: Path, source: Path, *extra: str, prompts: bool = True):
    return load_config(None, overrides=[
        f"data.source={source}", "model.name_or_path=tiny", "data.eval_size=2", "data.heldout_rows=1",
        f"output_dir={tmp_path / 'runs'}", "name=t", *(_prompts(tmp_path) if prompts else []), *extra])


def _report(cfg) -> dict[str, Any]:
    return read_json(stage_dir(cfg.run_dir, "data") / "data_report.json")


def _lines(report: dict[str, Any]) -> dict[str, list[int]]:
    return {k: [r["line"] for r in v["rows"]] for k, v in report["skipped"].items()}


# ----------------------------------------------------------------------------- detection and normalising


def test_each_format_is_detected_and_normalised() -> None:
    assert [detect(f(1)) for f in (_std, _conv, _implicit, _hh)] == ["standard", "conversational", "implicit", "hh"]
    # a prompt string beside whole dialogues (UltraFeedback) is implicit; beside one reply, conversational
    assert detect({**_implicit(1), "prompt": "Question number 1?"}) == "implicit"
    assert detect({**_conv(1), "prompt": "Question number 1?"}) == "conversational"
    want = Conversation([Message("user", "Question number 1?")], "A careful answer 1.", "No idea 1.")
    for fmt, row in (("standard", _std(1)), ("conversational", _conv(1)), ("implicit", _implicit(1))):
        assert normalise(row, fmt) == want
    # a standard prompt that already reads as an HH dialogue keeps its turns
    turns = normalise({"prompt": "Human: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:", "chosen": "x", "rejected": "y"}, "standard").prompt
    assert turns == [Message("user", "hi"), Message("assistant", "hello"), Message("user", "and?")]
    for row, reason in [({"chosen": "x"}, "missing_field"), ({"prompt": "p", "chosen": 3, "rejected": "y"}, "wrong_type"),
                        ({"prompt": ["p"], "chosen": "x", "rejected": "y"}, "wrong_type")]:
        with pytest.raises(RowError) as e:
            detect(row)
        assert e.value.reason == reason


# ----------------------------------------------------------------------------- file types


def test_every_file_type_gives_the_same_pairs_with_file_lines(tmp_path: Path) -> None:
    rows = [_std(i) for i in range(1, 7)]
    rows[2]["chosen"] = "A careful\nanswer 3."  # a multi-line csv cell: later rows start further down
    files = {"a.jsonl": _jsonl(tmp_path / "a.jsonl", rows)}
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    files["b.jsonl.gz"] = tmp_path / "b.jsonl.gz"
    (tmp_path / "c.json").write_text(json.dumps(rows, indent=2))  # 5 lines per row after "[" on line 1
    files["c.json"] = tmp_path / "c.json"
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(rows)
    files["d.csv"] = tmp_path / "d.csv"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    files["e.parquet"] = tmp_path / "e.parquet"
    lines = {"a.jsonl": [1, 2, 3, 4, 5, 6], "b.jsonl.gz": [1, 2, 3, 4, 5, 6], "c.json": [2, 7, 12, 17, 22, 27],
             "d.csv": [2, 3, 4, 6, 7, 8], "e.parquet": [1, 2, 3, 4, 5, 6]}
    for name, path in files.items():
        got = read_file(path, name)
        assert [r.data for r in got] == rows, name
        assert [r.line for r in got] == lines[name], name


def test_folder_of_files_reports_each_files_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _jsonl(tmp_path / "data" / "std.jsonl", [_std(i) for i in range(6)])
    _jsonl(tmp_path / "data" / "conv.jsonl", [_conv(i) for i in range(10, 16)])
    _jsonl(tmp_path / "data" / "impl.jsonl", [_implicit(i) for i in range(20, 26)])
    _jsonl(tmp_path / "data" / "hh.jsonl", [_hh(i) for i in range(30, 36)])
    cfg = _cfg(tmp_path, tmp_path / "data")
    assert data_layout(cfg.data) == "single"
    manifest = data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    assert report["formats"] == {"conv.jsonl": "conversational", "hh.jsonl": "hh", "impl.jsonl": "implicit", "std.jsonl": "standard"}
    assert report["render"] == "hh" and report["rows_read"] == 24 and report["usable_pairs"] == 24
    assert "format: conversational (conv.jsonl), hh (hh.jsonl), implicit (impl.jsonl), standard (std.jsonl), rendered hh" in manifest["summary"]
    assert set(manifest["inputs"]) >= {"std.jsonl", "conv.jsonl", "impl.jsonl", "hh.jsonl"}
    # every format lands on the same HH pair: prompt ends with the assistant cue, prompt + chosen is the SFT text
    pairs = read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl") + read_jsonl(stage_dir(cfg.run_dir, "data") / "heldout.jsonl")
    by_q = {p["prompt"]: p for p in pairs}
    assert by_q["\n\nHuman: Question number 1?\n\nAssistant:"]["chosen"] == " A careful answer 1."
    assert by_q["\n\nHuman: Question number 31?\n\nAssistant:"]["rejected"] == " No idea 31."
    assert len(by_q) == 24


def test_columns_mapping(tmp_path: Path) -> None:
    with open(tmp_path / "mine.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "good", "bad"])
        for i in range(6):
            w.writerow([i, f"Question {i}?", f"Good answer {i}.", f"Bad answer {i}."])
        w.writerow([6, "Question 6?", "Good answer 6."])  # a short row: no 'bad' cell
    cfg = _cfg(tmp_path, tmp_path / "mine.csv", "data.columns={prompt: question, chosen: good, rejected: bad}")
    data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    assert report["formats"] == {"mine.csv": "standard"} and report["usable_pairs"] == 6
    assert report["skipped"]["missing_field"]["rows"] == [{"subset": "mine.csv", "line": 8, "detail": "no rejected"}]
    with pytest.raises(ConfigError, match="unknown field 'answer'"):
        load_config(None, overrides=["data.columns={answer: a}"])
    with pytest.raises(ConfigError, match="data.columns.chosen must be a column name"):
        load_config(None, overrides=["data.columns={chosen: 3}"])
    with pytest.raises(ConfigError, match="allowed values: auto, hh, standard, conversational, implicit"):
        load_config(None, overrides=["data.format=sharegpt"])


# ----------------------------------------------------------------------------- validation


def test_every_skip_reason_with_its_line(tmp_path: Path) -> None:
    bad_msg = {**_conv(0), "chosen": [{"role": "assistant"}]}
    rows = [
        _std(1), _std(2), _std(3),
        {"prompt": "q?", "chosen": "a"},                                # 4 missing_field
        {"prompt": "q?", "chosen": 5, "rejected": "b"},                 # 5 wrong_type
        {"prompt": "q?", "chosen": "  ", "rejected": "b"},              # 6 empty_response
        {"prompt": "q?", "chosen": "same", "rejected": "same "},        # 7 identical
        _conv(8),                                                       # 8 mixed_format
        '{"prompt": "q?", "chosen": ',                                  # 9 invalid_json
        "[1, 2]",                                                       # 10 invalid_json (not an object)
        {"prompt": " ", "chosen": "a", "rejected": "b"},                # 11 empty_prompt
        _std(12),
    ]
    path = _jsonl(tmp_path / "std.jsonl", rows)
    with open(path, "ab") as fh:
        fh.write(b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')  # 13 not_utf8
    conv_rows = [
        _conv(1), _conv(2),
        {**_conv(3), "chosen": [{"role": "user", "content": "hm"}]},                      # 3 wrong_role
        bad_msg,                                                                          # 4 wrong_type
        {**_conv(5), "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},  # 5 wrong_role
        {**_conv(6), "chosen": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 6 wrong_type
        _conv(7),
    ]
    _jsonl(tmp_path / "conv" / "conv.jsonl", conv_rows)
    impl_rows = [_implicit(1), _implicit(2), {**_implicit(3), "rejected": [{"role": "user", "content": "other"},
                                                                            {"role": "assistant", "content": "b"}]},
                 {**_implicit(4), "chosen": _implicit(4)["chosen"][:1]}]
    _jsonl(tmp_path / "conv" / "impl.jsonl", impl_rows)
    cfg = _cfg(tmp_path, path)
    data_run(cfg, cfg.run_dir)
    assert _lines(_report(cfg)) == {"missing_field": [4], "wrong_type": [5], "empty_response": [6], "identical": [7],
                                    "mixed_format": [8], "invalid_json": [9, 10], "empty_prompt": [11], "not_utf8": [13]}
    assert _report(cfg)["skipped"]["mixed_format"]["rows"][0]["detail"] == "row is conversational, the file is standard"
    cfg = _cfg(tmp_path, tmp_path / "conv", "name=c")
    data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    got = {k: [(r["subset"], r["line"]) for r in v["rows"]] for k, v in report["skipped"].items()}
    assert got == {"wrong_role": [("conv.jsonl", 3), ("conv.jsonl", 5)], "wrong_type": [("conv.jsonl", 4), ("conv.jsonl", 6)],
                   "prefix_mismatch": [("impl.jsonl", 3)], "no_assistant_turn": [("impl.jsonl", 4)]}
    assert "must end with a user message" in report["skipped"]["wrong_role"]["rows"][1]["detail"]


def test_mixed_formats_follow_the_majority(tmp_path: Path) -> None:
    no_prompt = {"chosen": "a", "rejected": "b"}  # replies without their prompt: a missing field, not an HH row
    path = _jsonl(tmp_path / "mixed.jsonl", [_conv(1), _std(2), _std(3), _hh(4), _std(5), _std(6), no_prompt])
    cfg = _cfg(tmp_path, path)
    data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    assert report["formats"] == {"mixed.jsonl": "standard"}
    assert _lines(report) == {"mixed_format": [1, 4], "missing_field": [7]}
    assert [r.get("detail") for r in report["skipped"]["mixed_format"]["rows"]] == [
        "row is conversational, the file is standard", "row is hh, the file is standard"]
    # an explicit data.format decides instead of the majority
    cfg = _cfg(tmp_path, path, "data.format=conversational", "name=c")
    data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    assert report["formats"] == {"mixed.jsonl": "conversational"} and report["usable_pairs"] == 1
    assert _lines(report) == {"mixed_format": [2, 3, 4, 5, 6], "missing_field": [7]}


def test_a_file_without_usable_rows_says_why(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d" / "good.jsonl", [_std(i) for i in range(6)])
    _jsonl(tmp_path / "d" / "bad.jsonl", [{"question": "q", "good": "a", "bad": "b"}] * 3 + ["not json"])
    cfg = _cfg(tmp_path, tmp_path / "d")
    with pytest.raises(DataError) as e:
        data_run(cfg, cfg.run_dir)
    msg = str(e.value)
    assert "no usable rows in bad.jsonl: 4 read" in msg and "missing_field 3 (lines 1, 2, 3: no chosen or rejected)" in msg
    assert "invalid_json 1 (line 4)" in msg and "data.columns" in msg
    (tmp_path / "empty.jsonl").write_text("\n")
    cfg = _cfg(tmp_path, tmp_path / "empty.jsonl", "name=e")
    with pytest.raises(DataError, match="no usable rows in empty.jsonl: the file holds no rows"):
        data_run(cfg, cfg.run_dir)
    with pytest.raises(DataError, match="does not exist"):
        data_run(_cfg(tmp_path, tmp_path / "missing.jsonl", "name=m"), tmp_path / "m")
    assert not (stage_dir(cfg.run_dir, "data") / "manifest.json").exists()


def test_csv_cannot_hold_conversations(tmp_path: Path) -> None:
    path = tmp_path / "conv.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "chosen", "rejected"])
        for i in range(3):
            w.writerow([json.dumps(v) for v in _conv(i).values()])
    with pytest.raises(DataError, match=r"wrong_type 3 \(lines 2, 3, 4: prompt looks like a list of messages: conversational data in .csv is not supported"):
        data_run(_cfg(tmp_path, path), tmp_path / "r1")
    with pytest.raises(DataError, match="data.format is conversational, but conversational data in .csv is not supported"):
        data_run(_cfg(tmp_path, path, "data.format=conversational"), tmp_path / "r2")


def test_hh_rows_in_a_file_are_flagged_not_skipped_when_identical(tmp_path: Path) -> None:
    same = {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"}
    path = _jsonl(tmp_path / "red_team.jsonl", [_hh(1), _hh(2), same, _hh(4), {"chosen": "\n\nHuman: only"}])
    cfg = _cfg(tmp_path, path)
    data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    assert report["formats"] == {"red_team.jsonl": "hh"} and report["render"] is None
    assert [r["line"] for r in report["flagged"]["identical"]["rows"]] == [3] and report["usable_pairs"] == 4
    assert _lines(report) == {"missing_field": [5]}


# ----------------------------------------------------------------------------- eval prompts


def test_eval_prompts_are_drawn_from_the_data_with_keywords_and_seed(tmp_path: Path) -> None:
    rows = [{**_std(i), "prompt": f"How do I hurt person {i}?"} for i in range(4)] + [_std(i) for i in range(10, 16)]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    extra = ["data.harmful_keywords=[hurt]", "data.eval_size=2"]
    cfg = _cfg(tmp_path, path, *extra, prompts=False)
    data_run(cfg, cfg.run_dir)
    harmful = read_json(stage_dir(cfg.run_dir, "data") / "prompts" / "harmful.json")
    helpful = read_json(stage_dir(cfg.run_dir, "data") / "prompts" / "helpful.json")
    assert len(harmful) == 2 and all(p.startswith("Human: How do I hurt person") for p in harmful)
    assert len(helpful) == 2 and all(p.startswith("Human: Question number 1") for p in helpful)  # harmful rows left out
    report = _report(cfg)
    assert report["prompt_sets"]["harmful"]["eligible"] == 4 and report["prompt_sets"]["helpful"]["eligible"] == 6
    assert report["eval_leakage_held_out"] == 4  # the drawn prompts' rows never train
    train = read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl")
    assert not {eval_prompt(r["prompt"]) for r in train} & set(harmful + helpful)
    again = _cfg(tmp_path, path, *extra, "name=again", prompts=False)
    data_run(again, again.run_dir)
    assert read_json(stage_dir(again.run_dir, "data") / "prompts" / "harmful.json") == harmful
    other = _cfg(tmp_path, path, *extra, "name=other", "data.eval_seed=7", "data.eval_size=3", prompts=False)
    data_run(other, other.run_dir)
    assert len(read_json(stage_dir(other.run_dir, "data") / "prompts" / "harmful.json")) == 3
    with pytest.raises(DataError, match=r"harmful prompt set: only 0 distinct prompts in p.jsonl match data.harmful_keywords \['murder'\]"):
        data_run(_cfg(tmp_path, path, "data.harmful_keywords=[murder]", "name=none", prompts=False), tmp_path / "x")


def test_prompt_file_may_hold_objects(tmp_path: Path) -> None:
    prompts = tmp_path / "red_team.json"
    prompts.write_text(json.dumps([{"prompt": "Human: one"}, "Human: two"]))
    path = _jsonl(tmp_path / "p.jsonl", [_std(i) for i in range(8)])
    cfg = _cfg(tmp_path, path, f"data.harmful_prompts_file={prompts}", "data.helpful_keywords=[number]", prompts=False)
    data_run(cfg, cfg.run_dir)
    assert read_json(stage_dir(cfg.run_dir, "data") / "prompts" / "harmful.json") == ["Human: one", "Human: two"]
    assert _report(cfg)["prompt_sets"]["harmful"]["source"] == "file"


# ----------------------------------------------------------------------------- rendering


def _tiny_model_dir(tmp_path: Path, template: str | None) -> Path:
    from hhalign.models.loading import build_tiny_causal_lm, train_tokenizer

    tok = train_tokenizer(["Question number 1? A careful answer. No idea.", "<|user|> <|assistant|>"] * 20, vocab_size=300)
    if template:
        tok.chat_template = template
    out = tmp_path / ("chat_lm" if template else "opt_like")
    build_tiny_causal_lm(tok, TinyModelSection(hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_chat_template_rendering(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = _tiny_model_dir(tmp_path, TEMPLATE)
    tok = AutoTokenizer.from_pretrained(model)
    conv = Conversation([Message("system", "Be kind."), Message("user", "Hi?")], "Hello!", "Go away.")
    prompt, chosen, rejected = Renderer("chat_template", tokenizer=tok).render(conv)
    assert prompt == "<|system|>\nBe kind.</s>\n<|user|>\nHi?</s>\n<|assistant|>\n"
    assert (chosen, rejected) == ("Hello!</s>\n", "Go away.</s>\n")
    # through the stage: auto picks the model's template; eval prompts are the rendered prompts
    path = _jsonl(tmp_path / "conv.jsonl", [_conv(i) for i in range(8)])
    cfg = _cfg(tmp_path, path, f"model.name_or_path={model}", "data.harmful_keywords=[]", prompts=False)
    manifest = data_run(cfg, cfg.run_dir)
    assert _report(cfg)["render"] == "chat_template" and "rendered chat_template" in manifest["summary"]
    harmful = read_json(stage_dir(cfg.run_dir, "data") / "prompts" / "harmful.json")
    assert all(p.startswith("<|user|>\nQuestion number") and p.endswith("<|assistant|>\n") for p in harmful)
    train = read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl")
    assert train and all(r["prompt"].endswith("<|assistant|>\n") and r["chosen"].endswith("</s>\n") for r in train)
    assert not {r["prompt"] for r in train} & set(harmful)
    # a template that cannot render a row skips it with the template's own message
    broken = Renderer("chat_template", tokenizer=tok)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(RowError, match="render_failed"):
        broken.render(conv)


def test_models_without_a_template_get_hh_rendering(tmp_path: Path) -> None:
    model = _tiny_model_dir(tmp_path, None)
    path = _jsonl(tmp_path / "conv.jsonl", [_conv(i) for i in range(6)])
    cfg = _cfg(tmp_path, path, f"model.name_or_path={model}")
    data_run(cfg, cfg.run_dir)
    assert _report(cfg)["render"] == "hh"
    assert all(r["prompt"].startswith("\n\nHuman: Question number") and r["prompt"].endswith("\n\nAssistant:")
               for r in read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl"))
    with pytest.raises(DataError, match="has no chat template; use data.render: hh"):
        data_run(_cfg(tmp_path, path, f"model.name_or_path={model}", "data.render=chat_template", "name=x"), tmp_path / "x")
    with pytest.raises(DataError, match="'tiny', built from scratch"):
        data_run(_cfg(tmp_path, path, "data.render=chat_template", "name=y"), tmp_path / "y")
    with pytest.raises(DataError, match="Set data.render: hh"):
        data_run(_cfg(tmp_path, path, f"model.name_or_path={tmp_path / 'no_model'}", "name=z"), tmp_path / "z")


# ----------------------------------------------------------------------------- layouts and the hub


def test_layout_auto(tmp_path: Path, hh_dir: Path) -> None:
    cfg = load_config(None)
    assert data_layout(cfg.data) == "subsets"  # Anthropic/hh-rlhf
    assert data_layout(load_config(None, overrides=["data.source=trl-lib/ultrafeedback_binarized"]).data) == "single"
    assert data_layout(load_config(None, overrides=[f"data.source={hh_dir}"]).data) == "subsets"
    assert data_layout(load_config(None, overrides=[f"data.source={tmp_path / 'x.jsonl'}"]).data) == "single"


def test_hub_dataset_with_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake(source: str, split: str) -> list[dict[str, Any]]:
        calls.append((source, split))
        return [_conv(i) for i in range(8)] if split == "train" else [_conv(i) for i in range(100, 104)]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = load_config(None, overrides=["data.source=someone/prefs", "model.name_or_path=tiny", "data.train_split=train",
                                       "data.eval_split=test", "data.eval_size=2", "data.heldout_rows=1",
                                       "data.harmful_keywords=[]", f"output_dir={tmp_path}"])
    data_run(cfg, cfg.run_dir)
    report = _report(cfg)
    assert calls == [("someone/prefs", "train"), ("someone/prefs", "test")]
    assert report["formats"] == {"someone/prefs:train": "conversational"} and report["usable_pairs"] == 8
    assert report["prompt_sets"]["harmful"]["source"] == "someone/prefs:test"

    def offline(source: str, split: str) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load 'someone/prefs' \\(split=train\\).*hf download someone/prefs.*as data.source"):
        data_run(cfg, tmp_path / "again")
