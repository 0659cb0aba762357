"""The errors a user can fix (bad config, data, paths, files): the CLI prints them without a traceback."""

from __future__ import annotations

import importlib


def _collect() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [FileNotFoundError]
    for module, name in (
        ("hhalign.config", "ConfigError"),
        ("hhalign.data", "DataError"),
        ("hhalign.modeling", "ModelLoadError"),
        ("hhalign.responses", "ResponseFileError"),
        ("hhalign.train", "TrainingError"),
        ("hhalign.pipeline", "StageFailed"),
    ):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


USER_ERRORS = _collect()
