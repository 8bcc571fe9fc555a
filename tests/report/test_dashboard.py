"""The dashboard (``rowpilot.report.dashboard``): served on 127.0.0.1 only, behind a
random token, read-only, live while a real run goes, stopped with it."""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gated import OPEN, PrintedUrl, gated_run

from conftest import wait_until
from reported_job import Job
from rowpilot.report.dashboard import HOST, Dashboard, serving


def get(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def done_counter(page: str) -> int | None:
    """The page's done counter; None while it waits for the run's first commit."""
    found = re.search(r'data-counter="done"><b>([\d,]+)</b>', page)
    return None if found is None else int(found.group(1).replace(",", ""))


@pytest.fixture
def served(report_job: Job) -> Dashboard:
    dashboard = Dashboard(report_job.state).start()
    yield dashboard  # type: ignore[misc]
    dashboard.stop()


def test_it_listens_on_loopback_with_a_long_random_token(served: Dashboard) -> None:
    assert served._server.server_address[0] == HOST == "127.0.0.1"
    assert len(served.token) >= 40
    other = Dashboard(served.state)
    try:
        assert other.token != served.token and other.port != served.port
    finally:
        other.stop()


def test_without_the_token_nothing_is_served(served: Dashboard) -> None:
    root = f"http://{HOST}:{served.port}"
    assert get(f"{root}/")[0] == 403
    assert get(f"{root}/fragment?token=wrong")[0] == 403
    assert get(f"{root}/?token={served.token[:-1]}")[0] == 403


def test_with_the_token_it_serves_the_page_and_its_body(served: Dashboard) -> None:
    status, page = get(served.url)
    assert status == 200 and page.startswith("<!DOCTYPE html>")
    assert f'data-token="{served.token}"' in page
    status, fragment = get(served.url.replace("/?", "/fragment?"))
    assert status == 200 and '<section id="counters">' in fragment
    assert "<html" not in fragment


def test_it_is_read_only(served: Dashboard) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert get(served.url, method)[0] == 405
    assert get(served.url.replace("/?", "/admin?"))[0] == 404
    connection = http.client.HTTPConnection(HOST, served.port, timeout=30)
    connection.request("HEAD", served.url.split(str(served.port), 1)[1])
    answer = connection.getresponse()
    assert answer.status == 200 and answer.read() == b""
    assert "default-src 'none'" in (answer.getheader("Content-Security-Policy") or "")
    connection.close()


def test_before_the_first_results_it_says_it_waits(tmp_path: Path) -> None:
    dashboard = Dashboard(tmp_path).start()
    try:
        status, page = get(dashboard.url)
        assert status == 200 and "no results yet" in page
    finally:
        dashboard.stop()


def test_run_dashboard_serves_the_run_live_and_stops_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = PrintedUrl(capsys)
    with gated_run(tmp_path, dashboard=True) as run:
        wait_until(lambda: url() is not None, "the dashboard's URL on stderr")
        address = url()
        assert address is not None and address.startswith(f"http://{HOST}:")
        wait_until(lambda: done_counter(get(address)[1]) == OPEN - 1, "the first items")
        run.open_gate(1)  # the second gate stays shut: the run goes on
        wait_until(lambda: done_counter(get(address)[1]) == 2 * OPEN - 1, "the counter to move")
    assert run.result[0].summary.done == 29  # one row fails: the hostile key
    token = address.split("token=", 1)[1]
    for written in run.state.rglob("*"):  # the token is printed once, never stored
        assert not written.is_file() or token.encode() not in written.read_bytes()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(address, timeout=30)  # stopped with the run


def test_serving_disabled_serves_nothing(tmp_path: Path) -> None:
    with serving(tmp_path, enabled=False) as dashboard:
        assert dashboard is None
