"""``hhalign run``: every stage the config needs, in the order of the stage table, over one run folder.

    hhalign run configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign run configs/tiny.yaml --dry-run --set dpo.beta=0.2      # what would re-run, and why

1. Every input of every stage (data source, prompt files, model paths, the reward model, the hub) is checked
   before any folder is created or changed: a mistyped path fails with one line and leaves a finished run as
   it was.
2. The plan (``hhalign.stages.plan``): each stage runs, resumes or is skipped, and the line says why (the
   setting or the input that changed, the upstream stage that re-runs).
3. The stages that need it run, each through its own module's ``run(cfg, run_dir)``; everything printed also
   goes to run.log, and a failure names its stage (``hhalign.errors.report``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from hhalign import errors, logs, stages
from hhalign.artifacts import git_commit, versions, write_json
from hhalign.config import RunConfig

log = logging.getLogger(__name__)


def write_run_json(cfg: RunConfig, run_dir: Path, seeds: list[int] | None) -> None:
    write_json(run_dir / "run.json", {
        "config": cfg.to_dict(), "config_hash": cfg.hash(), "seed": cfg.seed, "seeds": seeds, "versions": versions(),
        "git_commit": git_commit(), "command": " ".join(sys.argv), "cwd": os.getcwd(),
    })


def print_plan(steps: list[stages.Step], run_dir: Path, header: str = "") -> None:
    log.info(f"{header}plan for {run_dir}:")
    for k, step in enumerate(steps, 1):
        log.info(step.line(k, len(steps)))


def execute(cfg: RunConfig, run_dir: Path, header: str = "", shared: tuple[str, ...] = ()) -> list[str]:
    """Plan, print, and run the stages of one run folder. Returns the names of the stages that ran."""
    steps = stages.plan(cfg, run_dir, shared)
    print_plan(steps, run_dir, header)
    n, ran = len(steps), []
    for k, step in enumerate(steps, 1):
        name = step.stage.name
        if step.action == "skip":
            log.info(f"[{k}/{n}] {name}: skipped, {step.reason}")
            continue
        log.info(f"[{k}/{n}] {name}: {step.action} ...")
        started = time.time()
        try:
            stages.module(step.stage).run(cfg, run_dir, resume=True)
        except BaseException as e:
            errors.report(e, "run", stage=name, memory_keys=step.stage.memory_keys)
            if isinstance(e, errors.UserError):
                log.error(f"finished stages stay valid; fix the problem and run the same command again to resume at '{name}'")
            raise
        ran.append(name)
        log.info(f"[{k}/{n}] {name}: done in {time.time() - started:.1f} s")
    return ran


def run_pipeline(cfg: RunConfig, dry_run: bool = False, seeds: list[int] | None = None) -> int:
    run_dir = cfg.run_dir
    stages.validate(cfg, run_dir)  # before any folder is touched
    if dry_run:
        for sub_cfg, sub_dir, header in _per_seed(cfg, run_dir, seeds):
            print_plan(stages.plan(sub_cfg, sub_dir, ("data",) if seeds else ()), sub_dir, header)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    with logs.to_file(run_dir / "run.log"):
        log.info(f"hhalign run: {run_dir} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
        write_run_json(cfg, run_dir, seeds)
        started = time.time()
        for sub_cfg, sub_dir, header in _per_seed(cfg, run_dir, seeds):
            if seeds:
                _share_data(cfg, run_dir, sub_dir)
            if not execute(sub_cfg, sub_dir, header, ("data",) if seeds else ()):
                log.info(f"{header}nothing to do: every stage is done with these settings and inputs")
        if seeds:
            from hhalign.seeds import aggregate

            aggregate(run_dir, seeds)
        report = run_dir / "seeds_report.md" if seeds else stages.stage_dir(run_dir, "report") / "report.html"
        log.info(f"hhalign run: finished in {time.time() - started:.1f} s; report: {report}")
    return 0


def _per_seed(cfg: RunConfig, run_dir: Path, seeds: list[int] | None) -> Iterator[tuple[RunConfig, Path, str]]:
    if not seeds:
        yield cfg, run_dir, ""
        return
    for s in seeds:
        yield replace(cfg, seed=s), run_dir / f"seed-{s}", f"seed {s}: "


def _share_data(cfg: RunConfig, run_dir: Path, seed_dir: Path) -> None:
    """Seeds share one data stage (same prompts, same training rows): run it once, link it into each seed folder."""
    (step,) = [s for s in stages.plan(cfg, run_dir) if s.stage.name == "data"]
    if step.action != "skip":
        log.info(f"data (shared by every seed): {step.action} ({step.reason})")
        stages.module(step.stage).run(cfg, run_dir)
    seed_dir.mkdir(parents=True, exist_ok=True)
    link = stages.stage_dir(seed_dir, "data")
    if not link.exists():
        link.symlink_to(Path("..") / link.name)
