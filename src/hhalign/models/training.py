"""What every training stage shares: its inputs, TRL config building, length fitting, held-out figures, finishing.

Stages hand TRL configuration only (no trainer subclassing), save through a temporary directory that is
renamed into place when complete, and write ``train_report.json`` then ``manifest.json`` last, on the
main process only. Under ``accelerate launch`` every rank keys the stage the same way (``begin_training``);
only the main one touches the folder.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hhalign import parallel
from hhalign.artifacts import read_json, read_jsonl, stop_if_interrupted, write_json
from hhalign.config.files import checkpointing_default, library_args, library_class
from hhalign.config.schema import TINY, RunConfig, TrainSection
from hhalign.data.hh import ASSISTANT, Message, parse_hh_dialogue, render_hh
from hhalign.engine.table import artifact
from hhalign.engine.work import Input, StageRun, begin, model_input
from hhalign.errors import TrainingError
from hhalign.models.loading import fast_bf16

log = logging.getLogger(__name__)
TESTED_TRL = ("1.16", "1.17")  # [low, high): the versions whose config fields and losses hhalign checks


# ----------------------------------------------------------------------------- inputs


def pair_inputs(run_dir: Path) -> dict[str, Input]:
    """The training pairs and the held-out pairs of the run's data stage."""
    return {name: Input(str(artifact(run_dir, "data", f"{name}.jsonl"))) for name in ("prefs", "heldout")}


def base_model(cfg: RunConfig, run_dir: Path) -> Input:
    """The run's starting model: the pretrained tiny model, model.name_or_path, or its converted .gguf file."""
    if cfg.model.name_or_path == TINY:
        return Input(str(artifact(run_dir, "pretrain", "model")))
    return model_input(cfg.model.name_or_path, run_dir, "--set model.name_or_path=DIR")


def load_rows(work: StageRun, name: str, section: TrainSection | None = None) -> list[dict[str, Any]]:
    """The training pairs ("prefs") or the held-out ones ("heldout", the first ``section.heldout_pairs``)."""
    rows = read_jsonl(work.inputs[name].ref)
    if name == "prefs" and not rows:
        raise TrainingError(f"{work.inputs[name].ref} has no usable rows: check data_report.json for why rows were skipped")
    return rows[: section.heldout_pairs] if section is not None and name == "heldout" else rows


def rows_reached(rows: list[dict[str, Any]], section: TrainSection) -> list[dict[str, Any]]:
    """The training rows that ``max_steps`` reaches (max_steps x batch x accumulation x processes; the trainer's
    sampler shuffles within them), so nothing is tokenized or measured for rows no step would see; all rows when
    max_steps is unset. The data stage has already shuffled them."""
    steps = section.args.get("max_steps", -1) or -1
    if steps <= 0:
        return rows
    per_step = section.args.get("per_device_train_batch_size", 8) * section.args.get("gradient_accumulation_steps", 1)
    return rows[: steps * per_step * parallel.size()]


def begin_training(name: str, cfg: RunConfig, run_dir: Path, ins: dict[str, Input], resume: bool) -> StageRun:
    """``hhalign.engine.work.begin`` on every rank of a launch (rank 0 prepares the folder, the others wait for it)."""
    check_trl_version()
    parallel.state()  # join the launch's process group (gloo on CPU-only machines) before the Trainer does
    if parallel.is_main() and (note := parallel.sharding_note()):
        log.warning(f"{name}: {note}")
    return begin(name, cfg, run_dir, ins, resume=resume)


# ----------------------------------------------------------------------------- TRL config


def on_gpu() -> bool:
    return torch.cuda.is_available()


def set_attention(model: Any, section: TrainSection, key: str) -> str:
    """Apply ``<key>.attention`` to a model before training; returns the implementation it computes with.

    ``auto`` picks eager on a CPU: for the sequences these stages train on (128-256 tokens) PyTorch's CPU
    scaled-dot-product kernel costs more than plain matrix products (2-core EPYC, 4 steps each: SFT 36.9 -> 32.5 s,
    DPO 33.6 -> 29.3 s, the MiniLM judge 28.7 -> 26.0 s, the DPO held-out check 20.4 -> 14.7 s per 64 pairs).
    Generation is not affected (it loads its own model and keeps the library default: eager decodes slower there)."""
    impl = section.attention
    if impl == "auto":
        if on_gpu():
            return str(model.config._attn_implementation)
        impl = "eager"
    try:
        model.set_attn_implementation(impl)
    except (ImportError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(f"{key}.attention={impl!r} cannot be used here: {first} (auto, eager or sdpa work everywhere)") from e
    return str(model.config._attn_implementation)


def frozen_to_bf16(trainer: Any) -> int:
    """Store the frozen weights of the LoRA layers' base linear layers in bfloat16 when the trainer computes in
    bfloat16 autocast; returns how many layers (0 when it does not apply).

    Autocast keeps its bfloat16 copy only of a weight that requires grad, and only for one forward pass; a frozen
    float32 weight is cast again in every pass, the policy's and the reference's (adapter disabled). Stored in
    bfloat16 it is the very tensor autocast would make (round to nearest even), so every product is the same; the
    adapters stay float32 (peft's ``autocast_adapter_dtype``), and the embeddings and norms keep float32. Written
    here because neither peft nor the Trainer offers it. SmolLM2-135M, DPO 8 steps x 4 pairs, 2-core EPYC, three
    alternated runs each: 27.9 s without, 27.0 s with on average (about 3%, within this machine's noise), the same
    adapter bit for bit. Not under FSDP or DeepSpeed, which flatten parameters of one dtype."""
    from accelerate.utils import DistributedType
    from peft.tuners.lora import LoraLayer

    if not trainer.args.bf16 or trainer.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return 0
    n = 0
    for module in trainer.accelerator.unwrap_model(trainer.model).modules():
        base = module.get_base_layer() if isinstance(module, LoraLayer) else None
        if isinstance(base, torch.nn.Linear) and not any(p.requires_grad for p in base.parameters()):
            base.to(torch.bfloat16)
            n += 1
    return n


def trl_args(library: str, section: TrainSection, out_dir: Path, seed: int, **fixed: Any) -> Any:
    """The stage's TRL config (``library``: the section whose class it is, ``hhalign.config.files.PASSTHROUGH``): the
    section's pass-through fields, hhalign's per-stage settings, and precision that follows the hardware unless the
    config sets it."""
    cls = library_class(library)
    args = library_args(library, section.args)
    if "bf16" not in args:  # bfloat16 autocast where the hardware multiplies it natively (a GPU, AMX or AVX-512 BF16)
        args["bf16"] = fast_bf16(torch.device("cuda" if on_gpu() else "cpu"))
    args.setdefault("report_to", "none")
    args.setdefault("save_total_limit", 2)
    args.setdefault("disable_tqdm", False)
    args.setdefault("dataloader_num_workers", 0)
    # under DDP: every trainable parameter gets a gradient in every step (LoRA's frozen weights are not trainable),
    # so DDP need not search the graph for unused ones after each backward pass (the Trainer's default does)
    args.setdefault("ddp_find_unused_parameters", False)
    if not on_gpu():
        args.setdefault("use_cpu", True)
    args.update(fixed)
    args = {**checkpointing_default(cls, args), **args}
    return cls(output_dir=str(out_dir / "checkpoints"), seed=seed, data_seed=seed, **args)


def last_checkpoint(work: StageRun) -> str | None:
    """The checkpoint to resume from: the latest whole one of a resumed stage folder, else None (start afresh). A
    checkpoint cut short (a killed save, a full disk: a file that no longer parses) is passed over, with a message,
    for the one before it; with none whole the stage starts over."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    ck = work.dir / "checkpoints"
    if not (work.resumed and ck.is_dir()):
        return None
    steps = [p for p in ck.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    for p in sorted(steps, key=lambda q: int(q.name.rsplit("-", 1)[-1]), reverse=True):
        if why := damaged_checkpoint(p):
            log.warning(f"{work.stage.name}: {p} is damaged ({why}); resuming from the one before it, if any")
            continue
        return str(p)
    if steps:
        log.warning(f"{work.stage.name}: no whole checkpoint in {ck}: the stage starts over")
    return None


def damaged_checkpoint(path: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (None: it can): its state must parse, its safetensors
    headers must cover their files, and its torch pickles (optimizer, scheduler, RNG) must be whole zip archives."""
    import json
    import zipfile

    from safetensors import safe_open

    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {e}"
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError on a cut file)
            return f"{f.name}: {e}"
    for f in sorted([*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]):
        if not zipfile.is_zipfile(f):
            return f"{f.name}: not a whole torch file"
    return None


def check_trl_version() -> None:
    import trl

    major_minor = ".".join(trl.__version__.split(".")[:2])
    low, high = TESTED_TRL
    if not (_v(low) <= _v(major_minor) < _v(high)):
        warnings.warn(
            f"hhalign is tested with TRL {low}.x; TRL {trl.__version__} is installed. Config checks may miss fields "
            "this version renamed or ignores: pip install 'trl>=1.16,<1.17'.",
            stacklevel=2,
        )


def _v(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(".") if x.isdigit())


# ----------------------------------------------------------------------------- length fitting


def token_len(tok: Any, text: str) -> int:
    # verbose=False: this measures texts longer than the model on purpose, to fit them; transformers would warn
    # "Token indices sequence length is longer than ..." about each tokenizer once (a dozen times a run)
    return len(tok(text, add_special_tokens=True, verbose=False)["input_ids"]) + 1  # + eos appended by the trainers


def fit_prompt(prompt: str, responses: list[str], tok: Any, max_length: int | None,
               turns: list[dict[str, str]] | None = None) -> tuple[str, str]:
    """Keep the responses whole: drop the oldest turns of ``prompt`` until prompt + longest response fits.

    ``turns`` (a chat-template row's prompt turns, from the data stage) re-render the shorter prompt through
    the tokenizer's chat template; otherwise ``prompt`` is HH text and is cut at its Human turns.
    Returns (prompt, status): "fits", "trimmed" (older turns dropped), or "truncated" (even the last turn
    and the response do not fit, so the trainer will cut response tokens: the prompt is then its last turn, which
    leaves the response the most room; a whole long dialogue would leave it none, and TRL drops a row with no
    response token left).
    """
    if max_length is None:
        return prompt, "fits"
    longest = max(responses, key=lambda r: token_len(tok, prompt + r))
    if token_len(tok, prompt + longest) <= max_length:
        return prompt, "fits"
    if turns:
        messages, render = turns, lambda ms: tok.apply_chat_template(ms, tokenize=False, add_generation_prompt=True)
    else:
        messages = [{"role": m.role, "content": m.content} for m in parse_hh_dialogue(prompt.removesuffix(ASSISTANT))]
        render = lambda ms: render_hh([Message(m["role"], m["content"]) for m in ms]) + ASSISTANT  # noqa: E731
    shortest = prompt
    while len(messages) > 1:
        messages = messages[1:]
        while messages and messages[0]["role"] != "user":  # start at a user (Human) turn
            messages = messages[1:]
        if not messages:
            break
        shortest = render(messages)
        if token_len(tok, shortest + longest) <= max_length:
            return shortest, "trimmed"
    return shortest, "truncated"


def fit_rows(rows: list[dict[str, Any]], tok: Any, max_length: int | None, keep: bool, keys: tuple[str, ...]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply fit_prompt to every row; count rows that would lose response tokens before and after."""
    counts = {"rows": len(rows), "would_lose_response_tokens": 0, "prompt_trimmed": 0, "still_truncated": 0}
    out = []
    for row in rows:
        prompt, status = fit_prompt(row["prompt"], [row[k] for k in keys], tok, max_length, row.get("turns"))
        if status != "fits":
            counts["would_lose_response_tokens"] += 1
        if keep:
            counts["prompt_trimmed"] += status == "trimmed"
            counts["still_truncated"] += status == "truncated"
            row = {**row, "prompt": prompt}
        else:
            counts["still_truncated"] += status != "fits"
        out.append(row)
    return out, counts


# ----------------------------------------------------------------------------- held-out figures


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _logps_batch(device: torch.device) -> int:
    """Rows per forward pass of the held-out log-probs. On a CPU, 2: each row's (tokens x vocabulary) float32
    logits and their log-sum-exp are memory traffic, and small batches keep them in cache and pad less
    (SmolLM2-135M, 2-core EPYC, 64 held-out pairs: ``pair_logps`` 15.6 s at 2 against 20.8 s at 8, 17.5 s at
    3, 55 s at 32; ``response_logps`` 12.2 s against 19.1 s). On an accelerator, 8."""
    return 2 if device.type == "cpu" else 8


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do; a PEFT wrapper passes it on)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


@torch.inference_mode()
def response_logps(model: Any, tok: Any, prompts: list[str], responses: list[str], batch_size: int | None = None,
                   bf16: bool = False) -> list[tuple[float, int]]:
    """(sum of log p(response tokens | prompt), number of response tokens) for each pair, right-padded batches;
    ``bf16``: under bfloat16 autocast, as the trainer computed (its ``args.bf16``), the log-softmax in float32.

    Pairs are batched by prompt length (then put back in order) and the model computes vocabulary logits only
    from the batch's first response position on (``logits_to_keep``): the prompt's positions need none, and the
    output layer and its log-softmax are a fifth of a small model's forward pass, more over a long prompt.
    """
    device = next(model.parameters()).device
    batch_size = batch_size or _logps_batch(device)
    max_len = getattr(model.config, "max_position_embeddings", 2048)
    rows = []
    for prompt, response in zip(prompts, responses):
        full = tok(prompt + response, verbose=False)["input_ids"]  # over-long pairs are cut below: no warning
        n_prompt = len(tok(prompt, verbose=False)["input_ids"])
        drop = max(0, len(full) - max_len)  # over-long pairs lose their oldest tokens, never the response
        rows.append((full[drop:], max(1, n_prompt - drop)))
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], len(rows[i][0])))
    keep = _keeps_logits(model)
    out: dict[int, tuple[float, int]] = {}
    for idx in _batches(order, batch_size):
        batch = [rows[i] for i in idx]
        width = max(len(x) for x, _ in batch)
        input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        lmask = torch.zeros((len(batch), width), dtype=torch.bool)  # True at response tokens
        for i, (x, n_prompt) in enumerate(batch):
            input_ids[i, : len(x)] = torch.tensor(x)
            attn[i, : len(x)] = 1
            lmask[i, n_prompt : len(x)] = True
        # the logit at position t predicts token t + 1: the first response token is predicted at n_prompt - 1
        first = min(n for _, n in batch) - 1 if keep else 0
        kwargs = {"logits_to_keep": width - first} if keep else {}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs).logits[:, :-1].float()
        # log p(token) = logit(token) - logsumexp(logits): no second (B, T, V) tensor, as log_softmax would make
        target = input_ids[:, first + 1 :].to(device).unsqueeze(-1)  # (B, T', 1)
        logp = logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, T')
        m = lmask[:, first + 1 :].to(device)
        for i, j in enumerate(idx):
            out[j] = (float(logp[i][m[i]].sum()), int(m[i].sum()))
    return [out[i] for i in range(len(rows))]


@torch.inference_mode()
def pair_logps(model: Any, tok: Any, prompts: list[str], first: list[str], second: list[str], batch_size: int | None = None,
               bf16: bool = False) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    """``response_logps`` of two responses to each prompt (a preference pair's chosen and rejected), the prompt
    computed once: a batch of prompts, left-padded, fills a key/value cache that each response continues from (a
    copy of it), so the prompt's tokens, most of a held-out pair's, are not computed twice. Same tokens as
    ``response_logps`` (the response's are those of prompt + response after the prompt's), same precision.

    Written here because neither TRL nor transformers scores several continuations of one cached prefix."""
    import copy

    device = next(model.parameters()).device
    batch_size = batch_size or _logps_batch(device)
    max_len = getattr(model.config, "max_position_embeddings", 2048)
    rows = []
    for prompt, a, b in zip(prompts, first, second):
        p_ids = tok(prompt, verbose=False)["input_ids"]
        conts = [tok(prompt + r, verbose=False)["input_ids"][len(p_ids):] for r in (a, b)]
        drop = min(max(0, len(p_ids) + max(len(c) for c in conts) - max_len), len(p_ids) - 1)  # oldest prompt tokens go
        rows.append((p_ids[drop:], conts))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    keep = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"  # transformers 5.2x renamed it
    out: dict[int, list[tuple[float, int]]] = {}
    for idx in _batches(order, batch_size):
        batch = [rows[i] for i in idx]
        width = max(len(p) for p, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        n_prompt = attn.sum(1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            done = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=True,
                         position_ids=(attn.cumsum(1) - 1).clamp(min=0).to(device), **keep)
        last = done.logits[:, -1].float()  # predicts each response's first token
        for which in (0, 1):
            conts = [c[which] for _, c in batch]
            t = max(1, max(len(c) for c in conts))
            cids = torch.full((len(batch), t), tok.pad_token_id, dtype=torch.long)
            cmask = torch.zeros((len(batch), t), dtype=torch.long)
            for i, c in enumerate(conts):
                cids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
                cmask[i, : len(c)] = 1
            pos = (n_prompt.unsqueeze(1) + torch.arange(t).unsqueeze(0)).clamp(max=max_len - 1)  # padding: masked
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=cids.to(device), attention_mask=torch.cat([attn, cmask], 1).to(device),
                               position_ids=pos.to(device), use_cache=True,
                               **{cache_arg: copy.deepcopy(getattr(done, cache_arg))}).logits[:, :-1].float()
            logits = torch.cat([last.unsqueeze(1), logits], 1)  # (B, t, V): position j predicts response token j
            logp = logits.gather(-1, cids.to(device).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            m = cmask.bool().to(device)
            for i, j in enumerate(idx):
                out.setdefault(j, [None, None])[which] = (float(logp[i][m[i]].sum()), int(m[i].sum()))
    return [out[i][0] for i in range(len(rows))], [out[i][1] for i in range(len(rows))]


def mean_nll(logps: list[tuple[float, int]]) -> float:
    """Per-token negative log-likelihood over all pairs: -sum(logp) / sum(tokens)."""
    total = sum(n for _, n in logps)
    return -sum(lp for lp, _ in logps) / max(total, 1)


def heldout_nll(model: Any, tok: Any, heldout: list[dict[str, Any]], bf16: bool = False) -> float:
    """Per-token NLL of the held-out chosen responses given their prompts (pretrain's and SFT's figure)."""
    model.eval()
    return mean_nll(response_logps(model, tok, [r["prompt"] for r in heldout], [r["chosen"] for r in heldout], bf16=bf16))


def dpo_heldout(model: Any, tok: Any, pairs: list[dict[str, Any]], beta: float, bf16: bool = False,
                ref: Any = None, normalised: bool = False) -> dict[str, Any]:
    """Held-out DPO figures, pair by pair: implicit reward r(y) = beta * (log pi(y|x) - log pi_ref(y|x)), margin
    r(chosen) - r(rejected); accuracy is the share of pairs with margin > 0 (a tie counts as wrong, as in TRL),
    with its Wilson 95% interval, and ``acts`` says whether that interval lies above 50%. ``normalised``: the
    log-probabilities per response token (the scale of SimPO's and ORPO's reference-free rewards), the reference
    then being the model the policy started from. Either way ``reference_free`` gives the share of pairs whose chosen
    response has the higher mean log-probability per token, under the reference (``before``) and the policy.

    ``ref``: the reference as a model of its own (``model`` is then the policy, e.g. the merged model the stage
    saves); without it the reference is ``model`` with its LoRA adapter disabled (peft's ``disable_adapter``).

    Written here because ``DPOTrainer.evaluate`` returns only batch means, which give no interval; the sigmoid
    DPO loss is recomputed from the same margins."""
    model.eval()
    args = ([r["prompt"] for r in pairs], [r["chosen"] for r in pairs], [r["rejected"] for r in pairs])
    logps = dict(zip(("chosen", "rejected"), pair_logps(model, tok, *args, bf16=bf16)))
    if ref is None:
        with model.disable_adapter():
            ref_logps = pair_logps(model, tok, *args, bf16=bf16)
    else:
        ref.eval()
        ref_logps = pair_logps(ref, tok, *args, bf16=bf16)
    base = dict(zip(("chosen", "rejected"), ref_logps))

    def per(lp: float, n: int) -> float:
        return lp / max(n, 1) if normalised else lp

    chosen = [beta * (per(*a) - per(*b)) for a, b in zip(logps["chosen"], base["chosen"])]
    rejected = [beta * (per(*a) - per(*b)) for a, b in zip(logps["rejected"], base["rejected"])]
    shorter = [nc < nr for (_, nc), (_, nr) in zip(logps["chosen"], logps["rejected"])]
    free = {who: sum(c / max(nc, 1) > r / max(nr, 1) for (c, nc), (r, nr) in zip(lp["chosen"], lp["rejected"])) / len(pairs)
            for who, lp in (("before", base), ("after", logps))}
    return dpo_figures(chosen, rejected, shorter) | {"reference_free_accuracy": free}


def dpo_figures(chosen: list[float], rejected: list[float], chosen_shorter: list[bool] | None = None) -> dict[str, Any]:
    """Accuracy (with its Wilson 95% interval), mean margin and sigmoid loss from per-pair implicit rewards; with
    ``chosen_shorter`` (is the chosen response the shorter one, in tokens) also the accuracy on each side of it:
    a policy that only learned to prefer short answers scores well on one side and badly on the other."""
    from hhalign.stats.intervals import wilson_interval

    margins = [c - r for c, r in zip(chosen, rejected)]
    n, wins = len(margins), sum(m > 0 for m in margins)
    low, high = wilson_interval(wins, n)
    out = {
        "pairs": n, "implicit_reward_accuracy": wins / n, "accuracy_interval": [low / 100, high / 100],
        "implicit_reward_margin": sum(margins) / n, "chosen_reward": sum(chosen) / n, "rejected_reward": sum(rejected) / n,
        "loss": sum(-torch.nn.functional.logsigmoid(torch.tensor(m)).item() for m in margins) / n,
        "acts": low > 50,
    }
    if chosen_shorter is not None:
        for side, flag in (("chosen_shorter", True), ("chosen_longer", False)):
            side_wins = [m > 0 for m, s in zip(margins, chosen_shorter) if s == flag]
            out[f"accuracy_{side}"] = {"pairs": len(side_wins), "accuracy": sum(side_wins) / len(side_wins) if side_wins else None}
    return out


# ----------------------------------------------------------------------------- finishing


def _sort_adapter_targets(path: Path) -> None:
    """PEFT keeps ``target_modules`` as a set and writes it in the order of this process's string hashing, so the
    same adapter's config differs from run to run; written sorted, the same adapter is the same bytes."""
    if not path.is_file():
        return
    config = read_json(path)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        write_json(path, config)


def save_model_atomically(trainer: Any, tok: Any, target: Path) -> None:
    """All ranks call save (FSDP/DeepSpeed gather); rank 0 renames the finished folder into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    if parallel.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    parallel.barrier(f"saving {target}")
    trainer.save_model(str(tmp))
    if parallel.is_main():
        # the Trainer's pickled arguments hold this folder's paths and a process object: the model needs none of it
        # (the manifest has the settings), and without them the same weights hash the same in any run folder
        (tmp / "training_args.bin").unlink(missing_ok=True)
        _sort_adapter_targets(tmp / "adapter_config.json")
        tok.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    parallel.barrier(f"saving {target}")


def precision(args: Any) -> str:
    """What the trainer computed in: bf16 or fp16 autocast (mixed precision, on a GPU or a CPU), or fp32."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def finish_training(work: StageRun, report: dict[str, Any], outputs: list[str], trainer: Any = None) -> dict[str, Any] | None:
    """train_report.json (with the trainer's precision and log), then manifest.json (last), then drop the
    checkpoints; rank 0 writes, every rank of a launch calls it (``StageRun.finish`` waits for all)."""
    if trainer is not None:
        report.update(precision=precision(trainer.args), log_history=log_history(trainer))
    report["wall_seconds"] = round(time.time() - work.started, 2)
    if work.main:
        write_json(work.dir / "train_report.json", report)
    manifest = work.finish([*outputs, "train_report.json"], extra={"summary": report.get("summary", ""),
                                                                   "precision": report.get("precision", "fp32")})
    if not work.main:
        return None
    shutil.rmtree(work.dir / "checkpoints", ignore_errors=True)
    return manifest


def log_history(trainer: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if isinstance(v, (int, float)) and math.isfinite(v)} for h in trainer.state.log_history]


class StopOnInterrupt(TrainerCallback):
    """Stops training at the next step after a Ctrl-C that a library swallowed (see ``artifacts.catch_interrupts``)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stop_if_interrupted()
