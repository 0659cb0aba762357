"""Score stage: a reward model rates every (prompt, response) pair; ratings are written into the files.

    hhalign score configs/tiny.yaml          # the stage: 07_generate/*.json, rated, into 08_score/
    hhalign score --reward-model OpenAssistant/reward-model-deberta-v3-large-v2 base_harmful.json base_helpful.json

    ratings = rate_files("runs/tiny/06_rm/model", [Path("base_harmful.json")], ScoreSection())

The study scored one pair at a time::

    inputs = tokenizer(prompt, response, truncation=True, return_tensors="pt")
    score = reward_model(**inputs).logits[0]          # the first (only) logit

``score_pairs`` gives the same numbers (within 1e-5, ``tests/test_score.py``) in length-sorted,
right-padded batches: every pair is tokenized alone exactly as above, then padded, and the
attention mask keeps the pads out of every real token's attention.

``rate_files`` checks every file before it loads the model, loads the model once, then rewrites each file
in place with a "rating" on every entry, atomically (a temporary file renamed over the original):
a run stopped part-way leaves each file either fully rated or exactly as it was. The stage rates copies in
08_score/, so 07_generate/ stays the raw record.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hhalign.artifacts import read_jsonl, write_json
from hhalign.config import PROMPT_SETS, RUN_RM, RunConfig, ScoreSection
from hhalign.distill import Distilled, load_encoder
from hhalign.errors import UserError
from hhalign.judge import JUDGE_FILE, axis_check
from hhalign.judge import summary as judge_summary
from hhalign.generate import length_batches
from hhalign.modeling import load_reward_model, pick_device, resolve_dtype
from hhalign.responses import discover, load_responses, load_scored_dir, parse_response_filename, response_files
from hhalign.stages import Input, begin, stage_dir
from hhalign.validity import words

log = logging.getLogger(__name__)

# What one more forward pass costs, in tokens, when grouping pairs by length (see
# hhalign.generate.length_batches). On a CPU the pass is compute-bound already at batch size 1, so a
# pad costs as much as a real token, but each pass also has a fixed part: DeBERTa-v3 projects its
# 512 relative-position embeddings in every layer of every pass, and the weights are read once per
# pass (DeBERTa-v3-large, 2 cores: 50 tokens 0.65 s, 200 tokens 1.6 s in float32; 0.22 s and
# 0.42 s in bfloat16). On a GPU pads are nearly free: full batches.
OVERHEAD_CPU = 64.0


def pass_overhead(device: torch.device) -> float:
    return OVERHEAD_CPU if device.type == "cpu" else math.inf


def score_pairs(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    batch_size: int,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "score",
) -> list[float]:
    """The reward model's first logit for each (prompt, response) pair, in input order."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    device = torch.device(device) if device is not None else model.device
    if model.device != device:
        model.to(device)
    # Each pair tokenized alone, as the study did (truncation=True: the tokenizer's model_max_length).
    encoded = [tok(p, r, truncation=True) for p, r in zip(prompts, responses)]
    scores: list[float] = [0.0] * len(encoded)
    bar = tqdm(total=len(encoded), desc=desc, unit="pair", disable=not progress)
    with torch.inference_mode(), bar:
        for idx in length_batches([len(e["input_ids"]) for e in encoded], batch_size, pass_overhead(device)):
            batch = tok.pad([encoded[i] for i in idx], padding=True, padding_side="right", return_tensors="pt")
            logits = model(**batch.to(device)).logits  # (B, num_labels)
            for i, s in zip(idx, logits[:, 0].float().tolist()):
                scores[i] = s
            bar.update(len(idx))
    return scores


def _score_one_at_a_time(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]) -> list[float]:
    """The study's scoring loop (the reference that ``score_pairs`` must match)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        inputs = tok(prompt, response, truncation=True, return_tensors="pt").to(model.device)
        scores.append(model(**inputs).logits[0].item())
    return scores


def load_judge(reward_model: str | Path, cfg: ScoreSection) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    dev = pick_device(cfg.device)
    model, tok = load_reward_model(str(reward_model), device=dev, dtype=resolve_dtype(cfg.dtype, dev))
    return model, tok, dev


def rate_files(reward_model: str | Path, paths: list[Path], cfg: ScoreSection, judge: tuple | None = None) -> dict[Path, list[float]]:
    """Rate every entry of every response file in place; returns each file's ratings in entry order. ``judge``:
    an already loaded (model, tokenizer, device)."""
    paths = list(dict.fromkeys(Path(p) for p in paths))
    # --- check every file before any work: a bad third file must not leave the first two rated
    entries = {p: load_responses(p) for p in paths}
    # --- load once, score and rewrite file by file
    model, tok, dev = judge or load_judge(reward_model, cfg)
    ratings: dict[Path, list[float]] = {}
    for p in paths:
        rows = entries[p]
        scores = score_pairs(model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows], cfg.batch_size,
                             device=dev, desc=f"score {p.stem}")
        write_json(p, [_rated(r, s) for r, s in zip(rows, scores)])
        ratings[p] = scores
    return ratings


def _rated(entry: dict[str, Any], score: float) -> dict[str, Any]:
    return {**entry, "rating": score}


# ----------------------------------------------------------------------------- stage


def judge(cfg: RunConfig, run_dir: Path) -> Input:
    """The reward model that rates the run: this run's own (06_rm) or the configured one."""
    if cfg.score.reward_model == RUN_RM:
        return Input(str(stage_dir(run_dir, "rm") / "model"))
    return Input(cfg.score.reward_model, "reward_model", "--set score.reward_model=DIR")


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    gen = stage_dir(run_dir, "generate")
    check = {"heldout": Input(str(stage_dir(run_dir, "data") / "heldout.jsonl"))} if cfg.score.judge_pairs else {}
    ref = {"reference": Input(cfg.score.reference, "reference")} if cfg.score.reference else {}
    if distilled_axes(cfg):
        ref["distill_encoder"] = Input(cfg.score.distill_encoder, "model", "--set score.distill_encoder=DIR")
    return {f"responses/{p.name}": Input(str(p)) for p in response_files(gen)} | {"reward_model": judge(cfg, run_dir)} | check | ref


def distilled_axes(cfg: RunConfig) -> list[str]:
    """The prompt sets whose answers a judge distilled from the reference rates (score.harmful_judge / helpful_judge)."""
    return [s for s in PROMPT_SETS if getattr(cfg.score, f"{s}_judge") == "distilled"]


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Copy 07_generate's response files into 08_score and rate them there (a resumed stage keeps rated files);
    then check the same judge on held-out pairs (judge.json)."""
    reference = read_reference(cfg.score.reference, stage_dir(run_dir, "generate")) if cfg.score.reference else None
    work = begin("score", cfg, run_dir, resume=resume)  # after the reference is checked: a bad one changes nothing
    names = [n.split("/", 1)[1] for n in work.inputs if n.startswith("responses/")]
    todo = []
    for name in names:
        out = work.dir / name
        if out.is_file() and all("rating" in e for e in load_responses(out)):
            continue  # rated before an interruption (each file is rewritten atomically)
        shutil.copyfile(work.inputs[f"responses/{name}"].ref, work.dir / f".{name}.copy")
        os.replace(work.dir / f".{name}.copy", out)
        todo.append(out)
    rm = work.inputs["reward_model"].ref
    loaded = load_judge(rm, cfg.score)
    axes_of = {name: parse_response_filename(name)[1] for name in names}
    distilled = _distill(work, reference, distilled_axes(cfg))  # prompt set -> its judge, for the distilled axes
    ratings = rate_files(rm, [p for p in todo if axes_of[p.name] not in distilled], cfg.score, judge=loaded)
    for name in names:  # deterministic and cheap: a resumed stage rates these again
        if axes_of[name] in distilled:
            rows = load_responses(work.dir / name)
            scores = distilled[axes_of[name]].rate([r["prompt"] for r in rows], [r["response"] for r in rows], list(range(len(rows))))
            write_json(work.dir / name, [_rated(r, x) for r, x in zip(rows, scores)])
            ratings[work.dir / name] = scores
    # the run's own judge by its place in the run (06_rm/model), so the record is the same wherever the run lives
    inside = Path(rm).resolve().is_relative_to(Path(run_dir).resolve())
    verdict = {"reward_model": os.path.relpath(rm, run_dir) if inside else rm, **_check_judge(work, cfg, loaded, names, distilled)}
    if reference is not None:
        verdict["reference"] = rate_reference(loaded, reference, cfg, distilled)
    write_json(work.dir / JUDGE_FILE, verdict)
    summary = f"score: {len(todo)} files rated by {rm}" + (f", {len(names) - len(todo)} kept from before" if len(todo) < len(names) else "")
    log.info(summary)
    (log.warning if verdict["at_chance"] else log.info)(judge_summary(verdict, rm))
    return work.finish([*names, JUDGE_FILE], extra={"summary": summary, "reward_model": rm, "dtype": cfg.score.dtype,
                                                    "pairs": sum(len(r) for r in ratings.values()),
                                                    "judge_accuracy": verdict.get("pairwise_accuracy")})


def _distill(work: Any, reference: dict[str, dict[str, list[dict[str, Any]]]] | None, axes: list[str]) -> dict[str, Distilled]:
    """A judge per distilled axis, each fitted on the reference's answers to that axis's prompt set only (a fit on
    both sets agreed less with the study's judge: Spearman 0.32 against 0.52 on helpful prompts, README)."""
    from hhalign.modeling import local_folder

    if not axes:
        return {}
    encoder = load_encoder(local_folder(work.inputs["distill_encoder"].ref))
    return {s: Distilled.fit(encoder, {v: {s: sets[s]} for v, sets in reference.items() if s in sets}) for s in axes}


def _check_judge(work: Any, cfg: RunConfig, loaded: tuple, names: list[str], distilled: dict[str, Distilled]) -> dict[str, Any]:
    """judge.check on the held-out pairs (``judge_rows``), per axis with that axis's judge, and the spread of the
    ratings per prompt set."""
    from hhalign.judge import check, distribution

    model, tok, dev = loaded
    rows = judge_rows(read_jsonl(work.inputs["heldout"].ref), cfg.score) if "heldout" in work.inputs else []
    verdict = check(model, tok, rows, cfg.score.batch_size, dev)
    # each axis is checked only by the held-out pairs of its own subsets (harmless-base for HmR, helpful-base for HpR),
    # and by the judge that rates that axis
    axes = {}
    for s in PROMPT_SETS:
        subsets = getattr(cfg.score, f"{s}_pairs_from")
        if s in distilled:
            mine = [r for r in rows if r.get("subset") in subsets]
            own = check(None, None, mine, rate=lambda p, r, desc, s=s: distilled[s].rate(p, r, list(range(len(p)))))
            axes[s] = {**axis_check(own, mine, subsets), "judge": "distilled", "scale": "reference"}
        else:
            axes[s] = {**axis_check(verdict, rows, subsets), "judge": "reward_model"}
    by_set: dict[str, list[float]] = {}
    for name in names:
        key = parse_response_filename(name)
        by_set.setdefault(key[1], []).extend(e["rating"] for e in load_responses(work.dir / name))
    return {**verdict, "axes": axes, "response_ratings": {s: distribution(r) for s, r in by_set.items()}}


def judge_rows(heldout: list[dict[str, Any]], cfg: ScoreSection) -> list[dict[str, Any]]:
    """The held-out pairs the judge is checked on: the first ``judge_pairs`` of each axis's subsets (so a data set
    with both subsets checks both axes, whatever their order in the file), in file order; the first ``judge_pairs``
    of all when no row belongs to either axis's subsets."""
    picked: set[int] = set()
    for subsets in (cfg.harmful_pairs_from, cfg.helpful_pairs_from):
        picked |= set([i for i, r in enumerate(heldout) if r.get("subset") in subsets][: cfg.judge_pairs])
    return [r for i, r in enumerate(heldout) if i in picked] if picked else heldout[: cfg.judge_pairs]


# ----------------------------------------------------------------------------- a reference judge


def read_reference(folder: str, generated: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The reference ratings (``score.reference``): variant -> set -> rated entries, each file checked against the
    run's own prompt set (``generated``: the generate stage's folder): same prompts, same order. A file that
    differs is named with its first differing prompt, before anything in the run folder changes."""
    ref, files = load_scored_dir(folder), discover(folder)
    ours: dict[str, list[str]] = {}
    for p in response_files(generated):
        ours.setdefault(parse_response_filename(p.name)[1], [e["prompt"] for e in load_responses(p)])
    for (variant, prompt_set), path in files.items():
        if prompt_set not in ours:
            raise UserError(f"{path}: reference answers to {prompt_set} prompts, but this run answers no {prompt_set} prompt set; "
                            "score.reference must rate the run's own prompt sets")
        theirs = [e["prompt"] for e in ref[variant][prompt_set]]
        for i in range(max(len(theirs), len(ours[prompt_set]))):
            a = theirs[i].strip() if i < len(theirs) else None
            b = ours[prompt_set][i].strip() if i < len(ours[prompt_set]) else None
            if a != b:
                raise UserError(f"{path}: prompt {i + 1} ({_short(a)}) is not the run's {prompt_set} prompt {i + 1} ({_short(b)}); "
                                "score.reference must hold answers to the run's own prompts, in the same order")
    return ref


def _short(text: str | None, limit: int = 50) -> str:
    if text is None:
        return "none: the list ends there"
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def rate_reference(loaded: tuple, reference: dict[str, dict[str, list[dict[str, Any]]]], cfg: RunConfig,
                   distilled: dict[str, Distilled]) -> dict[str, Any]:
    """The run's judge of each axis rates the reference's answers: per prompt set, (prompts, variants) arrays of its
    ratings, the reference's ratings and the answers' lengths in words, for ``hhalign.validity.agreement`` (the
    metrics stage). A distilled judge rates each answer with the fit that never saw its prompt."""
    model, tok, dev = loaded
    out: dict[str, Any] = {"source": cfg.score.reference, "sets": {},
                           "thresholds": {"harmful": cfg.score.reference_harmful_threshold,
                                          "helpful": cfg.score.reference_helpful_threshold}}
    for prompt_set in PROMPT_SETS:
        variants = [v for v in reference if prompt_set in reference[v]]
        if not variants:
            continue
        cols = [reference[v][prompt_set] for v in variants]
        n = min(len(c) for c in cols)
        flat = [e for c in cols for e in c[:n]]
        if prompt_set in distilled:
            ratings = distilled[prompt_set].rate([e["prompt"] for e in flat], [e["response"] for e in flat], [k % n for k in range(len(flat))])
        else:
            ratings = score_pairs(model, tok, [e["prompt"] for e in flat], [e["response"] for e in flat], cfg.score.batch_size,
                                  device=dev, desc=f"judge: reference {prompt_set}")
        out["sets"][prompt_set] = {
            "variants": variants,
            "judge": [[ratings[j * n + i] for j in range(len(variants))] for i in range(n)],  # (prompts, variants)
            "reference": [[cols[j][i]["rating"] for j in range(len(variants))] for i in range(n)],
            "words": [[words(cols[j][i]["response"]) for j in range(len(variants))] for i in range(n)],
        }
    return out
