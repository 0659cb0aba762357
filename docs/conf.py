"""Sphinx configuration of hhalign's docs: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

Pages are Markdown (MyST). The CLI reference is generated from ``hhalign.cli.build_parser`` (sphinx-argparse) and
the configuration reference from the config schema (``_ext/hhalign_docs.py``), so neither can drift from the code.
Built in strict mode: every warning (a broken cross-reference, a page left out of the toctree) fails the build.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "hhalign"
author = "hhalign developers"
extensions = ["myst_parser", "sphinxarg.ext", "hhalign_docs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 4  # [text](page.md#a-heading) links resolve, and are checked
suppress_warnings: list[str] = []
nitpicky = False  # Python object references are not used; Markdown links and the toctree are checked
html_theme = "alabaster"
html_title = "hhalign"
