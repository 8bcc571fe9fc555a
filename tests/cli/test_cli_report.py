"""``rowpilot report`` and ``rowpilot dashboard`` as a user types them."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

from conftest import Cli, start_cli
from reported_job import Job


def test_report_writes_the_page_where_asked(cli: Cli, report_job: Job, tmp_path: Path) -> None:
    done = cli("report", str(report_job.state), "-o", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"wrote the report to {tmp_path / 'r.html'}"
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_of_a_folder_without_a_job_is_one_line_exit_2(cli: Cli, tmp_path: Path) -> None:
    for command in ("report", "dashboard"):
        done = cli(command, str(tmp_path / "nothing"))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "no registry in" in done.stderr
        assert "Traceback" not in done.stderr


def test_report_to_an_unwritable_place_is_one_line_exit_2(
    cli: Cli, report_job: Job, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    done = cli("report", str(report_job.state), "-o", str(tmp_path / "file" / "r.html"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


def test_dashboard_serves_until_interrupted(report_job: Job, tmp_path: Path) -> None:
    process = start_cli("dashboard", str(report_job.state), cwd=tmp_path)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # printed at start: the wait is on this line
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200 and b"openai/gpt-4o-mini" in answer.read()
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
        assert process.returncode == 0 and "Traceback" not in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
