"""report.html: one self-contained file (offline, no external URL) with the report and a response viewer.

The tables and figures are rendered here, every string through ``html.escape``; the figures are
embedded as base64 PNG. The viewer's data is one JSON document in a
``<script type="application/json">`` block, with ``<``, ``>`` and ``&`` written as ``\\u003c``
etc., so model output such as ``</script>`` cannot end the block; the template's script builds
the rows with ``textContent`` only. A Content-Security-Policy allows only the template's own
script (by hash), inline styles and data: images, so nothing else can load or run even if a
string did get through.

    text = render_html(report)
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from importlib import resources
from typing import Any

from hhalign.config.schema import PROMPT_SETS
from hhalign.report.markdown import (
    SECTION_TITLES,
    Report,
    Table,
    caveat_texts,
    missing_text,
    numeric_columns,
    tables,
    thresholds_text,
)
from hhalign.report.plots import SET_POSITIVE, label, variant_colors, variant_order

_NEGATIVE = {"harmful": "harmful", "helpful": "unhelpful"}
_PLACEHOLDER = re.compile(r"__HHALIGN_(CSP|TITLE|BODY|DATA)__")
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element: no <, >, & (so no </script> or <!--), no U+2028/9."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, rep)
    return text


# ----------------------------------------------------------------------------- viewer data


def _finite(x: Any) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def viewer_data(report: Report) -> dict[str, Any]:
    """Rows of {set, i, prompt, r: {variant: [response, rating, positive]}}, one row per prompt.

    Variants' entries are matched by prompt text (and occurrence, for repeated prompts), so files in
    different orders still line up; a prompt only some variants answered gets a row all the same.
    """
    variants = variant_order(report.data)
    colors = variant_colors(variants)
    th = report.metrics.get("thresholds") or {}
    present = {s for v in variants for s in report.data[v]}
    sets = [s for s in PROMPT_SETS if s in present] + sorted(present - set(PROMPT_SETS))
    rows: list[dict[str, Any]] = []
    for s in sets:
        index: dict[tuple[str, int], dict[str, Any]] = {}
        for v in variants:
            seen: dict[str, int] = {}
            for entry in report.data[v].get(s) or []:
                prompt = str(entry.get("prompt", ""))
                k = seen[prompt] = seen.get(prompt, -1) + 1
                row = index.get((prompt, k))
                if row is None:
                    row = index[prompt, k] = {"set": s, "i": len(index), "prompt": prompt, "r": {}}
                    rows.append(row)
                rating, cut = _finite(entry.get("rating")), _finite(th.get(s))
                pos = None if rating is None or cut is None else rating > cut
                row["r"][v] = [str(entry.get("response", "")), rating, pos]
    for n, row in enumerate(rows):
        row["n"] = n
    return {
        "variants": [{"key": v, "label": label(v, report.metrics), "color": colors[v]} for v in variants],
        "sets": {s: {"pos": SET_POSITIVE.get(s, "positive"), "neg": _NEGATIVE.get(s, "negative"),
                     "threshold": _finite(th.get(s))} for s in sets},
        "rows": rows,
    }


# ----------------------------------------------------------------------------- static part


def html_table(t: Table) -> str:
    numeric = numeric_columns(t)
    head = "".join(f"<th>{esc(h)}</th>" if numeric[i] else f'<th class="text">{esc(h)}</th>' for i, h in enumerate(t.header))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" if numeric[i] else f'<td class="text">{esc(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in t.rows
    )
    parts = [f"<h3>{esc(t.title)}</h3>"]
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" if t.rows else "<p>(no rows)</p>")
    if t.note:
        parts.append(f'<p class="note">{esc(t.note)}</p>')
    return "\n".join(parts)


def _figures_html(report: Report) -> str:
    if not report.figures:
        return ""
    figs = []
    for f in report.figures:
        data = base64.b64encode(f.png).decode("ascii")
        figs.append(f'<figure id="fig-{esc(f.name)}"><img alt="{esc(f.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(f.caption)}</figcaption></figure>")
    return '<section id="figures"><h2>Figures</h2><div class="figs">' + "\n".join(figs) + "</div></section>"


def render_body(report: Report) -> str:
    sections = tables(report)
    nav = [("results", "Results"), ("safety", "Safety"), ("treatments", "Treatments"), ("judge", "The judge"), ("figures", "Figures"), ("paired", "Paired tests"),
           ("length", "Length"), ("hygiene", "Judge hygiene"), ("data", "Data"), ("run", "Run"), ("viewer", "Responses")]
    have = set(sections) | ({"figures"} if report.figures else set()) | {"viewer"}
    out = [f"<h1>hhalign report: {esc(report.title)}</h1>", f'<p class="meta">Source: {esc(report.source)}</p>']
    if thresholds_text(report.metrics):
        out.append(f'<p class="meta">{esc(thresholds_text(report.metrics))}</p>')
    for text in caveat_texts(report):
        out.append(f'<div class="caveat" role="alert"><strong>{esc(text)}</strong></div>')
    if report.missing:
        out.append(f'<div class="missing" id="missing" role="note"><strong>{esc(missing_text(report.missing))}</strong></div>')
    out.append('<nav class="toc">' + "".join(f'<a href="#{k}">{t}</a>' for k, t in nav if k in have) + "</nav>")
    for name in ("results", "safety", "treatments", "judge", "figures", "paired", "length", "hygiene", "data", "run"):
        if name == "figures":
            out.append(_figures_html(report))
        elif name in sections:
            body = "\n".join(html_table(t) for t in sections[name])
            out.append(f'<section id="{name}"><h2>{SECTION_TITLES[name]}</h2>\n{body}</section>')
    return "\n".join(o for o in out if o)


# ----------------------------------------------------------------------------- assembly


def _template() -> str:
    return resources.files("hhalign.report").joinpath("template.html").read_text(encoding="utf-8")


def _csp(template: str) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode("utf-8")).digest()).decode("ascii") + "'"
        for m in _SCRIPT.findall(template)
    )
    return (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'")


def render_html(report: Report) -> str:
    template = _template()
    values = {
        "CSP": esc(_csp(template)),
        "TITLE": esc(f"hhalign report: {report.title}"),
        "BODY": render_body(report),
        "DATA": json_for_script(viewer_data(report)),
    }
    # One pass over the template only: a placeholder-like string inside the data is never substituted.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
