"""The ``hhalign`` command: parse arguments, build the config, call one stage. Nothing else lives here.

    hhalign run configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign sft configs/tiny.yaml                  # one stage of the table (hhalign.stages), in its run folder
    hhalign metrics ../shared/data/paper/responses # a one-shot command on files

Every stage of ``hhalign.stages.STAGES`` is a subcommand taking a CONFIG. ``generate``, ``score``, ``metrics``
and ``report`` also work on files without a config (``generate --model M --prompts P --out R``, ``score
--reward-model RM R.json``, ``metrics DIR``, ``report DIR --out OUT``); their options, like every option
that mirrors a config key, take their help and default from the config field itself.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import hhalign
from hhalign import __version__, errors, logs, stages
from hhalign.config import GenerateSection, MetricsSection, ScoreSection
from hhalign.configfile import preset_names

log = logging.getLogger("hhalign.cli")
CONFIG_HELP = f"a YAML config, or a shipped preset by name ({', '.join(n.removesuffix('.yaml') for n in preset_names())})"
ONE_SHOT = ("generate", "score", "metrics", "report")


def _add_config(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("--data-dir", help="local HH-RLHF folder (<subset>/<split>.jsonl[.gz]) instead of the hub id in data.source")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dpo.beta=0.2 (repeatable; values read as YAML)")
    p.add_argument("--name", help="run folder name under output_dir (default: the config's name)")


def _one_shot_options(name: str, p: argparse.ArgumentParser) -> None:
    from hhalign.configfile import add_section_options

    what = {"generate": "", "score": "response files (JSON lists of {prompt, response}), rated in place",
            "metrics": "a run folder, or a folder of {variant}_{harmful|helpful}.json scored files",
            "report": "a run folder, or a folder of {variant}_{harmful|helpful}.json scored files"}[name]
    p.add_argument("targets", nargs="*", metavar="CONFIG" + (" | " + ("FILE" if name == "score" else "DIR") if what else ""),
                   help="a config (.yaml): run the stage in its run folder" + (f"; else {what}" if what else ""))
    if name == "generate":
        p.add_argument("--model", help="hub id, model folder, LoRA adapter folder or .gguf file")
        p.add_argument("--prompts", help="JSON list of prompt strings")
        p.add_argument("--out", help="output JSON list of {prompt, response}")
        add_section_options(p, GenerateSection, ("protocol", "max_new_tokens", "batch_size", "dtype", "device"), keep_defaults=False)
    elif name == "score":
        add_section_options(p, ScoreSection, ("reward_model", "batch_size", "dtype", "device"), keep_defaults=False)
    elif name in ("metrics", "report"):
        if name == "metrics":
            p.add_argument("--json", dest="json_out", help="also write the metrics here")
        else:
            p.add_argument("--out", help="output folder")
        fields = ("harmful_threshold", "helpful_threshold") + (("bootstrap_samples",) if name == "metrics" else ())
        add_section_options(p, MetricsSection, fields, keep_defaults=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hhalign", description=hhalign.__doc__)
    parser.add_argument("--version", action="version", version=f"hhalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the whole study: every stage below, in order, resumable")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (each stage: run, resume or skip, and why) and exit")
    p.add_argument("--seeds", help="comma-separated seeds: repeat training and evaluation per seed, aggregate across them")
    for st in stages.STAGES:
        p = sub.add_parser(st.name, help=f"{st.help} ({st.folder}/)")
        if st.name in ONE_SHOT:
            _one_shot_options(st.name, p)
            _add_config(p, positional=False)
        else:
            _add_config(p)
        p.add_argument("--resume", action="store_true", help="continue an interrupted stage (checkpoints, finished files)")
        if st.name == "dpo":
            p.add_argument("--from", dest="from_model", help="start from this model (a path), or 'sft' for this run's SFT model")

    p = sub.add_parser("sweep", help="every combination of some settings, each a run, the stages they share run once; then compare")
    p.add_argument("config", help=f"{CONFIG_HELP}, or a sweep file (config:, grid:, seeds:)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept setting and its values, read as YAML (repeatable: every combination is a point)")
    p.add_argument("--seeds", help="comma-separated seeds: every point once per seed (the data stage shared)")
    p.add_argument("--dry-run", action="store_true", help="print the points, what each stage shares, the executions, and exit")
    _add_config(p, positional=False)

    p = sub.add_parser("compare", help="runs side by side: rates with intervals, paired tests with Holm's correction, figures")
    p.add_argument("runs", nargs="+", help="run folders (each with its metrics stage done)")
    p.add_argument("--out", required=True, help="output folder for compare.md, compare.html, compare.json and figures")

    p = sub.add_parser("prompts", help="write only the study's eval prompt sets (harmful_prompts.json, helpful_prompts.json)")
    p.add_argument("--data-dir", required=True, help="local HH-RLHF folder, or a hub dataset id")
    p.add_argument("--seed", type=int, default=100, help="random.seed of the draw (the study: 100)")
    p.add_argument("--size", type=int, default=50, help="prompts per set (the study: 50)")
    p.add_argument("--split", default="test", help="split to draw from")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("config", help="print a config resolved with overrides, or every key with its help")
    p.add_argument("config", nargs="?", help=CONFIG_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--keys", action="store_true", help="list every hhalign key with its default and help")
    return parser


# ----------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace) -> Any:
    from hhalign.configfile import load_config

    overrides = list(args.overrides) + ([f"data.source={args.data_dir}"] if getattr(args, "data_dir", None) else [])
    return load_config(args.config, overrides=overrides, name=getattr(args, "name", None))


def _stage(args: argparse.Namespace) -> int:
    """One stage of the table in the config's run folder: its inputs checked first, then its module's run."""
    name = args.command
    if name == "dpo" and args.from_model in ("sft", "sft_dpo"):
        name = "sft_dpo"
    cfg = _load(args)
    st, kwargs = stages.get(name), {}
    checks = [st]
    if name == "dpo" and args.from_model:
        kwargs["start"] = args.from_model
        stages.Input(args.from_model, "model", "--from PATH").check()
    stages.validate(cfg, cfg.run_dir, checks)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with logs.to_file(cfg.run_dir / "run.log"):
        try:
            stages.module(st).run(cfg, cfg.run_dir, resume=args.resume, **kwargs)
        except BaseException as e:
            errors.report(e, args.command, stage=name, memory_keys=st.memory_keys)
            raise
    log.info(f"wrote {stages.stage_dir(cfg.run_dir, name)}")
    return 0


def _one_shot(args: argparse.Namespace) -> int:
    from hhalign.configfile import section_from_args

    cmd = args.command
    if cmd == "generate":
        from hhalign.generate import answer_file

        if not (args.model and args.prompts and args.out):
            raise errors.UserError("hhalign generate needs --model, --prompts and --out (or a CONFIG to run the stage)")
        stages.Input(args.model, "model", "--model DIR").check()
        rows = answer_file(args.model, Path(args.prompts), Path(args.out), section_from_args(GenerateSection, args))
        log.info(f"wrote {len(rows)} responses to {args.out}")
    elif cmd == "score":
        from hhalign.score import rate_files

        if not args.files:
            raise errors.UserError("hhalign score needs response files (or a CONFIG to run the stage)")
        cfg = section_from_args(ScoreSection, args)
        stages.Input(cfg.reward_model, "reward_model", "--reward-model DIR").check()
        for path, ratings in rate_files(cfg.reward_model, [Path(f) for f in args.files], cfg).items():
            log.info(f"{path}: {len(ratings)} ratings, mean {sum(ratings) / max(len(ratings), 1):.3f}")
        log.warning(f"! {cfg.reward_model} is unchecked on both axes here: nothing shows that its ratings measure "
                    "harmlessness or helpfulness. The score stage of a run (hhalign score CONFIG) checks it per axis on "
                    "held-out pairs and, with score.reference, against a reference judge")
    elif cmd == "metrics":
        from hhalign.metrics import format_table, measure

        mcfg = _thresholds(args)
        log.info(format_table(measure(Path(args.dir), mcfg, Path(args.json_out) if args.json_out else None)))
    else:
        from hhalign.report import build

        if not args.out:
            raise errors.UserError("hhalign report needs --out OUT_DIR (or a CONFIG to run the stage)")
        from hhalign.config import ReportSection

        mcfg, metrics = _thresholds(args), None
        if args.harmful_threshold is not None or args.helpful_threshold is not None:
            from hhalign.metrics import measure  # thresholds given: re-label, don't reuse the run's metrics.json

            metrics = measure(Path(args.dir), mcfg)
        files = build(Path(args.dir), Path(args.out), ReportSection(), mcfg, metrics=metrics)
        log.info(f"wrote {len(files)} files to {args.out}: open {Path(args.out) / 'report.html'}")
    return 0


def _reject_run_options(args: argparse.Namespace) -> None:
    """The options of a stage run in a config's run folder mean nothing on files: refuse them rather than ignore them."""
    given = [flag for flag, value in (("--set", args.overrides), ("--data-dir", args.data_dir), ("--name", args.name),
                                       ("--resume", args.resume)) if value]
    if given:
        raise errors.UserError(f"hhalign {args.command}: {', '.join(given)} apply to the stage run from a CONFIG (hhalign "
                               f"{args.command} CONFIG.yaml ...); on files they would be ignored: drop them, or give a CONFIG")


def _thresholds(args: argparse.Namespace) -> MetricsSection:
    """The metrics settings for a folder: explicit flags first, then the run folder's own thresholds, then the
    defaults (the study's -3 / -2); says which when a run's own are used."""
    from hhalign.configfile import section_from_args
    from hhalign.metrics import run_thresholds

    if not args.dir:
        raise errors.UserError(f"hhalign {args.command} needs a folder of scored responses (or a CONFIG to run the stage)")
    own = run_thresholds(Path(args.dir)) or {}
    fixed = {}
    for s in ("harmful", "helpful"):
        if getattr(args, f"{s}_threshold") is None and s in own:
            fixed[f"{s}_threshold"] = own[s]
    if fixed:
        log.info(f"thresholds from {own['from']}: " + ", ".join(f"{k} {v:g}" for k, v in fixed.items())
                 + " (override with --harmful-threshold / --helpful-threshold)")
    return section_from_args(MetricsSection, args, **fixed)


def _config(args: argparse.Namespace) -> int:
    from hhalign.configfile import describe_keys

    if args.keys or not args.config:
        print(describe_keys())
    else:
        import yaml

        print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from hhalign.prompts import write_prompt_sets

    out = write_prompt_sets(args.data_dir, Path(args.out), seed=args.seed, eval_size=args.size, split=args.split)
    for note in out["notes"]:
        log.warning(f"note: {note}")
    for name, info in out["sets"].items():
        if info.get("source") != "skipped":
            log.info(f"{name}: {info['n']} prompts from {info['source']} ({info['eligible']} eligible) -> "
                     f"{Path(args.out) / f'{name}_prompts.json'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from hhalign.pipeline import run_pipeline

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    return run_pipeline(_load(args), dry_run=args.dry_run, seeds=seeds)


def _sweep(args: argparse.Namespace) -> int:
    import yaml

    from hhalign.configfile import resolve_preset
    from hhalign.sweep import build, parse_grid, read_sweep_file, run_sweep

    config, axes, seeds, name = args.config, [], None, None
    path = Path(args.config)
    if path.is_file() and isinstance(raw := yaml.safe_load(path.read_text(encoding="utf-8")), dict) and "grid" in raw:
        config, axes, seeds, name = read_sweep_file(path)
    else:
        resolve_preset(args.config)  # a missing config fails here, in one line
    axes += [parse_grid(g) for g in args.grid]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    overrides = list(args.overrides) + ([f"data.source={args.data_dir}"] if args.data_dir else [])
    return run_sweep(build(config, axes, seeds, overrides, args.name or name), dry_run=args.dry_run)


def _compare(args: argparse.Namespace) -> int:
    from hhalign.compare import compare

    compare([Path(r) for r in args.runs], Path(args.out))
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "config":
        return _config(args)
    if args.command == "prompts":
        return _prompts(args)
    if args.command in ONE_SHOT:
        targets = args.targets
        if len(targets) == 1 and targets[0].endswith((".yaml", ".yml")):
            args.config = targets[0]  # the stage, in the config's run folder
        else:
            args.files, args.dir = targets, targets[0] if targets else None
            _reject_run_options(args)
            return _one_shot(args)
    return _stage(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hhalign.artifacts import catch_interrupts

    logs.console()
    catch_interrupts()
    try:
        return _dispatch(args)
    except (Exception, KeyboardInterrupt) as e:
        return errors.report(e, args.command)
