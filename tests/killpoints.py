"""Kill points for fault-injection tests: a ``sitecustomize`` that a test puts on PYTHONPATH of a subprocess.

A kill point is a moment a stage changes its folder: a file opened for writing, or a file or folder renamed into
place (``os.replace``, ``os.rename``). With ``HHALIGN_TEST_EVENTS=FILE`` every such moment inside
``HHALIGN_TEST_RUN`` (a run folder) is appended to FILE as "STAGE_FOLDER<TAB>what"; with
``HHALIGN_TEST_KILL=STAGE_FOLDER:N`` the process SIGKILLs itself just before the N-th one inside that stage
folder (nothing is flushed, no handler runs: as a power cut or the OOM killer would stop it).
"""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = r'''
import builtins, io, os, signal

_RUN = os.path.realpath(os.environ["HHALIGN_TEST_RUN"])
_EVENTS = os.environ.get("HHALIGN_TEST_EVENTS")
_KILL = os.environ.get("HHALIGN_TEST_KILL")
_STAGE, _AT = (_KILL.rsplit(":", 1)[0], int(_KILL.rsplit(":", 1)[1])) if _KILL else (None, 0)
_seen = [0]
_open, _replace, _rename = builtins.open, os.replace, os.rename


def _point(path, what):
    try:
        rel = os.path.relpath(os.path.realpath(os.fspath(path)), _RUN)
    except (TypeError, ValueError):
        return
    if rel.startswith(".."):
        return
    stage = rel.split(os.sep)[0]
    if _EVENTS:
        with _open(_EVENTS, "a", encoding="utf-8") as fh:
            fh.write(f"{stage}\t{what} {rel}\n")
    if stage == _STAGE:
        _seen[0] += 1
        if _seen[0] == _AT:
            os.kill(os.getpid(), signal.SIGKILL)


def _open_hook(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        _point(file, "open")
    return _open(file, mode, *args, **kwargs)


def _replace_hook(src, dst, *args, **kwargs):
    _point(dst, "replace")
    return _replace(src, dst, *args, **kwargs)


def _rename_hook(src, dst, *args, **kwargs):
    _point(dst, "rename")
    return _rename(src, dst, *args, **kwargs)


builtins.open = io.open = _open_hook
os.replace, os.rename = _replace_hook, _rename_hook
'''


def install(folder: Path) -> Path:
    """Write the sitecustomize into ``folder``; put that folder first on the subprocess's PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def env(base: dict[str, str], hook: Path, run_dir: Path, *, events: Path | None = None, kill: str | None = None) -> dict[str, str]:
    """The subprocess environment: the hook on PYTHONPATH, the run folder it watches, what it records or kills."""
    out = {**base, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), base.get("PYTHONPATH", "")])),
           "HHALIGN_TEST_RUN": str(run_dir)}
    out.pop("HHALIGN_TEST_EVENTS", None)
    out.pop("HHALIGN_TEST_KILL", None)
    if events is not None:
        out["HHALIGN_TEST_EVENTS"] = str(events)
    if kill is not None:
        out["HHALIGN_TEST_KILL"] = kill
    return out


def points(events: Path) -> dict[str, list[str]]:
    """{stage folder: its kill points in order} from an events file."""
    out: dict[str, list[str]] = {}
    for line in events.read_text(encoding="utf-8").splitlines():
        stage, what = line.split("\t", 1)
        out.setdefault(stage, []).append(what)
    return out


def spread(n: int, k: int = 3) -> list[int]:
    """Up to k distinct 1-based kill points from n: the first, the last and evenly between."""
    if n <= k:
        return list(range(1, n + 1))
    return sorted({1 + round(i * (n - 1) / (k - 1)) for i in range(k)})
