"""The score stage: the judge rates every (prompt, response) pair (``hhalign.models.judge``), and is checked on
held-out pairs per axis and, with ``score.reference``, against a reference judge (judge.json).

    hhalign score configs/tiny.yaml          # the stage: 07_generate/*.json, rated, into 08_score/

The stage rates copies in 08_score/, so 07_generate/ stays the raw record.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hhalign import parallel
from hhalign.artifacts import atomic_write_bytes, read_jsonl, read_manifest, write_json
from hhalign.config.schema import PROMPT_SETS, RUN_RM, RunConfig, ScoreSection
from hhalign.data.responses import (
    discover,
    load_responses,
    load_scored_dir,
    parse_response_filename,
    response_files,
)
from hhalign.engine.table import JUDGE_FILE, artifact, stage_dir
from hhalign.engine.work import Input, begin
from hhalign.errors import UserError
from hhalign.models.distill import Distilled, load_encoder
from hhalign.models.judge import (
    axis_check,
    check,
    distribution,
    load_judge,
    rate_files,
    rated,
    score_pairs,
)
from hhalign.models.judge import summary as judge_summary
from hhalign.models.loading import local_folder
from hhalign.stats.validity import words

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- stage


def judge(cfg: RunConfig, run_dir: Path) -> Input:
    """The reward model that rates the run: this run's own (06_rm) or the configured one."""
    if cfg.score.reward_model == RUN_RM:
        return Input(str(artifact(run_dir, "rm", "model")))
    return Input(cfg.score.reward_model, "reward_model", "--set score.reward_model=DIR")


def inputs(cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    gen = stage_dir(run_dir, "generate")
    held = {"heldout": Input(str(artifact(run_dir, "data", "heldout.jsonl")))} if cfg.score.judge_pairs else {}
    ref = {"reference": Input(cfg.score.reference, "reference")} if cfg.score.reference else {}
    if distilled_axes(cfg):
        ref["distill_encoder"] = Input(cfg.score.distill_encoder, "model", "--set score.distill_encoder=DIR")
    return {f"responses/{p.name}": Input(str(artifact(run_dir, "generate", p.name))) for p in response_files(gen)} | {
        "reward_model": judge(cfg, run_dir)} | held | ref


def distilled_axes(cfg: RunConfig) -> list[str]:
    """The prompt sets whose answers a judge distilled from the reference rates (score.harmful_judge / helpful_judge)."""
    return [s for s in PROMPT_SETS if getattr(cfg.score, f"{s}_judge") == "distilled"]


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Copy 07_generate's response files into 08_score and rate them there (a resumed stage keeps rated files);
    then check the same judge on held-out pairs (judge.json)."""
    reference = read_reference(cfg.score.reference, stage_dir(run_dir, "generate")) if cfg.score.reference else None
    ins = inputs(cfg, run_dir)
    reuse = _reusable(cfg, run_dir, ins)
    work = begin("score", cfg, run_dir, ins, resume=resume)  # after the reference is checked: a bad one changes nothing
    names = [n.split("/", 1)[1] for n in work.inputs if n.startswith("responses/")]
    if work.main:
        for name, rows in reuse.items():
            if not (work.dir / name).is_file():
                write_json(work.dir / name, rows)
    parallel.barrier("kept answers")  # every rank sees what is kept before deciding what is left
    todo = []
    for name in names:
        out = work.dir / name
        if out.is_file() and all("rating" in e for e in load_responses(out)):
            continue  # rated before an interruption (each file is rewritten atomically)
        todo.append(out)
    parallel.barrier("score")  # every rank of a launch knows what is left before rank 0 copies
    if work.main:
        for out in todo:
            atomic_write_bytes(out, Path(work.inputs[f"responses/{out.name}"].ref).read_bytes())
    parallel.barrier("score")  # ... and reads the copies after rank 0 made them
    rm = work.inputs["reward_model"].ref
    loaded = load_judge(rm, cfg.score)
    axes_of = {name: parse_response_filename(name)[1] for name in names}
    distilled = _distill(work, reference, distilled_axes(cfg))  # prompt set -> its judge, for the distilled axes
    ratings = rate_files(rm, [p for p in todo if axes_of[p.name] not in distilled], cfg.score, judge=loaded)
    for name in names:  # deterministic and cheap: a resumed stage rates these again
        if axes_of[name] in distilled:
            rows = load_responses(work.dir / name)
            scores = distilled[axes_of[name]].rate([r["prompt"] for r in rows], [r["response"] for r in rows], list(range(len(rows))))
            if work.main:
                write_json(work.dir / name, [rated(r, x) for r, x in zip(rows, scores)])
            ratings[work.dir / name] = scores
    parallel.barrier("score")  # the rated files are written before any rank reads them back (_check_judge)
    # the run's own judge by its place in the run (06_rm/model), so the record is the same wherever the run lives
    inside = Path(rm).resolve().is_relative_to(Path(run_dir).resolve())
    verdict = {"reward_model": os.path.relpath(rm, run_dir) if inside else rm, **_check_judge(work, cfg, loaded, names, distilled)}
    if reference is not None:
        verdict["reference"] = rate_reference(loaded, reference, cfg, distilled)
    if work.main:
        write_json(work.dir / JUDGE_FILE, verdict)
    summary = f"score: {len(todo)} files rated by {rm}" + (f", {len(names) - len(todo)} kept from before" if len(todo) < len(names) else "")
    log.info(summary)
    (log.warning if verdict["at_chance"] else log.info)(judge_summary(verdict, rm))
    return work.finish([*names, JUDGE_FILE], extra={"summary": summary, "reward_model": rm, "dtype": cfg.score.dtype,
                                                    "pairs": sum(len(r) for r in ratings.values()),
                                                    "judge_accuracy": verdict.get("pairwise_accuracy")})


def _reusable(cfg: RunConfig, run_dir: Path, ins: dict[str, Input]) -> dict[str, list[dict[str, Any]]]:
    """The rated files of the previous finished stage that are still right: the same judge (by content) and score
    settings, and a response file whose content is the one rated then; {file name: its rated rows}. A variant added
    to a finished run is then the only one rated again (the judge's own checks run again: they are cheap)."""
    d = stage_dir(run_dir, "score")
    manifest = read_manifest(d)
    if manifest is None or manifest.get("settings", {}).get("score") != cfg.to_dict()["score"]:
        return {}
    old = {n: v.get("sha256") for n, v in (manifest.get("inputs") or {}).items()}
    if old.get("reward_model") is None or old.get("reward_model") != ins["reward_model"].digest():
        return {}
    out = {}
    for key, inp in ins.items():
        name = key.split("/", 1)[1] if key.startswith("responses/") else None
        if name and old.get(key) is not None and old[key] == inp.digest() and (d / name).is_file():
            rows = load_responses(d / name)
            if all("rating" in e for e in rows):
                out[name] = rows
    return out


def _distill(work: Any, reference: dict[str, dict[str, list[dict[str, Any]]]] | None, axes: list[str]) -> dict[str, Distilled]:
    """A judge per distilled axis, each fitted on the reference's answers to that axis's prompt set only (a fit on
    both sets agreed less with the study's judge: Spearman 0.32 against 0.52 on helpful prompts, docs/study.md)."""
    if not axes:
        return {}
    encoder = load_encoder(local_folder(work.inputs["distill_encoder"].ref))
    return {s: Distilled.fit(encoder, {v: {s: sets[s]} for v, sets in reference.items() if s in sets}) for s in axes}


def _check_judge(work: Any, cfg: RunConfig, loaded: tuple, names: list[str], distilled: dict[str, Distilled]) -> dict[str, Any]:
    """judge.check on the held-out pairs (``judge_rows``), per axis with that axis's judge, and the spread of the
    ratings per prompt set."""
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
    ratings, the reference's ratings and the answers' lengths in words, for ``hhalign.stats.validity.agreement`` (the
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
