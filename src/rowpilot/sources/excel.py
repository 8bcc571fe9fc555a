"""Excel workbooks (``.xlsx``, ``.xlsm``): one sheet, streamed row by row.

The rules (docs/sources.md, "Excel", says them for users):

* **Reader.** openpyxl in read-only mode: the sheet's XML is parsed as it is read, so
  memory stays nearly flat in the row count (its XML parser keeps about 75 bytes a row of
  emptied elements; the workbook's shared-strings table, which every reader holds, aside).
  python-calamine reads 7-13 times faster but loads the whole sheet first, which
  breaks the rule that a source streams (bench/bench_excel.py measures both).
* **Sheet.** ``sheet`` names it (exactly, as Excel shows it); by default the first
  worksheet in the workbook's order. A name that is not there is an error listing the
  workbook's sheets.
* **Header.** ``header_row`` (1-based, the sheet's own row number) is the header; without
  it the first row holding any value is, so leading empty rows are skipped. Header cells
  that are not text become text (``2024``, ``2024-01-05``); trailing empty header cells
  are ignored; an empty or repeated name before the last one is an error (a merged
  header cell leaves the cells right of its first one empty).
* **Cells.** Text as written; an empty cell (or empty text) is ``None``; booleans are
  ``bool``; numbers are ``int`` when whole (Excel stores every number as a float: ``3.0``
  reads ``3``) within ±2**53, else ``float``; dates are ISO 8601 text, ``2024-01-05`` for a
  date at midnight, ``2024-01-05T10:30:00`` otherwise, ``10:30:00`` for a time and
  ``36:15:00`` (hours) for a duration: the same text reaches a task, a prompt, the registry
  and every export. A formula reads as the value Excel last saved with it (a workbook
  written by a library that computes nothing has none: the cell reads empty); an error
  cell reads as its text (``#DIV/0!``). A merged range holds its value in its top-left
  cell; the others read empty.
* **Rows.** A row whose cells are all empty is skipped wherever it is (trailing empty or
  formatted rows included). A value right of the header's last column is an error naming
  its cell. Each row's ``line`` is its row number in the sheet, so an error points at the
  row as Excel shows it.
* **Bad files.** A password-protected workbook (an encrypted OLE file), an old ``.xls``
  (OLE too), a file that is not a zip, a damaged zip or XML: one-line SourceFormatError.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import ParseError

from rowpilot.errors import EmptySourceError, SourceFormatError, SourceNotFoundError
from rowpilot.sources.base import (
    Row,
    RowStream,
    SourceOptions,
    check_column_names,
    checked_size,
    chunked,
    open_binary,
)

if TYPE_CHECKING:
    from openpyxl.workbook.workbook import Workbook

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGIC = b"PK"
# An encrypted OOXML file is an OLE file holding this stream (its name in UTF-16LE).
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")
_SCAN_BLOCK = 1 << 20
_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_EXACT_INTEGER = 2**53
# Rows are pulled from openpyxl this many at a time, with its warnings silenced per block.
_BLOCK_ROWS = 256
_EMPTY_NAME_HINT = (
    "name every column in the header row (a merged header cell names only its first column)"
)
_REPAIR_HINT = "open it in Excel and save it again, or save the sheet as .csv"


class ExcelSource:
    """One sheet of an ``.xlsx`` workbook, read row by row (see the module docstring)."""

    reiterable = True

    def __init__(self, path: str, sheet: str | None = None, header_row: int | None = None) -> None:
        self.name = path
        self._check_container()
        with self._workbook() as workbook:
            self.sheet = self._sheet_name(workbook, sheet)
            rows = self._sheet_rows(workbook)
            self.header_line, self._first, self._columns = self._header(rows, header_row)
            first_data = next(self._data_rows(rows), None)
        if first_data is None:
            raise EmptySourceError(
                f"sheet {self.sheet!r} has a header (row {self.header_line}) and no rows",
                file=path,
            )

    def columns(self) -> list[str]:
        return list(self._columns)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError(f"sheet {self.sheet!r} has no rows", file=self.name)
        return chunked(self._rows(), checked_size(size), empty)

    # -- the file -------------------------------------------------------------------------

    def _check_container(self) -> None:
        """Name what the file is when it is no zip: encrypted, an old .xls, or neither."""
        with open_binary(self.name) as handle:
            magic = handle.read(len(OLE_MAGIC))
            if magic.startswith(ZIP_MAGIC):
                return
            if magic == OLE_MAGIC and _holds(handle, _ENCRYPTED_STREAM):
                raise SourceFormatError(
                    "the workbook is password-protected (encrypted)",
                    file=self.name,
                    hint="save a copy without the password (Excel: File > Info > Protect "
                    "Workbook > Encrypt with Password, clear it), or save the sheet as .csv",
                )
            if magic == OLE_MAGIC:
                raise SourceFormatError(
                    "is an Excel 97-2003 (.xls) workbook, which rowpilot does not read",
                    file=self.name,
                    hint="save it as .xlsx or .csv",
                )
        raise SourceFormatError(
            "is not an Excel workbook (an .xlsx file is a zip archive; this one is not)",
            file=self.name,
            hint="check that this is the right file, or pass --format",
        )

    @contextmanager
    def _workbook(self) -> Iterator[Workbook]:
        from openpyxl import load_workbook

        with self._guarded():
            workbook = load_workbook(self.name, read_only=True, data_only=True)
        try:
            yield workbook
        finally:
            workbook.close()

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """openpyxl's errors about the file as one SourceFormatError; its warnings (an
        extension it does not support, a style it ignores) silenced."""
        from openpyxl.utils.exceptions import InvalidFileException

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except FileNotFoundError:
            raise SourceNotFoundError("no such file", file=self.name) from None
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            KeyError,
            OSError,
            ParseError,
            ValueError,
            TypeError,
            InvalidFileException,
        ) as error:
            raise SourceFormatError(
                f"the workbook is damaged and cannot be read ({type(error).__name__}: "
                f"{_one_line(error)})",
                file=self.name,
                hint=_REPAIR_HINT,
            ) from None

    def _sheet_name(self, workbook: Workbook, wanted: str | None) -> str:
        names: list[str] = list(workbook.sheetnames)
        worksheets = [sheet.title for sheet in workbook.worksheets]
        if wanted is None:
            if not worksheets:
                raise EmptySourceError("the workbook has no worksheet", file=self.name)
            return str(worksheets[0])
        if wanted in worksheets:
            return wanted
        shown = ", ".join(repr(name) for name in names[:20])
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        if wanted in names:
            raise SourceFormatError(
                f"sheet {wanted!r} is a chart sheet, not a sheet of cells",
                file=self.name,
                hint=f"pass --sheet with one of the worksheets: {', '.join(map(repr, worksheets))}",
            )
        raise SourceNotFoundError(
            f"the workbook has no sheet named {wanted!r}",
            file=self.name,
            hint=f"the sheets are {shown}{more}; pass one of them to --sheet",
        )

    def _sheet_rows(self, workbook: Workbook) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """``(row number, values)`` of every row of the sheet, empty ones included."""
        worksheet = workbook[self.sheet]
        # The stored dimension may be wrong (some writers leave A1): read every row there is.
        worksheet.reset_dimensions()
        values = worksheet.iter_rows(min_row=1, values_only=True)
        number = 0
        while True:
            with self._guarded():
                block = [row for _, row in zip(range(_BLOCK_ROWS), values, strict=False)]
            for row in block:
                number += 1
                yield number, row
            if len(block) < _BLOCK_ROWS:
                return

    # -- the header and the rows ---------------------------------------------------------

    def _header(
        self, rows: Iterator[tuple[int, tuple[Any, ...]]], wanted: int | None
    ) -> tuple[int, int, list[str]]:
        """The header's row number, its first column (0-based) and its names."""
        for number, values in rows:
            if wanted is not None and number < wanted:
                continue
            names = [_header_name(value) for value in values]
            while names and not names[-1]:
                names.pop()
            first = next((index for index, name in enumerate(names) if name), 0)
            names = names[first:]
            if wanted is not None and not names:
                raise EmptySourceError(
                    f"the header row {wanted} of sheet {self.sheet!r} is empty",
                    file=self.name,
                    hint="pass --header-row with the number of the row that names the columns",
                )
            if names:
                check_column_names(names, self.name, line=number, empty_hint=_EMPTY_NAME_HINT)
                return number, first, names
        where = f"has no row {wanted}" if wanted is not None else "is empty"
        raise EmptySourceError(f"sheet {self.sheet!r} {where}", file=self.name)

    def _data_rows(self, rows: Iterator[tuple[int, tuple[Any, ...]]]) -> Iterator[Row]:
        columns = self._columns
        first = self._first
        end = first + len(columns)
        index = 0
        for number, values in rows:
            cells = [_cell_value(value) for value in values]
            if not any(cell is not None for cell in cells):
                continue
            if first or len(cells) > end:
                self._check_no_stray_value(cells, number)
                cells = cells[first:end]
            if len(cells) < len(columns):
                cells.extend([None] * (len(columns) - len(cells)))
            yield index, number, dict(zip(columns, cells, strict=True))
            index += 1

    def _check_no_stray_value(self, cells: list[Any], number: int) -> None:
        """A value left or right of the header's columns is an error naming its cell."""
        from openpyxl.utils import get_column_letter

        end = self._first + len(self._columns)
        outside = [*range(min(self._first, len(cells))), *range(end, len(cells))]
        for position in outside:
            if cells[position] is not None:
                letter = get_column_letter(position + 1)
                raise SourceFormatError(
                    f"cell {letter}{number} has a value, but column {letter} has no name in "
                    f"the header row (row {self.header_line})",
                    file=self.name,
                    line=number,
                    hint="name the column in the header row (pass --header-row if the header "
                    "is further down), or clear the cell",
                )

    def _rows(self) -> RowStream:
        with self._workbook() as workbook:
            rows = self._sheet_rows(workbook)
            for number, _ in rows:
                if number == self.header_line:
                    break
            yield from self._data_rows(rows)


def _holds(handle: Any, needle: bytes) -> bool:
    """Whether the rest of the open binary file holds ``needle`` (read in blocks)."""
    tail = b""
    while block := handle.read(_SCAN_BLOCK):
        if needle in tail + block:
            return True
        tail = block[-len(needle) :]
    return False


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


def _cell_value(value: Any) -> Any:
    """A cell as a row holds it (see the module docstring)."""
    kind = type(value)
    if kind is str:
        if "_x" in value:
            return _unescaped(value)
        return value or None
    if value is None or kind is bool or kind is int:
        return value
    if kind is float:
        if value.is_integer() and -_EXACT_INTEGER <= value <= _EXACT_INTEGER:
            return int(value)
        return value
    return _date_text(value)


def _unescaped(text: str) -> str:
    """Decode the ``_xHHHH_`` escapes of control characters that openpyxl leaves in text
    (Excel and xlsxwriter write ``\r`` as ``_x000D_``, and a literal ``_x`` as ``_x005F_x``)."""
    return _ESCAPE.sub(_unescape_one, text)


def _unescape_one(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    if code == 0x5F:
        return "_"
    if code < 0x20 or code in (0xFFFE, 0xFFFF):
        return chr(code)
    return match.group(0)


def _date_text(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    return str(value)


def _duration_text(value: dt.timedelta) -> str:
    """``[h]:mm:ss`` as Excel shows a duration, with microseconds when there are any."""
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.days * 86_400 + value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}{hours}:{minutes:02d}:{seconds:02d}{fraction}"


def _header_name(value: Any) -> str:
    cell = _cell_value(value)
    if cell is None:
        return ""
    if isinstance(cell, bool):
        return "TRUE" if cell else "FALSE"
    return str(cell)


def open_excel(name: str, options: SourceOptions) -> ExcelSource:
    return ExcelSource(name, sheet=options.sheet, header_row=options.header_row)
