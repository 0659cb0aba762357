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
from hhalign import judges
from hhalign.data.sources import is_gguf, resolve
from hhalign.models.judge import axis_check, check, distribution, load_judge, rated
from hhalign.models.judge import summary as judge_summary
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
    rm = judge(cfg, run_dir)
    for name in judges.uses(cfg.score):  # the other judges' models, each keyed by its content
        model = judges.model_of(name, cfg.score, rm.ref)
        if model not in (rm.ref, cfg.score.distill_encoder):
            ref[f"judge/{name}"] = (Input(resolve(model), "file") if is_gguf(model) else
                                    Input(resolve(model), "model", f"--set score.judges.{name}.model=DIR"))
    return {f"responses/{p.name}": Input(str(artifact(run_dir, "generate", p.name))) for p in response_files(gen)} | {
        "reward_model": rm} | held | ref


def distilled_axes(cfg: RunConfig) -> list[str]:
    """The prompt sets that a judge distilled from the reference rates (one of score.harmful_judge / helpful_judge)."""
    return [s for s in PROMPT_SETS if any(cfg.score.spec(n).kind == "distilled" for n in cfg.score.axis_judges(s))]


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Copy 07_generate's response files into 08_score and rate them there with every judge of their axis (a resumed
    stage keeps rated files); then check each judge on held-out pairs and for invariance (judge.json)."""
    reference = read_reference(cfg.score.reference, stage_dir(run_dir, "generate")) if cfg.score.reference else None
    ins = inputs(cfg, run_dir)
    reuse = _reusable(cfg, run_dir, ins)
    rm = ins["reward_model"].ref
    # every judge loads before the folder changes: one that cannot load leaves the run's ratings as they were
    loaded = load_judge(rm, cfg.score)
    panel = judges.load_panel(cfg.score, rm, loaded, reference, reference_thresholds(cfg))
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
    against = _base_answers(cfg, work)
    rated_now = {out: rate_with_panel(out, panel, cfg, against, main=work.main) for out in todo}
    parallel.barrier("score")  # the rated files are written before any rank reads them back (_check_judge)
    # the run's own judge by its place in the run (06_rm/model), so the record is the same wherever the run lives
    inside = Path(rm).resolve().is_relative_to(Path(run_dir).resolve())
    verdict = {"reward_model": os.path.relpath(rm, run_dir) if inside else rm, **_check_judge(work, cfg, loaded, names, panel)}
    verdict["invariance"] = _invariance(work, cfg, panel, names, against)
    if reference is not None:
        verdict["reference"] = rate_reference(panel, reference, cfg)
    if work.main:
        write_json(work.dir / JUDGE_FILE, verdict)
    summary = f"score: {len(todo)} files rated by {', '.join(panel)}" + (f", {len(names) - len(todo)} kept from before" if len(todo) < len(names) else "")
    log.info(summary)
    (log.warning if verdict["at_chance"] else log.info)(judge_summary(verdict, rm))
    for name, result in verdict["invariance"].items():
        if not result["invariant"]:
            log.warning(invariance_line(name, result))
    return work.finish([*names, JUDGE_FILE], extra={"summary": summary, "reward_model": rm, "dtype": cfg.score.dtype,
                                                    "judges": {n: j.describe() for n, j in panel.items()},
                                                    "pairs": sum(len(r) for r in rated_now.values()),
                                                    "judge_accuracy": verdict.get("pairwise_accuracy")})


def reference_thresholds(cfg: RunConfig) -> dict[str, float]:
    return {"harmful": cfg.score.reference_harmful_threshold, "helpful": cfg.score.reference_helpful_threshold}


def _base_answers(cfg: RunConfig, work: Any) -> dict[str, list[str]]:
    """Base's answers per prompt set: what a pairwise judge compares every other variant's answer with."""
    base, out = cfg.base_variant(), {}
    for name in work.inputs:
        if name.startswith("responses/"):
            variant, prompt_set = parse_response_filename(name.split("/", 1)[1])
            if variant == base:
                out[prompt_set] = [e["response"] for e in load_responses(Path(work.inputs[name].ref))]
    return out


def rate_with_panel(path: Path, panel: dict[str, judges.Judge], cfg: RunConfig, against: dict[str, list[str]], main: bool = True) -> list[dict[str, Any]]:
    """Rate one response file in place with every judge of its axis: "rating" is the headline judge's (the first),
    "ratings" every judge's by name, "refusal_rating" the refusal judge's P(refusal) when one is named. A pairwise
    judge rates base's own answers 0.5 (each is its own comparison). Written atomically, by rank 0."""
    variant, prompt_set = parse_response_filename(path.name)
    rows = load_responses(path)
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    ratings = {}
    for name in cfg.score.axis_judges(prompt_set):
        j = panel[name]
        if j.pairwise and variant == cfg.base_variant():
            ratings[name] = [0.5] * len(rows)
        elif j.pairwise:  # RunConfig refuses a pairwise judge without a base variant, so base's answers are there
            ratings[name] = j.rate(prompts, responses, use=prompt_set, against=against[prompt_set], desc=f"{name} {path.stem}")
        else:
            ratings[name] = j.rate(prompts, responses, use=prompt_set, desc=f"{name} {path.stem}")
    refusal = None
    if cfg.score.refusal_judge:
        refusal = panel[cfg.score.refusal_judge].rate(prompts, responses, use="refusal", desc=f"{cfg.score.refusal_judge} refusals {path.stem}")
    head = cfg.score.axis_judges(prompt_set)[0]
    out = []
    for i, r in enumerate(rows):
        e = {**rated(r, ratings[head][i]), "ratings": {n: v[i] for n, v in ratings.items()}}
        if refusal is not None:
            e["refusal_rating"] = refusal[i]
        out.append(e)
    if main and parallel.is_main():
        write_json(path, out)
    return out


def _invariance(work: Any, cfg: RunConfig, panel: dict[str, judges.Judge], names: list[str], against: dict[str, list[str]]) -> dict[str, Any]:
    """Each judge on the first ``score.invariance_answers`` answers of one prompt set it rates (a trained variant's,
    for a pairwise judge): batch size 1 and left padding against how the stage rated (``judges.invariance``)."""
    n = cfg.score.invariance_answers
    if not n:
        return {}
    out, uses_of = {}, judges.uses(cfg.score)
    for name, j in panel.items():
        uses = uses_of[name]
        use = next((u for u in uses if u in PROMPT_SETS), uses[0])
        prompt_set = use if use in PROMPT_SETS else PROMPT_SETS[0]
        files = [f for f in names if parse_response_filename(f)[1] == prompt_set
                 and not (j.pairwise and parse_response_filename(f)[0] == cfg.base_variant())]
        if not files:
            continue
        rows = load_responses(work.dir / files[0])[:n]
        other = against.get(prompt_set, [])[: len(rows)] if j.pairwise else None
        threshold = j.threshold(use, getattr(cfg.metrics, f"{prompt_set}_threshold"))
        out[name] = {"file": files[0], **judges.invariance(j, [r["prompt"] for r in rows], [r["response"] for r in rows], use,
                                                           threshold, other)}
    return out


def invariance_line(name: str, result: dict[str, Any]) -> str:
    changes = result["max_change"]
    return (f"judge {name} is not invariant on {result['answers']} answers of {result['file']}: at batch size 1 its ratings move by up to "
            f"{changes['batch_size_1']:.3g} ({result['label_flips']['batch_size_1']} labels flip), with left padding by up to "
            f"{changes['left_padding']:.3g} ({result['label_flips']['left_padding']} flip); the run's ratings use batch size "
            f"{result['batch_size']} and right padding")


def _reusable(cfg: RunConfig, run_dir: Path, ins: dict[str, Input]) -> dict[str, list[dict[str, Any]]]:
    """The rated files of the previous finished stage that are still right: the same judge (by content) and score
    settings, and a response file whose content is the one rated then; {file name: its rated rows}. A variant added
    to a finished run is then the only one rated again (the judge's own checks run again: they are cheap)."""
    d = stage_dir(run_dir, "score")
    manifest = read_manifest(d)
    if manifest is None or manifest.get("settings", {}).get("score") != cfg.to_dict()["score"]:
        return {}
    old = {n: v.get("sha256") for n, v in (manifest.get("inputs") or {}).items()}
    if old.get("reward_model") is None or any(old.get(k) != i.digest() for k, i in ins.items() if k.startswith(("reward_model", "judge/"))):
        return {}  # a judge whose model changed rates everything again
    out = {}
    for key, inp in ins.items():
        name = key.split("/", 1)[1] if key.startswith("responses/") else None
        if name and old.get(key) is not None and old[key] == inp.digest() and (d / name).is_file():
            rows = load_responses(d / name)
            if all("rating" in e for e in rows):
                out[name] = rows
    return out


def _check_judge(work: Any, cfg: RunConfig, loaded: tuple, names: list[str], panel: dict[str, judges.Judge]) -> dict[str, Any]:
    """judge.check of the run's reward model on the held-out pairs (``judge_rows``); per axis, every judge of the
    axis on that axis's own pairs (the first one is the headline's: "judge", its figures at the top of the axis);
    the spread of the headline ratings per prompt set."""
    model, tok, dev = loaded
    rows = judge_rows(read_jsonl(work.inputs["heldout"].ref), cfg.score) if "heldout" in work.inputs else []
    verdict = check(model, tok, rows, cfg.score.batch_size, dev)
    axes = {}
    for s in PROMPT_SETS:
        subsets = getattr(cfg.score, f"{s}_pairs_from")
        mine = [r for r in rows if r.get("subset") in subsets]
        per = {}
        for name in cfg.score.axis_judges(s):
            j = panel[name]
            if j.kind == "reward_model" and getattr(j, "model", None) is model:
                figures = axis_check(verdict, rows, subsets)  # the run's reward model: checked above on every pair
            else:
                figures = axis_check(judges.heldout(j, mine, s), mine, subsets) if mine else axis_check({"pairs": 0}, [], subsets)
            own = j.threshold(s, float("nan"))
            per[name] = {**figures, "judge": name, "kind": j.kind, "scale": j.scale(),
                         "threshold": None if own != own else own}  # None: the run's metrics threshold
        head = cfg.score.axis_judges(s)[0]
        axes[s] = {**per[head], "judges": per}
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


def rate_reference(panel: dict[str, judges.Judge], reference: dict[str, dict[str, list[dict[str, Any]]]], cfg: RunConfig) -> dict[str, Any]:
    """The headline judge of each axis rates the reference's answers: per prompt set, (prompts, variants) arrays of its
    ratings, the reference's ratings and the answers' lengths in words, for ``hhalign.stats.validity.agreement`` (the
    metrics stage). A distilled judge rates each answer with the fit that never saw its prompt."""
    out: dict[str, Any] = {"source": cfg.score.reference, "sets": {}, "thresholds": reference_thresholds(cfg)}
    for prompt_set in PROMPT_SETS:
        variants = [v for v in reference if prompt_set in reference[v]]
        if not variants:
            continue
        cols = [reference[v][prompt_set] for v in variants]
        n = min(len(c) for c in cols)
        head = cfg.score.axis_judges(prompt_set)[0]
        ratings = []
        for c in cols:  # one variant's answers at a time: a distilled judge's fit goes by the prompt's index in its set
            ratings += panel[head].rate([e["prompt"] for e in c[:n]], [e["response"] for e in c[:n]], use=prompt_set,
                                        desc=f"judge: reference {prompt_set}")
        out["sets"][prompt_set] = {
            "judge_name": head,
            "variants": variants,
            "judge": [[ratings[j * n + i] for j in range(len(variants))] for i in range(n)],  # (prompts, variants)
            "reference": [[cols[j][i]["rating"] for j in range(len(variants))] for i in range(n)],
            "words": [[words(cols[j][i]["response"]) for j in range(len(variants))] for i in range(n)],
        }
    return out
