"""One owner per run folder: a process (or one launcher's group of ranks, through its rank 0) that works in a run
folder holds its lock; a second one gets a one-line error naming the holder and exits 2 before touching anything.

    with owning(cfg.run_dir, "hhalign run configs/tiny.yaml"):
        ...

The lock is ``filelock.FileLock`` (the maintained library Hugging Face's hub client and datasets already use):
on Linux and macOS an ``fcntl.flock`` on ``.hhalign.lock``, which the operating system releases when the holder's
process dies, however it dies (SIGKILL included), so a dead holder never blocks a folder. Who holds it (pid, host,
command, since when) is written beside it, in ``.hhalign.owner.json``, for the error message; when a new owner
finds that record left by a process that stopped without removing it, it says so and takes over. On a network
filesystem without working ``flock`` the lock protects nothing: the docs say so.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hhalign import parallel
from hhalign.artifacts import read_record, write_json
from hhalign.errors import UserError

log = logging.getLogger(__name__)
LOCK = ".hhalign.lock"
OWNER = ".hhalign.owner.json"


def command_line() -> str:
    """What this process was started as, for the record a second process reads."""
    return " ".join(["hhalign", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "hhalign (from Python)"


def describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process (it left no record of itself)"
    return f"pid {owner.get('pid')} on {owner.get('host')} (`{owner.get('command')}`) since {owner.get('since')}"


def _owner(folder: Path) -> dict[str, Any] | None:
    return read_record(folder / OWNER)


def _acquire(folder: Path, command: str) -> Any:
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{folder} is in use by {describe(_owner(folder))}: wait for it to finish, or give this run "
                        "another --name or output_dir") from None
    left = _owner(folder)
    if left and (left.get("pid"), left.get("host")) != (os.getpid(), socket.gethostname()):
        log.warning(f"{folder}: taking over from {describe(left)}, which stopped without releasing the folder")
    write_json(folder / OWNER, {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "processes": parallel.size()})
    return lock


@contextmanager
def owning(folder: str | Path, command: str) -> Iterator[None]:
    """Hold ``folder`` for the duration (rank 0 holds it for a launch; the other ranks learn if it could not)."""
    folder = Path(folder)
    lock = parallel.on_main(lambda: _acquire(folder, command), f"taking the lock on {folder}")
    try:
        yield
    finally:
        if lock is not None:
            (folder / OWNER).unlink(missing_ok=True)
            lock.release()
