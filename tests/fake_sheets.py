"""A small fake of the Google Sheets v4 REST API and Google's OAuth token endpoint, on
127.0.0.1, for the Sheets tests (no network).

What it serves, as the real API does for what rowpilot asks:

* ``POST /token``: the service-account JWT bearer grant (the assertion's RS256 signature is
  checked against the public key of the account's file, so a wrong key is ``invalid_grant``)
  and the authorized-user refresh grant; answers an access token.
* ``GET /v4/spreadsheets/ID``: the spreadsheet's worksheets and their grid sizes.
* ``GET /v4/spreadsheets/ID/values/RANGE`` (and ``values:batchGet``): values,
  ``UNFORMATTED_VALUE`` (numbers and booleans typed) or formatted (every value a string);
  dates as their formatted text with ``dateTimeRenderOption=FORMATTED_STRING``, else as
  serial numbers. Trailing empty cells
  and rows are left out, as the real API does.
* ``POST /v4/spreadsheets/ID/values:batchUpdate``, ``POST .../values/RANGE:append``,
  ``POST .../values/RANGE:clear`` and ``POST /v4/spreadsheets/ID:batchUpdate`` (``addSheet``,
  ``appendDimension``): the writes. A write outside the grid is a 400, as on the real API.

Every API call needs a token the token endpoint issued (else 401), and a spreadsheet in
``forbidden`` answers 403 (not shared with the account). Writes count against a
per-minute quota (``write_quota``) measured on ``clock``; past it a write is answered 429
with ``Retry-After``; ``fail_writes`` makes the next writes fail with the statuses listed
(a 500). Every request is recorded (``requests``) so tests can count them.
``hold_write = N`` applies the Nth ``values.batchUpdate`` and then holds its answer
(``held`` is set) until ``release``: a client killed meanwhile wrote cells it never heard
were written.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Cell = Any  # str, int, float, bool, None or a FakeDate


@dataclass(frozen=True)
class FakeDate:
    """A date cell: shown as ``text``, stored by Sheets as a serial number of days."""

    day: dt.date

    @property
    def serial(self) -> int:
        return (self.day - dt.date(1899, 12, 30)).days

    @property
    def text(self) -> str:
        return self.day.isoformat()


@dataclass
class Worksheet:
    title: str
    sheet_id: int
    rows: list[list[Cell]]
    row_count: int = 1000
    column_count: int = 26

    def cell(self, row: int, column: int) -> Cell:
        if row < len(self.rows) and column < len(self.rows[row]):
            return self.rows[row][column]
        return None

    def put(self, row: int, column: int, value: Cell) -> None:
        while len(self.rows) <= row:
            self.rows.append([])
        line = self.rows[row]
        while len(line) <= column:
            line.append(None)
        line[column] = None if value == "" else value


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int

    @property
    def kind(self) -> str:
        """``token``, ``get``, ``values.get``, ``values.batchGet``, ``values.batchUpdate``,
        ``values.append``, ``values.clear``, ``batchUpdate``."""
        if self.path == "/token":
            return "token"
        if self.path.endswith(":batchUpdate"):
            return "values.batchUpdate" if "/values" in self.path else "batchUpdate"
        if self.path.endswith(":batchGet"):
            return "values.batchGet"
        if self.path.endswith(":append"):
            return "values.append"
        if self.path.endswith(":clear"):
            return "values.clear"
        return "values.get" if "/values/" in self.path else "get"


WRITES = ("values.batchUpdate", "values.append", "values.clear", "batchUpdate")


@dataclass
class FakeSheets:
    """The fake's state; ``url`` is the API root once started (``start``)."""

    write_quota: int = 10_000  # write requests a minute
    retry_after: float = 0.0
    clock: Callable[[], float] = lambda: 0.0
    spreadsheets: dict[str, dict[str, Worksheet]] = field(default_factory=dict)
    public_keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)  # by client email
    refresh_tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    url: str = ""
    forbidden: set[str] = field(default_factory=set)  # spreadsheets not shared: 403
    fail_writes: list[int] = field(default_factory=list)  # statuses the next writes answer
    hold_write: int | None = None  # the Nth values.batchUpdate is applied, then not answered
    held: threading.Event = field(default_factory=threading.Event)  # ... until released
    release: threading.Event = field(default_factory=threading.Event)
    _window: tuple[int, int] = (0, 0)  # (minute, writes in it)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what tests set up and look at --

    def add_sheet(self, spreadsheet: str, title: str, rows: list[list[Cell]]) -> Worksheet:
        sheets = self.spreadsheets.setdefault(spreadsheet, {})
        sheet = Worksheet(title, len(sheets), [list(row) for row in rows])
        sheets[title] = sheet
        return sheet

    def sheet(self, spreadsheet: str, title: str) -> Worksheet:
        return self.spreadsheets[spreadsheet][title]

    def table(self, spreadsheet: str, title: str) -> list[dict[str, Cell]]:
        """The worksheet as rows of ``{header: value}`` (row 1 the header)."""
        rows = self.sheet(spreadsheet, title).rows
        header = [str(name) for name in rows[0]]
        return [
            {name: (row[i] if i < len(row) else None) for i, name in enumerate(header)}
            for row in rows[1:]
        ]

    def count(self, kind: str) -> int:
        return sum(1 for r in self.requests if r.kind == kind and r.status == 200)

    @property
    def rate_limited(self) -> int:
        return sum(1 for r in self.requests if r.status == 429)

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind in WRITES and r.status == 200]

    # -- serving --

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], Any]:
        parsed = urllib.parse.urlsplit(target)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        body: Any = raw.decode() if path == "/token" else (json.loads(raw) if raw else None)
        with self._lock:
            status, extra, answer = self._answer(method, path, query, headers, body)
            recorded = Recorded(method, path, query, body, status)
            self.requests.append(recorded)
            hold = (
                recorded.kind == "values.batchUpdate"
                and status == 200
                and self.count("values.batchUpdate") == self.hold_write
            )
        if hold:
            self.held.set()  # applied: the client never hears so if it dies meanwhile
            self.release.wait(60)
        return status, extra, answer

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
    ) -> tuple[int, dict[str, str], Any]:
        if path == "/token":
            return self._token(body)
        if headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return 401, {}, _error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        found = re.fullmatch(r"/v4/spreadsheets/([^/:]+)(.*)", path)
        if found is None or found.group(1) not in self.spreadsheets:
            return 404, {}, _error(404, "NOT_FOUND", "Requested entity was not found.")
        if found.group(1) in self.forbidden:
            return 403, {}, _error(403, "PERMISSION_DENIED", "The caller does not have permission")
        book, rest = self.spreadsheets[found.group(1)], found.group(2)
        kind = Recorded(method, path, query, body, 0).kind
        if kind in WRITES and self.fail_writes:
            status = self.fail_writes.pop(0)
            return status, {}, _error(status, "INTERNAL", "Internal error encountered.")
        if kind in WRITES and not self._admit_write():
            headers_out = {"Retry-After": f"{self.retry_after:g}"}
            return 429, headers_out, _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
        try:
            return 200, {}, self._route(kind, found.group(1), book, rest, query, body)
        except _ApiError as error:
            return error.status, {}, _error(error.status, "INVALID_ARGUMENT", str(error))

    def _admit_write(self) -> bool:
        minute = int(self.clock() // 60)
        start, used = self._window
        if minute != start:
            start, used = minute, 0
        if used >= self.write_quota:
            self._window = (start, used)
            return False
        self._window = (start, used + 1)
        return True

    def _route(
        self,
        kind: str,
        book_id: str,
        book: dict[str, Worksheet],
        rest: str,
        query: dict[str, list[str]],
        body: Any,
    ) -> Any:
        if kind == "get":
            return _metadata(book_id, book)
        if kind == "values.get":
            return self._values_get(book, rest.removeprefix("/values/"), query)
        if kind == "values.batchGet":
            ranges = query.get("ranges", [])
            return {"valueRanges": [self._values_get(book, a1, query) for a1 in ranges]}
        if kind == "values.batchUpdate":
            for data in body["data"]:
                _write(book, data["range"], data["values"], body["valueInputOption"])
            return {"spreadsheetId": book_id, "totalUpdatedCells": 0}
        if kind == "values.append":
            sheet, _ = _resolve(book, rest.removeprefix("/values/").removesuffix(":append"))
            start = len(sheet.rows)
            for offset, row in enumerate(body["values"]):
                _check_grid(sheet, start + offset, len(row) - 1)
                for column, value in enumerate(row):
                    sheet.put(start + offset, column, value)
            return {"spreadsheetId": book_id}
        if kind == "values.clear":
            sheet, _ = _resolve(book, rest.removeprefix("/values/").removesuffix(":clear"))
            sheet.rows = []
            return {"spreadsheetId": book_id}
        return {"spreadsheetId": book_id, "replies": [_apply(book, r) for r in body["requests"]]}

    def _values_get(self, book: dict[str, Worksheet], a1: str, query: dict[str, list[str]]) -> Any:
        sheet, (top, left, bottom, right) = _resolve(book, a1)
        render = query.get("valueRenderOption", ["FORMATTED_VALUE"])[0]
        dates = query.get("dateTimeRenderOption", ["SERIAL_NUMBER"])[0]
        bottom = min(bottom, len(sheet.rows) - 1)
        values: list[list[Any]] = []
        for row in range(top, bottom + 1):
            width = min(right, len(sheet.rows[row]) - 1)
            values.append(
                [_render(sheet.cell(row, c), render, dates) for c in range(left, width + 1)]
            )
        while values and all(v == "" for v in values[-1]):
            values.pop()
        values = [_trimmed(row) for row in values]
        answer: dict[str, Any] = {"range": a1, "majorDimension": "ROWS"}
        if values:
            answer["values"] = values
        return answer

    def _token(self, form: str) -> tuple[int, dict[str, str], Any]:
        fields = dict(urllib.parse.parse_qsl(form))
        grant = fields.get("grant_type", "")
        if grant == "refresh_token" and fields.get("refresh_token") in self.refresh_tokens:
            return 200, {}, self._issue()
        if grant.endswith("jwt-bearer") and self._signed_by_known_key(fields.get("assertion", "")):
            return 200, {}, self._issue()
        return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}

    def _issue(self) -> dict[str, Any]:
        token = f"fake-access-{len(self.tokens) + 1}"
        self.tokens.add(token)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _signed_by_known_key(self, assertion: str) -> bool:
        try:
            head, claims, signature = assertion.split(".")
            issuer = json.loads(_unb64(claims))["iss"]
            key = self.public_keys[issuer]
            key.verify(
                _unb64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            return False
        return True


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _metadata(book_id: str, book: dict[str, Worksheet]) -> dict[str, Any]:
    sheets = [
        {
            "properties": {
                "sheetId": sheet.sheet_id,
                "title": sheet.title,
                "index": index,
                "sheetType": "GRID",
                "gridProperties": {"rowCount": sheet.row_count, "columnCount": sheet.column_count},
            }
        }
        for index, sheet in enumerate(book.values())
    ]
    return {"spreadsheetId": book_id, "properties": {"title": book_id}, "sheets": sheets}


def _apply(book: dict[str, Worksheet], request: dict[str, Any]) -> dict[str, Any]:
    if "addSheet" in request:
        title = request["addSheet"]["properties"]["title"]
        if title in book:
            raise _ApiError(400, f'A sheet with the name "{title}" already exists.')
        grid = request["addSheet"]["properties"].get("gridProperties", {})
        sheet = Worksheet(
            title,
            max((s.sheet_id for s in book.values()), default=-1) + 1,
            [],
            row_count=grid.get("rowCount", 1000),
            column_count=grid.get("columnCount", 26),
        )
        book[title] = sheet
        return {"addSheet": {"properties": {"sheetId": sheet.sheet_id, "title": title}}}
    if "appendDimension" in request:
        spec = request["appendDimension"]
        sheet = next(s for s in book.values() if s.sheet_id == spec["sheetId"])
        if spec["dimension"] == "COLUMNS":
            sheet.column_count += spec["length"]
        else:
            sheet.row_count += spec["length"]
        return {}
    raise _ApiError(400, f"the fake does not serve {sorted(request)}")


def _write(book: dict[str, Worksheet], a1: str, rows: list[list[Any]], option: str) -> None:
    sheet, (top, left, _, _) = _resolve(book, a1)
    for r, row in enumerate(rows):
        _check_grid(sheet, top + r, left + len(row) - 1)
        for c, value in enumerate(row):
            sheet.put(top + r, left + c, _entered(value) if option == "USER_ENTERED" else value)


def _entered(value: Any) -> Any:
    """USER_ENTERED: text that reads as a number becomes one, as typed into the sheet."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _check_grid(sheet: Worksheet, row: int, column: int) -> None:
    if row >= sheet.row_count or column >= sheet.column_count:
        raise _ApiError(
            400,
            f"Range ('{sheet.title}'!{column_letters(column)}{row + 1}) exceeds grid limits. "
            f"Max rows: {sheet.row_count}, max columns: {sheet.column_count}",
        )


def _render(value: Cell, render: str, dates: str) -> Any:
    if value is None:
        return ""
    if isinstance(value, FakeDate):
        return (
            value.text
            if dates == "FORMATTED_STRING" or render == "FORMATTED_VALUE"
            else value.serial
        )
    if render == "FORMATTED_VALUE":
        return "TRUE" if value is True else "FALSE" if value is False else str(value)
    return value


def _trimmed(row: list[Any]) -> list[Any]:
    while row and row[-1] == "":
        row.pop()
    return row


_A1 = re.compile(r"([A-Z]*)(\d*)")


def _resolve(book: dict[str, Worksheet], a1: str) -> tuple[Worksheet, tuple[int, int, int, int]]:
    """The worksheet and the 0-based (top, left, bottom, right) of ``'Title'!A1:B2``."""
    title, _, cells = a1.rpartition("!") if "!" in a1 else (a1, "", "")
    title = title.strip("'").replace("''", "'")
    if title not in book:
        raise _ApiError(400, f"Unable to parse range: {a1}")
    sheet = book[title]
    if not cells:
        return sheet, (0, 0, 10**9, 10**9)
    first, _, last = cells.partition(":")
    top, left = _corner(first, 0)
    bottom, right = _corner(last or first, 10**9)
    return sheet, (top, left, bottom, right)


def _corner(text: str, open_end: int) -> tuple[int, int]:
    found = _A1.fullmatch(text)
    if found is None:
        raise _ApiError(400, f"Unable to parse range: {text}")
    letters, digits = found.groups()
    column = column_index(letters) if letters else (0 if open_end == 0 else open_end)
    row = int(digits) - 1 if digits else (0 if open_end == 0 else open_end)
    return row, column


def column_index(letters: str) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    return number - 1


def column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSheets

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, extra, answer = self.fake.handle(self.command, self.path, headers, raw)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


def serve(fake: FakeSheets) -> Iterator[FakeSheets]:
    """Run ``fake`` on 127.0.0.1 (a free port) until the generator is closed."""
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def private_key(name: str = "bot") -> rsa.RSAPrivateKey:
    """An RSA key made once per test session (each takes a moment to generate)."""
    if name not in _KEYS:
        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def service_account_file(
    fake: FakeSheets, path: Any, email: str = "bot@test.iam", *, known: bool = True
) -> Any:
    """Write a service-account JSON file whose token_uri is the fake's, with an RSA key the
    fake knows (``known``; else one it has never seen); returns the path."""
    key = private_key("bot" if known else "stranger")
    if known:
        fake.public_keys[email] = private_key("bot").public_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1",
        "token_uri": f"{fake.url}/token",
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path
