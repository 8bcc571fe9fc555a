"""A Google Sheets worksheet as a source: ``gsheet://SPREADSHEET_ID/WORKSHEET`` or the sheet's
browser address (targets and credentials: ``rowpilot._gsheet``).

The rules:

* **Row 1 is the header** (``--header-row N``: row N; rows above it are not read); every
  named column up to the last is read, cells to the right of it are not. ``--sheet NAME``
  names the worksheet when the address does not. Names must be unique and non-empty (as
  a CSV header's).
* **Typed values**: cells are read with ``UNFORMATTED_VALUE``, so a number is a number
  (an integer when whole, as the API sends it), a checkbox a boolean and text text;
  an empty cell is None (null). **Dates and times** come as the text the sheet shows
  (``dateTimeRenderOption=FORMATTED_STRING``: ``2024-03-01`` in a sheet that shows it so),
  not as Sheets' serial day numbers, which no task expects.
* **Paged**: the worksheet is read ``PAGE_ROWS`` rows a request (one ``values.get`` each),
  up to the grid's row count, so memory holds one page whatever the sheet's size. A row
  with no value in any named column is skipped (sheets often have blank rows); the rows
  keep their sheet row numbers in messages (``line N`` is row N of the sheet).
* **Identity is the key column**, never the row number: rows sorted or inserted between
  runs keep their items. A write-back (``sinks/gsheet.py``) therefore needs ``--key``.
* **Columns a write-back owns are not inputs** (``exclude_columns``, called by the engine):
  the columns earlier write-backs of the job to this worksheet wrote, and with
  ``--write-back`` the task's declared output fields, are left out of every row, so a
  second run sees the same inputs as the first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from typing import Any

from rowpilot._gsheet import (
    SheetsClient,
    SheetTarget,
    column_letters,
    is_sheet_target,
    parse_target,
    quoted_title,
)
from rowpilot.errors import ConfigError, EmptySourceError
from rowpilot.sources.base import (
    Row,
    RowStream,
    SourceOptions,
    check_column_names,
    checked_size,
    chunked,
)

PAGE_ROWS = 1000
"""Rows a ``values.get`` reads: about 1,000 requests for a million-row sheet (the read quota
is 300 a minute per project), and one page of cells in memory at a time."""


class GsheetSource:
    """One worksheet of a spreadsheet, read through the Sheets API."""

    reiterable = True

    def __init__(
        self,
        target: SheetTarget,
        credentials: str | os.PathLike[str] | None = None,
        header_row: int | None = None,
    ) -> None:
        self.name = str(target)
        self._header_row = header_row or 1
        self.target = target
        self._client = SheetsClient(target, credentials)
        properties = self._client.worksheet()  # bad credentials or address: fail here
        self.title = str(properties["title"])
        self.sheet_id = int(properties.get("sheetId", 0))
        self._row_count = int(properties.get("gridProperties", {}).get("rowCount", 0))
        at = self._header_row
        header = self._client.values(f"{quoted_title(self.title)}!{at}:{at}")
        self._header = [str(name) for name in (header[0] if header else [])]
        if not self._header:
            raise EmptySourceError(
                f"the worksheet has no header in row {at}",
                file=self.name,
                hint="put the column names in row 1, or pass --header-row N",
            )
        check_column_names(self._header, self.name, line=at)
        self._excluded: set[str] = set()

    def exclude_columns(self, names: Iterable[str]) -> None:
        """Leave these columns out of every row (a write-back's output columns)."""
        self._excluded.update(names)

    def columns(self) -> list[str]:
        return [name for name in self._header if name not in self._excluded]

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        return chunked(
            self._rows(), checked_size(size), EmptySourceError("no data rows", file=self.name)
        )

    def _rows(self) -> RowStream:
        last = column_letters(len(self._header) - 1)
        kept = [(i, name) for i, name in enumerate(self._header) if name not in self._excluded]
        seq = 0
        first = self._header_row + 1
        for top in range(first, max(self._row_count, first) + 1, PAGE_ROWS):
            bottom = top + PAGE_ROWS - 1
            page = self._client.values(f"{quoted_title(self.title)}!A{top}:{last}{bottom}")
            for offset, cells in enumerate(page):
                fields = {name: _cell(cells, i) for i, name in kept}
                if all(value is None for value in fields.values()):
                    continue
                yield seq, top + offset, fields
                seq += 1


def _cell(cells: list[Any], index: int) -> Any:
    value = cells[index] if index < len(cells) else None
    return None if value == "" else value


def open_gsheet(target: str, options: SourceOptions) -> GsheetSource:
    """``gsheet://...`` or a browser address; any other https address is refused."""
    if not is_sheet_target(target):
        raise ConfigError(
            "only Google Sheets addresses are read from https",
            file=target,
            hint="download the file first, or use https://docs.google.com/spreadsheets/d/ID",
        )
    sheet = parse_target(target)
    if options.sheet is not None:
        if sheet.title is not None or sheet.gid is not None:
            raise ConfigError(
                "the worksheet is named twice: in the address and by --sheet",
                file=target,
                hint="drop --sheet, or the worksheet from the address",
            )
        sheet = dataclasses.replace(sheet, title=options.sheet)
    return GsheetSource(sheet, options.credentials, options.header_row)
