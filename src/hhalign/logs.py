"""hhalign's console output and run.log, through the standard logging module.

Messages go to the logger "hhalign" (each module uses ``logging.getLogger(__name__)`` under it): INFO to
stdout, WARNING and above to stderr, and, while ``to_file`` is active, everything (DEBUG included, e.g. the
traceback behind an out-of-memory message) to the run's log file. Progress bars (tqdm) stay on stderr only.

    console()                                  # once, by the CLI
    with to_file(run_dir / "run.log"):
        log.info("[1/10] data: run ...")
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = logging.getLogger("hhalign")


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _Stream(logging.StreamHandler):
    """A handler that looks its stream up when it writes, so pytest's capsys and redirected stdout see the output."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.stream_name = name

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def console() -> None:
    """INFO to stdout and WARNING+ to stderr, message text only; idempotent."""
    if any(getattr(h, "hhalign_console", False) for h in ROOT.handlers):
        return
    out, err = _Stream("stdout"), _Stream("stderr")
    out.setLevel(logging.INFO)
    out.addFilter(_Below(logging.WARNING))
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(logging.Formatter("%(message)s"))
        h.hhalign_console = True  # type: ignore[attr-defined]
        ROOT.addHandler(h)
    ROOT.setLevel(logging.DEBUG)
    ROOT.propagate = False


@contextlib.contextmanager
def to_file(path: Path) -> Iterator[None]:
    """Also write every hhalign message to ``path`` (appended) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    ROOT.addHandler(handler)
    try:
        yield
    finally:
        ROOT.removeHandler(handler)
        handler.close()
