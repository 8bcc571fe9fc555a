"""Google Sheets as an output: the write-back of a run's outputs into its source worksheet
(``--write-back``), and ``rowpilot export STATE --to gsheet://ID/WORKSHEET``.

**The write-back** is a live sink: ``start`` runs a writer thread beside the run, which
polls the registry (its own read-only SQLite connection) for items done since it last
looked, and ``write`` (after the run) writes whatever is still missing. The rules:

* **Batched**: one ``values.batchUpdate`` per ``write_batch`` rows, or sooner once the
  first row waiting has waited ``write_interval`` seconds. Each batch first reads the
  header row and the key column (one ``values.batchGet``), then the batch's target cells
  (a second), then writes. Reads are not paced (their quota is separate and larger).
* **By key, never by row number**: each batch finds its rows by reading the header row
  (``--header-row``, else row 1) and the key column at write time, so rows sorted,
  inserted or deleted between or during runs get their own outputs. A key no longer in
  the sheet is reported and written by a later run if it comes back.
* **Columns**: an output field with no column gets a header cell at the right of the last
  one (the grid is widened first if it is full). The write is ``RAW``: a text starting with
  ``=`` stays text, never a formula. Lists and objects are written as JSON text, None as
  an empty cell.
* **Acknowledged or not at all**: the ledger (``writeback.sqlite`` in the state folder:
  per worksheet, each key with a digest of the output written and the cells written) is
  written only after the batchUpdate's answer. A kill -9 at any point loses nothing: the
  next run (even one with every item done) writes what the ledger lacks, and never writes
  again what it holds. A batch written but not yet recorded when the process died is
  found in place (each cell already holds its value) and only recorded.
* **Hand edits win**: a cell is written only if it is empty, already holds the value, or
  holds what rowpilot last wrote there (the ledger). Any other value was typed by
  someone: it is left, reported as a warning and in the run's summary line.
* **Pacing**: every write request (values and structure) takes a permit of one
  ``Resource`` (``llm/limits.py``: the run's limiter, FIFO and adaptive) at
  ``sheets_write_rpm`` (default 60 a minute, the API's quota per user). A 429 pauses it
  for the server's ``Retry-After`` and slows it, and the request is sent again; a 5xx or
  a broken connection is retried with the engine's backoff (``RetryPolicy``).

**The input rule.** The next run reads the sheet again, now with the output columns in it:
the source leaves out the task's output fields and every column the ledger says a
write-back wrote (``owned_columns``), so the inputs (and every item's fingerprint) stay
what they were, and a second run makes no new call.

**The export** writes the job's whole table (the input columns, then the output fields,
as ``export -o table.csv`` does) to a new worksheet, or over an existing one with
``--replace`` (cleared first), ``write_batch`` rows a request, paced the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot._gsheet import (
    SheetsClient,
    column_letters,
    is_sheet_target,
    parse_target,
    quoted_title,
    require_gspread,
)
from rowpilot.engine.events import warn
from rowpilot.engine.items import is_vector, key_text
from rowpilot.engine.retry import RetryPolicy
from rowpilot.errors import ConfigError, ProviderError, RateLimitError
from rowpilot.llm.limits import Limits, Resource
from rowpilot.sinks.base import SinkOptions
from rowpilot.sinks.exports import table_layout
from rowpilot.sources.base import Source
from rowpilot.sources.gsheet import GsheetSource
from rowpilot.state.writeback import DoneItems, Ledger, owned_columns

if TYPE_CHECKING:
    from rowpilot.state.registry import Registry

POLL_SECONDS = 0.2  # how often the writer looks at the registry during a run
RANGES_A_READ = 100  # a values.batchGet's ranges are query parameters: keep the URL short
_SERVER_ATTEMPTS = 5


# -- values ----------------------------------------------------------------------------------


def cell_value(value: Any) -> Any:
    """An output value as a cell: numbers, booleans and text as they are, None empty,
    anything else (lists, objects, vectors) as JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if is_vector(value):
        value = [float(x) for x in value]
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def same_cell(current: Any, wanted: Any) -> bool:
    """Whether a cell read back (UNFORMATTED_VALUE) holds ``wanted``."""
    if current in ("", None) or wanted in ("", None):
        return current in ("", None) and wanted in ("", None)
    if isinstance(current, bool) or isinstance(wanted, bool):
        return current is wanted
    if isinstance(current, int | float) and isinstance(wanted, int | float):
        return math.isclose(current, wanted, rel_tol=1e-12, abs_tol=0.0)
    return bool(current == wanted)


def output_digest(cells: Mapping[str, Any]) -> str:
    text = json.dumps(cells, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sheet_identity(spreadsheet: str, sheet_id: int) -> str:
    return f"{spreadsheet}#{sheet_id}"


def leave_out_written_columns(source: Source, state: Path, also: Iterable[str] = ()) -> None:
    """Keep the columns the job's earlier write-backs wrote to this worksheet (its ledger in
    ``state``), and ``also``, out of a sheet source's rows (the input rule above); any
    other source is left as it is."""
    if isinstance(source, GsheetSource):
        sheet = sheet_identity(source.target.spreadsheet, source.sheet_id)
        source.exclude_columns([*also, *owned_columns(state, sheet)])


# -- pacing ----------------------------------------------------------------------------------


class Pacer:
    """Sends write requests under the write quota, on its own event loop (one thread)."""

    def __init__(self, rpm: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = asyncio.new_event_loop()
        self._resource = Resource(
            "sheets/writes", Limits(rpm=rpm), learn=False, clock=clock, burst_seconds=1.0
        )
        self._retry = RetryPolicy(max_attempts=_SERVER_ATTEMPTS, base_delay=1.0, max_delay=30.0)
        self.rate_limited = 0
        self.sent = 0

    def send(self, request: Callable[[], Any]) -> Any:
        return self._loop.run_until_complete(self._send(request))

    async def _send(self, request: Callable[[], Any]) -> Any:
        failures = 0
        while True:
            async with self._resource.slot(0) as permit:
                try:
                    answer = request()
                except RateLimitError as error:
                    self.rate_limited += 1
                    permit.rate_limited(error.retry_after)
                    continue  # not an attempt: the resource waits and slows down
                except ProviderError as error:
                    failures += 1
                    if not self._retry.should_retry(error, failures):
                        raise
                    delay = self._retry.delay(failures, at_least=error.retry_after or 0.0)
                else:
                    permit.settle()
                    self.sent += 1
                    return answer
            await asyncio.sleep(delay)

    def close(self) -> None:
        self._loop.close()


# -- one batch -------------------------------------------------------------------------------


@dataclass
class Report:
    written: int = 0  # rows with at least one cell written
    unchanged: int = 0  # rows whose cells already held their values
    edited: list[str] = field(default_factory=list)  # "key K column C" left as edited
    missing: list[str] = field(default_factory=list)  # keys not in the sheet

    def line(self, target: str) -> str:
        parts = [f"{self.written:,} rows written"]
        if self.unchanged:
            parts.append(f"{self.unchanged:,} already in place")
        if self.edited:
            parts.append(f"{len(self.edited):,} cells left as edited by hand ({self.edited[0]}...)")
        if self.missing:
            parts.append(f"{len(self.missing):,} keys not in the sheet ({self.missing[0]}...)")
        return f"write-back: {target} ({', '.join(parts)})"


class SheetWriter:
    """Writes items' outputs into one worksheet by key (module docstring's rules)."""

    def __init__(
        self,
        client: SheetsClient,
        state: Path,
        key_column: str,
        pacer: Pacer,
        header_row: int | None = None,
    ) -> None:
        self.client = client
        self.key_column = key_column
        self.header_row = header_row or 1
        self.pacer = pacer
        properties = client.worksheet()
        self.title = str(properties["title"])
        self.sheet_id = int(properties["sheetId"])
        self.width = int(properties.get("gridProperties", {}).get("columnCount", 26))
        self.ledger = Ledger(state, sheet_identity(client.target.spreadsheet, self.sheet_id))
        self.report = Report()
        self._key_at: int | None = None

    def pending(self, outputs: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The items whose cells the ledger does not hold yet."""
        cells = {key: {n: cell_value(v) for n, v in out.items()} for key, out in outputs.items()}
        known = self.ledger.written(list(cells))
        return {k: c for k, c in cells.items() if known.get(k, ("",))[0] != output_digest(c)}

    def write(self, items: Mapping[str, dict[str, Any]]) -> None:
        """Write one batch of ``key -> cells`` (from ``pending``)."""
        if not items:
            return
        header, rows = self._locate()
        columns = list(dict.fromkeys(name for cells in items.values() for name in cells))
        new = [name for name in columns if name not in header]
        header = [*header, *new]
        place = {name: header.index(name) for name in columns}
        found = {key: rows[key] for key in items if key in rows}
        self.report.missing += [key for key in items if key not in rows]
        # New columns too: cells below an empty header cell may hold someone's data. Columns
        # past the grid have no cells yet.
        current = self._current(found, [place[c] for c in columns if place[c] < self.width])
        last = self.ledger.written(list(found))
        data, entries = self._plan(items, found, place, current, last)
        if new:
            self._widen(len(header))
            start = len(header) - len(new)
            data.insert(0, self._range(self.header_row, start, [new]))
        if data:
            self.pacer.send(lambda: self.client.write(data))
        self.ledger.record(entries, columns)

    def _plan(
        self,
        items: Mapping[str, dict[str, Any]],
        found: Mapping[str, int],
        place: Mapping[str, int],
        current: Mapping[tuple[int, int], Any],
        last: Mapping[str, tuple[str, dict[str, Any]]],
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, dict[str, Any]]]]:
        data: list[dict[str, Any]] = []
        entries: list[tuple[str, str, dict[str, Any]]] = []
        for key, row in found.items():
            cells = items[key]
            before = last.get(key, ("", {}))[1]
            kept = dict(before)
            wrote = False
            for name, wanted in cells.items():
                column = place[name]
                now = current.get((row, column), "")
                if same_cell(now, wanted):
                    kept[name] = wanted
                elif now in ("", None) or (name in before and same_cell(now, before[name])):
                    data.append(self._range(row, column, [[wanted]]))
                    kept[name] = wanted
                    wrote = True
                else:
                    where = f"key {key!r} column {name!r} ({column_letters(column)}{row})"
                    self.report.edited.append(where)
                    warn(f"{self.client.target}: {where} was edited by hand; left as it is")
            self.report.written += wrote
            self.report.unchanged += not wrote
            entries.append((key, output_digest(cells), kept))
        return data, entries

    def _locate(self) -> tuple[list[str], dict[str, int]]:
        """The header and each key's sheet row (1-based), read now."""
        sheet = quoted_title(self.title)
        ranges = [f"{sheet}!{self.header_row}:{self.header_row}"]
        if self._key_at is not None:
            letter = column_letters(self._key_at)
            ranges.append(f"{sheet}!{letter}:{letter}")
        found = self.client.values_batch(ranges)
        header = [str(name) for name in (found[0][0] if found and found[0] else [])]
        if self.key_column not in header:
            raise ConfigError(
                f"the key column {self.key_column!r} is no longer in the worksheet",
                file=str(self.client.target),
                hint="put the column back, or run without --write-back",
            )
        at = header.index(self.key_column)
        if at != self._key_at or len(found) < 2:
            self._key_at = at  # moved (or first look): read the key column where it is now
            letter = column_letters(at)
            found = [found[0], *self.client.values_batch([f"{sheet}!{letter}:{letter}"])]
        rows: dict[str, int] = {}
        seen_twice: set[str] = set()
        below = found[1][self.header_row :]  # the key column read from row 1
        for number, cells in enumerate(below, start=self.header_row + 1):
            key = key_text(cells[0]) if cells else None
            if key is None or key == "":
                continue
            if key in rows:
                seen_twice.add(key)
            rows[key] = number
        for key in seen_twice:  # which row is meant is not known: neither is written
            del rows[key]
        return header, rows

    def _current(
        self, found: Mapping[str, int], columns: Sequence[int]
    ) -> dict[tuple[int, int], Any]:
        if not found or not columns:
            return {}
        left, right = min(columns), max(columns)
        sheet = quoted_title(self.title)
        span = f"{column_letters(left)}{{row}}:{column_letters(right)}{{row}}"
        rows = list(found.values())
        answers: list[list[list[Any]]] = []
        for start in range(0, len(rows), RANGES_A_READ):  # the ranges ride in the URL
            part = rows[start : start + RANGES_A_READ]
            answers += self.client.values_batch([f"{sheet}!" + span.format(row=r) for r in part])
        current: dict[tuple[int, int], Any] = {}
        for row, values in zip(rows, answers, strict=False):
            cells = values[0] if values else []
            for offset, value in enumerate(cells):
                current[(row, left + offset)] = value
        return current

    def _widen(self, columns: int) -> None:
        if columns <= self.width:
            return
        more = columns - self.width
        request = {
            "appendDimension": {"sheetId": self.sheet_id, "dimension": "COLUMNS", "length": more}
        }
        self.pacer.send(lambda: self.client.structure([request]))
        self.width = columns

    def _range(self, row: int, column: int, values: list[list[Any]]) -> dict[str, Any]:
        a1 = f"{quoted_title(self.title)}!{column_letters(column)}{row}"
        return {"range": a1, "values": values}

    def close(self) -> None:
        self.ledger.close()


# -- the live sink ---------------------------------------------------------------------------


class GsheetWriteBack:
    """``--write-back``: outputs into the source worksheet, as items finish."""

    def __init__(self, target: str, options: SinkOptions) -> None:
        self.name = target
        self.options = options
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._finish = threading.Event()
        self._versions: frozenset[str] = frozenset()
        self._error: BaseException | None = None
        self._report: Report | None = None
        self._state: Path | None = None

    def check(self) -> None:
        require_gspread(self.name)
        if not is_sheet_target(self.name):
            raise ConfigError(
                "--write-back writes into a Google Sheets source",
                file=self.name,
                hint="read from gsheet://SPREADSHEET_ID/WORKSHEET, or drop --write-back",
            )
        parse_target(self.name)
        if self.options.key_column is None:
            raise ConfigError(
                "a write-back finds its rows by key: rows may be sorted or inserted",
                file=self.name,
                hint="pass --key with the column that names each row",
            )

    def start(self, state: Path, version: str) -> None:
        """Write items as they are done, on a thread, until ``write`` or ``stop``."""
        self._state = state
        self._versions = frozenset([version])
        self._thread = threading.Thread(target=self._work, name="rowpilot-write-back", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread without the final pass (the run failed); idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def write(self, registry: Registry) -> str:
        """Write every current done item the ledger lacks; the summary's line."""
        self._versions = registry.current_versions()
        if self._thread is None:
            self.start(registry.directory, "")
            self._versions = registry.current_versions()
        self._finish.set()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report.line(self.name)

    def _work(self) -> None:
        try:
            self._report = self._loop()
        except BaseException as error:
            self._error = error

    def _loop(self) -> Report:
        assert self._state is not None
        client = SheetsClient(parse_target(self.name), self.options.credentials)
        pacer = Pacer(self.options.write_rpm)
        key = str(self.options.key_column)
        writer = SheetWriter(client, self._state, key, pacer, self.options.header_row)
        done = DoneItems(self._state)
        try:
            waiting: dict[str, dict[str, Any]] = {}
            since = 0.0
            while not self._stop.is_set():
                finishing = self._finish.is_set()
                waiting.update(writer.pending(done.since(self._versions)))
                if waiting and not since:
                    since = time.monotonic()  # the first row waiting: the interval starts
                due = waiting and time.monotonic() - since >= self.options.write_interval
                while len(waiting) >= self.options.write_batch or (due and waiting):
                    writer.write(_take(waiting, self.options.write_batch))
                    since = time.monotonic() if waiting else 0.0
                    due = False
                if finishing:
                    everything = writer.pending(done.every(self._versions))
                    for batch in _batches(everything, self.options.write_batch):
                        writer.write(batch)
                    break
                self._finish.wait(POLL_SECONDS)
            return writer.report
        finally:
            writer.close()
            done.close()
            pacer.close()


def _take(waiting: dict[str, dict[str, Any]], count: int) -> dict[str, dict[str, Any]]:
    keys = list(waiting)[:count]
    return {key: waiting.pop(key) for key in keys}


def _batches(items: dict[str, dict[str, Any]], size: int) -> Iterator[dict[str, dict[str, Any]]]:
    keys = list(items)
    for start in range(0, len(keys), size):
        yield {key: items[key] for key in keys[start : start + size]}


# -- the export ------------------------------------------------------------------------------


class GsheetExport:
    """``export --to gsheet://ID/WORKSHEET``: the job's table, in a new worksheet (or over
    one, with ``replace``)."""

    def __init__(self, target: str, options: SinkOptions) -> None:
        self.name = target
        self.options = options

    def check(self) -> None:
        require_gspread(self.name)
        if parse_target(self.name).title is None:
            raise ConfigError(
                "an export names the worksheet it writes",
                file=self.name,
                hint="write gsheet://SPREADSHEET_ID/NEW_WORKSHEET",
            )

    def write(self, registry: Registry) -> str:
        target = parse_target(self.name)
        client = SheetsClient(target, self.options.credentials)
        pacer = Pacer(self.options.write_rpm)
        try:
            columns, rows = table_layout(registry.records, registry.input_columns())
            title = str(target.title)
            count = _count(registry)
            self._prepare(client, pacer, title, count + 1, len(columns))
            sheet = quoted_title(title)
            batch: list[list[Any]] = [columns]
            top = 1
            for values in rows:
                batch.append([cell_value(value) for value in values])
                if len(batch) >= self.options.write_batch:
                    top = _send_rows(client, pacer, sheet, top, batch)
                    batch = []
            if batch:
                top = _send_rows(client, pacer, sheet, top, batch)
        finally:
            pacer.close()
        return f"export: {self.name} ({top - 2:,} rows)"

    def _prepare(
        self, client: SheetsClient, pacer: Pacer, title: str, rows: int, columns: int
    ) -> None:
        if client.has_worksheet(title):
            if not self.options.replace:
                raise ConfigError(
                    f"the worksheet {title!r} exists already",
                    file=self.name,
                    hint="pass --replace to write over it, or name a new worksheet",
                )
            pacer.send(lambda: client.clear(quoted_title(title)))
            properties = client.worksheet()
            grid = properties.get("gridProperties", {})
            sheet_id = int(properties["sheetId"])
            more = [
                ("ROWS", rows - int(grid.get("rowCount", 0))),
                ("COLUMNS", columns - int(grid.get("columnCount", 0))),
            ]
            requests = [
                {"appendDimension": {"sheetId": sheet_id, "dimension": d, "length": n}}
                for d, n in more
                if n > 0
            ]
            if requests:
                pacer.send(lambda: client.structure(requests))
            return
        grid = {"rowCount": max(rows, 1), "columnCount": max(columns, 1)}
        add = {"addSheet": {"properties": {"title": title, "gridProperties": grid}}}
        pacer.send(lambda: client.structure([add]))


def _count(registry: Registry) -> int:
    return sum(1 for _ in registry.records())


def _send_rows(
    client: SheetsClient, pacer: Pacer, sheet: str, top: int, rows: list[list[Any]]
) -> int:
    data = [{"range": f"{sheet}!A{top}", "values": rows}]
    pacer.send(lambda: client.write(data))
    return top + len(rows)


def gsheet_export(target: str, options: SinkOptions) -> GsheetExport:
    return GsheetExport(target, options)
