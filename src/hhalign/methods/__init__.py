"""The training methods a variant can declare (``method:``), one module each: ``train(variant, cfg, run_dir, ins,
resume)`` turns (the start model, the run's pairs, the variant's section) into a saved model or adapter with its
train_report.json. The stage that runs them is ``hhalign.stages.train``; a new method is a module here and a
section in ``hhalign.config.schema`` (its name in ``METHODS``), and touches neither the stage table, the pipeline,
generation, scoring, metrics nor the report.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hhalign.config.schema import METHODS


def module(method: str) -> ModuleType:
    """The module of a method (``hhalign.methods.<method>``)."""
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return importlib.import_module(f"hhalign.methods.{method}")
