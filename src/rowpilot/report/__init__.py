"""See a job: ``rowpilot report`` writes one self-contained HTML page about it, and the
dashboard serves the same page live while it runs (docs/report.md).

* ``data``: what the page shows, read from the registry (read-only) and the event logs;
* ``charts``: the charts, matplotlib drawn as inline SVG;
* ``page``: the HTML, every value from the job escaped;
* ``dashboard``: the local, token-guarded, read-only server of the live page.
"""

from __future__ import annotations

from pathlib import Path

from rowpilot.report.data import ReportData, read_report

__all__ = ["ReportData", "read_report", "write_report"]


def write_report(state: Path, output: Path | None = None) -> Path:
    """Write the report of the job in ``state`` to ``output`` (default
    ``STATE/report.html``), atomically; returns where it went."""
    from rowpilot.report.page import render_page
    from rowpilot.sinks.atomic import check_writable, write_text_atomic

    target = output if output is not None else state / "report.html"
    check_writable(target, what="report")
    page = render_page(read_report(state))
    write_text_atomic(target, page)
    return target
