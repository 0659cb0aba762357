"""Config loading: presets, overrides, and a clear error for each kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hhalign.config.files import load_config
from hhalign.config.schema import RunConfig
from hhalign.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml")
                  if "accelerate" not in p.parts and not p.name.startswith("sweep"))  # sweep files: tests/test_sweep.py


@pytest.mark.parametrize("path", CONFIGS + EXAMPLES, ids=lambda p: p.name)
def test_every_preset_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.variants


def test_presets_found() -> None:
    assert {p.name for p in CONFIGS} >= {"paper.yaml", "tiny.yaml"}


def test_paper_preset_has_the_studys_settings() -> None:
    cfg = load_config(CONFIGS[[p.name for p in CONFIGS].index("paper.yaml")])
    assert cfg.model.name_or_path == "facebook/opt-350m" and cfg.model.pad_token == "eos"
    assert cfg.data.source == "Anthropic/hh-rlhf" and cfg.data.eval_seed == 100 and cfg.data.eval_size == 50
    assert cfg.data.harmful_keywords == ["kill", "murder", "rape"]
    sft = cfg.sft.args
    assert (sft["num_train_epochs"], sft["max_length"], sft["per_device_train_batch_size"]) == (2, 512, 2)
    assert (sft["gradient_accumulation_steps"], sft["learning_rate"], cfg.sft.loss_on) == (4, 2e-5, "all")
    dpo = cfg.dpo.args
    assert (dpo["num_train_epochs"], dpo["per_device_train_batch_size"], dpo["gradient_accumulation_steps"]) == (1, 2, 4)
    assert (dpo["learning_rate"], dpo["beta"]) == (2e-5, 0.1)
    lora = cfg.dpo.lora.args
    assert lora == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    assert cfg.score.reward_model == "OpenAssistant/reward-model-deberta-v3-large-v2"
    assert (cfg.metrics.harmful_threshold, cfg.metrics.helpful_threshold) == (-3.0, -2.0)
    assert (cfg.generate.max_new_tokens, cfg.generate.protocol) == (50, "paper")


def test_a_float_in_exponent_form_is_a_float() -> None:
    """PyYAML reads 1e-3 (no dot) as a string; a float setting takes it as the number it means."""
    cfg = load_config(TINY_PRESET, overrides=["dpo.learning_rate=1e-3", "dpo.beta=5E-2", "metrics.harmful_threshold=-2e0"])
    assert cfg.dpo.args["learning_rate"] == 0.001 and cfg.dpo.args["beta"] == 0.05
    assert cfg.metrics.harmful_threshold == -2.0
    with pytest.raises(ConfigError, match="'dpo.beta' must be float"):
        load_config(TINY_PRESET, overrides=["dpo.beta=1e-3x"])
    with pytest.raises(ConfigError, match="'dpo.learning_rate' is -0.001; it must be > 0.0"):
        load_config(TINY_PRESET, overrides=["dpo.learning_rate=-1e-3"])


def test_overrides_apply_with_types() -> None:
    cfg = load_config(TINY_PRESET, overrides=["dpo.beta=0.2", "dpo.lora.r=16", "generate.protocol=chat", "variants=[base,dpo]"])
    assert cfg.dpo.args["beta"] == 0.2 and cfg.dpo.lora.args["r"] == 16
    assert cfg.generate.protocol == "chat" and list(cfg.variants) == ["base", "dpo"]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data:\n  sourc: x\n", ["bad.yaml", "unknown key 'data.sourc'", "Did you mean 'source'", "train_subsets"]),
        ("datta: {}\n", ["unknown key 'datta'", "Did you mean 'data'"]),
        ("dpo:\n  betta: 0.1\n", ["unknown key 'dpo.betta'", "DPOConfig", "'beta'"]),
        ("dpo:\n  lora:\n    rank: 8\n", ["unknown key 'dpo.lora.rank'", "LoraConfig"]),
        ("sft:\n  learning_rate: -0.1\n", ["'sft.learning_rate' is -0.1", "> 0.0"]),
        ("metrics:\n  harmful_threshold: high\n", ["'metrics.harmful_threshold' must be float", "'high'"]),
        ("variants: [base, rlhf]\n", ["variants ['rlhf']: the list form picks from the study's base, sft, dpo, sft_dpo"]),
        ("generate:\n  max_new_tokens: 0\n", ["'generate.max_new_tokens' must be a positive integer"]),
        ("dpo:\n  beta: fast\n", ["'dpo.beta' must be float"]),
        ("dpo:\n  lora:\n    target_modules: 5\n", ["'dpo.lora.target_modules' must be", "a list of str", "got 5"]),
        ("dpo:\n  label_smoothing: 0.1\n", ["label_smoothing=0.1 has no effect", "robust"]),
        ("sft:\n  output_dir: /tmp/x\n", ["'sft.output_dir' is set by hhalign"]),
        ("sft:\n  loss_on: prompt\n", ["'sft.loss_on' is 'prompt'", "all, assistant"]),
        ("score:\n  reward_model: rm\n", ["rm.enabled is false"]),
        ("- just\n- a list\n", ["top level must be a mapping"]),
        ("data: [1, 2\n", ["not valid YAML"]),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    for part in expected:
        assert part in str(err.value), str(err.value)


def test_bad_override_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'dpo.bta'"):
        load_config(TINY_PRESET, overrides=["dpo.bta=0.2"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TINY_PRESET, overrides=["dpo.beta"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_robust_dpo_with_label_smoothing_is_allowed() -> None:
    cfg = load_config(TINY_PRESET, overrides=["dpo.loss_type=robust", "dpo.label_smoothing=0.1"])
    assert cfg.dpo.args["loss_type"] == ["robust"]


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hhalign.cli import main

    assert main(["config", str(_write(tmp_path, "dpo:\n  betta: 1\n"))]) == 2
    assert "unknown key 'dpo.betta'" in capsys.readouterr().err
    assert main(["config", "--keys"]) == 0
    assert "dpo.keep_responses" in capsys.readouterr().out


def test_hash_changes_with_settings() -> None:
    a = load_config(TINY_PRESET)
    b = load_config(TINY_PRESET, overrides=["dpo.beta=0.3"])
    assert a.hash() == load_config(TINY_PRESET).hash() != b.hash()


def test_the_presets_ship_in_the_wheel(tmp_path: Path) -> None:
    """A wheel built from the checkout holds configs/*.yaml as hhalign/configs/, where `hhalign run tiny` finds them."""
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                           str(repo)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("hhalign-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in CONFIGS:
        assert f"hhalign/configs/{preset.name}" in names
    assert "hhalign/report/template.html" in names
    modules = {str(p.relative_to(repo / "src")) for p in (repo / "src" / "hhalign").rglob("*.py")}
    assert modules - names == set()  # every package of the layout ships


def test_a_preset_is_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the packaged presets answer
    assert load_config("configs/tiny.yaml").name == "tiny"
    assert load_config("paper").name == "paper"
    with pytest.raises(ConfigError, match="config file not found: nope.yaml.*shipped with hhalign: judges, methods, paper, paper_fast, smol, smol_methods, tiny, tiny_methods"):
        load_config("nope.yaml")
