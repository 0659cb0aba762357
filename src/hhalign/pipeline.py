"""``hhalign run``: every stage the config needs, in the order of the stage table, over one run folder.

    hhalign run configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign run configs/tiny.yaml --dry-run --set dpo.beta=0.2      # what would re-run, and why

1. Every input of every stage (data source, prompt files, model paths, the reward model, the hub) is checked
   before any folder is created or changed: a mistyped path fails with one line and leaves a finished run as
   it was.
2. The plan (``plan``): each stage runs, resumes or is skipped, and the line says why (the setting or the input
   that changed, the upstream stage that re-runs), by the one rule of ``hhalign.engine.work.decide``.
3. The stages that need it run, each through its own module's ``run(cfg, run_dir)`` (``MODULES``: one module
   per stage, imported here by name); everything printed also goes to run.log, and a failure names its stage
   (``hhalign.errors.report``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from hhalign import errors, logs, parallel
from hhalign.artifacts import git_commit, versions, write_json
from hhalign.config.schema import RunConfig, section_hash
from hhalign.engine.folder import seed_folder
from hhalign.engine.lock import command_line, owning
from hhalign.engine.table import (
    FIXED,
    RUN_FILE,
    Stage,
    active,
    artifact,
    get,
    settings,
    stage_dir,
)
from hhalign.engine.work import Input, decide
from hhalign.report.seeds import aggregate
from hhalign.stages import (
    convert,
    data,
    generate,
    metrics,
    pretrain,
    report,
    rm,
    score,
    train,
)

log = logging.getLogger(__name__)
# the module that runs each row: a fixed stage's own, or hhalign.stages.train for every variant's training row
MODULES: dict[str, ModuleType] = {m.__name__.rsplit(".", 1)[1]: m for m in (
    convert, data, pretrain, train, rm, generate, score, metrics, report)}
assert sorted(MODULES) == sorted([s.name for s in FIXED] + ["train"]), "hhalign.stages has one module per fixed stage, and train"


def _variant(stage: Stage) -> dict[str, str]:
    return {"variant": stage.variant} if stage.variant else {}


def inputs(stage: Stage, cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    """What the stage reads in this config: its module's ``inputs``."""
    return MODULES[stage.runner].inputs(cfg, Path(run_dir), **_variant(stage))


def run_stage(name: str, cfg: RunConfig, run_dir: Path, **kwargs: object) -> dict | None:
    """Run one stage (its module's ``run``): ``hhalign NAME CONFIG`` and every stage of ``hhalign run``. Under a
    launch of several processes a stage that is not ``every_rank`` runs on rank 0 alone, the others waiting."""
    st = get(name, cfg)
    kwargs = {**kwargs, **_variant(st)}
    if st.every_rank:
        return MODULES[st.runner].run(cfg, Path(run_dir), **kwargs)
    return parallel.on_main(lambda: MODULES[st.runner].run(cfg, Path(run_dir), **kwargs), f"stage '{name}'")


def validate(cfg: RunConfig, run_dir: Path, only: list[Stage] | None = None) -> None:
    """Check every input of every stage the config runs, before any stage folder is created or changed."""
    for st in only if only is not None else active(cfg):
        for inp in inputs(st, cfg, run_dir).values():
            inp.check()


@dataclass
class Step:
    stage: Stage
    action: str  # run | resume | skip
    reason: str

    def line(self, k: int, n: int) -> str:
        return f"  [{k}/{n}] {self.stage.name:<9} {self.action} ({self.reason})"


def plan(cfg: RunConfig, run_dir: Path, shared: tuple[str, ...] = ()) -> list[Step]:
    """What each stage of the config would do now, and why (``decide``). A stage re-runs when an upstream stage
    re-runs; stages in ``shared`` (the data stage of a multi-seed run) are made elsewhere and taken as they are."""
    steps: list[Step] = []
    rerun: set[str] = set()
    for st in active(cfg):
        if st.name in shared:
            steps.append(Step(st, "skip", "shared, made once for every seed"))
            continue
        upstream = [u for u in st.upstream if u in rerun]
        if upstream:
            step = Step(st, "run", f"upstream {', '.join(upstream)} re-runs")
        else:
            d = decide(st, cfg, Path(run_dir), inputs(st, cfg, run_dir))
            step = Step(st, d.action, d.reason)
        if step.action != "skip":
            rerun.add(st.name)
        steps.append(step)
    return steps


def same_inputs(stage: Stage, cfg: RunConfig, run_dir: Path) -> bool:
    """Whether a stage planned to re-run because an upstream stage re-runs is, now that it has, done as it is: the
    upstream stage came out the same (a stage run again after a kill, a deleted output made again), so its
    settings, inputs and outputs are those its manifest recorded (``decide``)."""
    return decide(stage, cfg, Path(run_dir), inputs(stage, cfg, run_dir)).action == "skip"


def chain_keys(cfg: RunConfig, run_dir: Path, fixed: dict[str, str] | None = None) -> dict[str, str]:
    """The key of each stage the config runs, known before anything runs: the hash of its settings, of its inputs
    from outside the run (data files, prompt files, models by path or hub id) and of its upstream stages' keys.
    Two runs whose stage has the same chain key compute the same thing (``hhalign.multirun.sweep`` shares it);
    ``fixed`` gives some stages' keys (a multi-seed sweep's data stage, made with the base seed)."""
    keys = dict(fixed or {})
    for st in active(cfg):
        if st.name in keys:
            continue
        outside = {n: i.digest() for n, i in inputs(st, cfg, run_dir).items() if i.kind != "artifact"}
        upstream = {u: keys[u] for u in st.upstream if u in keys}
        keys[st.name] = section_hash({"settings": settings(st, cfg), "outside": outside, "upstream": upstream})
    return keys


def make_shared_data(cfg: RunConfig, run_dir: Path, header: str = "") -> bool:
    """The data stage that several seeds share, made once in ``run_dir`` with ``cfg`` (the base seed) when it is
    not done: the one way seeds of a run and seeded sweep points share it. Returns whether it ran."""
    st = get("data")
    d = decide(st, cfg, run_dir, inputs(st, cfg, run_dir))
    if d.action == "skip":
        return False
    log.info(f"{header}data (shared by every seed): {d.action} ({d.reason})")
    run_stage("data", cfg, run_dir)
    return True


def write_run_json(cfg: RunConfig, run_dir: Path, seeds: list[int] | None) -> None:
    write_json(run_dir / RUN_FILE, {
        "config": cfg.to_dict(), "config_hash": cfg.hash(), "seed": cfg.seed, "seeds": seeds, "versions": versions(),
        "git_commit": git_commit(), "command": " ".join(sys.argv), "cwd": os.getcwd(),
    })


def print_plan(steps: list[Step], run_dir: Path, header: str = "") -> None:
    log.info(f"{header}plan for {run_dir}:")
    for k, step in enumerate(steps, 1):
        log.info(step.line(k, len(steps)))


def execute(cfg: RunConfig, run_dir: Path, header: str = "", shared: tuple[str, ...] = ()) -> list[str]:
    """Plan, print, and run the stages of one run folder. Returns the names of the stages that ran."""
    steps = plan(cfg, run_dir, shared)
    parallel.barrier("planning")  # every rank has planned before rank 0 changes a stage folder
    print_plan(steps, run_dir, header)
    n, ran = len(steps), []
    for k, step in enumerate(steps, 1):
        name = step.stage.name
        if step.action == "skip":
            log.info(f"[{k}/{n}] {name}: skipped, {step.reason}")
            continue
        if step.reason.startswith("upstream") and same_inputs(step.stage, cfg, run_dir):
            log.info(f"[{k}/{n}] {name}: skipped, done; what it reads came out the same")
            continue
        log.info(f"[{k}/{n}] {name}: {step.action} ...")
        started = time.time()
        try:
            run_stage(name, cfg, run_dir, resume=True)
        except BaseException as e:
            errors.report(e, "run", stage=name, memory_keys=step.stage.memory_keys)
            if isinstance(e, errors.UserError):
                log.error(f"finished stages stay valid; fix the problem and run the same command again to resume at '{name}'")
            raise
        ran.append(name)
        log.info(f"[{k}/{n}] {name}: done in {time.time() - started:.1f} s")
    return ran


def run_pipeline(cfg: RunConfig, dry_run: bool = False, seeds: list[int] | None = None) -> int:
    """Every stage the config needs. Under ``accelerate launch`` every process runs this: they check they agree on
    the config and the run folder, plan alike, and each stage runs on every rank or on rank 0 alone (``run_stage``)."""
    run_dir = cfg.run_dir
    parallel.agree({"config hash": cfg.hash(), "run folder": str(run_dir.resolve()), "seeds": str(seeds)}, "")
    validate(cfg, run_dir)  # before any folder is touched
    if hint := parallel.idle_gpus_hint():
        log.info(hint)
    if dry_run:
        for sub_cfg, sub_dir, header in _per_seed(cfg, run_dir, seeds):
            print_plan(plan(sub_cfg, sub_dir, ("data",) if seeds else ()), sub_dir, header)
        return 0
    if parallel.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    parallel.check_shared(run_dir, "")  # the others wait there for rank 0 to have made the folder
    with owning(run_dir, command_line()), logs.to_file(run_dir / "run.log") if parallel.is_main() else nullcontext():
        log.info(f"hhalign run: {run_dir} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
        if parallel.size() > 1:
            log.info(f"hhalign run: {parallel.size()} processes; training, generate and score use all of them, the other "
                     "stages run on rank 0")
        if parallel.is_main():
            write_run_json(cfg, run_dir, seeds)
        started = time.time()
        for sub_cfg, sub_dir, header in _per_seed(cfg, run_dir, seeds):
            if seeds:
                parallel.on_main(lambda sub_dir=sub_dir: _share_data(cfg, run_dir, sub_dir), "the shared data stage")
            if not execute(sub_cfg, sub_dir, header, ("data",) if seeds else ()):
                log.info(f"{header}nothing to do: every stage is done with these settings and inputs")
        if seeds:
            parallel.on_main(lambda: aggregate(run_dir, seeds), "the seeds report")
        shown = run_dir / "seeds_report.md" if seeds else artifact(run_dir, "report", "report.html")
        log.info(f"hhalign run: finished in {time.time() - started:.1f} s; report: {shown}")
    return 0


def _per_seed(cfg: RunConfig, run_dir: Path, seeds: list[int] | None) -> Iterator[tuple[RunConfig, Path, str]]:
    if not seeds:
        yield cfg, run_dir, ""
        return
    for s in seeds:
        yield replace(cfg, seed=s), seed_folder(run_dir, s), f"seed {s}: "


def _share_data(cfg: RunConfig, run_dir: Path, seed_dir: Path) -> None:
    """Seeds share one data stage (same prompts, same training rows): made once, linked into each seed folder."""
    make_shared_data(cfg, run_dir)
    seed_dir.mkdir(parents=True, exist_ok=True)
    link = stage_dir(seed_dir, "data")
    if not link.exists():
        link.symlink_to(Path("..") / link.name)
