"""A stage's run in its folder: its inputs, its key, the one skip/resume decision, its manifest.

    work = begin("sft", cfg, run_dir, inputs(cfg, run_dir))     # inside hhalign.stages.sft.run
    ...
    return work.finish(["model", "train_report.json"], extra={"summary": ...})

A stage's key hashes its settings (the config keys of its row in ``hhalign.engine.table``) and the content of
each of its inputs (data files, prompt files, models given by path, upstream outputs; a hub id counts as its
name). ``decide`` is the one rule, used by the stage itself (``begin``), by ``hhalign run``'s plan and by the
sweep: a stage is skipped only when its manifest holds the same settings and the same input hashes (the
reason names the setting or input that changed); a folder whose ``.started.json`` holds the current key is
resumed (training from its last checkpoint, generation keeping the files it finished); any other unfinished
folder is cleared first. The manifest is written last, so its presence means the stage finished.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhalign import parallel, usage
from hhalign.artifacts import (
    changed,
    git_commit,
    read_manifest,
    read_record,
    record,
    sha256_path,
    stop_if_interrupted,
    versions,
    write_json,
)
from hhalign.config.schema import RunConfig, section_hash
from hhalign.data import sources
from hhalign.data.prompts import load_prompts
from hhalign.data.responses import load_scored_dir
from hhalign.engine.table import (
    MANIFEST,
    STARTED,
    Stage,
    get,
    settings,
    stage_dir,
)
from hhalign.errors import UserError

# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """Something a stage reads: a local path or a hub id, and what it is (which decides how it is checked)."""

    ref: str
    kind: str = "artifact"  # artifact (an upstream stage's output), file, prompts, data, model, reward_model, reference
    how: str = ""  # for a hub id: the option that takes a local copy instead

    def is_local(self) -> bool:
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
        if self.kind == "data":
            sources.check_data_source(self.ref, self.how)
        elif self.kind in ("model", "reward_model"):
            sources.check_model(self.ref, self.kind.replace("_", " "), self.how)
        elif self.kind == "prompts":
            load_prompts(self.ref)
        elif self.kind == "reference":
            load_scored_dir(self.ref)  # every file rated, every rating a number (the file and row named otherwise)
        elif self.kind == "file" and not Path(self.ref).expanduser().is_file():
            raise UserError(f"file '{self.ref}' does not exist")


def model_input(ref: str, run_dir: Path, how: str) -> Input:
    """A model reference as a stage input: a .gguf file -> its converted folder in the run (made by the convert
    stage); anything else -> the reference itself (a ``pkg:`` path resolved), checked as a model."""
    if sources.is_gguf(ref):
        path = sources.resolve(ref)
        sources.check_gguf_file(Path(path))
        return Input(str(stage_dir(run_dir, "convert") / sources.folder_name(path)))
    return Input(sources.resolve(ref), "model", how)


def keyed(stage: Stage, cfg: RunConfig, ins: dict[str, Input]) -> tuple[dict[str, Any], dict[str, str | None], str]:
    """(the stage's settings, its inputs' hashes, the key of both): what a manifest records and a plan compares."""
    stage_settings, hashes = settings(stage, cfg), {n: i.digest() for n, i in ins.items()}
    return stage_settings, hashes, section_hash({"settings": stage_settings, "inputs": hashes})


# ----------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Decision:
    """What a stage does now in its folder (run | resume | skip), why, and the key it was decided with."""

    action: str
    reason: str
    key: str
    settings: dict[str, Any]
    hashes: dict[str, str | None]


def decide(stage: Stage, cfg: RunConfig, run_dir: Path, ins: dict[str, Input]) -> Decision:
    """The one skip/resume rule (see the module docstring)."""
    stage_settings, hashes, key = keyed(stage, cfg, ins)
    d = Path(run_dir) / stage.folder

    def made(action: str, reason: str) -> Decision:
        return Decision(action, reason, key, stage_settings, hashes)

    manifest = read_manifest(d)
    if manifest is None:
        if (read_record(d / STARTED) or {}).get("key") == key:
            return made("resume", "interrupted earlier")
        return made("run", "interrupted earlier with other settings or inputs: starts over" if d.exists() else "not done yet")
    changed = changed_settings(manifest.get("settings"), stage_settings)
    if changed:
        return made("run", "settings changed: " + _some(changed))
    old = {n: v.get("sha256") for n, v in (manifest.get("inputs") or {}).items()}
    moved = sorted(n for n in old.keys() | hashes.keys() if old.get(n) != hashes.get(n))
    if moved:
        return made("run", "input changed: " + _some(moved))
    if damaged := changed_outputs(d, manifest):
        return made("run", "output changed: " + _some(damaged))
    return made("skip", "done, settings and inputs unchanged")


def changed_outputs(d: Path, manifest: dict[str, Any], full: bool = False) -> list[str]:
    """The outputs of a finished stage folder that differ from its manifest's record ("01_data/prefs.jsonl
    (missing)"): checked by a stat walk, hashed only when sizes or times moved (``full``: always hashed). A
    manifest written before outputs were recorded is trusted."""
    out = []
    for name, rec in sorted((manifest.get("artifacts") or {}).items()):
        if why := changed(d / name, rec, full=full):
            out.append(f"{d.name}/{name} ({why})")
    return out


def verify(run_dir: str | Path) -> dict[str, list[str]]:
    """Every finished stage folder of a run (and of each seed-N/ in it) against its manifest, every output hashed:
    {stage folder: what differs} (an empty list: as recorded). ``hhalign verify RUN``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such folder; give a run folder (runs/NAME)")
    found: dict[str, list[str]] = {}
    for d in [run_dir, *sorted(p for p in run_dir.glob("seed-*") if p.is_dir())]:
        # every stage folder (NN_name), whichever variants made them: the table depends on a config verify has not
        for folder in sorted(p for p in d.iterdir() if p.is_dir() and p.name[:2].isdigit() and "_" in p.name):
            if (folder / MANIFEST).is_file():
                manifest = read_manifest(folder)
                where = str(folder.relative_to(run_dir))
                found[where] = ["manifest.json is unreadable"] if manifest is None else changed_outputs(folder, manifest, full=True)
    if not found:
        raise UserError(f"{run_dir} holds no finished stage (no NN_stage/manifest.json): give a run folder (runs/NAME)")
    return found


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def changed_settings(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The dotted config keys whose values differ: {"dpo": {"beta": 0.1}} vs 0.2 -> ["dpo.beta"]. A key the old
    record lacks that holds its default now (a setting added to hhalign since, e.g. ``dpo.adapter: lora``) is what
    the old run did: unchanged, so a run folder made by an earlier version resumes."""
    a, b = _flat(old or {}), _flat(new)
    defaults = _defaults()
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING)
                  and not (k not in a and k in defaults and defaults[k] == b.get(k, _MISSING)))


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every setting's default, flat, as stage settings name them (``labels`` included)."""
    from hhalign.config.schema import VARIANT_LABELS

    return _flat(RunConfig().to_dict() | {"labels": dict(VARIANT_LABELS)})


_MISSING = object()


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


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
    cost: dict[str, Any] = field(default_factory=usage.snapshot)  # what the process had spent when the stage began

    def finish(self, outputs: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write manifest.json, last: settings, inputs with hashes, outputs, versions, timings. Raises
        KeyboardInterrupt instead after a Ctrl-C (``artifacts.catch_interrupts``): the stage stays unfinished."""
        stop_if_interrupted()
        missing = [o for o in outputs if not (self.dir / o).exists()] if self.main else []
        if missing:
            raise RuntimeError(f"stage {self.stage.name} lists outputs it did not write: {missing}")
        undeclared = [o for o in outputs if not self.stage.declares(o)]
        if undeclared:
            raise RuntimeError(f"stage {self.stage.name} wrote outputs its row in hhalign.engine.table does not declare: {undeclared}")
        manifest = {
            "stage": self.stage.name,
            "key": self.key,
            "settings": self.settings,
            "inputs": {n: {"ref": i.ref, "kind": i.kind, "sha256": self.hashes[n]} for n, i in self.inputs.items()},
            "outputs": sorted(outputs),
            # size, latest time and sha256 of each: skip and resume check them (``changed_outputs``), as does verify
            "artifacts": {o: record(self.dir / o) for o in sorted(outputs)} if self.main else {},
            "resumed": self.resumed,
            "versions": versions(),
            "git_commit": git_commit(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": round(time.time() - self.started, 3),
            "usage": usage.since(self.cost),  # this process's CPU seconds, page faults and peak memory in the stage
            **(extra or {}),
        }
        if self.main:
            write_json(self.dir / MANIFEST, manifest)
            (self.dir / STARTED).unlink(missing_ok=True)  # finished: the manifest says all the start record did
        parallel.barrier(f"stage '{self.stage.name}'")  # no rank goes on to the next stage before the manifest is there
        return manifest


def begin(name: str, cfg: RunConfig, run_dir: str | Path, ins: dict[str, Input], *, resume: bool = True,
          started: float | None = None, cost: dict[str, Any] | None = None) -> StageRun:
    """Key the stage by its settings and the content of ``ins`` (its module's ``inputs``, or what replaces them:
    ``hhalign dpo --from PATH``), and prepare its folder: kept when ``resume`` and ``decide`` says resume (less the
    temporary files an interrupted write left), else cleared. Under several processes (``hhalign.parallel``) every
    rank keys the stage, they check they agree, and only rank 0 touches the folder while the others wait.
    ``started``, ``cost``: when the stage began and ``usage.snapshot()`` then (default: now), for its wall time and
    what it cost the process."""
    stage, run_dir = get(name, cfg), Path(run_dir)
    _check_upstream(stage, ins)
    decision = decide(stage, cfg, run_dir, ins)
    d = run_dir / stage.folder
    keep = resume and decision.action == "resume"
    # every rank has decided (on the same settings, inputs and folder) before rank 0 changes the folder
    parallel.agree({"stage key": decision.key, "run folder": str(run_dir.resolve())}, f"stage '{name}'")
    if parallel.is_main():
        if d.exists() and not keep:
            _clear(d)
        d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob(".*.tmp*"):  # what a write killed halfway left (artifacts.atomic_write_bytes, atomic_dir)
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
        write_json(d / STARTED, {"key": decision.key, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    parallel.barrier(f"stage '{name}'")
    return StageRun(stage, d, decision.key, decision.settings, ins, decision.hashes, resumed=keep, main=parallel.is_main(),
                    started=started or time.time(), cost=cost or usage.snapshot())


def _clear(d: Path) -> None:
    """Empty a stage folder; one that is a link (a shared stage) keeps its link and loses its contents."""
    if not d.is_symlink():
        shutil.rmtree(d)
        return
    for child in d.resolve().iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _check_upstream(stage: Stage, ins: dict[str, Input]) -> None:
    for name, inp in ins.items():
        if inp.kind == "artifact" and not Path(inp.ref).exists():
            maker = next((p.split("_", 1)[1] for p in reversed(Path(inp.ref).parts) if p[:2].isdigit() and "_" in p), None)
            first = f"run `hhalign {maker} CONFIG` first, or `hhalign run CONFIG`" if maker else "run the stage that makes it first"
            raise UserError(f"stage '{stage.name}' needs {inp.ref} ({name}), which does not exist: {first}")
