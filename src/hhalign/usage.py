"""What a stage cost the process: CPU seconds (user, system), page faults and peak memory, for its manifest.

    before = snapshot()            # when the stage begins (it also resets the kernel's peak-memory mark)
    ...
    since(before)                  # {"user_s", "system_s", "minor_faults", "major_faults", "peak_rss_gb"}
                                   # and, where the process computes on a GPU, "gpu_seconds" and "gpu_peak_gb"

``resource.getrusage`` gives the CPU seconds and faults of the process so far, so a stage's are the difference.
Peak memory is per stage where Linux lets a process reset its own high-water mark (writing "5" to
/proc/self/clear_refs, Linux 4.0 and later; then VmHWM in /proc/self/status); elsewhere it is the process's peak
so far (``ru_maxrss``), which the record says. What the standard library lacks, and is written here, is that reset.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def snapshot() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        _CLEAR.write_text("5")
        reset = True
    except OSError:
        reset = False
    gpu = _gpu()
    if gpu is not None:
        gpu.reset_peak_memory_stats()
    return {"user": usage.ru_utime, "system": usage.ru_stime, "minor": usage.ru_minflt, "major": usage.ru_majflt,
            "reset": reset, "at": time.time()}


def _gpu() -> Any:
    """torch.cuda when this process already uses torch and has a GPU (never imports torch itself), else None."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def since(before: dict[str, Any]) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak, scope = _high_water_gb(), "stage"
    if peak is None or not before["reset"]:
        # ru_maxrss: kilobytes on Linux, bytes on macOS
        peak, scope = usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20), "process"
    out = {"user_s": round(usage.ru_utime - before["user"], 1), "system_s": round(usage.ru_stime - before["system"], 1),
           "minor_faults": usage.ru_minflt - before["minor"], "major_faults": usage.ru_majflt - before["major"],
           "peak_rss_gb": round(peak, 2), "peak_of": scope}
    gpu = _gpu()
    if gpu is not None:  # one GPU per process: its seconds are the process's wall seconds in the stage
        out |= {"gpu_seconds": round(time.time() - before.get("at", time.time()), 1), "gpu_peak_gb": round(gpu.max_memory_allocated() / 2**30, 2)}
    return out


def _high_water_gb() -> float | None:
    try:
        line = next(ln for ln in _STATUS.read_text().splitlines() if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 2**20  # kB
