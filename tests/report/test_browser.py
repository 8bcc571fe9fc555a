"""The report and the live dashboard in a real browser: Debian's Chromium, driven by
Playwright (its own browser download is never used; ``make test`` installs Chromium).

Where Chromium or Playwright is missing, these tests skip and say why (``-rs`` prints
it); the page's HTML is still checked structurally by test_page.py and test_dashboard.py.
``ROWPILOT_SCREENSHOTS=DIR`` also saves the screenshots there (docs/ keeps two).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gated import HOSTILE, OPEN, PrintedUrl, gated_run

from conftest import wait_until
from reported_job import HOSTILE_KEY, Job
from rowpilot.report import write_report

CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # This machine's network is closed: without these Chromium keeps dialling out.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000  # a hang becomes a failure; nothing is asserted about time


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (make test installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """A page, and every console error and uncaught exception it had."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900}, **context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        shot = tmp_path / name
        self.page.screenshot(path=str(shot), full_page=True)
        keep = os.environ.get("ROWPILOT_SCREENSHOTS")
        if keep:
            shutil.copy(shot, Path(keep) / name)
        return shot


def check_charts(page: Any) -> int:
    """Every chart drawn: an SVG of real size with lines or shapes in it."""
    charts = page.locator("figure.chart svg")
    count = charts.count()
    for index in range(count):
        svg = charts.nth(index)
        box = svg.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 80
        assert svg.locator("path").count() > 10, f"chart {index} drew nothing"
    return count


def test_the_report_of_a_real_run_renders_in_chromium(
    browser: Any, report_job: Job, tmp_path: Path
) -> None:
    page_file = write_report(report_job.state, tmp_path / "report.html")
    watched = Watched(browser, permissions=["clipboard-read", "clipboard-write"])
    page = watched.page
    page.goto(page_file.as_uri())
    assert check_charts(page) >= 5  # throughput, the model, cost, latency, causes
    assert page.locator("section#resources td code").first.inner_text() == "openai/gpt-4o-mini"
    # The hostile key is shown as its text, and ran nothing.
    assert page.locator("section#failures td code", has_text=HOSTILE_KEY).count() == 1
    assert page.evaluate("window.pwned") is None
    # The retry command: in a read-only field, copied by the button.
    command = page.locator("#retry-command").input_value()
    assert command.startswith("rowpilot run ") and command.endswith(" --retry-failed")
    page.locator("#failures button", has_text="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == command
    assert page.locator("[data-counter=done] b").inner_text() == f"{_done(report_job):,}"
    watched.screenshot(tmp_path, "report.png")
    assert watched.errors == []
    watched.context.close()


def _done(job: Job) -> int:
    from rowpilot.report import read_report

    return read_report(job.state).done


def test_the_live_dashboard_moves_in_chromium(
    browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = PrintedUrl(capsys)
    with gated_run(tmp_path, dashboard=True) as run:
        wait_until(lambda: url() is not None, "the dashboard's URL on stderr")
        watched = Watched(browser)
        page = watched.page
        page.goto(str(url()))
        from playwright.sync_api import expect

        counter = page.locator("[data-counter=done] b")
        # The page refreshes itself: the counter reaches the first gate's count, then,
        # once the test opens the gate, the second's, with no reload.
        expect(counter).to_have_text(f"{OPEN - 1}", timeout=WAIT_MS)
        assert page.locator("#state").inner_text() == "live"
        run.open_gate(1)
        expect(counter).to_have_text(f"{2 * OPEN - 1}", timeout=WAIT_MS)
        assert check_charts(page) >= 2  # throughput, cost (a Python task: no resource)
        assert page.locator("section#failures td code", has_text=HOSTILE).count() == 1
        assert page.evaluate("window.pwned") is None
        watched.screenshot(tmp_path, "dashboard.png")
        assert watched.errors == []
        watched.context.close()
