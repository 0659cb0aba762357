"""Generation: a model answers prompts, greedily, in length-sorted left-padded batches (the generate stage's
work, and ``hhalign generate`` on files).

    hhalign generate --model runs/tiny/03_sft/model --prompts harmful.json --out sft_harmful.json [--protocol chat]

    rows = answer_file("facebook/opt-350m", Path("harmful.json"), Path("base_harmful.json"), GenerateSection())

Three protocols (``GenerateSection.protocol``):

- ``paper``: the study's evaluation exactly. The prompt goes in as given (it ends with a Human
  turn, no "Assistant:" cue), greedy decoding, at most 50 new tokens, the response is the decoded
  text after the prompt, stripped. The study ran one prompt at a time::

      inputs = tok(prompt, return_tensors="pt")
      output = model.generate(**inputs, max_new_tokens=50)
      response = tok.decode(output[0][inputs.input_ids.shape[1]:], skip_special_tokens=True).strip()

  Batching gives the same responses (``tests/test_generate.py`` checks it against ``_study_loop``):
  left padding keeps every prompt's last token at the end of the row, the attention mask hides
  the pads, and OPT derives position ids from the mask (``cumsum(mask) - 1``), so each row sees the
  positions it would see alone. A row that ends early is filled with the pad token, which is the
  eos token (the study's setting) and is dropped by ``skip_special_tokens`` as the study's own eos is.
  On a CPU, where a pad costs as much compute as a real token, a batch's prompts are read in groups
  of similar lengths and their caches merged, left-padded, into one (``_prefill``): the same keys
  and values, without computing long runs of pads. Decoding then attends, for each run of rows of
  similar lengths, to the keys those rows have (``hhalign.models.attention``), not the whole padded width.
- ``chat``: the prompt gets "\\n\\nAssistant:" appended, generation of a row stops at the next
  "\\n\\nHuman:" (``stop_strings``, per row), and the response is the assistant's words alone.
- ``template``: for a model with a chat template (an instruct model): the prompt's Human/Assistant turns
  go through the tokenizer's chat template with its assistant cue (``template_prompt``), generation stops
  at the template's end-of-turn token, and the response is the assistant's words.

Each output row is ``{"prompt", "response", "n_prompt_tokens", "n_new_tokens", "finish_reason"}``,
in prompt order; ``finish_reason`` is "eos" (the model ended), "stop" (it began a Human turn) or
"length" (it used the whole budget). ``n_new_tokens`` counts the eos token when there is one;
``n_prompt_tokens`` is what the model saw: a prompt too long for the model's positions loses its
oldest tokens (``n_prompt_dropped`` of them; the stage prints how many prompts were cut, once) rather
than crashing the run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from hhalign import parallel
from hhalign.artifacts import write_json
from hhalign.config.schema import GenerateSection
from hhalign.data.formats import prompt_messages
from hhalign.data.prompts import load_prompts
from hhalign.errors import UserError
from hhalign.models.attention import by_span
from hhalign.models.loading import load_causal_lm, pick_device, resolve_dtype

log = logging.getLogger(__name__)

ASSISTANT_CUE = "\n\nAssistant:"
HUMAN_TURN = "\n\nHuman:"
# Where the assistant's words end in the chat protocol: a Human turn at the start of a line (or of
# the response). The stop string is "\n\nHuman:", but a model may also write "\nHuman:".
_TURN = re.compile(r"(?:^|\n)[ \t]*Human:")
# What one extra forward pass costs, in prompt tokens, when grouping prompts by length. On a CPU a
# pass of OPT-350M over a short prompt costs about as much as 60 more tokens of a long one (weights
# are read from memory once per pass: 75 ms for 14 tokens, 350 ms for 200, bfloat16, 2 cores), and
# a pad token costs as much as a real one. On a GPU pads are nearly free, so a batch is one pass.
PREFILL_OVERHEAD_CPU = 64.0
# transformers renamed `past_key_values` (generate's argument, the outputs' field) to `cache`, keeping the old name
# as a deprecated alias until 6.0: use the name the installed version has
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def prefill_overhead(device: torch.device) -> float:
    return PREFILL_OVERHEAD_CPU if device.type == "cpu" else math.inf


def with_assistant_cue(prompt: str) -> str:
    """The chat protocol's model input: the dialogue, then "\\n\\nAssistant:" (added once)."""
    prompt = prompt.rstrip()
    return prompt if prompt.endswith(ASSISTANT_CUE.strip()) else prompt + ASSISTANT_CUE


def template_prompt(prompt: str, tok: PreTrainedTokenizerBase) -> str:
    """The template protocol's model input: the prompt's turns (an HH dialogue "Human: ...\\n\\nAssistant: ...";
    any other text is one user turn) through the tokenizer's chat template, ending with its assistant cue."""
    if not getattr(tok, "chat_template", None):
        raise UserError("generate.protocol is 'template' but the model's tokenizer has no chat template: use the "
                        "paper or chat protocol")
    turns = [{"role": m.role, "content": m.content} for m in prompt_messages(prompt)]
    return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def model_text(prompt: str, protocol: str, tok: PreTrainedTokenizerBase) -> str:
    """What the model reads for ``prompt`` under ``protocol`` (see the module docstring)."""
    if protocol == "chat":
        return with_assistant_cue(prompt)
    if protocol == "template":
        return template_prompt(prompt, tok)
    return prompt


def cut_at_turn(text: str) -> tuple[str, bool]:
    """The assistant's words in ``text`` (stripped) and whether a Human turn marker cut them."""
    m = _TURN.search(text)
    return (text[: m.start()].strip(), True) if m else (text.strip(), False)


# ----------------------------------------------------------------------------- generation


def generate_responses(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: GenerateSection,
    device: str | torch.device | None = None,
    progress: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
    desc: str = "",
) -> list[dict[str, Any]]:
    """Greedy responses to ``prompts``, batched; rows in prompt order (see the module docstring).

    ``generate_kwargs`` go to ``model.generate`` as well (e.g. ``min_new_tokens`` for benchmarks).
    """
    device = torch.device(device) if device is not None else model.device
    if model.device != device:
        model.to(device)
    if not prompts:
        return []
    special = cfg.protocol != "template"  # a chat template writes its own special tokens
    encoded, dropped = zip(*(_encode(tok, model_text(p, cfg.protocol, tok), model, cfg.max_new_tokens, special) for p in prompts))
    # under a launch of several processes each rank answers whole batches of the ones a single process forms
    # (hhalign.parallel.deal), so every row is computed exactly as one process computes it
    batches = length_batches([len(ids) for ids in encoded], cfg.batch_size)
    # a batch's work: its rows times its longest prompt plus the tokens it may add
    mine = parallel.deal(batches, [len(b) * (len(encoded[b[0]]) + cfg.max_new_tokens) for b in batches])
    rows: list[tuple[int, dict[str, Any]]] = []
    bar = tqdm(total=sum(map(len, mine)), desc=desc or f"generate ({cfg.protocol})", unit="prompt",
               disable=not progress or not parallel.is_main())
    # prompts read in groups only where caches can be merged; otherwise one padded pass per batch
    overhead = prefill_overhead(device) if _mergeable(model) else math.inf
    # on a CPU each group of similar-length rows decodes over its own keys only (hhalign.models.attention)
    spans = by_span(model) if device.type == "cpu" else contextlib.nullcontext()
    with torch.inference_mode(), bar, spans:
        for idx in mine:
            batch = _generate_batch(model, tok, [encoded[i] for i in idx], cfg, device, generate_kwargs or {}, overhead)
            rows += [(i, {"prompt": prompts[i], **row, "n_prompt_dropped": dropped[i]}) for i, row in zip(idx, batch)]
            bar.update(len(idx))
    return parallel.gather(rows, len(prompts), desc or "generate")


def length_batches(lengths: list[int], max_size: int, overhead: float = math.inf) -> list[list[int]]:
    """Indices grouped into batches of similar lengths, longest first, for the least padded work.

    A batch of ``n`` items whose longest has ``L`` tokens costs ``overhead + n * L`` (``overhead``:
    what one more forward pass costs, in tokens); the split of the length-sorted items into
    batches of at most ``max_size`` minimises the total. ``overhead=inf`` gives full batches
    (pads are free, passes are not: a GPU); ``overhead=0`` batches only equal lengths. Longest
    first, so that a batch too big for memory fails at once rather than at the end.

    >>> length_batches([5, 100, 90, 10], max_size=8, overhead=20)
    [[1, 2], [3, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if math.isinf(overhead):
        return [order[k : k + max_size] for k in range(0, len(order), max_size)]
    sizes = [lengths[i] for i in order]
    best = [0.0] + [math.inf] * len(order)  # best[e]: least cost of the first e items
    start_of = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - max_size), end):  # largest batch first: it wins ties
            cost = best[start] + overhead + (end - start) * sizes[start]
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    batches, end = [], len(order)
    while end:
        batches.append(order[start_of[end] : end])
        end = start_of[end]
    return batches[::-1]


def _encode(tok: PreTrainedTokenizerBase, text: str, model: PreTrainedModel, max_new_tokens: int,
            special: bool = True) -> tuple[list[int], int]:
    """(token ids as ``tok(text)`` gives them, how many were dropped): the oldest tokens go if prompt + budget
    overflow the model's positions. (The study's loop would crash there instead: OPT has no position embedding
    past its last.)"""
    # over-long prompts are cut here, so the library's "sequence length is longer" warning is moot
    ids = tok(text, add_special_tokens=special, verbose=False)["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None or len(ids) + max_new_tokens <= limit:
        return ids, 0
    keep = limit - max_new_tokens
    if keep < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a {limit}-position model")
    head = ids[:1] if ids[0] in tok.all_special_ids else []  # keep the bos token the tokenizer adds
    return head + ids[len(ids) - (keep - len(head)) :], len(ids) - keep


def _generate_batch(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    batch_ids: list[list[int]],
    cfg: GenerateSection,
    device: torch.device,
    extra: dict[str, Any],
    overhead: float = math.inf,
) -> list[dict[str, Any]]:
    """One left-padded batch through ``model.generate``; per-row response, counts and finish reason.

    With a finite ``overhead`` (a CPU, a model whose caches merge), the prompts are first read in groups of similar lengths and
    their caches merged (``_prefill``), so no pass computes long runs of pads; decoding then runs
    over the whole batch. Otherwise ``generate`` reads the padded batch in one pass.
    """
    inputs = tok.pad({"input_ids": batch_ids}, padding=True, padding_side="left", return_tensors="pt").to(device)
    kwargs: dict[str, Any] = dict(
        do_sample=False,
        num_beams=1,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tok.pad_token_id,  # fills rows that finished early (= eos, the study's setting)
        use_cache=True,
    )
    if cfg.protocol == "chat":
        kwargs.update(stop_strings=[HUMAN_TURN], tokenizer=tok)
    kwargs.update(extra)
    groups = length_batches([len(ids) - 1 for ids in batch_ids], len(batch_ids), overhead)
    if len(groups) > 1:
        max_len = inputs["input_ids"].shape[1] + kwargs["max_new_tokens"]
        kwargs.update({CACHE: _prefill(model, tok, batch_ids, groups, max_len, device), "disable_compile": True})
    output = model.generate(**inputs, **kwargs)  # (B, T + new)
    new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
    eos_ids = _eos_ids(model, tok)
    return [_finish(tok, ids, len(prompt), eos_ids, cfg.protocol) for ids, prompt in zip(new_tokens, batch_ids)]


def _mergeable(model: PreTrainedModel) -> bool:
    """Whether prompt caches can be merged: a decoder whose every layer keeps a plain full-attention cache."""
    if model.config.is_encoder_decoder:
        return False
    try:
        cache = StaticCache(config=model.config, max_cache_len=2)
    except Exception:  # noqa: BLE001  (a model type the static cache does not know)
        return False
    return all(type(layer) is StaticLayer for layer in cache.layers)


def _prefill(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    batch_ids: list[list[int]],
    groups: list[list[int]],
    max_len: int,
    device: torch.device,
) -> StaticCache:
    """The batch's key/value cache for every prompt token but the last, computed group by group.

    Each group is left-padded to its own longest prompt only, and its positions come from its own
    mask (``cumsum(mask) - 1``), so every real token gets the keys and values it gets alone or in
    the padded batch. The rows are then placed, left-padded, into one static cache (written in
    place as decoding goes, where the default cache would copy itself at every step), and
    ``generate`` reads each prompt's last token and decodes the whole batch from there.
    """
    width = max(len(ids) for ids in batch_ids) - 1  # cached positions: all but each prompt's last token
    parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    # logits_to_keep=1: the prefill needs the cache, not a (B, T, vocab) tensor of logits for every prompt token
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    for group in groups:
        rows = [batch_ids[i][:-1] for i in group]
        if not any(rows):
            continue
        enc = tok.pad({"input_ids": rows}, padding=True, padding_side="left", return_tensors="pt").to(device)
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        cache = getattr(model(**enc, position_ids=positions, use_cache=True, **keep), CACHE)
        for j, i in enumerate(group):
            n = len(rows[j])
            parts[i] = [(layer.keys[j, :, -n:], layer.values[j, :, -n:]) for layer in cache.layers] if n else []
    merged = StaticCache(config=model.config, max_cache_len=max_len)
    some_row = next(p for p in parts.values() if p)
    for li, (ref_k, ref_v) in enumerate(some_row):
        keys = ref_k.new_zeros((len(batch_ids), ref_k.shape[0], width, ref_k.shape[-1]))
        values = ref_v.new_zeros((len(batch_ids), ref_v.shape[0], width, ref_v.shape[-1]))
        for i, layers in parts.items():
            if layers:
                k, v = layers[li]
                keys[i, :, width - k.shape[1] :] = k
                values[i, :, width - v.shape[1] :] = v
        merged.update(keys, values, li)
    return merged


def _eos_ids(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


def _finish(tok: PreTrainedTokenizerBase, ids: list[int], n_prompt: int, eos_ids: set[int], protocol: str) -> dict[str, Any]:
    # After a row ends, generate fills it with pad == eos, so the first eos marks the end either way.
    first_eos = next((k for k, t in enumerate(ids) if t in eos_ids), None)
    text = tok.decode(ids, skip_special_tokens=True)
    stopped = False
    if protocol == "chat":
        response, stopped = cut_at_turn(text)
    else:
        response = text.strip()
    if stopped:
        reason, n_new = "stop", first_eos if first_eos is not None else len(ids)
    elif first_eos is not None:
        reason, n_new = "eos", first_eos + 1
    else:
        reason, n_new = "length", len(ids)
    return {"response": response, "n_prompt_tokens": n_prompt, "n_new_tokens": n_new, "finish_reason": reason}


def _study_loop(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 50, **generate_kwargs: Any
) -> list[str]:
    """The study's evaluation loop, one prompt at a time, word for word (the reference batching must match)."""
    responses = []
    for prompt in prompts:
        inputs = tok(prompt, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)  # greedy by default
        responses.append(tok.decode(output[0][inputs.input_ids.shape[1] :], skip_special_tokens=True).strip())
    return responses


# ----------------------------------------------------------------------------- stage


def answer_file(model_path: str | Path, prompts_path: str | Path, out_path: str | Path, cfg: GenerateSection) -> list[dict[str, Any]]:
    """``hhalign generate --model M --prompts P --out R``: one model answers one prompt file, written atomically."""
    prompts = load_prompts(prompts_path)  # a bad file fails before the model loads
    dev = pick_device(cfg.device)
    model, tok = load_causal_lm(str(model_path), device=dev, dtype=resolve_dtype(cfg.dtype, dev))
    rows = generate_responses(model, tok, prompts, cfg, device=dev)
    if parallel.is_main():  # under a launch every rank has every row (parallel.gather)
        write_json(out_path, rows)
    cut = sum(r["n_prompt_dropped"] > 0 for r in rows)
    if cut:
        log.info(f"generate: {cut} of {len(rows)} prompts cut to fit the model's positions (oldest tokens dropped)")
    return rows
