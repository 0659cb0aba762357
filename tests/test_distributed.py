"""`accelerate launch -m hhalign sft|dpo CONFIG` with two CPU processes (gloo): both ranks train, on different
data, and only rank 0 writes the stage's artifacts.

What each rank trained on, and which process renamed which file into place, is recorded from outside the
package: a ``sitecustomize.py`` on PYTHONPATH (written to the test's tmp dir) wraps ``Trainer.training_step``
and ``os.replace`` in every Python process of the run and appends to per-process trace files.

On a CPU-only machine ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple
launcher needs mpirun for more); ``--multi_gpu --num_processes 2`` goes through torchrun, and TRL's configs
(``use_cpu=True`` without CUDA) then set up a gloo process group. CUDA is hidden so the test is the same on
a GPU machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hhalign.engine.table import stage_dir

pytestmark = pytest.mark.slow  # two processes per test, a minute in all
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf"

# A run of seconds: 32 training pairs, a ~50k-parameter model, one epoch of each stage.
OVERRIDES = [
    "data.max_train_rows=32", "data.heldout_rows=8",
    "model.tiny.vocab_size=512", "model.tiny.hidden_size=32", "model.tiny.num_heads=2", "model.tiny.ffn_dim=64",
    "model.tiny.max_positions=256",
    "pretrain.num_train_epochs=1", "pretrain.max_length=64", "pretrain.max_rows=64", "pretrain.logging_steps=1",
    "sft.num_train_epochs=1", "sft.max_length=64", "sft.per_device_train_batch_size=4", "sft.logging_steps=1",
    "dpo.num_train_epochs=1", "dpo.max_length=256", "dpo.per_device_train_batch_size=4", "dpo.logging_steps=1",
]

SITECUSTOMIZE = r'''
"""Test-only tracing (tests/test_distributed.py): which rank trained on which rows, and who renamed what."""
import hashlib, importlib.abc, importlib.util, json, os, sys

_DIR = os.environ.get("HHALIGN_TEST_TRACE")


def _log(kind, **record):
    name = f"{kind}-rank{os.environ.get('RANK', 'none')}-pid{os.getpid()}.jsonl"
    with open(os.path.join(_DIR, name), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _patch_trainer(module):
    trainer_cls = module.Trainer
    original = trainer_cls.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        rows = []
        for i in range(ids.shape[0]):
            row = ids[i][mask[i].bool()] if mask is not None else ids[i]
            rows.append(hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:16])
        _log("steps", rank=self.args.process_index, world_size=self.args.world_size, rows=rows)
        return original(self, model, inputs, *args, **kwargs)

    trainer_cls.training_step = training_step


class _TrainerHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch_trainer(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _DIR:
    _replace = os.replace

    def _traced_replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        _log("replace", dst=os.path.abspath(os.fspath(dst)))

    os.replace = _traced_replace
    sys.meta_path.insert(0, _TrainerHook())
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, trace: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(tmp / "site"), env.get("PYTHONPATH", "")) if p),
        HHALIGN_TEST_TRACE=str(trace),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",  # two ranks on a small shared machine: one thread each
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _records(trace: Path, kind: str) -> list[dict]:
    out = []
    for f in sorted(trace.glob(f"{kind}-*.jsonl")):
        out += [{**json.loads(line), "file": f.name} for line in f.read_text().splitlines() if line.strip()]
    return out


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run folder with 01_data and 02_pretrain (single process), plus the tracing sitecustomize."""
    if not (DATA / "harmless-base").is_dir():
        pytest.skip(f"local HH-RLHF data not found at {DATA}")
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        accelerate = Path(shutil.which("accelerate") or "")
        if not accelerate.name:
            pytest.skip("accelerate CLI not installed")
    tmp = tmp_path_factory.mktemp("distributed")
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    trace = tmp / "trace"
    trace.mkdir()
    runs = tmp / "runs"
    sets = [a for o in [f"output_dir={runs}", *OVERRIDES] for a in ("--set", o)]
    env = _env(tmp, trace)
    # one interpreter for both stages (saves an import of torch): data, then the tiny base model
    script = ("import sys; from hhalign.cli import main; "
              "sys.exit(main(['data', *sys.argv[1:]]) or main(['pretrain', *sys.argv[1:]]))")
    _run([sys.executable, "-c", script, "configs/tiny.yaml", *sets], env)
    return {"accelerate": str(accelerate), "trace": trace, "run": runs / "tiny", "sets": sets, "env": env}


def _launch_two(setup: dict, stage: str, name: str) -> tuple[dict[int, list[str]], list[dict], subprocess.CompletedProcess]:
    """`accelerate launch` two processes of `hhalign STAGE`; per-rank trained rows and the file renames under the stage."""
    trace = setup["trace"] / name
    trace.mkdir()
    env = {**setup["env"], "HHALIGN_TEST_TRACE": str(trace)}
    started = time.time()
    proc = _run([setup["accelerate"], "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                 "-m", "hhalign", stage, "configs/tiny.yaml", *setup["sets"]], env)
    print(f"2-process {stage}: {time.time() - started:.1f} s")
    steps = _records(trace, "steps")
    assert {r["world_size"] for r in steps} == {2}, f"ranks did not form one process group: {steps}"
    by_rank: dict[int, list[str]] = {}
    for r in steps:
        by_rank.setdefault(r["rank"], []).extend(r["rows"])
    assert sorted(by_rank) == [0, 1], f"expected training steps on ranks 0 and 1, got {sorted(by_rank)}"
    assert all(by_rank.values())
    assert len(by_rank[0]) == len(by_rank[1])
    return by_rank, _records(trace, "replace"), proc


def _check_written_once_by_rank0(stage_dir: Path, replaces: list[dict], expected: list[str]) -> None:
    """The stage folder holds exactly `expected` (no temporary dirs, no checkpoints), each renamed into place once,
    by rank 0 only."""
    assert sorted(p.name for p in stage_dir.iterdir()) == sorted(expected), \
        f"unexpected entries (temporary dirs? checkpoints?) in {stage_dir}: {sorted(p.name for p in stage_dir.iterdir())}"
    writes = [r for r in replaces if Path(r["dst"]).is_relative_to(stage_dir)]
    writers = {r["file"].split("-")[1] for r in writes}  # files are named {kind}-rank{RANK}-pid{pid}.jsonl
    assert writers == {"rank0"}, f"artifacts renamed into place by {writers}: {writes}"
    targets = [Path(r["dst"]).relative_to(stage_dir).as_posix() for r in writes]
    for name in expected:
        assert targets.count(name) == 1, f"{name} renamed into place {targets.count(name)} times: {targets}"
    assert targets[-1] == "manifest.json", f"the manifest is not written last: {targets}"


def test_sft_two_cpu_processes(run_setup: dict) -> None:
    by_rank, replaces, proc = _launch_two(run_setup, "sft", "sft")
    train_pairs = len((stage_dir(run_setup["run"], "data") / "prefs.jsonl").read_text().splitlines())
    assert not set(by_rank[0]) & set(by_rank[1]), "both ranks trained on the same rows"
    assert len(by_rank[0]) + len(by_rank[1]) == train_pairs, "one epoch over 2 ranks covers each training row once"
    stage = stage_dir(run_setup["run"], "sft")
    assert (stage / "model" / "config.json").is_file(), proc.stderr[-3000:]
    _check_written_once_by_rank0(stage, replaces, ["manifest.json", "model", "train_report.json"])
    assert json.loads((stage / "train_report.json").read_text())["train_pairs"] == train_pairs
    assert json.loads((stage / "manifest.json").read_text())["stage"] == "sft"


def test_dpo_two_cpu_processes(run_setup: dict) -> None:
    by_rank, replaces, proc = _launch_two(run_setup, "dpo", "dpo")
    # rows are chosen and rejected sequences. TRL drops pairs whose prompt fills max_length, so the pair count may
    # not split evenly over 2 ranks x 4 pairs: accelerate then repeats up to one batch (4 pairs = 8 rows) from the
    # start of the epoch to even the last batch, and only that much may be shared between the ranks.
    shared = set(by_rank[0]) & set(by_rank[1])
    assert len(shared) <= 8, f"both ranks trained on the same {len(shared)} rows"
    assert len(set(by_rank[0]) | set(by_rank[1])) >= len(by_rank[0]) + len(by_rank[1]) - 8
    stage = stage_dir(run_setup["run"], "dpo")
    assert (stage / "model" / "config.json").is_file(), proc.stderr[-3000:]
    assert (stage / "adapter" / "adapter_config.json").is_file()
    _check_written_once_by_rank0(stage, replaces, ["adapter", "manifest.json", "model", "train_report.json"])
    assert json.loads((stage / "manifest.json").read_text())["stage"] == "dpo"
