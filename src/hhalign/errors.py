"""Whose fault it is: errors a user can fix, and how the CLI reports every failure.

A ``UserError`` is a problem the user can fix (a config key, a missing file, a model path that is not a
model, an unreachable hub): its message names the problem and what to do, and the CLI prints it as one
line and exits 2. Anything else raised inside hhalign is a bug (ours or a library's): the CLI prints its
traceback, to the terminal and to run.log, names the stage, and exits 1. Running out of memory is neither:
it gets one line naming the batch-size keys of the stage to lower, with the traceback in run.log, exit 2;
so does a full disk.

This module imports nothing heavy, so ``hhalign metrics`` can catch errors without importing torch.
"""

from __future__ import annotations

import errno
import logging

log = logging.getLogger("hhalign")

EXIT_USER, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A configuration problem, with where it came from (the file or --set), the key and what is allowed."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key  # the dotted config key at fault, when known: it tells a --set value from the file's


class DataError(UserError):
    """The data cannot be read at all (missing source, unreachable hub, nothing usable)."""


class ModelLoadError(UserError):
    """A model or tokenizer cannot be loaded: a path that is not a model, a bad GGUF file, an unreachable hub."""


class TrainingError(UserError):
    """A training stage cannot start (missing input, bad LoRA target, an unsupported combination)."""


class ResponseFileError(UserError, ValueError):
    """A response file or folder that cannot be used, with the file, the entry and what is wrong."""


class PromptFileError(UserError, ValueError):
    """A prompts file that cannot be used, with the file, the entry and what is wrong."""


class MetricsError(UserError, ValueError):
    """Rated responses that cannot be compared: unequal prompt lists, empty or unknown sets."""


def is_out_of_memory(e: BaseException) -> bool:
    """torch's CUDA/MPS out-of-memory errors, Python's MemoryError, and the CPU allocator's failure."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def report(e: BaseException, command: str, stage: str | None = None, memory_keys: tuple[str, ...] = ()) -> int:
    """Log ``e`` the way its kind deserves (see the module docstring) and return the exit code. Logged once:
    a second call for the same exception (the CLI after the pipeline) only returns the code."""
    if hasattr(e, "_hhalign_exit"):
        return e._hhalign_exit  # type: ignore[attr-defined]
    where = f"stage '{stage}'" if stage else f"hhalign {command}"
    if isinstance(e, KeyboardInterrupt):
        how = "interrupted"
        if str(e) == "SIGTERM":  # artifacts.catch_interrupts; a launcher stops every process when one fails
            how = ("stopped by SIGTERM (under a launch: another process failed or the job was cancelled; the launcher's "
                   "report names the rank)")
        log.error(f"hhalign {command}: {how}; finished stages stay valid, run the same command again to resume")
        code = EXIT_INTERRUPTED
    elif isinstance(e, UserError):
        log.error(f"hhalign {command}: error: {e}")
        code = EXIT_USER
    elif isinstance(e, OSError) and e.errno == errno.ENOSPC:
        log.error(f"hhalign {command}: {where} failed: the disk is full ({e}). Free space and run the same command again: "
                  "finished stages stay valid and the run resumes where it stopped")
        code = EXIT_USER
    elif is_out_of_memory(e):
        lower = f": lower {', '.join(memory_keys)} (e.g. --set {memory_keys[0]}=...)" if memory_keys else ""
        log.debug("out of memory", exc_info=e)
        log.error(f"hhalign {command}: {where} ran out of memory ({type(e).__name__}){lower}, then run the same "
                  "command again; finished stages stay valid")
        code = EXIT_USER
    elif isinstance(e, Exception):
        log.error(f"hhalign {command}: {where} failed with an internal error (a bug in hhalign or a library, not in "
                  f"your input): {type(e).__name__}: {e}", exc_info=e)
        code = EXIT_BUG
    else:
        raise e  # SystemExit and the like are not ours to report
    e._hhalign_exit = code  # type: ignore[attr-defined]
    return code
