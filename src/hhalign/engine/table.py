"""The stages of a run, in one table: what each is called, where it writes, what it writes, what it reads.

    for stage in active(cfg): print(stage.name, stage_dir(run_dir, stage.name))
    path = artifact(run_dir, "data", "prefs.jsonl")      # an upstream output, by the name its row declares

Each row of ``STAGES`` gives a stage's name (also its ``hhalign NAME`` subcommand and its module,
``hhalign.stages.NAME``), its folder, the stages whose outputs it reads, the outputs it declares (names or
glob patterns inside its folder), the config keys it depends on, one line of help, the keys to lower when it
runs out of memory, and when a config needs it. A stage reads another's output only through ``artifact``,
which refuses a name the other stage does not declare, and finishes only with outputs its own row declares
(``hhalign.engine.work.StageRun.finish``); ``tests/test_stages.py`` checks that every row's upstream stages
are the ones its inputs come from. No other module spells a folder name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from hhalign.artifacts import MANIFEST
from hhalign.config.schema import TINY, RunConfig
from hhalign.data.sources import is_gguf

STARTED = ".started.json"  # in an unfinished stage folder: the key it was started with
JUDGE_FILE = "judge.json"  # in the score stage's folder: the judge's check on held-out pairs
RUN_FILE = "run.json"  # in the run folder: the config, seeds, versions and command of `hhalign run`
__all__ = ["MANIFEST", "STARTED", "JUDGE_FILE", "RUN_FILE", "Stage", "STAGES", "BY_NAME", "VARIANT_STAGE", "get", "stage_dir", "artifact", "active", "settings"]


def _always(cfg: RunConfig) -> bool:
    return True


def _tiny(cfg: RunConfig) -> bool:
    return cfg.model.name_or_path == TINY


def _needs(*variants: str) -> Callable[[RunConfig], bool]:
    return lambda cfg: bool(set(variants) & set(cfg.variants))


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

    def declares(self, name: str) -> bool:
        """Whether ``name`` (a path inside the stage folder) is one of its declared outputs or lies inside one."""
        parts = Path(name).parts
        return any(fnmatch("/".join(parts[:k]), pattern) for pattern in self.outputs for k in range(1, len(parts) + 1))


_TRAIN = ("per_device_train_batch_size", "max_length")
_MODEL = ("model", "train_report.json")
RESPONSES = "*_*.json"  # {variant}_{set}.json (hhalign.data.responses)
STAGES: tuple[Stage, ...] = (
    Stage("convert", "00_convert", (), ("*",), ("model.name_or_path", "rm.enabled", "rm.model"),
          "make each .gguf model the config names a plain, trainable Hugging Face folder", (), _gguf),
    Stage("data", "01_data", ("convert",), ("prefs.jsonl", "heldout.jsonl", "prompts/*.json", "data_report.json"),
          ("data", "seed", "model.name_or_path"),
          "parse the preference data into preference pairs, held-out pairs, eval prompt sets and a data report"),
    Stage("pretrain", "02_pretrain", ("data",), _MODEL, ("model", "pretrain", "seed"),
          "tiny preset: build the from-scratch base model and pretrain it on all dialogue text",
          tuple(f"pretrain.{k}" for k in _TRAIN), _tiny, every_rank=True),
    Stage("sft", "03_sft", ("convert", "data", "pretrain"), _MODEL, ("model", "sft", "seed"),
          "supervised fine-tuning (full) on the chosen dialogues", tuple(f"sft.{k}" for k in _TRAIN), _needs("sft", "sft_dpo"),
          every_rank=True),
    Stage("dpo", "04_dpo", ("convert", "data", "pretrain"), ("adapter", *_MODEL), ("model", "dpo", "seed"),
          "DPO with LoRA from the base model", tuple(f"dpo.{k}" for k in _TRAIN), _needs("dpo"), every_rank=True),
    Stage("sft_dpo", "05_sft_dpo", ("data", "sft"), ("adapter", *_MODEL), ("model.pad_token", "dpo", "seed"),
          "the same DPO, started from the SFT model", tuple(f"dpo.{k}" for k in _TRAIN), _needs("sft_dpo"), every_rank=True),
    Stage("rm", "06_rm", ("convert", "data"), _MODEL, ("rm", "model.tiny", "seed"),
          "train a reward model on the preference pairs (the run's own judge)", tuple(f"rm.{k}" for k in _TRAIN), _rm, every_rank=True),
    Stage("generate", "07_generate", ("convert", "data", "pretrain", "sft", "dpo", "sft_dpo"), (RESPONSES,),
          ("generate", "variants"), "every variant answers every eval prompt set (batched greedy decoding)",
          ("generate.batch_size",), every_rank=True),
    Stage("score", "08_score", ("data", "generate", "rm"), (RESPONSES, JUDGE_FILE), ("score",),
          "a reward model rates every (prompt, response)", ("score.batch_size",),
          every_rank=True),
    Stage("metrics", "09_metrics", ("score",), ("metrics.json",), ("metrics",),
          "HmR, HpR, CAS with intervals, paired tests and threshold sweeps"),
    Stage("report", "10_report", ("data", "sft", "dpo", "sft_dpo", "score", "metrics"), ("report.md", "report.html", "*.png", "*.svg", "*.pdf"), ("report",),
          "figures, report.md and a self-contained report.html"),
)
BY_NAME = {s.name: s for s in STAGES}
# the stage that makes each variant's model ("base" is made by a stage only for the tiny preset)
VARIANT_STAGE = {"base": "pretrain", "sft": "sft", "dpo": "dpo", "sft_dpo": "sft_dpo"}


def get(name: str) -> Stage:
    return BY_NAME[name]


def stage_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / BY_NAME[name].folder


def artifact(run_dir: str | Path, name: str, output: str) -> Path:
    """The path of ``output`` in stage ``name``'s folder; ``output`` must be one its row declares."""
    if not BY_NAME[name].declares(output):
        raise ValueError(f"stage '{name}' declares no output '{output}' (its outputs: {', '.join(BY_NAME[name].outputs)})")
    return stage_dir(run_dir, name) / output


def active(cfg: RunConfig) -> list[Stage]:
    """The stages this config runs, in order."""
    return [s for s in STAGES if s.when(cfg)]


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
