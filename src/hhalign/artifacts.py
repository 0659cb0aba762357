"""Run-folder artifacts: atomic writes, hashes, and the manifest every stage writes last.

A file is written to a temporary name beside its target and renamed into place, so a crash never
leaves a half-written artifact; a directory (a saved model) is built under a temporary name and
renamed the same way. A stage folder is complete when its ``manifest.json`` exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hash of a file, or of every file under a directory (names and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("hhalign", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers"):
        mod = sys.modules.get(name)
        if mod is None:
            with contextlib.suppress(Exception):
                mod = __import__(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except Exception:
        return None


_interrupted = False


def catch_interrupts() -> None:
    """Make Ctrl-C stick: it raises KeyboardInterrupt as usual and is also remembered.

    Python drops a KeyboardInterrupt that lands while a finalizer or a callback inside a library
    runs ("Exception ignored in ..."), and a run would then go on as if nothing happened. With the
    interrupt remembered, ``stop_if_interrupted`` stops it at the next training step or before the
    next manifest, so a stage interrupted that way is never marked finished.
    """

    def handler(signum: int, frame: Any) -> None:
        global _interrupted
        _interrupted = True
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def stop_if_interrupted() -> None:
    if _interrupted:
        raise KeyboardInterrupt


def write_manifest(
    stage_dir: str | Path,
    *,
    stage: str,
    config: Any,
    inputs: dict[str, str | Path] | None = None,
    outputs: Iterable[str | Path] = (),
    started: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` last: inputs with hashes, config section, outputs, versions, timings.

    After a Ctrl-C (``catch_interrupts``) it raises KeyboardInterrupt instead: the stage stays unfinished.
    """
    stop_if_interrupted()
    stage_dir = Path(stage_dir)
    outs = []
    for o in outputs:
        p = Path(o)
        p = p if p.is_absolute() else stage_dir / p
        outs.append(str(p.relative_to(stage_dir)) if p.is_relative_to(stage_dir) else str(p))
    manifest = {
        "stage": stage,
        "config": config,
        "inputs": {k: {"path": str(v), "sha256": sha256_path(v) if Path(v).exists() else None} for k, v in (inputs or {}).items()},
        "outputs": sorted(outs),
        "versions": versions(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - started, 3) if started else None,
        **(extra or {}),
    }
    write_json(stage_dir / MANIFEST, manifest)
    return manifest


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return read_json(p)
    except (OSError, json.JSONDecodeError):
        return None
