"""glibc's allocator told to keep the memory it has (``tune_allocator``, called once at start by the CLI).

PyTorch on a CPU allocates and frees the same large buffers (activations, gradients, logits) at every step. glibc
hands blocks above its mmap threshold back to the kernel when they are freed and trims the top of the heap, so
the next step faults every page in again: millions of minor page faults and a fifth of the CPU time in the kernel
(measured on the smol preset's SFT, docs/performance.md). PyTorch's CPU performance guide suggests another
allocator (jemalloc, tcmalloc) through LD_PRELOAD, which a user would have to set up; glibc's own ``mallopt`` does
the same job from inside the process, with nothing to install or set. What Python lacks, and is written here, is
the call (``ctypes``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4


def tune_allocator() -> dict[str, bool] | None:
    """Keep freed memory for reuse instead of returning it to the kernel; None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    settings = {
        "trim_threshold": (M_TRIM_THRESHOLD, 2**31 - 1),  # keep up to 2 GiB free at the heap's top (mallopt takes an int)
        "top_pad": (M_TOP_PAD, 2**30),  # grow the heap 1 GiB at a time
        "mmap_threshold": (M_MMAP_THRESHOLD, 32 * 2**20),  # the largest glibc accepts (blocks above it were mmapped)
        "mmap_max": (M_MMAP_MAX, 0),  # and no block mmapped at all: every block comes from the heap and stays there
    }
    # measured, the smol preset's SFT for 4 steps, 2-core AMD EPYC (AVX2), two runs each: glibc's defaults 96 / 99 s
    # of training, 60 / 56 s in the kernel, 10.2M / 9.4M minor faults, 6.30 GB peak; the first three settings alone
    # 89 / 98 s, 36 / 42 s, 5.1M / 6.2M, 6.42 GB; all four 82 / 78 s, 22 / 19 s, 2.0M / 1.7M, 6.83 / 6.66 GB; the
    # same loss each time
    return {name: bool(mallopt(param, value)) for name, (param, value) in settings.items()}
