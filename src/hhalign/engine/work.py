"""The stages of a run, in one table, and what every stage shares: its folder, its key, skip/resume, its manifest.

    for step in plan(cfg, run_dir): print(step.line(k, n))
    work = begin("sft", cfg, run_dir)            # inside a stage module's run(cfg, run_dir)
    ...
    return work.finish(["model", "train_report.json"], extra={"summary": ...})

Each row of ``STAGES`` gives a stage's name (also its ``hhalign NAME`` subcommand), its folder, the stages
whose outputs it reads, the config keys it depends on, the module whose ``run(cfg, run_dir)`` runs it (and
whose ``inputs(cfg, run_dir)`` names what it reads), one line of help, the keys to lower when it runs out of
memory, and when a config needs it. No other module spells a folder name: use ``stage_dir(run_dir, name)``.

A stage's key hashes its settings (the config keys of its row) and the content of each of its inputs (data
files, prompt files, models given by path, upstream outputs; a hub id counts as its name). It is skipped
only when its manifest holds the same settings and the same input hashes, and the plan names the setting or
input that changed. A folder whose ``.started.json`` holds the current key is resumed (training from its
last checkpoint, generation keeping the files it finished); any other unfinished folder is cleared first.
The manifest is written last, so its presence means the stage finished.
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from hhalign.artifacts import (
    MANIFEST,
    git_commit,
    read_json,
    read_manifest,
    sha256_path,
    stop_if_interrupted,
    versions,
    write_json,
)
from hhalign.config import TINY, RunConfig, section_hash
from hhalign.errors import UserError

STARTED = ".started.json"


def _always(cfg: RunConfig) -> bool:
    return True


def _tiny(cfg: RunConfig) -> bool:
    return cfg.model.name_or_path == TINY


def _needs(*variants: str) -> Callable[[RunConfig], bool]:
    return lambda cfg: bool(set(variants) & set(cfg.variants))


def _rm(cfg: RunConfig) -> bool:
    return cfg.rm.enabled


def _gguf(cfg: RunConfig) -> bool:
    from hhalign.sources import is_gguf

    return is_gguf(cfg.model.name_or_path) or (cfg.rm.enabled and is_gguf(cfg.rm.model))


@dataclass(frozen=True)
class Stage:
    name: str  # also the `hhalign NAME` subcommand
    folder: str  # under the run folder
    upstream: tuple[str, ...]  # stages whose outputs it reads (those the config runs)
    settings: tuple[str, ...]  # config keys (dotted) that key it
    module: str  # holds run(cfg, run_dir, *, resume) -> manifest and inputs(cfg, run_dir) -> {name: Input}
    help: str
    memory_keys: tuple[str, ...] = ()  # what to lower when it runs out of memory
    when: Callable[[RunConfig], bool] = _always


_TRAIN = ("per_device_train_batch_size", "max_length")
STAGES: tuple[Stage, ...] = (
    Stage("convert", "00_convert", (), ("model.name_or_path", "rm.enabled", "rm.model"), "hhalign.convert",
          "make each .gguf model the config names a plain, trainable Hugging Face folder", (), _gguf),
    Stage("data", "01_data", ("convert",), ("data", "seed", "model.name_or_path"), "hhalign.data",
          "parse the preference data into SFT texts, preference pairs, eval prompt sets and a data report"),
    Stage("pretrain", "02_pretrain", ("data",), ("model", "pretrain", "seed"), "hhalign.train.pretrain",
          "tiny preset: build the from-scratch base model and pretrain it on all dialogue text",
          tuple(f"pretrain.{k}" for k in _TRAIN), _tiny),
    Stage("sft", "03_sft", ("convert", "data", "pretrain"), ("model", "sft", "seed"), "hhalign.train.sft",
          "supervised fine-tuning (full) on the chosen dialogues", tuple(f"sft.{k}" for k in _TRAIN), _needs("sft", "sft_dpo")),
    Stage("dpo", "04_dpo", ("convert", "data", "pretrain"), ("model", "dpo", "seed"), "hhalign.train.dpo",
          "DPO with LoRA from the base model", tuple(f"dpo.{k}" for k in _TRAIN), _needs("dpo")),
    Stage("sft_dpo", "05_sft_dpo", ("data", "sft"), ("model.pad_token", "dpo", "seed"), "hhalign.train.sft_dpo",
          "the same DPO, started from the SFT model", tuple(f"dpo.{k}" for k in _TRAIN), _needs("sft_dpo")),
    Stage("rm", "06_rm", ("convert", "data"), ("rm", "model.tiny", "seed"), "hhalign.train.reward",
          "train a reward model on the preference pairs (the run's own judge)", tuple(f"rm.{k}" for k in _TRAIN), _rm),
    Stage("generate", "07_generate", ("convert", "data", "pretrain", "sft", "dpo", "sft_dpo"), ("generate", "variants"),
          "hhalign.generate", "every variant answers every eval prompt set (batched greedy decoding)", ("generate.batch_size",)),
    Stage("score", "08_score", ("generate", "rm"), ("score",), "hhalign.score",
          "a reward model rates every (prompt, response)", ("score.batch_size",)),
    Stage("metrics", "09_metrics", ("score",), ("metrics",), "hhalign.metrics",
          "HmR, HpR, CAS with intervals, paired tests and threshold sweeps"),
    Stage("report", "10_report", ("metrics", "data", "rm"), ("report",), "hhalign.report",
          "figures, report.md and a self-contained report.html"),
)
BY_NAME = {s.name: s for s in STAGES}
# the stage that makes each variant's model ("base" is made by a stage only for the tiny preset)
VARIANT_STAGE = {"base": "pretrain", "sft": "sft", "dpo": "dpo", "sft_dpo": "sft_dpo"}


def get(name: str) -> Stage:
    return BY_NAME[name]


def stage_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / BY_NAME[name].folder


def active(cfg: RunConfig) -> list[Stage]:
    """The stages this config runs, in order."""
    return [s for s in STAGES if s.when(cfg)]


def module(stage: Stage) -> ModuleType:
    return importlib.import_module(stage.module)


def settings(stage: Stage, cfg: RunConfig) -> dict[str, Any]:
    """{config key: value} for the keys in the stage's row."""
    c = cfg.to_dict()
    out = {}
    for key in stage.settings:
        node: Any = c
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """Something a stage reads: a local path or a hub id, and what it is (which decides how it is checked)."""

    ref: str
    kind: str = "artifact"  # artifact (an upstream stage's output), file, prompts, data, model, reward_model, reference
    how: str = ""  # for a hub id: the option that takes a local copy instead

    def is_local(self) -> bool:
        from hhalign import sources

        if self.kind == "data":
            return sources.is_local_data(self.ref)
        if self.kind in ("model", "reward_model"):
            return sources.looks_local_model(self.ref)
        return True

    def digest(self) -> str | None:
        """sha256 of the content (a folder: every file in it); a hub id is its name; None when missing."""
        if not self.is_local():
            return f"hub:{self.ref}"
        p = Path(self.ref).expanduser()
        return sha256_path(p) if p.exists() else None

    def check(self) -> None:
        """Raise a UserError now if this input cannot be used (upstream outputs are checked when they are read)."""
        from hhalign import sources

        if self.kind == "data":
            sources.check_data_source(self.ref, self.how)
        elif self.kind in ("model", "reward_model"):
            sources.check_model(self.ref, self.kind.replace("_", " "), self.how)
        elif self.kind == "prompts":
            from hhalign.prompts import load_prompts

            load_prompts(self.ref)
        elif self.kind == "reference":
            from hhalign.responses import load_scored_dir

            load_scored_dir(self.ref)  # every file rated, every rating a number (the file and row named otherwise)
        elif self.kind == "file" and not Path(self.ref).expanduser().is_file():
            raise UserError(f"file '{self.ref}' does not exist")


def inputs(stage: Stage, cfg: RunConfig, run_dir: Path) -> dict[str, Input]:
    return module(stage).inputs(cfg, Path(run_dir))


def validate(cfg: RunConfig, run_dir: Path, stages: list[Stage] | None = None) -> None:
    """Check every input of every stage the config runs, before any stage folder is created or changed."""
    for st in stages if stages is not None else active(cfg):
        for inp in inputs(st, cfg, run_dir).values():
            inp.check()


def _keyed(stage: Stage, cfg: RunConfig, ins: dict[str, Input]) -> tuple[dict[str, Any], dict[str, str | None], str]:
    """(the stage's settings, its inputs' hashes, the key of both): what a manifest records and a plan compares."""
    stage_settings, hashes = settings(stage, cfg), {n: i.digest() for n, i in ins.items()}
    return stage_settings, hashes, section_hash({"settings": stage_settings, "inputs": hashes})


# ----------------------------------------------------------------------------- running one stage


@dataclass
class StageRun:
    """One run of a stage in its folder: what it was keyed by, and the manifest it writes when it finishes."""

    stage: Stage
    dir: Path
    key: str
    settings: dict[str, Any]
    inputs: dict[str, Input]
    hashes: dict[str, str | None]
    resumed: bool
    main: bool = True
    started: float = field(default_factory=time.time)

    def finish(self, outputs: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write manifest.json, last: settings, inputs with hashes, outputs, versions, timings. Raises
        KeyboardInterrupt instead after a Ctrl-C (``artifacts.catch_interrupts``): the stage stays unfinished."""
        stop_if_interrupted()
        missing = [o for o in outputs if not (self.dir / o).exists()]
        if missing:
            raise RuntimeError(f"stage {self.stage.name} lists outputs it did not write: {missing}")
        manifest = {
            "stage": self.stage.name,
            "key": self.key,
            "settings": self.settings,
            "inputs": {n: {"ref": i.ref, "kind": i.kind, "sha256": self.hashes[n]} for n, i in self.inputs.items()},
            "outputs": sorted(outputs),
            "resumed": self.resumed,
            "versions": versions(),
            "git_commit": git_commit(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": round(time.time() - self.started, 3),
            **(extra or {}),
        }
        if self.main:
            write_json(self.dir / MANIFEST, manifest)
            (self.dir / STARTED).unlink(missing_ok=True)  # finished: the manifest says all the start record did
        return manifest


def begin(name: str, cfg: RunConfig, run_dir: str | Path, *, resume: bool = True, given: dict[str, Input] | None = None,
          main: bool = True, barrier: Callable[[], None] | None = None, started: float | None = None) -> StageRun:
    """Key the stage by its settings and the content of its inputs, and prepare its folder: kept (resumed) when
    ``resume`` and it was started with the same key and never finished, else cleared. ``given`` replaces the
    module's inputs (``hhalign dpo --from PATH``). Under several processes only ``main`` touches the folder;
    ``barrier`` makes the others wait for it. ``started``: when the stage began (default: now), for its wall time."""
    stage, run_dir = get(name), Path(run_dir)
    ins = given if given is not None else inputs(stage, cfg, run_dir)
    _check_upstream(stage, ins)
    stage_settings, hashes, key = _keyed(stage, cfg, ins)
    d = run_dir / stage.folder
    before = _read(d / STARTED)
    keep = resume and d.exists() and not (d / MANIFEST).exists() and (before or {}).get("key") == key
    if barrier:
        barrier()  # every rank has decided before the main one changes the folder
    if main:
        if d.exists() and not keep:
            _clear(d)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / STARTED, {"key": key, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if barrier:
        barrier()
    return StageRun(stage, d, key, stage_settings, ins, hashes, resumed=keep, main=main, started=started or time.time())


def _clear(d: Path) -> None:
    """Empty a stage folder; one that is a link (a sweep's shared stage) keeps its link and loses its contents."""
    if not d.is_symlink():
        shutil.rmtree(d)
        return
    for child in d.resolve().iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def chain_keys(cfg: RunConfig, run_dir: Path, fixed: dict[str, str] | None = None) -> dict[str, str]:
    """The key of each stage the config runs, known before anything runs: the hash of its settings, of its inputs
    from outside the run (data files, prompt files, models by path or hub id) and of its upstream stages' keys.
    Two runs whose stage has the same chain key compute the same thing (``hhalign.sweep`` shares it); ``fixed``
    gives some stages' keys (a multi-seed sweep's data stage, made with the base seed)."""
    keys = dict(fixed or {})
    for st in active(cfg):
        if st.name in keys:
            continue
        outside = {n: i.digest() for n, i in inputs(st, cfg, run_dir).items() if i.kind != "artifact"}
        upstream = {u: keys[u] for u in st.upstream if u in keys}
        keys[st.name] = section_hash({"settings": settings(st, cfg), "outside": outside, "upstream": upstream})
    return keys


def _check_upstream(stage: Stage, ins: dict[str, Input]) -> None:
    for name, inp in ins.items():
        if inp.kind == "artifact" and not Path(inp.ref).exists():
            maker = next((s.name for s in STAGES if s.folder in Path(inp.ref).parts), None)
            first = f"run `hhalign {maker} CONFIG` first, or `hhalign run CONFIG`" if maker else "run the stage that makes it first"
            raise UserError(f"stage '{stage.name}' needs {inp.ref} ({name}), which does not exist: {first}")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the plan


@dataclass
class Step:
    stage: Stage
    action: str  # run | resume | skip
    reason: str

    def line(self, k: int, n: int) -> str:
        return f"  [{k}/{n}] {self.stage.name:<9} {self.action} ({self.reason})"


def changed_settings(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The dotted config keys whose values differ: {"dpo": {"beta": 0.1}} vs 0.2 -> ["dpo.beta"]."""
    a, b = _flat(old or {}), _flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _why(stage: Stage, cfg: RunConfig, run_dir: Path) -> tuple[str, str]:
    d = run_dir / stage.folder
    manifest = read_manifest(d)
    stage_settings, hashes, key = _keyed(stage, cfg, inputs(stage, cfg, run_dir))
    if manifest is None:
        if (_read(d / STARTED) or {}).get("key") == key:
            return "resume", "interrupted earlier"
        return "run", "interrupted earlier with other settings or inputs: starts over" if d.exists() else "not done yet"
    changed = changed_settings(manifest.get("settings"), stage_settings)
    if changed:
        return "run", "settings changed: " + ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
    old = {n: v.get("sha256") for n, v in (manifest.get("inputs") or {}).items()}
    moved = sorted(n for n in old.keys() | hashes.keys() if old.get(n) != hashes.get(n))
    if moved:
        return "run", "input changed: " + ", ".join(moved[:4]) + (", ..." if len(moved) > 4 else "")
    return "skip", "done, settings and inputs unchanged"


def plan(cfg: RunConfig, run_dir: Path, shared: tuple[str, ...] = ()) -> list[Step]:
    """What each stage of the config would do now, and why. A stage re-runs when an upstream stage re-runs;
    stages in ``shared`` (the data stage of a multi-seed run) are made elsewhere and taken as they are."""
    steps: list[Step] = []
    rerun: set[str] = set()
    for st in active(cfg):
        if st.name in shared:
            steps.append(Step(st, "skip", "shared, made once for every seed"))
            continue
        upstream = [u for u in st.upstream if u in rerun]
        action, reason = ("run", f"upstream {', '.join(upstream)} re-runs") if upstream else _why(st, cfg, Path(run_dir))
        if action != "skip":
            rerun.add(st.name)
        steps.append(Step(st, action, reason))
    return steps
