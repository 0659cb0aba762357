"""`accelerate launch --num_processes 2 -m hhalign run` on CPU processes (gloo): the tiny preset end to end.

One launch runs every stage; the tests then read what it left: each training stage trained both ranks on
different rows, only rank 0 wrote artifacts, and the responses and ratings of the data-parallel generate and
score stages equal a one-process run of the same stages on the same models, byte for byte. Further launches:
ranks that disagree on the config stop before any work; a rank killed mid-stage stops the launch (the
launcher names it), leaves no half-written artifact, and the same command resumes to the same files.

What each rank trained on, which process wrote which file, and the kill are arranged from outside the package:
a ``sitecustomize.py`` on PYTHONPATH (written to the test's tmp dir) wraps ``Trainer.training_step``,
``open``/``os.replace`` and ``hhalign.models.generation._generate_batch`` in every Python process of the run.

On a CPU-only machine ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple
launcher needs mpirun for more); ``--multi_gpu --num_processes 2`` goes through torchrun, and hhalign
(``hhalign.parallel.state``) then joins a gloo process group. CUDA is hidden so the test is the same on a GPU
machine.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import our_frames

from hhalign.engine.table import MANIFEST, STAGES, stage_dir

pytestmark = pytest.mark.slow  # five launches of two processes, about three minutes in all
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf"

# A run of seconds: 32 training pairs, a ~50k-parameter model, one epoch of each stage. generate.batch_size=16
# makes the 12 harmful prompts one batch, so rank 1 has an empty share of them (more ranks than batches).
OVERRIDES = [
    "data.max_train_rows=32", "data.heldout_rows=8", "data.eval_size=12",
    "model.tiny.vocab_size=512", "model.tiny.hidden_size=32", "model.tiny.num_heads=2", "model.tiny.ffn_dim=64",
    "model.tiny.max_positions=256",
    "pretrain.num_train_epochs=1", "pretrain.max_length=64", "pretrain.max_rows=64", "pretrain.logging_steps=1",
    "sft.num_train_epochs=1", "sft.max_length=64", "sft.per_device_train_batch_size=4", "sft.logging_steps=1",
    "dpo.num_train_epochs=1", "dpo.max_length=256", "dpo.per_device_train_batch_size=4", "dpo.logging_steps=1",
    "rm.num_train_epochs=1", "generate.batch_size=16", "score.batch_size=4",
]

SITECUSTOMIZE = r'''
"""Test-only tracing (tests/test_distributed.py): which rank trained on which rows, who wrote what, and a kill."""
import builtins, hashlib, importlib.abc, importlib.util, json, os, signal, sys

_DIR = os.environ.get("HHALIGN_TEST_TRACE")
_RUN = os.environ.get("HHALIGN_TEST_RUN", "")
_KILL = os.environ.get("HHALIGN_TEST_KILL")  # "RANK:N": that rank SIGKILLs itself at its N-th generation batch
_HOLD = os.environ.get("HHALIGN_TEST_HOLD")  # FILE: every rank writes FILE.rankR at its first generation batch and waits for FILE


def _log(kind, **record):
    name = f"{kind}-rank{os.environ.get('RANK', 'none')}-pid{os.getpid()}.jsonl"
    with _open(os.path.join(_DIR, name), "a", encoding="utf-8") as fh:
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
        _log("steps", rank=self.args.process_index, world_size=self.args.world_size, rows=rows,
             stage=os.path.basename(os.path.dirname(self.args.output_dir)))
        return original(self, model, inputs, *args, **kwargs)

    trainer_cls.training_step = training_step


def _patch_generation(module):
    import time
    original, calls = module._generate_batch, [0]
    rank, n = _KILL.split(":") if _KILL else (None, 0)

    def generate_batch(*args, **kwargs):
        calls[0] += 1
        if os.environ.get("RANK") == rank and calls[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        if _HOLD and calls[0] == 1:
            _open(f"{_HOLD}.rank{os.environ.get('RANK')}", "w").close()
            while not os.path.exists(_HOLD):
                time.sleep(0.05)
        return original(*args, **kwargs)

    module._generate_batch = generate_batch


class _Hook(importlib.abc.MetaPathFinder):
    def __init__(self, patches):
        self.patches = patches

    def find_spec(self, name, path, target=None):
        if name not in self.patches:
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
            self.patches[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


_open, _replace = builtins.open, os.replace


def _traced_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and _RUN \
            and os.path.abspath(os.fsdecode(file)).startswith(_RUN):
        _log("write", path=os.path.abspath(os.fsdecode(file)))
    return _open(file, mode, *args, **kwargs)


def _traced_replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    _log("replace", dst=os.path.abspath(os.fspath(dst)))


if _DIR:
    builtins.open, os.replace = _traced_open, _traced_replace
    patches = {"transformers.trainer": _patch_trainer}
    if _KILL or _HOLD:
        patches["hhalign.models.generation"] = _patch_generation
    sys.meta_path.insert(0, _Hook(patches))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, trace: Path, run: Path, **extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(tmp / "site"), env.get("PYTHONPATH", "")) if p),
        HHALIGN_TEST_TRACE=str(trace), HHALIGN_TEST_RUN=str(run),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",  # two ranks on a small shared machine: one thread each (and the one-process run alike)
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        **extra,
    )
    return env


def _run(cmd: list[str], env: dict[str, str], expect: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    ok = proc.returncode == 0 if expect == 0 else proc.returncode != 0
    assert ok, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _records(trace: Path, kind: str) -> list[dict]:
    out = []
    for f in sorted(trace.glob(f"{kind}-*.jsonl")):
        out += [{**json.loads(line), "file": f.name} for line in f.read_text().splitlines() if line.strip()]
    return out


def _sets(out: Path) -> list[str]:
    return [a for o in [f"output_dir={out}", *OVERRIDES] for a in ("--set", o)]


class Setup:
    def __init__(self, tmp: Path, accelerate: str) -> None:
        self.tmp, self.accelerate = tmp, accelerate

    def launch(self, name: str, out: Path, argv: list[str], expect: int = 0, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
        """`accelerate launch` two processes of `hhalign ...argv` (or of a script: argv[0] ending .py)."""
        cmd, env_, trace = self.command(name, out, argv, **env)
        started = time.time()
        proc = _run(cmd, env_, expect)
        print(f"2-process {name}: {time.time() - started:.1f} s")
        return proc, trace

    def command(self, name: str, out: Path, argv: list[str], **env: str) -> tuple[list[str], dict[str, str], Path]:
        """The `accelerate launch` command line of two processes, its environment and its trace folder."""
        trace = self.tmp / "trace" / name
        trace.mkdir(parents=True)
        target = argv if argv[0].endswith(".py") else ["-m", "hhalign", *argv]
        cmd = [self.accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *target]
        return cmd, _env(self.tmp, trace, out, **env), trace

    def one(self, out: Path, *stages: str) -> None:
        """The stages in one process, one after another (one interpreter)."""
        script = "import sys; from hhalign.cli import main; sys.exit(max(main([s, *sys.argv[1:]]) for s in %r))" % (stages,)
        _run([sys.executable, "-c", script, "configs/tiny.yaml", "--data-dir", str(DATA), *_sets(out)],
             _env(self.tmp, self.tmp / "trace", out))


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny preset run end to end by two processes."""
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
    setup = Setup(tmp, str(accelerate))
    out = tmp / "two"
    proc, trace = setup.launch("run", out, ["run", "configs/tiny.yaml", "--data-dir", str(DATA), *_sets(out)])
    return {"setup": setup, "run": out / "tiny", "trace": trace, "proc": proc}


def _trained_rows(trace: Path, stage: str) -> dict[int, list[str]]:
    steps = [r for r in _records(trace, "steps") if r["stage"] == stage_dir("", stage).name]
    assert {r["world_size"] for r in steps} == {2}, f"{stage}: the ranks did not form one process group: {steps}"
    by_rank: dict[int, list[str]] = {}
    for r in steps:
        by_rank.setdefault(r["rank"], []).extend(r["rows"])
    assert sorted(by_rank) == [0, 1] and len(by_rank[0]) == len(by_rank[1]), f"{stage}: steps per rank {by_rank.keys()}"
    return by_rank


def test_two_processes_run_the_study_end_to_end(launched: dict) -> None:
    run, out = launched["run"], launched["proc"].stdout
    for st in STAGES:
        if st.name != "convert":  # the tiny preset converts nothing
            assert (run / st.folder / MANIFEST).is_file(), f"{st.name} not finished:\n{out[-3000:]}"
    assert "2 processes; training, generate and score use all of them" in out
    assert out.count("[7/10] generate: done") == 1, "only rank 0 speaks"
    assert (stage_dir(run, "report") / "report.html").is_file()
    # sft: one epoch over two ranks trains each pair once, each on one rank
    by_rank = _trained_rows(launched["trace"], "sft")
    train_pairs = len((stage_dir(run, "data") / "prefs.jsonl").read_text().splitlines())
    assert not set(by_rank[0]) & set(by_rank[1]), "both ranks trained on the same rows"
    assert len(by_rank[0]) + len(by_rank[1]) == train_pairs
    # dpo rows are chosen and rejected sequences. TRL drops pairs whose prompt fills max_length, so the pair count may
    # not split evenly over 2 ranks x 4 pairs: accelerate then repeats up to one batch (4 pairs = 8 rows) from the
    # start of the epoch to even the last batch, and only that much may be shared between the ranks.
    for stage in ("dpo", "sft_dpo", "rm"):
        by_rank = _trained_rows(launched["trace"], stage)
        assert len(set(by_rank[0]) & set(by_rank[1])) <= 8, f"{stage}: both ranks trained on the same rows"
    _trained_rows(launched["trace"], "pretrain")  # texts cut to 64 tokens: different dialogues may start alike


def test_only_rank_0_writes_artifacts(launched: dict) -> None:
    run = launched["run"].resolve()
    writes = [{**r, "path": r.get("path") or r["dst"]} for r in _records(launched["trace"], "write") + _records(launched["trace"], "replace")]
    writes = [r for r in writes if Path(r["path"]).is_relative_to(run)]
    assert any(r["file"].startswith(("write-rank0", "replace-rank0")) for r in writes)
    # Trainer checkpoints keep each rank's random-number state (rng_state_{rank}.pth) so that training resumes
    # exactly; they are transient (deleted when the stage finishes) and the only files another rank writes
    others = [r["path"] for r in writes if "-rank0-" not in r["file"] and "checkpoints" not in Path(r["path"]).parts]
    assert not others, f"written by ranks other than 0: {others}"
    for st in STAGES:
        d = run / st.folder
        if d.is_dir():
            left = [p.name for p in d.iterdir() if ".tmp" in p.name or p.name in ("checkpoints", ".started.json")]
            assert not left, f"{st.name}: left behind {left}"
            manifest = json.loads((d / MANIFEST).read_text())
            assert all((d / o).exists() for o in manifest["outputs"])
    replaced = [Path(r["dst"]).relative_to(run).as_posix() for r in _records(launched["trace"], "replace")
                if Path(r["dst"]).is_relative_to(run / stage_dir("", "sft").name)]
    assert replaced.count("03_sft/model") == 1 and replaced[-1] == "03_sft/manifest.json", replaced


def test_responses_and_ratings_equal_one_process(launched: dict) -> None:
    """generate and score dealt whole batches to two ranks: the same bytes as one process on the same models."""
    one = launched["setup"].tmp / "one"
    shutil.copytree(launched["run"], one / "tiny", symlinks=True)
    for stage in ("generate", "score", "metrics", "report"):
        shutil.rmtree(stage_dir(one / "tiny", stage))
    launched["setup"].one(one, "generate", "score")
    for stage in ("generate", "score"):
        two_dir, one_dir = stage_dir(launched["run"], stage), stage_dir(one / "tiny", stage)
        names = sorted(p.name for p in two_dir.glob("*.json") if p.name != MANIFEST)
        assert names == sorted(p.name for p in one_dir.glob("*.json") if p.name != MANIFEST)
        assert len(names) >= 8
        different = [n for n in names if not filecmp.cmp(two_dir / n, one_dir / n, shallow=False)]
        assert not different, f"{stage}: two processes wrote different {different}"
    rows = json.loads((stage_dir(launched["run"], "score") / "sft_harmful.json").read_text())
    assert len(rows) == 12 and all("rating" in r for r in rows)


def test_a_killed_rank_stops_the_launch_and_the_run_resumes(launched: dict) -> None:
    setup = launched["setup"]
    out = setup.tmp / "killed"
    shutil.copytree(launched["run"], out / "tiny", symlinks=True)
    for stage in ("generate", "score", "metrics", "report"):
        shutil.rmtree(stage_dir(out / "tiny", stage))
    argv = ["run", "configs/tiny.yaml", "--data-dir", str(DATA), *_sets(out)]
    # rank 1 dies at its 3rd generation batch: rank 0 has written a response file or two by then
    proc, _ = setup.launch("killed", out, argv, expect=1, HHALIGN_TEST_KILL="1:3")
    assert "rank      : 1" in proc.stderr and "Signal 9 (SIGKILL)" in proc.stderr, proc.stderr[-3000:]
    gen = stage_dir(out / "tiny", "generate")
    assert not (gen / MANIFEST).exists(), "a stage was marked finished"
    assert not (stage_dir(out / "tiny", "score")).exists()
    written = sorted(p.name for p in gen.glob("*_*.json"))
    assert all(".tmp" not in p.name for p in gen.iterdir())
    for name in written:  # what is there is whole: the same as the finished run's
        assert filecmp.cmp(gen / name, stage_dir(launched["run"], "generate") / name, shallow=False), name
    proc, _ = setup.launch("resumed", out, argv)
    assert "generate  resume (interrupted earlier)" in proc.stdout
    assert f"{len(written)} kept from before" in proc.stdout if written else True
    for stage in ("generate", "score"):
        d = stage_dir(out / "tiny", stage)
        for p in sorted(stage_dir(launched["run"], stage).glob("*_*.json")):
            assert filecmp.cmp(p, d / p.name, shallow=False), f"{stage}/{p.name} differs after resuming"


def test_a_second_launch_on_the_same_run_folder_is_refused_while_the_first_works(launched: dict) -> None:
    """Two `accelerate launch` groups of two ranks on one run folder: the second one's ranks all stop with the
    holder named (rank 0 of the first group), exit non-zero and touch nothing; the first finishes as if alone."""
    setup = launched["setup"]
    out = setup.tmp / "two-launches"
    shutil.copytree(launched["run"], out / "tiny", symlinks=True, ignore=shutil.ignore_patterns(".hhalign.*"))
    for stage in ("generate", "score", "metrics", "report"):
        shutil.rmtree(stage_dir(out / "tiny", stage))
    argv = ["run", "configs/tiny.yaml", "--data-dir", str(DATA), *_sets(out)]
    hold = setup.tmp / "hold-first"
    cmd, env, _ = setup.command("first", out, argv, HHALIGN_TEST_HOLD=str(hold))
    log = setup.tmp / "first.log"  # a file, not a pipe: a held process must never block on a full pipe
    with log.open("w") as fh:
        first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not Path(f"{hold}.rank0").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # polling for the condition: the first group holds the folder and waits inside generate
        assert first.poll() is None, "the first launch ended before the second could start"
        owner = json.loads((out / "tiny" / ".hhalign.owner.json").read_text())
        working = {stage_dir("", st).name for st in ("generate", "score", "metrics", "report")}  # the first group's

        def files() -> list[str]:
            return sorted(p.relative_to(out).as_posix() for p in (out / "tiny").rglob("*") if not working & set(p.parts))

        before = files()
        second, _ = setup.launch("second", out, argv, expect=1)
        assert f"tiny is in use by pid {owner['pid']}" in second.stderr, second.stderr[-3000:]
        # each rank stops with exit 2 and a one-line error, or is stopped by torchrun (SIGTERM) once the other has
        # exited; none dies in C++ (SIGABRT, before parallel.close); the only traceback is torchrun's own
        codes = re.findall(r"exitcode  : (-?\d+)", second.stderr)
        assert len(codes) == 2 and set(codes) <= {"2", "-15"} and "2" in codes, second.stderr[-3000:]
        assert not our_frames(second.stderr), second.stderr[-3000:]
        assert files() == before, "the refused launch wrote something"
        hold.touch()  # let the first group go on
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log.read_text()[-3000:]
    for p in sorted(stage_dir(launched["run"], "score").glob("*_*.json")):
        assert filecmp.cmp(p, stage_dir(out / "tiny", "score") / p.name, shallow=False), p.name


def test_two_machines_that_disagree_on_the_config_stop_before_any_work(launched: dict) -> None:
    """examples/accelerate/multi_node.yaml as two machines on this one (one process each); the second was started
    with another seed. Both stop, naming the difference, before anything is written."""
    setup = launched["setup"]
    out = setup.tmp / "disagree"
    trace = setup.tmp / "trace" / "disagree"
    trace.mkdir(parents=True)
    port = str(_free_port())
    procs = []
    for machine in (0, 1):
        seed = ["--set", f"seed={42 + machine}"]
        cmd = [setup.accelerate, "launch", "--config_file", "examples/accelerate/multi_node.yaml", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1",
               "--main_process_port", port, "-m", "hhalign", "run", "configs/tiny.yaml", "--data-dir", str(DATA),
               *_sets(out), *seed]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(setup.tmp, trace, out), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode != 0 for p in procs), results
    first, second = results[0][1], results[1][1]
    assert "hhalign run: error: rank 1 has config hash" in first, first[-3000:]
    assert "start every process of the launch with the same config" in second, second[-3000:]
    assert not out.exists(), "a folder was created before the ranks agreed"


def test_our_frames_are_matched_by_module_not_by_the_checkout_s_name() -> None:
    """A checkout cloned into a folder named hhalign puts the word in torchrun's frames too: only the package's count."""
    import hhalign

    pkg = Path(hhalign.__file__).resolve().parent
    torchrun = f'  File "{pkg.parents[1]}/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 9, in main'
    ours = f'  File "{pkg}/engine/lock.py", line 40, in owning'
    assert our_frames("\n".join(["Traceback (most recent call last):", torchrun, "x"])) == []
    assert our_frames("\n".join([torchrun, ours])) == [ours.strip()]
