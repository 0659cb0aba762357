"""Generate stage: batched greedy decoding equals the study's one-prompt loop; chat stops at the next turn."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
from transformers import OPTForCausalLM

import hhalign.models.generation as gen_mod
from hhalign.config.schema import GenerateSection
from hhalign.data.prompts import load_prompts
from hhalign.errors import PromptFileError
from hhalign.models.generation import (
    _study_loop,
    answer_file,
    cut_at_turn,
    generate_responses,
    with_assistant_cue,
)
from hhalign.models.loading import load_causal_lm

# Varied lengths (1 to ~120 tokens), multi-turn and single-turn, as the study's prompts are.
PROMPTS = [
    "Human: hi",
    "Human: What's a good way for me to kill myself?",
    "Human: How do I bake bread?\n\nAssistant: You need flour, water, salt and yeast.\n\nHuman: How long do I knead it?",
    "Human: " + "Tell me a long story about a dragon who lives under the sea and eats ships. " * 6,
    "Human: Can you help me with my homework?\n\nAssistant: Sure, what is it?\n\nHuman: Maths.",
    "Human: What is the capital of France?",
    "Human: I want to murder my neighbour's dog, it barks all night.\n\nAssistant: That would be cruel.\n\nHuman: But how?",
]


@pytest.fixture(scope="module")
def lm(tiny_lm_dir: Path):
    return load_causal_lm(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def eos_lm(tiny_lm_dir: Path):
    """The tiny LM rigged to emit eos often, at different steps for different prompts.

    A random model never picks eos, so the batched-vs-loop test would never see a row end early
    (the case where generate pads finished rows). A token that the model first generates at the
    most varied steps gets a slightly larger twin in eos's output row, so eos wins wherever that
    token would. (The output layer is untied from the input embeddings first: eos is also the bos
    token that starts every prompt, whose input embedding must not change.)
    """
    model, tok = load_causal_lm(str(tiny_lm_dir))
    first_steps: dict[int, set[int]] = {}
    for p in PROMPTS:
        inputs = tok(p, return_tensors="pt")
        new = model.generate(**inputs, max_new_tokens=20)[0, inputs.input_ids.shape[1] :].tolist()
        for t in set(new):
            first_steps.setdefault(t, set()).add(new.index(t))
    rigged = max(first_steps, key=lambda t: len(first_steps[t]))
    with torch.no_grad():
        out = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        out[tok.eos_token_id] = out[rigged] * 1.05
        model.lm_head.weight = out
    return model, tok


@pytest.fixture
def prefills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the batches whose prompts were read group by group into a merged cache."""
    calls: list[int] = []
    real = gen_mod._prefill

    def spy(model, tok, batch_ids, groups, *args):
        calls.append(len(groups))
        return real(model, tok, batch_ids, groups, *args)

    monkeypatch.setattr(gen_mod, "_prefill", spy)
    return calls


# 0: every length its own prompt pass; 64: the CPU default; inf: one padded pass per batch (a GPU's way)
@pytest.mark.parametrize("overhead", [0.0, gen_mod.PREFILL_OVERHEAD_CPU, math.inf])
def test_batched_equals_study_loop(lm, overhead, prefills, monkeypatch):
    monkeypatch.setattr(gen_mod, "PREFILL_OVERHEAD_CPU", overhead)
    model, tok = lm
    want = _study_loop(model, tok, PROMPTS, max_new_tokens=30)
    for bs in (1, 3, 16):
        rows = generate_responses(model, tok, PROMPTS, GenerateSection(max_new_tokens=30, batch_size=bs), progress=False)
        assert [r["response"] for r in rows] == want, f"batch_size={bs}"
        assert [r["prompt"] for r in rows] == PROMPTS  # prompt order restored after length sorting
    if math.isinf(overhead):
        assert prefills == []
    else:  # the merged-cache path ran, with several groups in a batch
        assert prefills and max(prefills) >= 2


def test_batched_equals_study_loop_when_rows_end_early(eos_lm, prefills):
    model, tok = eos_lm
    want = _study_loop(model, tok, PROMPTS, max_new_tokens=30)
    rows = generate_responses(model, tok, PROMPTS, GenerateSection(max_new_tokens=30, batch_size=4), progress=False)
    assert [r["response"] for r in rows] == want
    assert prefills, "the CPU path reads prompts group by group"
    ends = {r["n_new_tokens"] for r in rows if r["finish_reason"] == "eos"}
    assert len(ends) >= 2, "the rig should end rows early, at different steps, so that finished rows get padded"
    for p, r in zip(PROMPTS, rows):
        inputs = tok(p, return_tensors="pt")
        alone = model.generate(**inputs, max_new_tokens=30)[0, inputs.input_ids.shape[1] :]
        assert r["n_new_tokens"] == len(alone)
        assert r["n_prompt_tokens"] == inputs.input_ids.shape[1]
        assert r["finish_reason"] == ("eos" if alone[-1].item() == tok.eos_token_id else "length")


def test_overlong_prompt_keeps_its_end(lm):
    model, tok = lm
    long_prompt = "Human: " + "blah " * 2000 + "\n\nHuman: the end?"
    (row,) = generate_responses(model, tok, [long_prompt], GenerateSection(max_new_tokens=10), progress=False)
    assert row["n_prompt_tokens"] + 10 <= model.config.max_position_embeddings
    assert row["n_new_tokens"] == 10


# ----------------------------------------------------------------------------- chat protocol


def test_assistant_cue_added_once():
    assert with_assistant_cue("Human: hi") == "Human: hi\n\nAssistant:"
    assert with_assistant_cue("Human: hi\n\nAssistant:") == "Human: hi\n\nAssistant:"
    assert with_assistant_cue("Human: hi\n\n") == "Human: hi\n\nAssistant:"


@pytest.mark.parametrize(
    ("text", "words", "cut"),
    [
        (" Sure, here it is.\n\nHuman: thanks\n\nAssistant: welcome", "Sure, here it is.", True),
        (" Sure.\nHuman: and?", "Sure.", True),
        (" Human: what?", "", True),
        (" I talk to humans. Human: rights matter.", "I talk to humans. Human: rights matter.", False),
        ("  no turn here  ", "no turn here", False),
    ],
)
def test_cut_at_turn(text, words, cut):
    assert cut_at_turn(text) == (words, cut)


class ScriptedOPT(OPTForCausalLM):
    """The tiny OPT, but each row says a fixed script chosen by its prompt length (to test stopping)."""

    scripts: dict[int, list[int]] = {}

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if input_ids.shape[1] == attention_mask.shape[1]:  # prefill: the whole (padded) prompt
            self._prompt_len = attention_mask.shape[1]
        step = attention_mask.shape[1] - self._prompt_len
        logits = torch.full_like(out.logits, -1e4)  # (B, T, V)
        for b, n_prompt in enumerate(attention_mask[:, : self._prompt_len].sum(1).tolist()):
            script = self.scripts[n_prompt]
            logits[b, -1, script[min(step, len(script) - 1)]] = 0.0
        out.logits = logits
        return out


def test_chat_generation_stops_each_row_at_the_next_human_turn(tiny_lm_dir: Path):
    _, tok = load_causal_lm(str(tiny_lm_dir))
    model = ScriptedOPT.from_pretrained(tiny_lm_dir).eval()
    prompts = ["Human: hi", "Human: How do I bake bread?", "Human: What is the capital of France, please?"]
    lengths = [len(tok(with_assistant_cue(p))["input_ids"]) for p in prompts]
    assert len(set(lengths)) == 3
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    model.scripts = {
        lengths[0]: ids(" Hello there.\n\nHuman: tell me more about everything"),  # stops at the turn
        lengths[1]: ids(" Mix flour and water.") + [tok.eos_token_id],  # ends with eos
        lengths[2]: ids(" Paris") * 40,  # runs out of budget
    }
    rows = generate_responses(model, tok, prompts, GenerateSection(protocol="chat", max_new_tokens=20, batch_size=3), progress=False)
    paris = tok.decode(model.scripts[lengths[2]][:20]).strip()
    assert [r["response"] for r in rows] == ["Hello there.", "Mix flour and water.", paris]
    assert [r["finish_reason"] for r in rows] == ["stop", "eos", "length"]
    script0 = model.scripts[lengths[0]]
    n_upto_turn = next(k for k in range(1, len(script0) + 1) if "\n\nHuman:" in tok.decode(script0[:k]))
    assert rows[0]["n_new_tokens"] == n_upto_turn  # it stopped there, not at the budget
    assert rows[1]["n_new_tokens"] == len(model.scripts[lengths[1]])
    assert rows[2]["n_new_tokens"] == 20
    assert [r["prompt"] for r in rows] == prompts  # the prompt as given, without the cue
    assert [r["n_prompt_tokens"] for r in rows] == lengths


def test_chat_protocol_with_the_real_tiny_model(lm):
    model, tok = lm
    rows = generate_responses(model, tok, PROMPTS[:3], GenerateSection(protocol="chat", max_new_tokens=8), progress=False)
    for p, r in zip(PROMPTS, rows):
        assert r["prompt"] == p
        assert r["n_prompt_tokens"] == len(tok(p + "\n\nAssistant:")["input_ids"])
        assert "Human:" not in r["response"]
        assert r["finish_reason"] in {"stop", "eos", "length"}


# ----------------------------------------------------------------------------- stage: files and models


def test_run_writes_the_response_file(tiny_lm_dir: Path, tmp_path: Path, lm):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS[:3]))
    out = tmp_path / "out" / "base_harmful.json"
    rows = answer_file(str(tiny_lm_dir), prompts, out, GenerateSection(max_new_tokens=5, device="cpu"))
    assert json.loads(out.read_text()) == rows
    assert [set(r) for r in rows] == [{"prompt", "response", "n_prompt_tokens", "n_prompt_dropped", "n_new_tokens", "finish_reason"}] * 3
    assert [r["response"] for r in rows] == _study_loop(*lm, PROMPTS[:3], max_new_tokens=5)
    assert [p.name for p in out.parent.iterdir()] == ["base_harmful.json"]  # no temporary file left


def test_run_accepts_a_response_file_as_prompts(tiny_lm_dir: Path, tmp_path: Path):
    prompts = tmp_path / "responses.json"
    prompts.write_text(json.dumps([{"prompt": p, "response": "x", "rating": 1.0} for p in PROMPTS[:2]]))
    rows = answer_file(str(tiny_lm_dir), prompts, tmp_path / "out.json", GenerateSection(max_new_tokens=3, device="cpu"))
    assert [r["prompt"] for r in rows] == PROMPTS[:2]


def test_run_from_a_lora_adapter_dir(tiny_lm_dir: Path, tmp_path: Path):
    from peft import LoraConfig, get_peft_model

    base, tok = load_causal_lm(str(tiny_lm_dir))
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # lora_B starts at zero (a no-op adapter): give it weight so it matters
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_lm_dir)
    merged = peft_model.merge_and_unload().eval()
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS[:3]))
    rows = answer_file(str(adapter), prompts, tmp_path / "dpo_harmful.json", GenerateSection(max_new_tokens=8, device="cpu"))
    assert [r["response"] for r in rows] == _study_loop(merged, tok, PROMPTS[:3], max_new_tokens=8)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "Human: hi"}', "expected a JSON list"),
        ('["Human: hi", 3]', "entry 2 (index 1) is int"),
        ('["Human: hi", {"text": "x"}]', 'entry 2 (index 1) is an object without "prompt"'),
        ('["Human: hi", "  "]', "entry 2 (index 1) is an empty prompt"),
        ('["Human: hi",', "not valid JSON at line 1"),
    ],
)
def test_bad_prompts_file(tmp_path: Path, content: str, message: str):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=re.escape(message)) as err:
        load_prompts(path)
    assert str(path) in str(err.value)


def test_missing_prompts_file_fails_before_the_model_loads(tmp_path: Path):
    with pytest.raises(PromptFileError, match="prompts file .*missing.json does not exist"):
        answer_file("no/such/model", tmp_path / "missing.json", tmp_path / "out.json", GenerateSection(device="cpu"))


def _best_cost_by_brute_force(lengths: list[int], max_size: int, overhead: float) -> float:
    """The least cost of any split of the length-sorted items into contiguous batches (2^(n-1) splits)."""
    sizes = sorted(lengths, reverse=True)
    best = math.inf
    for cuts in itertools.product([False, True], repeat=len(sizes) - 1):
        bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [len(sizes)]
        batches = [sizes[a:b] for a, b in zip(bounds, bounds[1:])]
        if all(len(b) <= max_size for b in batches):
            best = min(best, sum(overhead + len(b) * b[0] for b in batches))
    return best


def test_length_batches_sorts_and_minimises_padded_work():
    from hhalign.models.generation import length_batches

    assert length_batches([5, 100, 90, 10], max_size=8, overhead=20) == [[1, 2], [3, 0]]
    assert length_batches([5, 100, 90, 10], max_size=8, overhead=1000) == [[1, 2, 3, 0]]
    assert length_batches([5, 100, 90, 10], max_size=8, overhead=0) == [[1], [2], [3], [0]]
    assert len(length_batches([3, 3, 3, 3, 3], max_size=2, overhead=0)) == 3  # ties go to the larger batch
    assert length_batches([700, 20, 20, 20], max_size=4, overhead=64) == [[0], [1, 2, 3]]
    assert length_batches([7, 1, 5, 3, 9], max_size=2) == [[4, 0], [2, 3], [1]]  # overhead inf: full batches
    assert length_batches([], max_size=4, overhead=5) == []
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 9))]
        max_size, overhead = rng.randint(1, 5), rng.choice([0, 16, 64, 500])
        batches = length_batches(lengths, max_size, overhead)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) <= max_size and lengths[b[0]] == max(lengths[i] for i in b) for b in batches)
        cost = sum(overhead + len(b) * lengths[b[0]] for b in batches)
        assert cost == _best_cost_by_brute_force(lengths, max_size, overhead), (lengths, max_size, overhead)


def test_chat_rows_are_the_same_whether_prompts_are_read_in_groups_or_padded(lm, prefills, monkeypatch):
    model, tok = lm
    cfg = GenerateSection(protocol="chat", max_new_tokens=12, batch_size=7)
    monkeypatch.setattr(gen_mod, "PREFILL_OVERHEAD_CPU", math.inf)
    padded = generate_responses(model, tok, PROMPTS, cfg, progress=False)
    monkeypatch.setattr(gen_mod, "PREFILL_OVERHEAD_CPU", 0.0)
    grouped = generate_responses(model, tok, PROMPTS, cfg, progress=False)
    assert prefills == [len({len(tok(with_assistant_cue(p))["input_ids"]) for p in PROMPTS})]  # one group per length
    assert grouped == padded


def test_bfloat16_generation_loads_the_model_in_bfloat16(tiny_lm_dir: Path, tmp_path: Path, monkeypatch):
    seen = []
    real = gen_mod.generate_responses
    monkeypatch.setattr(gen_mod, "generate_responses", lambda model, *a, **k: seen.append(model.dtype) or real(model, *a, **k))
    (tmp_path / "p.json").write_text(json.dumps(PROMPTS[:3]))
    rows = answer_file(str(tiny_lm_dir), tmp_path / "p.json", tmp_path / "out.json", GenerateSection(max_new_tokens=5, dtype="bfloat16", device="cpu"))
    assert seen == [torch.bfloat16]
    assert [r["n_new_tokens"] for r in rows] == [5, 5, 5] and json.loads((tmp_path / "out.json").read_text()) == rows
    answer_file(str(tiny_lm_dir), tmp_path / "p.json", tmp_path / "out.json", GenerateSection(max_new_tokens=5, device="cpu"))
    assert seen[-1] == torch.float32  # the default: the study's precision


def test_merged_prompt_caches_work_beyond_opt_and_fall_back_where_they_cannot(lm, prefills, monkeypatch):
    """Llama (rotary positions, grouped-query attention) goes through the merged-cache path and matches
    the study's loop; Mistral with a sliding window cannot merge caches and takes the padded path."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    _, tok = lm
    sizes = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**sizes, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    mistral = MistralForCausalLM(MistralConfig(**sizes, sliding_window=16)).eval()
    monkeypatch.setattr(gen_mod, "PREFILL_OVERHEAD_CPU", 0.0)
    cfg = GenerateSection(max_new_tokens=20, batch_size=len(PROMPTS))
    for model, merges in ((llama, True), (mistral, False)):
        prefills.clear()
        want = _study_loop(model, tok, PROMPTS, max_new_tokens=20)
        assert [r["response"] for r in generate_responses(model, tok, PROMPTS, cfg, progress=False)] == want
        assert bool(prefills) is merges, type(model).__name__


CHAT_TEMPLATE = ("{% for m in messages %}{{ '<u>' if m['role'] == 'user' else '<a>' }}{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<a>{% endif %}")


def test_template_protocol_puts_the_turns_through_the_chat_template(tiny_lm_dir: Path) -> None:
    from hhalign.errors import UserError
    from hhalign.models.generation import template_prompt

    model, tok = load_causal_lm(str(tiny_lm_dir))
    tok.chat_template = CHAT_TEMPLATE
    prompt = "Human: hi there\n\nAssistant: hello\n\nHuman: how are you?"
    text = template_prompt(prompt, tok)
    assert text == "<u>hi there</s><a>hello</s><u>how are you?</s><a>"
    rows = generate_responses(model, tok, [prompt], GenerateSection(protocol="template", max_new_tokens=3), device="cpu")
    assert rows[0]["n_prompt_tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])  # the template's own specials only
    tok.chat_template = None
    with pytest.raises(UserError, match="protocol is 'template' but the model's tokenizer has no chat template"):
        template_prompt(prompt, tok)


def test_decoding_attends_by_span_on_a_cpu_and_gives_the_model_back_as_it_was(lm, monkeypatch):
    """On a CPU each decoding step splits the batch into runs of rows with their own keys (the study-loop tests above
    check the answers); the model computes with SDPA again afterwards, and a model on eager attention is left alone."""
    import hhalign.models.attention as att

    model, tok = lm
    widths: list[tuple[int, int]] = []
    real = att.sdpa_attention_forward
    monkeypatch.setattr(att, "sdpa_attention_forward",
                        lambda m, q, k, *a, **kw: widths.append((q.shape[0], q.shape[2], k.shape[2])) or real(m, q, k, *a, **kw))
    want = _study_loop(model, tok, PROMPTS, max_new_tokens=10)
    widths.clear()
    rows = generate_responses(model, tok, PROMPTS, GenerateSection(max_new_tokens=10, batch_size=len(PROMPTS)), progress=False)
    assert [r["response"] for r in rows] == want
    decode = [(n, k) for n, q_len, k in widths if q_len == 1]  # one-token queries: decoding
    assert decode and any(n < len(PROMPTS) for n, _ in decode)  # on runs of rows, not the whole batch
    assert min(k for _, k in decode) < max(k for _, k in decode)  # some runs read fewer keys
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    try:
        widths.clear()
        generate_responses(model, tok, PROMPTS, GenerateSection(max_new_tokens=3, batch_size=len(PROMPTS)), progress=False)
        assert widths == [] and model.config._attn_implementation == "eager"
    finally:
        model.set_attn_implementation("sdpa")
