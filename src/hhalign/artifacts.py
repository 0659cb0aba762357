"""Run-folder artifacts: atomic writes, hashes, and the manifest every stage writes last.

A file is written to a temporary name beside its target and renamed into place, so a crash never
leaves a half-written artifact; a directory (a saved model) is built under a temporary name and
renamed the same way. A stage folder is complete when its ``manifest.json`` exists (written last, by
``hhalign.engine.work.StageRun.finish``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import threading
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
    except OSError as e:
        if e.filename is None:  # a failed write names no file: name the artifact (the disk-full message shows it)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
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


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each input hashed once per process


def sha256_file(path: str | Path) -> str:
    """The file's sha256, cached by (path, size, mtime): a model folder is read once per run, not once per check."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def sha256_path(path: str | Path) -> str:
    """Hash of a file, or of every file under a directory (names and contents; hidden files and manifests left out)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in _files(path):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".") and q.name != MANIFEST)


def fingerprint(path: str | Path) -> dict[str, int]:
    """What a stat walk tells of a file or folder, without reading it: files, bytes, latest modification (ns)."""
    files = _files(Path(path))
    stats = [f.stat() for f in files]
    return {"files": len(files), "bytes": sum(st.st_size for st in stats), "mtime_ns": max((st.st_mtime_ns for st in stats), default=0)}


def record(path: str | Path) -> dict[str, Any]:
    """An output as its stage's manifest records it: its fingerprint and the sha256 of its content."""
    return {**fingerprint(path), "sha256": sha256_path(path)}


def changed(path: str | Path, recorded: dict[str, Any], full: bool = False) -> str | None:
    """Why ``path`` no longer is the output ``recorded`` (None: it is). Cheap when nothing moved: an unchanged
    fingerprint (files, bytes, latest mtime) is trusted unless ``full``; otherwise the content is hashed, so a file
    merely touched or copied back still counts as the same."""
    path = Path(path)
    if not path.exists():
        return "missing"
    now = fingerprint(path)
    if not full and all(now[k] == recorded.get(k) for k in now):
        return None
    if now["bytes"] != recorded.get("bytes") or now["files"] != recorded.get("files"):
        return f"{now['bytes']:,} bytes in {now['files']} files, recorded {recorded.get('bytes', 0):,} in {recorded.get('files', 0)}"
    return None if sha256_path(path) == recorded.get("sha256") else "content differs from the recorded sha256"


def versions() -> dict[str, str]:
    """Python, the platform and the installed versions of hhalign and the libraries it runs on (nothing imported)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("hhalign", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers", "gguf"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the hhalign checkout in use; None for an installed wheel or without git."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


_interrupted = False


def catch_interrupts() -> None:
    """Make Ctrl-C stick: it raises KeyboardInterrupt as usual and is also remembered.

    Python drops a KeyboardInterrupt that lands while a finalizer or a callback inside a library
    runs ("Exception ignored in ..."), and a run would then go on as if nothing happened. With the
    interrupt remembered, ``stop_if_interrupted`` stops it at the next training step or before the
    next manifest, so a stage interrupted that way is never marked finished.

    SIGTERM (a launcher stopping the other processes of a launch when one fails, Slurm cancelling a job) is
    handled alike, so that writes in progress remove their temporary files and the run says why it stopped.
    """

    def handler(signum: int, frame: Any) -> None:
        global _interrupted
        _interrupted = True
        raise KeyboardInterrupt(signal.Signals(signum).name)  # errors.report says which signal stopped the run

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def stop_if_interrupted() -> None:
    if _interrupted:
        raise KeyboardInterrupt


def read_record(path: str | Path) -> dict[str, Any] | None:
    """A JSON object written by hhalign (a manifest, a start or owner record), or None when it is missing, cut
    short or not an object: such a record counts as absent, so a damaged one is never trusted."""
    try:
        got = read_json(path) if Path(path).is_file() else None
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    return read_record(Path(stage_dir) / MANIFEST)
