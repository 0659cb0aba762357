"""The one reader of a run folder: every command that reads a run (metrics, report, compare, sweep, seeds, the
CLI's file mode) asks it, and none probes the layout by hand.

    run = RunFolder("runs/smol")
    run.scored()                 # variant -> set -> rated entries (08_score/, or the folder itself when it holds them)
    run.judge()                  # the score stage's judge.json, or None
    run.metrics()                # 09_metrics/metrics.json, or None
    run.seeds()                  # [1, 2, 3] for a multi-seed run (seed-N/ folders), else []

A "run folder" here is also any folder of response files (the study's released files, ``hhalign score``'s
output): the reader finds the files in it, or in its score stage folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhalign.artifacts import read_json, read_manifest, write_json
from hhalign.config.schema import STUDY, TINY, VARIANT_LABELS, MetricsSection
from hhalign.data.responses import load_scored_dir, response_files
from hhalign.engine.table import JUDGE_FILE, RUN_FILE, artifact, stage_dir
from hhalign.stats.rates import measure

SEED_DIR = re.compile(r"^seed-(\d+)$")


def seed_folder(run_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed run lives."""
    return Path(run_dir) / f"seed-{seed}"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def stage(self, name: str) -> Path:
        return stage_dir(self.path, name)

    def file(self, stage: str, output: str) -> Path:
        return artifact(self.path, stage, output)

    def manifest(self, stage: str) -> dict[str, Any] | None:
        return read_manifest(self.stage(stage))

    def run_info(self) -> dict[str, Any] | None:
        """run.json (the config, seeds, versions and command of ``hhalign run``), or None."""
        p = self.path / RUN_FILE
        return read_json(p) if p.is_file() else None

    def config(self) -> dict[str, Any]:
        return (self.run_info() or {}).get("config") or {}

    def declared(self) -> dict[str, dict[str, Any]]:
        """The run's variants as declared (run.json's config): name -> {method, from, label, settings}; the study's
        four when there is no run.json (a folder of rated files such as the study's own)."""
        value = self.config().get("variants") or list(STUDY)
        if isinstance(value, list):
            value = {n: STUDY.get(n, {}) for n in value}
        return {str(n): dict(v or {}) for n, v in value.items()}

    def starts(self) -> dict[str, str]:
        """Each trained variant's start: name -> the variant it was trained from (the study's implied ones too)."""
        declared = self.declared()
        out, todo = {}, list(declared)
        while todo:
            name = todo.pop(0)
            spec = declared.get(name) or STUDY.get(name) or {}
            if spec.get("method") and name not in out:
                out[name] = str(spec.get("from") or "base")
                todo.append(out[name])
        return out

    def labels(self) -> dict[str, str]:
        """How the report names each declared variant: its label, the study's name, or the name itself."""
        return {n: str(v.get("label") or VARIANT_LABELS.get(n, n)) for n, v in self.declared().items()}

    def is_toy(self) -> bool:
        """Whether the run's policies are the tiny from-scratch models (its run.json says so)."""
        return (self.config().get("model") or {}).get("name_or_path") == TINY

    def seeds(self) -> list[int]:
        """The seeds of a multi-seed run, from its seed-N folders, in order."""
        if not self.path.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.path.iterdir() if p.is_dir() and (m := SEED_DIR.match(p.name)))

    def seed(self, seed: int) -> RunFolder:
        return RunFolder(seed_folder(self.path, seed))

    # ------------------------------------------------------------------------- what the stages wrote

    def scored_dir(self) -> Path:
        """The folder holding the rated response files: this one when it holds response files, else its score stage's."""
        if response_files(self.path) or not self.stage("score").is_dir():
            return self.path
        return self.stage("score")

    def scored(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """variant -> set -> rated entries (``hhalign.data.responses.load_scored_dir``)."""
        return load_scored_dir(self.scored_dir(), also=f"nor in {self.stage('score').name}/")

    def judge(self) -> dict[str, Any] | None:
        """The judge's check the score stage wrote (judge.json beside the rated files), or None."""
        for folder in (self.path, self.stage("score")):
            if (folder / JUDGE_FILE).is_file():
                return read_json(folder / JUDGE_FILE)
        return None

    def judge_identity(self) -> str | None:
        """What identifies the run's judge: its content hash when the score stage recorded one, else its reference."""
        given = ((self.manifest("score") or {}).get("inputs") or {}).get("reward_model", {})
        return given.get("sha256") or given.get("ref")

    def metrics(self) -> dict[str, Any] | None:
        p = self.file("metrics", "metrics.json")
        return read_json(p) if p.is_file() else None

    def data_report(self) -> dict[str, Any] | None:
        p = self.file("data", "data_report.json")
        return read_json(p) if p.is_file() else None

    def measure(self, cfg: MetricsSection, json_out: Path | None = None, toy: bool | None = None,
                labels: dict[str, str] | None = None) -> dict[str, Any]:
        """``hhalign metrics DIR``: the rated responses measured (``hhalign.stats.rates.measure``) with the judge's
        check; ``toy`` defaults to what run.json says, ``labels`` (and the variants' order) to its declared variants;
        json_out written atomically."""
        labels = labels if labels is not None else self.labels() if self.run_info() else None
        metrics = measure(self.scored(), self.judge(), cfg, self.is_toy() if toy is None else toy, labels, self.starts())
        if json_out is not None:
            write_json(json_out, metrics)
        return metrics

    def thresholds(self) -> dict[str, Any] | None:
        """The thresholds the run was measured with (its metrics.json, else its config in the metrics manifest or
        run.json), with where they came from; None otherwise."""
        metrics_json = self.file("metrics", "metrics.json")
        if metrics_json.is_file() and (used := read_json(metrics_json).get("thresholds")):
            return {"harmful": float(used["harmful"]), "helpful": float(used["helpful"]), "from": str(metrics_json)}
        for node, where in (((self.manifest("metrics") or {}).get("settings") or {}, self.stage("metrics") / "manifest.json"),
                            (self.config(), self.path / RUN_FILE)):
            node = node.get("metrics") or {}
            if "harmful_threshold" in node and "helpful_threshold" in node:
                return {"harmful": float(node["harmful_threshold"]), "helpful": float(node["helpful_threshold"]), "from": str(where)}
        return None
