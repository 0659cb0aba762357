"""The errors a user can fix (bad config, data, paths, files): the CLI prints them without a traceback."""

from __future__ import annotations

import sys

# module -> error class names; looked up lazily, so `hhalign metrics` never imports torch just to catch errors
_WHERE = {
    "hhalign.config": ("ConfigError",),
    "hhalign.data": ("DataError",),
    "hhalign.formats": ("DataError",),
    "hhalign.modeling": ("ModelLoadError",),
    "hhalign.responses": ("ResponseFileError", "PromptFileError"),
    "hhalign.metrics": ("MetricsError",),
    "hhalign.train.common": ("TrainingError",),
    "hhalign.pipeline": ("StageFailed",),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """The user-fixable error classes of every hhalign module imported so far (one that raised is imported)."""
    found: list[type[BaseException]] = [FileNotFoundError]
    for module, names in _WHERE.items():
        mod = sys.modules.get(module)
        found += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
    return tuple(found)
