"""The report's page (``rowpilot.report.page``): self-contained, every value from the job
escaped, its size bounded whatever the job's length; read from a real job's state."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rowpilot
from reported_job import HOSTILE_KEY, MODEL, Job
from rowpilot.errors import StateError
from rowpilot.report import read_report, write_report
from rowpilot.report.data import MAX_FAILURE_ROWS, MAX_POINTS
from rowpilot.report.page import render_fragment, render_page


class Elements(HTMLParser):
    """Every start tag and its attributes, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def parsed(page: str) -> Elements:
    elements = Elements()
    elements.feed(page)
    return elements


def test_the_page_needs_no_network(report_job: Job) -> None:
    page = render_page(read_report(report_job.state))
    elements = parsed(page)
    for tag, attrs in elements.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"(https?:)?//", value), f"<{tag} {name}={value}> loads a URL"
        assert tag not in ("link", "iframe", "img"), f"<{tag}> would load something"
    assert sum(1 for tag, _ in elements.tags if tag == "script") == 1  # the copy button's
    assert "fetch(" not in "".join(elements.scripts)  # only the live page refreshes


def test_the_page_has_every_section_and_chart(report_job: Job) -> None:
    page = render_page(read_report(report_job.state))
    elements = parsed(page)
    sections = {attrs.get("id") for tag, attrs in elements.tags if tag == "section"}
    assert {"counters", "runs", "throughput", "resources", "cost", "latency", "failures"} <= (
        sections
    )
    charts = {attrs.get("data-chart") for tag, attrs in elements.tags if tag == "figure"}
    assert {"throughput", "resource-0", "cost", "latency", "causes"} <= charts
    assert page.count("<svg") == len(charts)
    assert MODEL in page
    retry = next(attrs for tag, attrs in elements.tags if attrs.get("id") == "retry-command")
    assert "readonly" in retry and (retry["value"] or "").endswith("--retry-failed")


def test_a_hostile_key_is_text_never_markup(report_job: Job) -> None:
    page = render_page(read_report(report_job.state))
    assert HOSTILE_KEY not in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page
    scripts = parsed(page).scripts
    assert all("pwned" not in script for script in scripts)


def test_svg_ids_are_unique_in_the_page(report_job: Job) -> None:
    page = render_page(read_report(report_job.state))
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_the_live_page_refreshes_with_its_token(report_job: Job) -> None:
    page = render_page(read_report(report_job.state), live_token="tok-123")
    elements = parsed(page)
    body = next(attrs for tag, attrs in elements.tags if tag == "body")
    assert body["data-token"] == "tok-123"
    assert "fetch('fragment?token='" in "".join(elements.scripts)
    assert render_fragment(read_report(report_job.state)) in page


def test_write_report_writes_the_page_atomically(report_job: Job, tmp_path: Path) -> None:
    target = write_report(report_job.state, tmp_path / "out" / "report.html")
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp left
    assert write_report(report_job.state) == report_job.state / "report.html"


def test_a_folder_without_a_registry_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no registry in"):
        read_report(tmp_path)


@given(st.text(min_size=1, max_size=40))
def test_any_text_in_a_command_is_escaped(text: str) -> None:
    from rowpilot.report.page import _code

    cell = _code(text)
    assert "<" not in cell[len("<code>") : -len("</code>")]
    assert '"' not in cell[len("<code>") : -len("</code>")]


def refuse(row: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"row {row['n']} refused: " + "x" * 200)


def test_the_page_does_not_grow_with_the_job(tmp_path: Path) -> None:
    sizes = []
    for count in (100, 3_000):  # every row fails: the failure table is as full as it gets
        rows = [{"id": f"k{i:05d}", "n": i} for i in range(count)]
        state = tmp_path / f"job-{count}"
        rowpilot.run(refuse, rows, key="id", state=state, keep_going=True, progress=False)
        data = read_report(state)
        assert data.failed == count and len(data.failures) == MAX_FAILURE_ROWS
        assert data.buckets <= MAX_POINTS + 1
        sizes.append(len(render_page(data).encode()))
    assert sizes[1] < sizes[0] * 1.5 and sizes[1] < 2 * 1024 * 1024
