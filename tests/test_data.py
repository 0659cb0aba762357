"""The data stage: dialogue parsing, prompt/response split, the study's eval prompt draw, malformed rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hhalign.artifacts import read_json, read_jsonl
from hhalign.cli import main
from hhalign.config.files import load_config
from hhalign.data.hh import (
    Message,
    parse_hh_dialogue,
    render_hh,
    split_prompt,
    study_prompt,
)
from hhalign.engine.table import stage_dir
from hhalign.errors import DataError
from hhalign.stages.data import run as data_run

ASSET = Path(__file__).resolve().parent / "assets" / "hh_rlhf_tiny.jsonl"


def test_parse_and_render_dialogue() -> None:
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    msgs = parse_hh_dialogue(text)
    assert msgs == [Message("user", "hi"), Message("assistant", "hello"), Message("user", "how are you?"),
                    Message("assistant", "fine, thanks")]
    assert render_hh(msgs) == text


def test_split_prompt_keeps_everything() -> None:
    chosen = "\n\nHuman: a?\n\nAssistant: b\n\nHuman: c?\n\nAssistant: good answer"
    rejected = "\n\nHuman: a?\n\nAssistant: b\n\nHuman: c?\n\nAssistant: bad"
    prompt, c, r = split_prompt(chosen, rejected)
    assert prompt.endswith("\n\nAssistant:") and prompt + c == chosen and prompt + r == rejected
    assert (c, r) == (" good answer", " bad")
    for ch, rj, reason in [
        ("\n\nHuman: x", "\n\nHuman: x", "no_assistant_turn"),
        ("\n\nHuman: x\n\nAssistant: y", "\n\nHuman: z\n\nAssistant: y", "prefix_mismatch"),
        ("\n\nHuman: x\n\nAssistant: ", "\n\nHuman: x\n\nAssistant: y", "empty_final_turn"),
    ]:
        with pytest.raises(ValueError, match=reason):
            split_prompt(ch, rj)


def test_study_prompt_drops_last_assistant_turn() -> None:
    assert study_prompt("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d") == "Human: a\n\nAssistant: b\n\nHuman: c"
    assert study_prompt("\n\nHuman: only") == "Human: only"


def test_prompts_match_the_study_byte_for_byte(hh_dir: Path, paper_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "--data-dir", str(hh_dir), "--seed", "100", "--out", str(tmp_path)]) == 0
    ours = (tmp_path / "harmful_prompts.json").read_bytes()
    theirs = (paper_dir / "prompts" / "harmful_prompts.json").read_bytes()
    assert json.loads(ours) == json.loads(theirs) and len(json.loads(ours)) == 50
    assert ours == theirs
    out = capsys.readouterr()
    assert "192 eligible" in out.out
    assert "helpful prompt set skipped" in out.err  # helpful-base is not in ../shared: a note, not an error
    assert not (tmp_path / "helpful_prompts.json").exists()


def test_other_seed_gives_other_prompts(hh_dir: Path, paper_dir: Path, tmp_path: Path) -> None:
    assert main(["prompts", "--data-dir", str(hh_dir), "--seed", "7", "--out", str(tmp_path)]) == 0
    assert read_json(tmp_path / "harmful_prompts.json") != read_json(paper_dir / "prompts" / "harmful_prompts.json")


def _crafted_dir(tmp_path: Path) -> Path:
    """The 10-row asset plus an invalid-JSON line and a non-UTF-8 line, gzipped in the hub's layout."""
    root = tmp_path / "hh"
    (root / "harmless-base").mkdir(parents=True)
    raw = ASSET.read_bytes() + b'{"chosen": "\\n\\nHuman: broken\n' + b'{"chosen": "\xff\xfe bad bytes"}\n'
    with gzip.open(root / "harmless-base" / "test.jsonl.gz", "wb") as fh:
        fh.write(raw)
    return root


def _tiny_cfg(tmp_path: Path, source: Path, *extra: str):
    return load_config(None, overrides=[
        f"data.source={source}", "data.train_split=test", "data.train_subsets=[harmless-base]",
        "data.harmful_keywords=[]", "data.eval_size=2", "data.heldout_rows=1", f"output_dir={tmp_path / 'runs'}",
        "name=t", *extra])


def test_malformed_rows_are_counted_by_reason_with_lines(tmp_path: Path) -> None:
    root = _crafted_dir(tmp_path)
    cfg = _tiny_cfg(tmp_path, root)
    manifest = data_run(cfg, cfg.run_dir)
    report = read_json(stage_dir(cfg.run_dir, "data") / "data_report.json")
    skipped = {k: [r["line"] for r in v["rows"]] for k, v in report["skipped"].items()}
    assert skipped == {"no_assistant_turn": [5], "prefix_mismatch": [6], "empty_final_turn": [7],
                       "missing_field": [8], "invalid_json": [11], "not_utf8": [12]}
    assert [r["line"] for r in report["flagged"]["identical"]["rows"]] == [3]
    assert [r["line"] for r in report["flagged"]["near_identical"]["rows"]] == [4]
    assert report["rows_read"] == 12
    # 6 usable rows: those drawn as eval prompts are held out, 1 more held out for reports, the rest train
    prompts = read_json(stage_dir(cfg.run_dir, "data") / "prompts" / "harmful.json")
    assert len(prompts) == 2 and report["usable_pairs"] == 6
    assert 1 <= report["eval_leakage_held_out"] <= 2
    assert report["heldout_pairs"] == 1
    assert report["train_pairs"] == 6 - 1 - report["eval_leakage_held_out"]
    assert "skipped 6 (" in manifest["summary"]
    # no leakage: no training dialogue is an eval prompt
    train = read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl")
    assert not {study_prompt(r["prompt"] + r["chosen"]) for r in train} & set(prompts)
    for r in train:
        assert r["prompt"].endswith("\n\nAssistant:")
    # manifest written last, listing every output
    assert set(manifest["outputs"]) == {"prefs.jsonl", "heldout.jsonl", "data_report.json", "prompts/harmful.json"}
    for out in manifest["outputs"]:
        assert (stage_dir(cfg.run_dir, "data") / out).is_file()
    assert manifest["inputs"]["harmless-base/test"]["sha256"]


def test_noise_filters_drop_flagged_pairs(tmp_path: Path) -> None:
    root = _crafted_dir(tmp_path)
    cfg = _tiny_cfg(tmp_path, root, "data.drop_identical=true", "data.drop_near_identical=true", "data.eval_size=1")
    data_run(cfg, cfg.run_dir)
    report = read_json(stage_dir(cfg.run_dir, "data") / "data_report.json")
    assert report["dropped_by_filter"] == {"identical": 1, "near_identical": 1}
    lines = {r["line"] for r in read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl")}
    assert not lines & {3, 4}


def test_real_data_report(hh_dir: Path, tmp_path: Path, paper_dir: Path) -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                      overrides=[f"data.source={hh_dir}", f"output_dir={tmp_path}",
                                 f"data.helpful_prompts_file={paper_dir / 'prompts' / 'helpful_prompts.json'}"])
    data_run(cfg, cfg.run_dir)
    report = read_json(stage_dir(cfg.run_dir, "data") / "data_report.json")
    assert report["rows_read"] == 2312
    # 49 of the 50 harmful eval rows are usable pairs, held out of training; row 2037 is skipped (prefix_mismatch)
    assert report["eval_leakage_held_out"] == 49
    assert 2037 in [r["line"] for r in report["skipped"]["prefix_mismatch"]["rows"]]
    assert report["train_pairs"] == 400 and report["heldout_pairs"] == 100
    assert report["prompt_sets"]["helpful"]["source"] == "file"
    assert read_json(stage_dir(cfg.run_dir, "data") / "prompts" / "harmful.json") == read_json(paper_dir / "prompts" / "harmful_prompts.json")


def test_missing_data_dir_and_unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _tiny_cfg(tmp_path, tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not exist. Pass --data-dir"):
        data_run(cfg, cfg.run_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, overrides=[f"output_dir={tmp_path}", "data.source=Anthropic/hh-rlhf"])
    with pytest.raises(DataError, match="Hugging Face hub.*--data-dir"):
        data_run(cfg, cfg.run_dir)
    assert not (stage_dir(cfg.run_dir, "data") / "manifest.json").exists()


def test_no_usable_rows_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "hh" / "harmless-base"
    root.mkdir(parents=True)
    (root / "test.jsonl").write_text('{"chosen": "\\n\\nHuman: x", "rejected": "\\n\\nHuman: x"}\n' * 3)
    cfg = _tiny_cfg(tmp_path, tmp_path / "hh", "data.harmful_prompts_file=" + str(_prompt_file(tmp_path)))
    with pytest.raises(DataError, match="no usable training rows"):
        data_run(cfg, cfg.run_dir)


def _prompt_file(tmp_path: Path) -> Path:
    p = tmp_path / "p.json"
    p.write_text(json.dumps(["Human: hi"]))
    return p


def test_cli_data_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _crafted_dir(tmp_path)
    code = main(["data", str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"), "--data-dir", str(root),
                 "--set", f"output_dir={tmp_path / 'r'}", "--set", "data.harmful_keywords=[]", "--set", "data.eval_size=2",
                 "--set", "data.heldout_rows=1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "data: 12 rows read" in out and "invalid_json 1" in out and "not_utf8 1" in out


def test_hh_rows_through_a_chat_template(tmp_path: Path, hh_dir: Path, tiny_lm_dir: Path) -> None:
    """data.render: chat_template renders the study's HH dialogues through the model's template, keeps their
    turns (for trimming) and their study text (for the judge); eval prompts stay the study's text."""
    import shutil

    from transformers import AutoTokenizer

    from hhalign.models.training import fit_prompt

    model = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{% for m in messages %}{{ '<u>' if m['role'] == 'user' else '<a>' }}{{ m['content'] }}</s>"
                         "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}")
    tok.save_pretrained(model)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", overrides=[
        f"output_dir={tmp_path}", f"data.source={hh_dir}", "data.max_train_rows=30", "data.heldout_rows=10", "data.eval_size=5",
        f"data.helpful_prompts_file={hh_dir.parent / 'paper' / 'prompts' / 'helpful_prompts.json'}",
        f"model.name_or_path={model}", "data.render=chat_template", "rm.enabled=false",
        "score.reward_model=OpenAssistant/reward-model-deberta-v3-large-v2"])
    data_run(cfg, cfg.run_dir)
    rows = read_jsonl(stage_dir(cfg.run_dir, "data") / "prefs.jsonl")
    originals = {r["chosen"] for r in _hh_chosen(hh_dir)}
    for row in rows:
        assert row["prompt"].startswith("<u>") and row["prompt"].endswith("<a>") and row["chosen"].endswith("</s>")
        assert row["source"]["prompt"] + row["source"]["chosen"] in originals
        assert [t["role"] for t in row["turns"]][-1] == "user"
    prompts = json.loads((stage_dir(cfg.run_dir, "data") / "prompts" / "harmful.json").read_text())
    assert all(p.startswith("Human:") for p in prompts)  # the protocol puts them to the model, not the data stage
    # an over-long prompt loses its oldest turns, re-rendered through the template
    long = next(r for r in rows if len(r["turns"]) >= 3)
    limit = len(tok(long["prompt"] + long["chosen"])["input_ids"]) - 1
    trimmed, status = fit_prompt(long["prompt"], [long["chosen"]], tok, limit, long["turns"])
    assert status == "trimmed" and trimmed.endswith("<a>") and trimmed.startswith("<u>") and len(trimmed) < len(long["prompt"])
    assert trimmed in long["prompt"]  # the latest turns, rendered the same way


def _hh_chosen(hh_dir: Path) -> list[dict]:
    with gzip.open(hh_dir / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_a_pair_too_long_even_for_its_last_turn_keeps_only_that_turn(tiny_lm_dir: Path) -> None:
    """Trimming cannot make it fit: the prompt is still cut to its last Human turn, so the trainer (which cuts the
    sequence's end) keeps as many response tokens as it can; the whole dialogue would leave it none."""
    from transformers import AutoTokenizer

    from hhalign.models.training import fit_prompt, token_len

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    prompt = ("\n\nHuman: " + "tell me about the old days at the farm " * 6 + "\n\nAssistant: " + "we grew corn and beans " * 6
              + "\n\nHuman: how do I hide it?\n\nAssistant:")
    response = " I can't help with hiding anything" * 8
    limit = token_len(tok, "\n\nHuman: how do I hide it?\n\nAssistant:" + response) - 5  # the last turn alone does not fit
    fitted, status = fit_prompt(prompt, [response], tok, limit)
    assert status == "truncated"
    assert fitted == "\n\nHuman: how do I hide it?\n\nAssistant:"
    assert token_len(tok, prompt) > limit > token_len(tok, fitted)  # the whole dialogue would leave no response token
