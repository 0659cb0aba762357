"""The ``hhalign-config-keys`` directive: every config key with its default, choices and help, read from the schema
(``hhalign.config.files.key_rows``) when the docs are built. Sphinx has no directive for a dataclass schema; this is
the little it takes."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from hhalign.config.files import key_rows


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


class ConfigKeys(SphinxDirective):
    """One table per top-level section (``data``, ``sft``, ...); top-level keys first."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        sections: dict[str, list[tuple[str, Any, Any, str]]] = {}
        for key, default, choices, help_ in key_rows():
            sections.setdefault(key.split(".")[0] if "." in key else "", []).append((key, default, choices, help_))
        lines: list[str] = []
        for section, rows in sections.items():
            lines += [f".. rubric:: {section or 'top level'}", "", ".. list-table::", "   :header-rows: 1", "   :widths: 25 15 60", "",
                      "   * - key", "     - default", "     - meaning"]
            for key, default, choices, help_ in rows:
                shown = "" if key.endswith(">") else f"``{default!r}``"
                more = f" One of: {', '.join(f'``{c}``' for c in choices)}." if choices else ""
                lines += [f"   * - ``{key}``", f"     - {shown}", f"     - {_cell(help_)}{more}"]
            lines.append("")
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("hhalign-config-keys", ConfigKeys)
    return {"parallel_read_safe": True}
