"""``hhalign run``: the stage graph over one run folder, with skip/resume, a plan, progress and a log.

    hhalign run configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign run configs/tiny.yaml --dry-run --set dpo.beta=0.2      # what would re-run, and why

Each stage gets a key: the hash of its own config slice and its upstream stages' keys. A stage whose
manifest carries the same key is skipped; changing one setting therefore re-runs only the stages
downstream of it. A stage killed mid-way has no manifest: the next run resumes it (training from its
last checkpoint, generation from the files already written).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hhalign.artifacts import git_commit, read_json, read_manifest, versions, write_json, write_manifest
from hhalign.config import PROMPT_SETS, RUN_RM, TINY, RunConfig, section_hash
from hhalign.train.common import STAGE_DIRS

GEN_DIR, SCORE_DIR, METRICS_DIR, REPORT_DIR = "07_generate", "08_score", "09_metrics", "10_report"
# the training stage that makes each variant's model ("base" is trained here only for the tiny preset)
VARIANT_STAGE = {"base": "pretrain", "sft": "sft", "dpo": "dpo", "sft_dpo": "sft_dpo"}


class StageFailed(RuntimeError):
    """A stage of ``hhalign run`` failed; earlier stages stay valid and the next run resumes here."""


@dataclass
class Stage:
    name: str
    dir: str
    deps: list[str]
    config: dict[str, Any]
    action: Callable[[], Any]
    key: str = ""
    reason: str = field(default="")


# ----------------------------------------------------------------------------- the graph


def model_for(variant: str, cfg: RunConfig, run_dir: Path) -> str:
    if variant == "base":
        return str(run_dir / STAGE_DIRS["pretrain"] / "model") if cfg.model.name_or_path == TINY else cfg.model.name_or_path
    return str(run_dir / STAGE_DIRS[variant] / "model")


def build_stages(cfg: RunConfig, run_dir: Path, data_seed: int | None = None) -> list[Stage]:
    """The stages this config needs, in order, each keyed by its settings and its upstream keys.
    ``data_seed``: the seed the (possibly shared) data stage was made with; default cfg.seed."""
    from hhalign.train import run_stage

    c = cfg.to_dict()
    tiny = cfg.model.name_or_path == TINY
    v = set(cfg.variants)
    seed = cfg.seed if data_seed is None else data_seed
    # the model matters to the data stage too: data.render=auto uses its chat template when it has one
    stages = [Stage("data", "01_data", [], {"data": c["data"], "seed": seed, "model": cfg.model.name_or_path},
                    lambda: _data(cfg, run_dir))]
    base_deps = ["data"] + (["pretrain"] if tiny else [])
    if tiny:
        stages.append(Stage("pretrain", STAGE_DIRS["pretrain"], ["data"], {"model": c["model"], "pretrain": c["pretrain"], "seed": cfg.seed},
                            lambda: run_stage("pretrain", cfg, run_dir, resume=True)))
    if v & {"sft", "sft_dpo"}:
        stages.append(Stage("sft", STAGE_DIRS["sft"], base_deps, {"model": c["model"], "sft": c["sft"], "seed": cfg.seed},
                            lambda: run_stage("sft", cfg, run_dir, resume=True)))
    if "dpo" in v:
        stages.append(Stage("dpo", STAGE_DIRS["dpo"], base_deps, {"model": c["model"], "dpo": c["dpo"], "seed": cfg.seed},
                            lambda: run_stage("dpo", cfg, run_dir, resume=True)))
    if "sft_dpo" in v:
        stages.append(Stage("sft_dpo", STAGE_DIRS["sft_dpo"], ["data", "sft"], {"dpo": c["dpo"], "seed": cfg.seed},
                            lambda: run_stage("sft_dpo", cfg, run_dir, resume=True)))
    if cfg.rm.enabled:
        stages.append(Stage("rm", STAGE_DIRS["rm"], ["data"], {"rm": c["rm"], "tiny": c["model"]["tiny"], "seed": cfg.seed},
                            lambda: run_stage("rm", cfg, run_dir, resume=True)))
    gen_deps = ["data"] + sorted({VARIANT_STAGE[x] for x in cfg.variants if x != "base" or tiny})
    stages.append(Stage("generate", GEN_DIR, gen_deps, {"generate": c["generate"], "variants": cfg.variants,
                                                         "base": cfg.model.name_or_path}, lambda: _generate(cfg, run_dir)))
    score_deps = ["generate"] + (["rm"] if cfg.score.reward_model == RUN_RM else [])
    stages.append(Stage("score", SCORE_DIR, score_deps, {"score": c["score"]}, lambda: _score(cfg, run_dir)))
    stages.append(Stage("metrics", METRICS_DIR, ["score"], {"metrics": c["metrics"]}, lambda: _metrics(cfg, run_dir)))
    stages.append(Stage("report", REPORT_DIR, ["metrics", "data"], {"report": c["report"]}, lambda: _report(cfg, run_dir)))
    keys: dict[str, str] = {}
    for s in stages:
        s.key = section_hash({"config": s.config, "deps": [keys[d] for d in s.deps]})
        keys[s.name] = s.key
    return stages


def plan(stages: list[Stage], run_dir: Path) -> list[Stage]:
    """Mark each stage with why it runs or is skipped; a stage re-runs when anything upstream re-runs."""
    rerun: set[str] = set()
    for s in stages:
        manifest = read_manifest(run_dir / s.dir)
        if manifest is None:
            partial = (run_dir / s.dir).exists()
            s.reason = "resume (interrupted earlier)" if partial else "run (not done yet)"
        elif manifest.get("pipeline_key") != s.key:
            upstream = [d for d in s.deps if d in rerun]
            s.reason = f"run (upstream {', '.join(upstream)} re-runs)" if upstream else "run (its settings changed)"
        else:
            s.reason = "skip (done, settings unchanged)"
        if not s.reason.startswith("skip"):
            rerun.add(s.name)
    return stages


# ----------------------------------------------------------------------------- stage actions


def _data(cfg: RunConfig, run_dir: Path) -> None:
    from hhalign import data

    manifest = data.run(cfg, run_dir)
    for note in manifest["notes"]:
        print(f"note: {note}")
    print(manifest["summary"])


def _prompt_sets(run_dir: Path) -> dict[str, Path]:
    return {s: run_dir / "01_data" / "prompts" / f"{s}.json" for s in PROMPT_SETS if (run_dir / "01_data" / "prompts" / f"{s}.json").is_file()}


def _generate(cfg: RunConfig, run_dir: Path) -> None:
    """Every variant answers every prompt set; files already written by an interrupted run are kept."""
    from hhalign.generate import run as generate

    out_dir = run_dir / GEN_DIR
    started = time.time()
    keys_path = out_dir / ".done.json"
    done = read_json(keys_path) if keys_path.is_file() else {}
    want = section_hash({"generate": cfg.to_dict()["generate"], "models": {v: _model_key(v, cfg, run_dir) for v in cfg.variants}})
    if done.get("_key") != want:
        done = {"_key": want}
    outputs = []
    for variant in cfg.variants:
        for name, prompts in _prompt_sets(run_dir).items():
            out = out_dir / f"{variant}_{name}.json"
            outputs.append(out.name)
            if done.get(out.name) and out.is_file():
                print(f"generate: {out.name} already written, kept")
                continue
            print(f"generate: {variant} on {name} prompts")
            generate(model_for(variant, cfg, run_dir), prompts, out, cfg.generate)
            done[out.name] = True
            write_json(keys_path, done)
    write_manifest(out_dir, stage="generate", config=cfg.to_dict()["generate"], outputs=outputs, started=started,
                   inputs={name: p for name, p in _prompt_sets(run_dir).items()})


def _model_key(variant: str, cfg: RunConfig, run_dir: Path) -> str | None:
    stage = VARIANT_STAGE[variant]
    m = read_manifest(run_dir / STAGE_DIRS[stage]) if (variant != "base" or cfg.model.name_or_path == TINY) else None
    return (m or {}).get("pipeline_key") or (cfg.model.name_or_path if variant == "base" else None)


def _score(cfg: RunConfig, run_dir: Path) -> None:
    from hhalign.responses import parse_response_filename
    from hhalign.score import run as score

    started = time.time()
    src, out_dir = run_dir / GEN_DIR, run_dir / SCORE_DIR
    files = sorted(p.name for p in src.glob("*.json") if parse_response_filename(p.name))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in files:  # score copies, so 07_generate stays the raw record
        shutil.copyfile(src / name, out_dir / f".{name}.copy")
        os.replace(out_dir / f".{name}.copy", out_dir / name)
    rm = str(run_dir / STAGE_DIRS["rm"] / "model") if cfg.score.reward_model == RUN_RM else cfg.score.reward_model
    score(rm, [out_dir / n for n in files], cfg.score)
    write_manifest(out_dir, stage="score", config={**cfg.to_dict()["score"], "resolved_reward_model": rm},
                   inputs={"responses": src}, outputs=files, started=started)


def _metrics(cfg: RunConfig, run_dir: Path) -> None:
    from hhalign.metrics import format_table, run as metrics

    started = time.time()
    out_dir = run_dir / METRICS_DIR
    result = metrics(run_dir / SCORE_DIR, cfg.metrics, out_dir / "metrics.json")
    print(format_table(result))
    write_manifest(out_dir, stage="metrics", config=cfg.to_dict()["metrics"], inputs={"scores": run_dir / SCORE_DIR},
                   outputs=["metrics.json"], started=started)


def _report(cfg: RunConfig, run_dir: Path) -> None:
    from hhalign.report import build

    started = time.time()
    out_dir = run_dir / REPORT_DIR
    files = build(run_dir, out_dir, cfg.report, cfg.metrics, metrics=read_json(run_dir / METRICS_DIR / "metrics.json"))
    write_manifest(out_dir, stage="report", config=cfg.to_dict()["report"], inputs={"metrics": run_dir / METRICS_DIR / "metrics.json"},
                   outputs=[str(Path(f).relative_to(out_dir)) for f in files], started=started)
    print(f"report: open {out_dir / 'report.html'}")


# ----------------------------------------------------------------------------- running


def _stamp(run_dir: Path, stage: Stage) -> None:
    """Add the pipeline key to the manifest the stage wrote (atomically; a crash here only re-runs the stage)."""
    path = run_dir / stage.dir / "manifest.json"
    manifest = read_json(path)
    manifest["pipeline_key"] = stage.key
    write_json(path, manifest)


def stamp_standalone(cfg: RunConfig, run_dir: Path, name: str) -> None:
    """After ``hhalign data|sft|dpo|...`` on its own: key the manifest as ``hhalign run`` would, so a later run skips it."""
    for s in build_stages(cfg, run_dir):
        if s.name == name and read_manifest(run_dir / s.dir) is not None:
            _stamp(run_dir, s)


def _prepare_dir(run_dir: Path, stage: Stage) -> None:
    """A stage folder left by different settings is cleared; one left by the same settings is resumed."""
    d = run_dir / stage.dir
    marker = d / ".pipeline_key"
    if d.exists() and (not marker.is_file() or marker.read_text() != stage.key):
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    marker.write_text(stage.key)


def write_run_json(cfg: RunConfig, run_dir: Path, seeds: list[int] | None) -> None:
    write_json(run_dir / "run.json", {
        "config": cfg.to_dict(), "config_hash": cfg.hash(), "seed": cfg.seed, "seeds": seeds, "versions": versions(),
        "git_commit": git_commit(), "command": " ".join(sys.argv), "cwd": os.getcwd(),
    })


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Everything printed also goes to the run's log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err


class _Tee:
    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def execute(cfg: RunConfig, run_dir: Path, dry_run: bool = False, header: str = "", data_seed: int | None = None) -> bool:
    """Plan, print, and run the stages of one run folder. Returns True when something ran."""
    stages = plan(build_stages(cfg, run_dir, data_seed), run_dir)
    n = len(stages)
    print(f"{header}plan for {run_dir}:")
    for k, s in enumerate(stages, 1):
        print(f"  [{k}/{n}] {s.name:<9} {s.reason}")
    if dry_run:
        return False
    ran = False
    for k, s in enumerate(stages, 1):
        if s.reason.startswith("skip"):
            print(f"[{k}/{n}] {s.name}: skipped, done with the same settings")
            continue
        print(f"[{k}/{n}] {s.name}: {s.reason.split(' (')[0]} ...", flush=True)
        t = time.time()
        _prepare_dir(run_dir, s)
        try:
            s.action()
        except KeyboardInterrupt:
            raise
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StageFailed(f"stage '{s.name}' failed: the disk is full ({e}). Free space and run the same command "
                                  f"again: finished stages stay valid and the run resumes at '{s.name}'.") from e
            raise StageFailed(f"stage '{s.name}' failed: {type(e).__name__}: {e}. Earlier stages stay valid; "
                              f"run the same command again to resume at '{s.name}'.") from e
        except Exception as e:
            raise StageFailed(f"stage '{s.name}' failed: {type(e).__name__}: {e}. Earlier stages stay valid; "
                              f"run the same command again to resume at '{s.name}'.") from e
        _stamp(run_dir, s)
        ran = True
        print(f"[{k}/{n}] {s.name}: done in {time.time() - t:.1f} s", flush=True)
    return ran


def run_pipeline(cfg: RunConfig, dry_run: bool = False, seeds: list[int] | None = None) -> int:
    run_dir = cfg.run_dir
    if dry_run:
        for sub_cfg, sub_dir, header in _per_seed(cfg, run_dir, seeds):
            execute(sub_cfg, sub_dir, dry_run=True, header=header, data_seed=cfg.seed)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    with _logging_to(run_dir / "run.log"):
        print(f"hhalign run: {run_dir} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
        write_run_json(cfg, run_dir, seeds)
        started = time.time()
        for sub_cfg, sub_dir, header in _per_seed(cfg, run_dir, seeds):
            if sub_dir != run_dir:
                _share_data(cfg, run_dir, sub_dir)
            ran = execute(sub_cfg, sub_dir, header=header, data_seed=cfg.seed)
            if not ran:
                print(f"{header}nothing to do: every stage is done with these settings")
        if seeds:
            from hhalign.seeds import aggregate

            aggregate(cfg, run_dir, seeds)
        print(f"hhalign run: finished in {time.time() - started:.1f} s; report: {_report_path(run_dir, seeds)}")
    return 0


def _per_seed(cfg: RunConfig, run_dir: Path, seeds: list[int] | None) -> Iterator[tuple[RunConfig, Path, str]]:
    if not seeds:
        yield cfg, run_dir, ""
        return
    for s in seeds:
        yield replace(cfg, seed=s), run_dir / f"seed-{s}", f"seed {s}: "


def _share_data(cfg: RunConfig, run_dir: Path, seed_dir: Path) -> None:
    """Seeds share one data stage (same prompts, same training rows): run it once, link it into each seed folder."""
    stage = build_stages(cfg, run_dir)[0]
    plan([stage], run_dir)
    if not stage.reason.startswith("skip"):
        _prepare_dir(run_dir, stage)
        stage.action()
        _stamp(run_dir, stage)
    seed_dir.mkdir(parents=True, exist_ok=True)
    link = seed_dir / "01_data"
    if not link.exists():
        link.symlink_to(Path("..") / "01_data")


def _report_path(run_dir: Path, seeds: list[int] | None) -> Path:
    return run_dir / ("seeds_report.md" if seeds else f"{REPORT_DIR}/report.html")
