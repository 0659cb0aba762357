"""``hhalign sweep``: every combination of some settings, each a run folder, the stages they have in common run once.

    hhalign sweep configs/tiny.yaml --grid dpo.beta=0.05,0.1,0.5 --grid dpo.loss_type=sigmoid,ipo [--seeds 1,2] [--dry-run]
    hhalign sweep examples/sweep_noise.yaml              # a sweep file: config, grid (an axis may set several keys), seeds

Each point of the grid (times each seed) is a run folder ``runs/SWEEP/<point>/`` with its own run.json and run.log.
Its stage folders are links into ``runs/SWEEP/_shared/<folder>-<key>/``, where the key is the stage's chain key
(``hhalign.engine.work.chain_keys``: its settings, its inputs from outside the run, its upstream stages' keys), so the
points that agree on all of that share one folder: a DPO sweep makes data and SFT once, and only the DPO stages and
what follows them run per point. Each stage then runs through its own module as in ``hhalign run``: skipped when
done, resumed when interrupted, so a killed sweep resumes with the same command. Seeds share the data stage (the
same prompts and rows, drawn with the base seed), as ``hhalign run --seeds`` does. At the end ``hhalign compare``
reports across the points (``compare/``).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hhalign import logs
from hhalign.artifacts import read_json, write_json
from hhalign.config.files import load_config
from hhalign.config.schema import RunConfig, check_plain_name
from hhalign.engine.lock import command_line, owning
from hhalign.engine.table import MANIFEST, active
from hhalign.errors import ConfigError
from hhalign.multirun.compare import compare
from hhalign.pipeline import (
    chain_keys,
    execute,
    make_shared_data,
    validate,
    write_run_json,
)

log = logging.getLogger(__name__)
SHARED = "_shared"  # under the sweep folder: the stage folders the points link to


@dataclass
class Axis:
    """One swept setting: its name and its values, each a set of config keys (most axes set one key)."""

    name: str
    values: list[dict[str, Any]]


@dataclass
class Point:
    name: str  # its run folder under the sweep folder
    settings: dict[str, Any]  # axis name -> the value this point takes
    overrides: list[str]  # key=value, as --grid gives them to load_config
    cfg: RunConfig
    base_seed: int  # the seed the shared data stage is made with
    seeded: bool = False  # one of several seeds: the data stage comes from the base seed

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir


@dataclass
class Sweep:
    dir: Path
    axes: list[Axis]
    seeds: list[int] | None
    points: list[Point] = field(default_factory=list)


# ----------------------------------------------------------------------------- the grid


def _split(text: str) -> list[str]:
    """Split on commas outside brackets and braces: "0.1,[a,b],{x: 1}" -> ["0.1", "[a,b]", "{x: 1}"]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def parse_grid(item: str) -> Axis:
    """``dpo.beta=0.05,0.1,0.5`` -> an axis of three values (each read as YAML, as --set reads them)."""
    key, eq, values = item.partition("=")
    if not eq or not key.strip() or not values.strip():
        raise ConfigError(f"--grid expects key=value1,value2,... (e.g. dpo.beta=0.1,0.5), got '{item}'")
    try:
        return Axis(key.strip(), [{key.strip(): yaml.safe_load(v.strip())} for v in _split(values)])
    except yaml.YAMLError as e:
        raise ConfigError(f"--grid {item}: a value is not valid YAML ({str(e).splitlines()[0]})") from e


def read_sweep_file(path: Path) -> tuple[str, list[Axis], list[int] | None, str | None]:
    """(the config, the axes, the seeds, the sweep's name) of a sweep file::

        config: configs/tiny.yaml
        grid:
          dpo.beta: [0.1, 0.5]
          dpo loss: [{dpo.loss_type: sigmoid}, {dpo.loss_type: robust, dpo.label_smoothing: 0.1}]
        seeds: [1, 2]
    """
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(raw) - {"config", "grid", "seeds", "name"}
    if unknown or "config" not in raw or not isinstance(raw.get("grid"), dict):
        raise ConfigError(f"{path}: a sweep file has config: (a config or preset), grid: (key: [values]) and optionally "
                          f"seeds: and name:" + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else ""))
    axes = []
    for name, values in raw["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{name} must be a list of values")
        axes.append(Axis(str(name), [v if isinstance(v, dict) else {name: v} for v in values]))
    return str(raw["config"]), axes, raw.get("seeds"), raw.get("name")


def _short(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-") or "x"


def point_name(axes: list[Axis], choice: tuple[dict[str, Any], ...], seed: int | None) -> str:
    """``beta=0.1_loss_type=ipo`` (the last part of each key; an axis of several keys: its first value)."""
    parts = []
    for axis, value in zip(axes, choice, strict=True):
        key = axis.name.split(".")[-1] if len(value) == 1 else axis.name
        parts.append(f"{_short(key)}={_short(next(iter(value.values())))}")
    return "_".join(parts) + (f"_seed={seed}" if seed is not None else "")


def build(config: str, axes: list[Axis], seeds: list[int] | None, overrides: list[str], name: str | None = None,
          **top: Any) -> Sweep:
    """Every point's config, loaded and validated now: a bad key or value in the grid fails before any work."""
    if not axes:
        raise ConfigError("hhalign sweep needs at least one --grid key=value1,value2 (or a grid: in a sweep file)")
    base = load_config(config, overrides=overrides, **top)
    if name is not None:
        check_plain_name(name, "sweep name", "--name")
    sweep = Sweep(Path(base.output_dir) / (name or f"{base.name}-sweep"), axes, seeds)
    for choice in itertools.product(*(a.values for a in axes)):
        grid = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for value in choice for k, v in value.items()]
        cfg = load_config(config, overrides=overrides, grid=grid, **top)
        settings = {a.name: (next(iter(v.values())) if len(v) == 1 else v) for a, v in zip(axes, choice, strict=True)}
        for seed in seeds or [None]:
            pname = point_name(axes, choice, seed)
            point_cfg = replace(cfg, output_dir=str(sweep.dir), name=pname, seed=cfg.seed if seed is None else seed)
            sweep.points.append(Point(pname, settings, grid, point_cfg, cfg.seed, seeded=seed is not None))
    names = [p.name for p in sweep.points]
    if len(set(names)) != len(names):
        raise ConfigError(f"two sweep points would share a folder name ({names}); give the axes distinct values")
    return sweep


# ----------------------------------------------------------------------------- sharing


def keys_of(point: Point) -> dict[str, str]:
    """The point's chain keys; several seeds share the data stage, keyed as the base seed makes it."""
    fixed = {}
    if point.seeded:
        fixed["data"] = chain_keys(replace(point.cfg, seed=point.base_seed), point.run_dir)["data"]
    return chain_keys(point.cfg, point.run_dir, fixed)


def link_stages(sweep: Sweep, point: Point, keys: dict[str, str]) -> None:
    """Make each stage folder of the point a link to the shared folder of its chain key."""
    point.run_dir.mkdir(parents=True, exist_ok=True)
    for st in active(point.cfg):
        target = sweep.dir / SHARED / f"{st.folder}-{keys[st.name]}"
        target.mkdir(parents=True, exist_ok=True)
        link = point.run_dir / st.folder
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink():
            link.unlink()  # the point's settings changed since an earlier sweep: follow them
        elif link.exists():
            raise ConfigError(f"{link} is a folder, not a link of this sweep: give the sweep another name (--name)")
        link.symlink_to(os.path.relpath(target, point.run_dir))


def plan_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """Per stage: how many executions the sweep needs, how many points share each, and how many are done."""
    by_stage: dict[str, dict[str, list[str]]] = {}
    for point in sweep.points:
        for name, key in keys_of(point).items():
            by_stage.setdefault(name, {}).setdefault(key, []).append(point.name)
    rows, order = [], {st.name: st for point in sweep.points for st in active(point.cfg)}  # points may differ in variants
    for st in order.values():
        if st.name not in by_stage:
            continue
        groups = by_stage[st.name]
        done = sum(_done(sweep.dir / SHARED / f"{st.folder}-{key}") for key in groups)
        rows.append({"stage": st.name, "executions": len(groups), "points": sum(len(v) for v in groups.values()),
                     "shared_by": sorted({len(v) for v in groups.values()}), "done": done})
    return rows


def _done(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def print_plan(sweep: Sweep) -> None:
    rows = plan_rows(sweep)
    axes = " x ".join(f"{a.name} ({len(a.values)})" for a in sweep.axes)
    log.info(f"sweep {sweep.dir}: {len(sweep.points)} points = {axes}" + (f" x seeds {sweep.seeds}" if sweep.seeds else ""))
    for p in sweep.points:
        log.info(f"  {p.name}: " + ", ".join(f"{k}={v}" for k, v in p.settings.items()) + (f", seed={p.cfg.seed}" if p.seeded else ""))
    log.info(f"  {'stage':<9} {'executions':>10}  shared by")
    for r in rows:
        share = "all points" if r["executions"] == 1 and r["points"] > 1 else (
            "one point each" if r["shared_by"] == [1] else f"{'/'.join(map(str, r['shared_by']))} points each")
        done = f", {r['done']} done already" if r["done"] else ""
        log.info(f"  {r['stage']:<9} {r['executions']:>10}  {share}{done}")
    total, alone = sum(r["executions"] for r in rows), sum(r["points"] for r in rows)
    todo = total - sum(r["done"] for r in rows)
    log.info(f"  stage executions: {total} for the sweep ({todo} still to run), against {alone} if each point ran alone")


# ----------------------------------------------------------------------------- running


def run_sweep(sweep: Sweep, dry_run: bool = False) -> int:
    for point in sweep.points:  # every input of every point, before any folder is touched
        validate(point.cfg, point.run_dir)
    print_plan(sweep)
    if dry_run:
        return 0
    sweep.dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep.dir / "sweep.json", {"axes": [a.__dict__ for a in sweep.axes], "seeds": sweep.seeds,
                                          "points": [{"name": p.name, "settings": p.settings, "seed": p.cfg.seed} for p in sweep.points]})
    executed: list[str] = []
    with owning(sweep.dir, command_line()), logs.to_file(sweep.dir / "sweep.log"):  # its points and their shared stages
        for k, point in enumerate(sweep.points, 1):
            header = f"point {k}/{len(sweep.points)} {point.name}: "
            link_stages(sweep, point, keys_of(point))
            with owning(point.run_dir, command_line()), logs.to_file(point.run_dir / "run.log"):
                write_run_json(point.cfg, point.run_dir, None)
                _tag(point)
                if point.seeded:
                    executed += _base_seed_data(point, header)
                executed += [f"{point.name}:{s}" for s in execute(point.cfg, point.run_dir, header, ("data",) if point.seeded else ())]
        log.info(f"sweep: {len(executed)} stage executions in this call")
        compare([p.run_dir for p in sweep.points], sweep.dir / "compare", axes=[a.name for a in sweep.axes])
    return 0


def _base_seed_data(point: Point, header: str) -> list[str]:
    """A seeded point's data stage, made with the base seed so that every seed sees the same prompts and rows."""
    return [f"{point.name}:data"] if make_shared_data(replace(point.cfg, seed=point.base_seed), point.run_dir, header) else []


def _tag(point: Point) -> None:
    """Record the point's swept settings in its run.json, for hhalign compare's tables and figures."""
    path = point.run_dir / "run.json"
    info = read_json(path)
    info["sweep"] = {"point": point.name, "settings": point.settings, "seed": point.cfg.seed}
    write_json(path, info)
