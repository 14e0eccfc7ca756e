"""`report.html` laid out by a real browser at 1400 and 800 px: charts fill the width, text
stays readable, nothing scrolls sideways.

Headless Chromium (Debian's `chromium`, which `.ci/run` installs) loads a copy of the
page with a measuring script appended (the report itself has none) and `--dump-dom`
prints the figures the script wrote. Without Chromium the test fails, unless
RELAY_TEST_NO_BROWSER=1 says to skip it on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from loadtest import html

from .synthetic import build

CHROMIUM = Path("/usr/bin/chromium")
MIN_FONT_PX = 9.0
BROWSER_TIMEOUT = 60

# Chart widths against the body's content box, the smallest rendered chart text, and
# whether the page is wider than the window.
MEASURE = """
<script>
const body = document.body;
const style = getComputedStyle(body);
const content = body.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const charts = [...document.querySelectorAll('svg')].map(svg => {
  const scale = svg.getScreenCTM().a;
  const sizes = [...svg.querySelectorAll('text')]
    .map(t => parseFloat(getComputedStyle(t).fontSize));
  return {label: svg.getAttribute('aria-label'), width: svg.getBoundingClientRect().width,
          smallestFontPx: Math.min(...sizes) * scale};
});
const layout = {content, charts, window: document.documentElement.clientWidth,
                scrollWidth: document.documentElement.scrollWidth};
const out = document.createElement('pre');
out.id = 'layout';
out.textContent = JSON.stringify(layout);
body.appendChild(out);
</script>
"""


@pytest.fixture
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("RELAY_TEST_NO_BROWSER") == "1":
        pytest.skip("no /usr/bin/chromium and RELAY_TEST_NO_BROWSER=1")
    pytest.fail(
        "the layout test needs Debian's chromium (/usr/bin/chromium): "
        "`apt-get install -y chromium`, or set RELAY_TEST_NO_BROWSER=1 to skip it on purpose",
        pytrace=False,
    )


class _LayoutText(HTMLParser):
    """The text of `<pre id="layout">` in the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside = tag == "pre" and ("id", "layout") in attrs

    def handle_endtag(self, tag: str) -> None:
        self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data


def _layout(chromium: Path, page: Path, width: int, profile: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            str(chromium),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parser = _LayoutText()
    parser.feed(done.stdout)
    assert parser.text, "the measuring script wrote nothing:\n" + done.stderr[-2000:]
    result: dict[str, Any] = json.loads(parser.text)
    return result


@pytest.mark.parametrize("width", [1400, 800])
def test_charts_fill_the_width_and_stay_readable(
    chromium: Path, tmp_path: Path, width: int
) -> None:
    page = tmp_path / "report.html"
    page.write_text(html.render(build()).replace("</body>", MEASURE + "</body>"), "utf-8")
    layout = _layout(chromium, page, width, tmp_path / "profile")
    assert layout["window"] == width
    assert layout["scrollWidth"] <= layout["window"], "the page scrolls sideways"
    assert layout["content"] >= width - 100, layout["content"]
    charts = layout["charts"]
    assert len(charts) >= 7
    for chart in charts:
        assert abs(chart["width"] - layout["content"]) <= 1, chart
        assert chart["smallestFontPx"] >= MIN_FONT_PX, chart
