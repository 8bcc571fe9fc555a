"""The live dashboard: the report's page served on 127.0.0.1, refreshing itself.

* **Local and private**: it listens on 127.0.0.1 only, on a free port (or the one asked
  for), and answers only requests that carry its token (``?token=...``, 32 random bytes
  made at start): another user of the machine, or a web page in the browser guessing
  ports, gets 403. The URL printed at start carries the token.
* **Read-only**: GET and HEAD of ``/`` (the page) and ``/fragment`` (its body, which the
  page fetches every ``REFRESH_SECONDS``); any other method is 405, any other path 404.
  Nothing it serves can change the run: it reads the registry read-only and the logs.
* **Cheap**: one drawing is shared by every tab, made again only when it is half a
  refresh period old and five times as old as it took to make (a fifth of a core at
  most), and the logs are read from where the last read stopped.
* **Stops with the run**: ``rowpilot run --dashboard`` stops it when the run ends;
  ``rowpilot dashboard STATE`` serves until interrupted.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rowpilot.errors import ConfigError, RowpilotError
from rowpilot.report.data import LogReader, read_report
from rowpilot.report.page import REFRESH_SECONDS, render_fragment, render_page, render_waiting
from rowpilot.state.registry import REGISTRY_FILE

HOST = "127.0.0.1"


@contextlib.contextmanager
def serving(state: Path, enabled: bool) -> Iterator[Dashboard | None]:
    """``--dashboard``: the live report served while the block runs. The URL carries the
    access token, so it is printed for the user (stderr) and never logged."""
    if not enabled:
        yield None
        return
    dashboard = Dashboard(state).start()
    print(f"dashboard: {dashboard.url} (read-only; stops with the run)", file=sys.stderr)
    sys.stderr.flush()
    try:
        yield dashboard
    finally:
        dashboard.stop()


class Dashboard:
    """Serves the job in ``state``; ``start`` returns at once, ``stop`` ends it."""

    def __init__(self, state: Path, *, port: int = 0) -> None:
        self.state = state
        self.token = secrets.token_urlsafe(32)
        self._logs = LogReader(state / "logs")
        self._lock = threading.Lock()
        self._drawn: tuple[float, str, str] | None = None  # (when, page, fragment)
        self._gap = REFRESH_SECONDS / 2
        try:
            self._server = ThreadingHTTPServer((HOST, port), self._handler())
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the dashboard on {HOST}:{port}: {exc.strerror or exc}",
                hint="choose another --port, or 0 for a free one",
            ) from exc
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def start(self) -> Dashboard:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rowpilot-dashboard", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serving loop: only if one runs
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def serve_until_interrupted(self) -> None:
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    # -- drawing --

    def drawn(self) -> tuple[str, str]:
        """The page and its body, drawn again when the last drawing is old enough: half a
        refresh period, or five times what the last drawing took, so that drawing a large
        job takes a fifth of a core at most, however many tabs poll."""
        with self._lock:
            now = time.monotonic()
            if self._drawn is None or now - self._drawn[0] >= self._gap:
                self._drawn = (now, *self._draw())
                self._gap = max(REFRESH_SECONDS / 2, 5 * (time.monotonic() - now))
            return self._drawn[1], self._drawn[2]

    def _draw(self) -> tuple[str, str]:
        if not (self.state / REGISTRY_FILE).is_file():  # the run's first results not in yet
            message = "no results yet: the page fills in as the run commits its first items"
            return render_waiting(self.state.name, message, self.token)
        data = read_report(self.state, self._logs)
        return render_page(data, live_token=self.token), render_fragment(data)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "rowpilot-dashboard"
            sys_version = ""

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def _refuse(self) -> None:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET only\n", True)

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _answer(self, *, body: bool) -> None:
                url = urlsplit(self.path)
                given = parse_qs(url.query).get("token", [""])[0]
                if not hmac.compare_digest(given.encode(), dashboard.token.encode()):
                    self._send(HTTPStatus.FORBIDDEN, "a token is needed\n", body)
                    return
                if url.path not in ("/", "/fragment"):
                    self._send(HTTPStatus.NOT_FOUND, "not found\n", body)
                    return
                try:
                    page, fragment = dashboard.drawn()
                except RowpilotError as exc:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc}\n", body)
                    return
                self._send(HTTPStatus.OK, page if url.path == "/" else fragment, body, html=True)

            def _send(self, status: HTTPStatus, text: str, body: bool, html: bool = False) -> None:
                data = text.encode("utf-8")
                self.send_response(status)
                kind = "text/html" if html else "text/plain"
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header(
                    "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; "
                    "script-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                )
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return  # the URL carries the token: never in a log

        return Handler
