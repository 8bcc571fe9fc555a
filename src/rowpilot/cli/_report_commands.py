"""``rowpilot report`` (one self-contained HTML page about a job) and ``rowpilot
dashboard`` (the same page, live, for a job running in another terminal)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rowpilot.cli._app import _example, app
from rowpilot.cli._state_commands import _state_dir


@app.command(
    epilog=_example(
        "rowpilot report .rowpilot/reviews",
        "rowpilot report job.toml -o report.html",
    )
)
def report(
    state: Annotated[str, typer.Argument(help="State directory or job file.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the page (default STATE/report.html)."),
    ] = None,
) -> None:
    """Write one HTML page about a job (opens with no network): its runs, throughput,
    workers, each resource's requests, 429s and limits, cost against the budget and the
    estimate, latency, and the failures with the command to retry them."""
    from rowpilot.report import write_report

    written = write_report(_state_dir(state), output)
    print(f"wrote the report to {written}", file=sys.stderr)


@app.command(
    epilog=_example(
        "rowpilot dashboard .rowpilot/reviews",
        "rowpilot dashboard job.toml --port 8765",
    )
)
def dashboard(
    state: Annotated[str, typer.Argument(help="State directory or job file.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
) -> None:
    """Serve the report of a job, live, on 127.0.0.1 (read-only; the URL carries a random
    access token): for a job running in another terminal, or a finished one. Ctrl-C stops
    it."""
    from rowpilot.errors import StateError
    from rowpilot.report.dashboard import Dashboard
    from rowpilot.state.registry import REGISTRY_FILE

    folder = _state_dir(state)
    if not (folder / REGISTRY_FILE).is_file():
        raise StateError(
            f"no registry in {folder}", hint="give a job's state directory (rowpilot status)"
        )
    server = Dashboard(folder, port=port)
    print(f"dashboard: {server.url} (read-only; Ctrl-C stops it)", file=sys.stderr)
    sys.stderr.flush()
    server.serve_until_interrupted()
