"""Several processes of one launch (``accelerate launch``, or torchrun under it): who is who, and the few
collective steps hhalign takes itself.

    accelerate launch --num_processes 2 -m hhalign run configs/tiny.yaml

Accelerate forms the process group (NCCL on GPUs, gloo on CPUs) and runs the training stages (DDP, FSDP or
DeepSpeed under the Trainer). What it lacks, and is written here:

- ``deal``/``gather``: generation and scoring form their batches exactly as one process would
  (``hhalign.models.generation.length_batches``), deal whole batches to the ranks, and gather the rows back in
  the original order. Accelerate's ``split_between_processes`` splits items, which would change the batches'
  shapes and so, through padding and the floating-point order of a batched pass, possibly the answers; whole
  batches give every rank's rows exactly as one process computes them.
- ``agree``: every rank checks, before any work, that all ranks read the same config and run folder.
- ``on_main``: a stage that only rank 0 runs (data, convert, metrics, report), the others waiting for its
  outcome, so that a failure on rank 0 stops them too with a line that says so.
- ``lost``: a collective that fails because another process of the launch died becomes one line that says
  so; the launcher (torchrun) names the rank and its exit code, and no stage is marked finished.

Without a launch (``WORLD_SIZE`` unset or 1) every function is the one-process identity and imports nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hhalign.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
_alone = False  # inside on_main: rank 0 works as a single process


class LaunchError(UserError):
    """The processes of one launch cannot work together: they disagree, or one of them stopped."""


def launched() -> bool:
    """Whether this process is one of several started by a launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state() -> Any:
    """Accelerate's process state (joins the process group on first use). On CPU-only machines ``cpu=True``
    makes Accelerate form a gloo group, so that barriers and gathers really run across the processes."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def close(ok: bool) -> None:
    """Leave the launch's process group, if this process joined one (PyTorch asks for it before exit). Without
    it, a gloo rank that exits while gloo's threads still run can die in C++ (``terminate called without an
    active exception``, SIGABRT) instead of exiting with its own code. After a failure an NCCL group is left
    alone: destroying it can wait on a collective that a stopped rank never joins, and the launcher stops it."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and (ok or dist.get_backend() == "gloo"):
        state().destroy_process_group()


def rank() -> int:
    return 0 if _alone or not launched() else state().process_index


def size() -> int:
    return 1 if _alone or not launched() else state().num_processes


def is_main() -> bool:
    return rank() == 0


def barrier(what: str = "") -> None:
    if size() > 1:
        with lost(what):
            state().wait_for_everyone()


def idle_gpus_hint() -> str | None:
    """One line for a single process on a machine with several GPUs: how to use all of them."""
    if launched():
        return None
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return None
    return (f"this machine has {n} GPUs and a single process uses one: to use all {n}, run "
            f"`accelerate launch --num_processes {n} -m hhalign run CONFIG` (docs/gpu.md)")


def sharding_note() -> str | None:
    """What an FSDP or DeepSpeed accelerate config becomes on CPU processes, in one line (None: what it says)."""
    import torch

    asked = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(var, "").lower() == "true"]
    if not asked or torch.cuda.is_available():
        return None
    # Accelerate 1.16 turns a launch into FSDP or DeepSpeed only on accelerators: on CPU processes (MULTI_CPU,
    # gloo) the Trainer wraps the model in DDP whatever the config says
    return (f"the accelerate config asks for {asked[0]}, which Accelerate runs on GPUs only: these CPU processes train "
            "with plain data parallelism (DDP: every process holds the whole model and its optimizer state)")


def deal(batches: list[T], costs: list[float] | None = None) -> list[T]:
    """This rank's share of ``batches`` (longest first, as ``length_batches`` forms them). With ``costs``, each
    batch in turn goes to the rank with the least work so far (ties to the lower rank): the longest-processing-
    time rule, which evens out batches of unequal size; without, every size()-th batch from the rank's own on.
    Every rank computes the same deal from the same lengths, so no message is needed."""
    n, me = size(), rank()
    if n == 1:
        return list(batches)
    if costs is None:
        return batches[me::n]
    load, mine = [0.0] * n, []
    for batch, cost in zip(batches, costs):
        k = min(range(n), key=lambda j: (load[j], j))
        load[k] += cost
        if k == me:
            mine.append(batch)
    return mine


def gather(rows: list[tuple[int, T]], n: int, what: str = "") -> list[T]:
    """Every rank's ``(index, row)`` pairs, as one list in index order 0..n-1, on every rank."""
    if size() > 1:
        from accelerate.utils import gather_object

        with lost(what):
            rows = gather_object(rows)
    out: list[Any] = [None] * n
    seen = 0
    for i, row in rows:
        out[i] = row
        seen += 1
    if seen != n or any(r is None for r in out):
        raise RuntimeError(f"{what}: gathered {seen} rows for {n} items: the ranks did not deal the same batches")
    return out


def agree(values: dict[str, str], what: str) -> None:
    """Fail on every rank, before any work, when the ranks' ``values`` differ (each names a thing that must be
    the same on every process: the config, the run folder)."""
    if size() <= 1:
        return
    from accelerate.utils import gather_object

    with lost(what):
        every = gather_object([values])
    for r, theirs in enumerate(every):
        for key, value in values.items():
            if theirs.get(key) != every[0].get(key):
                raise LaunchError(
                    f"{what + ': ' if what else ''}rank {r} has {key} {theirs.get(key)!r} but rank 0 has {every[0].get(key)!r}: start every "
                    "process of the launch with the same config, --set options and output_dir (a folder every machine "
                    "shares, at the same path)")


def check_shared(folder: os.PathLike[str] | str, what: str) -> None:
    """Fail when a rank does not see the files rank 0 writes in ``folder`` (a run folder on a machine's own disk)."""
    if size() <= 1:
        return
    import uuid
    from pathlib import Path

    from accelerate.utils import gather_object
    from torch.distributed import broadcast_object_list

    token = [str(Path(folder) / f".launch-{uuid.uuid4().hex}") if is_main() else ""]
    if is_main():
        Path(token[0]).write_text("hhalign: every process of the launch checks that it sees this file\n")
    with lost(what):
        broadcast_object_list(token, src=0)
        seen = gather_object([Path(token[0]).is_file()])
    if is_main():
        Path(token[0]).unlink(missing_ok=True)
    blind = [r for r, s in enumerate(seen) if not s]
    if blind:
        raise LaunchError(f"{what + ': ' if what else ''}rank {blind[0]} does not see the files rank 0 writes in {folder}: output_dir must be a "
                          "folder every machine of the launch shares, at the same path")


def on_main(fn: Callable[[], T], what: str) -> T | None:
    """Run ``fn`` on rank 0 alone (as a single process); the other ranks wait and learn whether it failed."""
    global _alone
    if size() <= 1:
        return fn()
    from torch.distributed import broadcast_object_list

    outcome: list[Any] = [None]
    result = None
    error: BaseException | None = None
    if is_main():
        _alone = True
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001  (told to the other ranks, then raised here)
            error, outcome[0] = e, f"{type(e).__name__}: {e}"
        finally:
            _alone = False
    with lost(what):
        broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise LaunchError(f"{what} failed on rank 0 ({outcome[0]}): rank 0's output says why")
    return result


@contextlib.contextmanager
def lost(what: str) -> Iterator[None]:
    """A collective that fails because another process stopped (gloo: the connection closed; NCCL: a timeout)."""
    try:
        yield
    except RuntimeError as e:
        if type(e).__name__ != "DistBackendError" and "onnection" not in str(e) and "timed out" not in str(e).lower():
            raise
        raise LaunchError(
            f"{what or 'hhalign'}: another process of this launch stopped (the launcher's output names its rank and exit "
            f"code): {str(e).splitlines()[0]}. Nothing of this stage was marked finished; run the same command again to resume"
        ) from e
