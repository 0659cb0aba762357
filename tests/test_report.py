"""The report stage on the study's released responses, on partial and hostile input (no browser).

    python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hhalign.config.schema import MetricsSection, ReportSection
from hhalign.engine.folder import RunFolder
from hhalign.engine.table import stage_dir
from hhalign.errors import UserError
from hhalign.report.build import build
from hhalign.report.html import json_for_script
from hhalign.report.markdown import md_escape

PAPER_RESPONSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper" / "responses"
FIGURES = ("rates", "rates_ci", "ratings_box", "mean_rating", "threshold_sweep_harmful", "threshold_sweep_helpful", "length")
STUDY_ROWS = {  # the study's Table 1 with its mean ratings (shared/data/README.md)
    "Base": "| Base | 42 | 22 | 32 | -3.60 | -2.89 |",
    "SFT": "| SFT | 48 | 56 | 52 | -3.52 | -1.32 |",
    "DPO": "| DPO | 36 | 46 | 41 | -3.58 | -2.35 |",
    "SFT+DPO": "| SFT+DPO | 44 | 66 | 55 | -3.68 | -1.15 |",
}
FAST = MetricsSection(bootstrap_samples=200)
DATA_BLOCK = re.compile(r'<script type="application/json" id="hh-data">(.*?)</script>', re.DOTALL)


def _paper() -> Path:
    if not PAPER_RESPONSES.is_dir():
        pytest.skip(f"the study's released responses are not at {PAPER_RESPONSES}: put shared/ beside the checkout")
    return PAPER_RESPONSES


def _viewer_data(html: str) -> dict:
    blocks = DATA_BLOCK.findall(html)
    assert len(blocks) == 1
    return json.loads(blocks[0])


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("paper_report")
    return out, build(_paper(), out, ReportSection(formats=["png", "svg"]), FAST)


def test_figures_are_valid_png_and_svg(paper_report):
    out, written = paper_report
    for name in FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png in written and svg in written
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert width >= 600 and height >= 400, f"{png.name} is {width}x{height}"
        assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert all(p.is_file() for p in written)
    assert {p.name for p in written} >= {"report.md", "report.html"}
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"


def test_markdown_has_the_study_table_and_working_figure_links(paper_report):
    out, _ = paper_report
    md = (out / "report.md").read_text(encoding="utf-8")
    for row in STUDY_ROWS.values():
        assert row in md
    assert "| Base | 42.0 (29.4–55.8) | 22.0 (12.8–35.2) |" in md  # Wilson intervals
    for section in ("## Paired tests", "## Figures", "## Judge hygiene"):
        assert section in md
    assert "Missing" not in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"{n}.png" for n in FIGURES)
    assert all((out / link).is_file() for link in links)


def test_html_is_self_contained_and_holds_every_response(paper_report):
    out, _ = paper_report
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href|action|srcset)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"url\(|@import", html)
    outside_data = DATA_BLOCK.sub("", html).replace("http-equiv", "")
    assert "http:" not in outside_data and "https:" not in outside_data
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    data = _viewer_data(html)
    assert [v["label"] for v in data["variants"]] == ["Base", "SFT", "DPO", "SFT+DPO"]
    assert len(data["rows"]) == 100
    got = {(row["set"], row["prompt"], v, cell[0], cell[1]) for row in data["rows"] for v, cell in row["r"].items()}
    want = set()
    for f in sorted(_paper().glob("*.json")):
        _, variant, prompt_set = f.stem.split("_")
        variant = {"sftdpo": "sft_dpo"}.get(variant, variant)
        for e in json.loads(f.read_text(encoding="utf-8")):
            want.add((prompt_set, e["prompt"], variant, e["response"], e["rating"]))
    assert len(want) == 400 and got == want
    base_harmful = [row["r"]["base"][2] for row in data["rows"] if row["set"] == "harmful"]
    assert sum(base_harmful) == 21  # 42% of 50 harmless (rating > -3)


def test_partial_input_reports_what_is_missing(tmp_path: Path):
    src = tmp_path / "responses"
    src.mkdir()
    for name in ("1_base_harmful.json", "1_base_helpful.json", "2_sft_harmful.json"):
        shutil.copy(_paper() / name, src / name)
    out = tmp_path / "report"
    written = build(src, out, ReportSection(formats=["png"]), FAST)
    md = (out / "report.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    for missing in ("sft/helpful", "dpo/harmful", "dpo/helpful", "sft\\_dpo/harmful", "sft\\_dpo/helpful"):
        assert missing in md
    assert "Missing:" in md and 'class="missing"' in html and "sft_dpo/helpful" in html
    assert "| Base | 42 | 22 | 32 | -3.60 | -2.89 |" in md
    assert "| SFT | 48 | – | – | -3.52 | – |" in md
    assert (out / "rates.png").is_file() and (out / "threshold_sweep_harmful.png") in written
    assert len(_viewer_data(html)["rows"]) == 100
    # Reruns give identical files (no dates or random ids in figures, md or html).
    again = tmp_path / "again"
    build(src, again, ReportSection(formats=["png"]), FAST)
    for p in written:
        assert (again / p.name).read_bytes() == p.read_bytes(), f"{p.name} differs between two builds"


def test_empty_folder_gives_a_report_that_says_so(tmp_path: Path):
    (tmp_path / "in").mkdir()
    written = build(tmp_path / "in", tmp_path / "out", ReportSection(), FAST)
    assert [p.name for p in written] == ["report.md", "report.html"]
    assert "no response files found" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    with pytest.raises(UserError, match="nope: no such folder"):
        build(tmp_path / "nope", tmp_path / "out", ReportSection(), FAST)


HOSTILE = "</script><script>alert(1)</script> | <img src=x onerror=alert(2)> & *bold* [x](javascript:alert(3))\nnext"


def _hostile_run(tmp_path: Path) -> Path:
    """A run folder: 08_score files with hostile output, metrics.json, data report and run.json."""
    run = tmp_path / "runs" / "hostile"
    (stage_dir(run, "score")).mkdir(parents=True)
    for v in ("base", "sft_dpo"):
        for s in ("harmful", "helpful"):
            rows = [{"prompt": f"Human: q{i} {HOSTILE}", "response": f"{HOSTILE} {i}", "rating": -3.0 + i} for i in range(4)]
            (stage_dir(run, "score") / f"{v}_{s}.json").write_text(json.dumps(rows), encoding="utf-8")
    from hhalign.stats.rates import compute_metrics

    metrics = compute_metrics(RunFolder(run).scored(), FAST)
    metrics["variants"]["base"]["label"] = "Base (from metrics.json)"
    (stage_dir(run, "metrics")).mkdir()
    (stage_dir(run, "metrics") / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (stage_dir(run, "data")).mkdir()
    (stage_dir(run, "data") / "data_report.json").write_text(json.dumps({"pairs": {"train": 123, HOSTILE: 7}}), encoding="utf-8")
    run_info = {"name": HOSTILE, "config_hash": "abc123", "config": {"variants": ["base", "sft_dpo"], "seed": 42},
                "versions": {"torch": "2.13.0"}}
    (run / "run.json").write_text(json.dumps(run_info), encoding="utf-8")
    return run


def test_run_folder_inputs_and_hostile_strings_are_escaped(tmp_path: Path):
    run = _hostile_run(tmp_path)
    out = stage_dir(run, "report")
    build(run, out, ReportSection(formats=["svg"]), FAST)
    md = (out / "report.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    # metrics.json was used (its label), the data report and run.json were read, only the run's variants count.
    assert "Base (from metrics.json)" in md and "Base (from metrics.json)" in html
    assert "pairs.train | 123" in md and "config\\_hash | abc123" in md and "torch | 2.13.0" in md
    assert "Missing" not in md
    assert "![" in md and "rates.svg" in md and not list(out.glob("*.png"))
    # Markdown: no raw tag, no link, no emphasis, no extra cell or line from the hostile text.
    assert "<script" not in md and "<img" not in md
    assert not re.search(r"(?<!\\)\]\(javascript", md) and "\\[x\\](javascript" in md
    assert md_escape(HOSTILE) in md
    assert all(line.count("|") - line.count("\\|") == 3 for line in md.splitlines() if line.startswith("| pairs."))
    # HTML: exactly the template's two script elements, the hostile text only escaped or in the JSON block.
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "<img src=x" not in html and "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    data = _viewer_data(html)
    assert data["rows"][0]["r"]["base"][0] == f"{HOSTILE} 0" and data["rows"][0]["prompt"] == f"Human: q0 {HOSTILE}"


def test_escaping_helpers():
    assert md_escape("a|b\nc") == "a\\|b<br>c"
    assert md_escape("<0.001") == "<0.001"
    assert md_escape("<b>&amp;") == "&lt;b&gt;&amp;amp;"
    text = json_for_script({"s": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"s": "</script><!-- & \u2028"}
