"""The stages of a run, in one table derived from the config: what each is called, where it writes, what it writes,
what it reads.

    for stage in active(cfg): print(stage.name, stage_dir(run_dir, stage.name))
    path = artifact(run_dir, "data", "prefs.jsonl")      # an upstream output, by the name its row declares

The fixed stages (``FIXED``: convert, data, pretrain, rm, generate, score, metrics, report) sit beside one training
row per trained variant (``rows``): a variant is data (``hhalign.config.schema.Variant``: a method, the variant it
starts from, settings over its method's section), so its row is made here from it, run by ``hhalign.stages.train``
through the method's module (``hhalign.methods``). Each row gives a stage's name (also its ``hhalign NAME``
subcommand), its folder, the stages whose outputs it reads, the outputs it declares (names or glob patterns inside
its folder), the config keys it depends on, one line of help, the keys to lower when it runs out of memory, and
when a config needs it. A stage reads another's output only through ``artifact``, which refuses a name the other
stage does not declare, and finishes only with outputs its own row declares
(``hhalign.engine.work.StageRun.finish``); ``tests/test_stages.py`` checks that every row's upstream stages are the
ones its inputs come from. No other module spells a folder name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from hhalign.artifacts import MANIFEST
from hhalign.config.schema import RESERVED_NAMES, TINY, RunConfig, Variant
from hhalign.data.sources import is_gguf

STARTED = ".started.json"  # in an unfinished stage folder: the key it was started with
JUDGE_FILE = "judge.json"  # in the score stage's folder: the judge's check on held-out pairs
RUN_FILE = "run.json"  # in the run folder: the config, seeds, versions and command of `hhalign run`
__all__ = ["MANIFEST", "STARTED", "JUDGE_FILE", "RUN_FILE", "Stage", "FIXED", "STAGES", "get", "rows", "stage_dir", "artifact",
           "active", "settings", "variant_stage", "model_stage"]


def _always(cfg: RunConfig) -> bool:
    return True


def _tiny(cfg: RunConfig) -> bool:
    return cfg.model.name_or_path == TINY


def _rm(cfg: RunConfig) -> bool:
    return cfg.rm.enabled


def _gguf(cfg: RunConfig) -> bool:
    return is_gguf(cfg.model.name_or_path) or (cfg.rm.enabled and is_gguf(cfg.rm.model))


@dataclass(frozen=True)
class Stage:
    name: str  # also the `hhalign NAME` subcommand and the module hhalign.stages.NAME
    folder: str  # under the run folder
    upstream: tuple[str, ...]  # stages whose outputs it reads (those the config runs)
    outputs: tuple[str, ...]  # what it writes in its folder: names or glob patterns
    settings: tuple[str, ...]  # config keys (dotted) that key it
    help: str
    memory_keys: tuple[str, ...] = ()  # what to lower when it runs out of memory
    when: Callable[[RunConfig], bool] = _always
    # under a launch of several processes (hhalign.parallel): every rank runs it (training under Accelerate;
    # generate and score deal their batches), else rank 0 runs it alone while the others wait
    every_rank: bool = False
    variant: str | None = None  # a training row: the variant it makes (hhalign.stages.train runs it)
    module: str = ""  # the module of hhalign.stages that runs it (default: its name)

    @property
    def runner(self) -> str:
        return self.module or self.name

    def declares(self, name: str) -> bool:
        """Whether ``name`` (a path inside the stage folder) is one of its declared outputs or lies inside one."""
        parts = Path(name).parts
        return any(fnmatch("/".join(parts[:k]), pattern) for pattern in self.outputs for k in range(1, len(parts) + 1))


_TRAIN = ("per_device_train_batch_size", "max_length")
_MODEL = ("model", "train_report.json")
TRAINED = ("adapter", *_MODEL)  # what a training row declares: a LoRA method saves its adapter too
RESPONSES = "*_*.json"  # {variant}_{set}.json (hhalign.data.responses)
TRAINING = "training"  # stands for every training row in a fixed row's upstream
FIXED: tuple[Stage, ...] = (
    Stage("convert", "00_convert", (), ("*",), ("model.name_or_path", "rm.enabled", "rm.model"),
          "make each .gguf model the config names a plain, trainable Hugging Face folder", (), _gguf),
    Stage("data", "01_data", ("convert",), ("prefs.jsonl", "heldout.jsonl", "prompts/*.json", "data_report.json"),
          ("data", "seed", "model.name_or_path"),
          "parse the preference data into preference pairs, held-out pairs, eval prompt sets and a data report"),
    Stage("pretrain", "02_pretrain", ("data",), _MODEL, ("model", "pretrain", "seed"),
          "tiny preset: build the from-scratch base model and pretrain it on all dialogue text",
          tuple(f"pretrain.{k}" for k in _TRAIN), _tiny, every_rank=True),
    Stage("rm", "06_rm", ("convert", "data"), _MODEL, ("rm", "model.tiny", "seed"),
          "train a reward model on the preference pairs (the run's own judge)", tuple(f"rm.{k}" for k in _TRAIN), _rm, every_rank=True),
    Stage("generate", "07_generate", ("convert", "data", "pretrain", TRAINING), (RESPONSES,),
          ("generate", "variants"), "every variant answers every eval prompt set (batched greedy decoding)",
          ("generate.batch_size",), every_rank=True),
    Stage("score", "08_score", ("data", "generate", "rm"), (RESPONSES, JUDGE_FILE), ("score",),
          "a reward model rates every (prompt, response)", ("score.batch_size",),
          every_rank=True),
    Stage("metrics", "09_metrics", ("score",), ("metrics.json",), ("metrics", "labels"),
          "HmR, HpR, CAS with intervals, paired tests and threshold sweeps"),
    Stage("report", "10_report", ("data", TRAINING, "score", "metrics"), ("report.md", "report.html", "*.png", "*.svg", "*.pdf"), ("report",),
          "figures, report.md and a self-contained report.html"),
)
BY_NAME = {s.name: s for s in FIXED}
assert set(BY_NAME) <= set(RESERVED_NAMES), "a variant may not be named like a fixed stage"
# the study's training stages keep the folders they always had, so run folders made before variants were data resume
STUDY_FOLDERS = {"sft": "03_sft", "dpo": "04_dpo", "sft_dpo": "05_sft_dpo"}


def variant_folder(name: str) -> str:
    """A training stage's folder: the study's own for sft, dpo and sft_dpo, else 05_<variant> (after SFT, before the judge)."""
    return STUDY_FOLDERS.get(name, f"05_{name}")


def variant_stage(v: Variant, cfg: RunConfig) -> Stage:
    """The training row of variant ``v``: it reads the data and the model it starts from (the base model: convert and
    pretrain; another variant: that variant's stage), and is keyed by its method's section with its own settings."""
    from_base = cfg.start_of(v).method is None
    upstream = ("convert", "data", "pretrain") if from_base else ("data", str(v.start))
    keys = ("model" if from_base else "model.pad_token", str(v.method), "seed")
    return Stage(v.name, variant_folder(v.name), upstream, TRAINED, keys,
                 f"{type(v.section).HELP}, from {v.start or 'base'}", tuple(f"{v.method}.{k}" for k in _TRAIN), every_rank=True,
                 variant=v.name, module="train")


def rows(cfg: RunConfig | None = None) -> tuple[Stage, ...]:
    """Every row of the config's table in order: convert, data, pretrain, one per trained variant (each after the
    variant it starts from), rm, generate, score, metrics, report. Without a config: the study's table."""
    from hhalign.config.schema import RunConfig as _Run

    cfg = cfg if cfg is not None else _Run()
    trained = tuple(variant_stage(v, cfg) for v in cfg.trained().values())
    names = {st.name for st in trained}

    def expand(st: Stage) -> Stage:
        if TRAINING not in st.upstream:
            return st
        up = tuple(u for u in st.upstream if u != TRAINING) + tuple(sorted(names))
        return Stage(**{**st.__dict__, "upstream": up})

    fixed = [expand(st) for st in FIXED]
    return (*fixed[:3], *trained, *fixed[3:])


STAGES = rows()  # the study's table (base, sft, dpo, sft_dpo): what a config of the study's four runs


def get(name: str, cfg: RunConfig | None = None) -> Stage:
    """A fixed stage's row, or the training row of the config's variant ``name`` (without a config: the study's)."""
    from hhalign.config.schema import RunConfig as _Run

    cfg = cfg if cfg is not None else _Run()
    if name in BY_NAME:
        return next((st for st in rows(cfg) if st.name == name), BY_NAME[name])
    return variant_stage(cfg.variant(name), cfg)


def model_stage(cfg: RunConfig, variant: str) -> str | None:
    """The stage whose model/ a variant answers with: its training row; for the base model, pretrain on the tiny
    preset, else none (the model as configured)."""
    if variant in cfg.trained():
        return variant
    return "pretrain" if cfg.model.name_or_path == TINY else None


def stage_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / (BY_NAME[name].folder if name in BY_NAME else variant_folder(name))


def artifact(run_dir: str | Path, name: str, output: str) -> Path:
    """The path of ``output`` in stage ``name``'s folder (a fixed stage, or a variant's training stage); ``output``
    must be one its row declares."""
    row = BY_NAME.get(name) or Stage(name, variant_folder(name), (), TRAINED, (), "")
    if not row.declares(output):
        raise ValueError(f"stage '{name}' declares no output '{output}' (its outputs: {', '.join(row.outputs)})")
    return stage_dir(run_dir, name) / output


def active(cfg: RunConfig) -> list[Stage]:
    """The stages this config runs, in order."""
    return [s for s in rows(cfg) if s.when(cfg)]


def settings(stage: Stage, cfg: RunConfig) -> dict[str, Any]:
    """{config key: value} for the keys in the stage's row. A training row's method key holds its variant's section
    (the method's, with the variant's own settings over it), so a variant of the study's keeps the study's keys;
    ``variants`` is the names of the evaluated variants and ``labels`` how the report shows them."""
    from hhalign.config.schema import _to_plain

    c = cfg.to_dict() | {"variants": list(cfg.variants), "labels": {n: v.shown for n, v in cfg.variants.items()}}
    if stage.variant is not None:
        v = cfg.variant(stage.variant)
        c[str(v.method)] = _to_plain(v.section)
    out = {}
    for key in stage.settings:
        node: Any = c
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out
