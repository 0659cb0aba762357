"""The docs build in strict mode (a broken link, a missing heading anchor or a page outside the toctree fails), the
generated references hold what the code defines, and the README stays a first screen that points into them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hhalign.cli import build_parser
from hhalign.config.files import key_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinxarg", reason="the docs extra (pip install -e '.[dev]') is not installed")
    out = tmp_path_factory.mktemp("docs")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(REPO / "docs"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_docs_build_strictly_with_every_page(built: Path) -> None:
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    assert {p.stem for p in built.glob("*.html")} >= pages


def test_the_cli_reference_lists_every_command_and_option(built: Path) -> None:
    html = (built / "cli.html").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert f"hhalign {name}" in html, name
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in html, (name, flag)


def test_the_config_reference_lists_every_key_with_its_choices(built: Path) -> None:
    text = re.sub(r"<[^>]+>", "", (built / "configuration.html").read_text(encoding="utf-8"))
    for key, _, choices, _ in key_rows():
        if not key.endswith(">"):
            assert key in text, key
        for c in choices or ():
            assert c in text, (key, c)


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    pytest.importorskip("sphinxarg", reason="the docs extra is not installed")
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(REPO / "docs"), str(docs)], check=True)
    with open(docs / "sweeps.md", "a", encoding="utf-8") as fh:
        fh.write("\nSee [the data page](data.md#no-such-heading).\n")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(docs), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no-such-heading" in done.stderr


def test_the_readme_is_a_first_screen_that_points_into_the_docs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 15_000
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((REPO / link).is_file() for link in links), links
