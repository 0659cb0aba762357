"""report.html in a real headless Chromium: hostile model output stays text, and the viewer's filters work.

Chromium is driven over the Chrome DevTools Protocol on a pipe (--remote-debugging-pipe: fd 3 in,
fd 4 out, NUL-separated JSON), so no Python package beyond the standard library is needed.
Debian: `apt-get install chromium`. A screenshot goes to test-artifacts/report.png.

    python -m pytest tests/test_report_browser.py -q
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hhalign.config.schema import MetricsSection, ReportSection
from hhalign.report.build import build

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
HOSTILE = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "</textarea><b>bold?</b>",
]
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-pipe", "--window-size=1400,1000",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not installed (Debian: apt-get install chromium); the browser test needs a real browser")


class Browser:
    """The smallest CDP client: one page, commands by id, events ignored."""

    def __init__(self, exe: str, profile: Path):
        cmd_r, self._to_child = os.pipe()
        self._from_child, out_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. Move our ends above 9, then let
        # bash put them at 3 and 4 (in that order, so no renumbering can clobber the other).
        keep = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, out_w)]
        os.close(cmd_r)
        os.close(out_w)
        wire = f'exec "$0" "$@" 3<&{keep[0]} 4>&{keep[1]} {keep[0]}<&- {keep[1]}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", wire, exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=keep,
        )
        for fd in keep:
            os.close(fd)
        self._buf = b""
        self._next = 0
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(f"no reply to {method} from Chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.js(expression):
                    return
            except RuntimeError:  # the document may not exist yet while the page loads
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r}; console: {self.js('document.title')!r}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (not a synthetic element.click())."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                      " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    def select(self, selector: str, value: str) -> None:
        self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.value = {json.dumps(value)};"
                " e.dispatchEvent(new Event('change', {bubbles: true})); })()")

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)


# ----------------------------------------------------------------------------- fixtures

RATINGS = {  # variant -> (harmful ratings, helpful ratings), 6 prompts each
    "base": ([-4.0, -2.0, -5.0, -1.0, -3.5, -2.5], [-3.0, -1.0, -2.5, 0.5, -4.0, -1.5]),
    "sft": ([-2.0, -2.5, -4.0, -0.5, -2.9, -3.2], [-1.0, 1.0, -2.2, 0.7, -1.9, -2.1]),
    "dpo": ([-3.5, -1.0, -6.0, -2.0, -3.0, -2.0], [-2.5, -1.5, -3.0, 1.0, -2.0, 0.0]),
}


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-variant run (sft_dpo missing) whose base responses to harmful prompts are hostile."""
    src = tmp_path_factory.mktemp("responses")
    for v, (harmful, helpful) in RATINGS.items():
        for s, ratings in (("harmful", harmful), ("helpful", helpful)):
            rows = []
            for i, r in enumerate(ratings):
                text = HOSTILE[i % len(HOSTILE)] if (v, s) == ("base", "harmful") and i < 3 else f"{v} answer {i} to {s}"
                rows.append({"prompt": f"Human: {s} question {i}?", "response": text, "rating": r})
            (src / f"{v}_{s}.json").write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path_factory.mktemp("report")
    build(src, out, ReportSection(formats=["png"]), MetricsSection(bootstrap_samples=200))
    return out / "report.html"


@pytest.fixture(scope="module")
def page(report_html: Path, tmp_path_factory: pytest.TempPathFactory):
    browser = Browser(_chromium(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        browser.open(report_html.as_uri())
        browser.wait_for("document.documentElement.dataset.ready === '1'")
        yield browser
    finally:
        browser.close()


def _rows(page: Browser) -> int:
    return page.js("document.querySelectorAll('#hh-rows .row').length")


# ----------------------------------------------------------------------------- tests


def test_hostile_output_is_text_and_runs_nothing(page: Browser):
    assert page.js("typeof window.__pwned") == "undefined"
    text = page.js("document.getElementById('hh-rows').innerText")
    for s in HOSTILE:
        assert s in text, f"hostile string not shown as text: {s}"
    assert page.js("document.querySelectorAll('#hh-rows img, #hh-rows script, #hh-rows b, #hh-rows textarea').length") == 0
    # Defence in depth: the page's CSP lets only its own script run, so an injected one would not.
    page.js("(() => { const s = document.createElement('script'); s.textContent = 'window.__csp = 1';"
            " document.body.appendChild(s); })()")
    assert page.js("typeof window.__csp") == "undefined"
    # Nothing but data: images is ever loaded.
    assert page.js("performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:')).length") == 0


def test_filters_change_the_rows_shown(page: Browser):
    assert _rows(page) == 12  # 6 harmful + 6 helpful prompts
    assert page.js("document.querySelectorAll('#hh-rows .row')[0].querySelectorAll('.cell').length") == 3
    page.select("#hh-set", "harmful")
    assert _rows(page) == 6
    # harmless (rating > -3) for base among harmful prompts: -2.0, -1.0, -2.5
    page.select("#hh-label", "pos")
    page.select("#hh-label-variant", "base")
    assert _rows(page) == 3
    assert page.js("document.getElementById('hh-count').dataset.total") == "3"
    page.select("#hh-label", "neg")
    assert _rows(page) == 3
    page.select("#hh-label", "all")
    page.select("#hh-set", "all")
    page.click("#hh-variants input[value='dpo']")  # a real click on a checkbox hides the DPO column
    assert page.js("document.querySelector(\"#hh-variants input[value='dpo']\").checked") is False
    assert page.js("document.querySelectorAll('#hh-rows .row')[0].querySelectorAll('.cell').length") == 2
    page.click("#hh-variants input[value='dpo']")
    assert page.js("document.querySelectorAll('#hh-rows .row')[0].querySelectorAll('.cell').length") == 3
    page.js("(() => { const q = document.getElementById('hh-q'); q.value = 'question 3'; q.dispatchEvent(new Event('input')); })()")
    assert _rows(page) == 2
    page.js("(() => { const q = document.getElementById('hh-q'); q.value = ''; q.dispatchEvent(new Event('input')); })()")
    assert _rows(page) == 12


def test_sort_by_rating_change(page: Browser):
    page.select("#hh-set", "helpful")
    page.select("#hh-a", "base")
    page.select("#hh-b", "sft")
    page.select("#hh-sort", "change")
    page.select("#hh-dir", "desc")
    order = page.js("[...document.querySelectorAll('#hh-rows .row')].map(r => +r.dataset.index)")
    base, sft = RATINGS["base"][1], RATINGS["sft"][1]
    expected = sorted(range(6), key=lambda i: (-(sft[i] - base[i]), i))
    assert order == expected
    assert "Δ rating" in page.js("document.querySelector('#hh-rows .row .delta').textContent")
    page.select("#hh-sort", "rating")
    page.select("#hh-dir", "asc")
    order = page.js("[...document.querySelectorAll('#hh-rows .row')].map(r => +r.dataset.index)")
    assert order == sorted(range(6), key=lambda i: (base[i], i))
    page.select("#hh-sort", "order")
    page.select("#hh-set", "all")


def test_missing_note_and_screenshot(page: Browser):
    note = page.js("(document.getElementById('missing') || {}).textContent || ''")
    assert "sft_dpo/harmful" in note and "sft_dpo/helpful" in note
    page.js("window.scrollTo(0, 0)")
    page.screenshot(ARTIFACTS / "report.png")
    page.js("document.getElementById('viewer').scrollIntoView()")
    page.screenshot(ARTIFACTS / "report-viewer.png")
    assert (ARTIFACTS / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_viewer_stays_usable_with_1000_prompts_by_4_variants(page: Browser, tmp_path: Path):
    """Runs last: it points the shared page at a 1,000-prompt report (500 per set, 4 variants)."""
    src, out = tmp_path / "responses", tmp_path / "report"
    src.mkdir()
    for v in ("base", "sft", "dpo", "sft_dpo"):
        for s in ("harmful", "helpful"):
            rows = [{"prompt": f"Human: {s} {i} " + "words " * (i % 300), "response": f"{v} {i} " + "blah " * (i % 40),
                     "rating": ((i * 7919 + len(v)) % 1000) / 125 - 6} for i in range(500)]
            (src / f"{v}_{s}.json").write_text(json.dumps(rows), encoding="utf-8")
    build(src, out, ReportSection(formats=["png"]), MetricsSection(bootstrap_samples=100))
    page.open((out / "report.html").as_uri())
    page.wait_for("document.documentElement.dataset.ready === '1'")
    assert page.js("document.getElementById('hh-count').dataset.total") == "1000"
    assert _rows(page) == 50  # paged
    page.select("#hh-sort", "change")
    page.select("#hh-page-size", "0")  # every row at once: the heaviest view
    page.js("(() => { const e = document.getElementById('hh-set'); e.value = 'helpful'; e.dispatchEvent(new Event('change')); })()")
    assert _rows(page) == 500 and page.js("document.querySelectorAll('#hh-rows .cell').length") == 2000
