"""The enriched table as an Excel workbook (``.xlsx``), written with xlsxwriter.

``write_table`` (sinks/exports.py) sends a ``.xlsx`` target here, so ``--output``,
``export --to`` and ``dedupe -o`` all write it the same way. The rules:

* **One sheet**, named after the file (``enriched.xlsx`` → ``enriched``), cut to Excel's
  31 characters (UTF-16 units), with ``[]:*?/\\`` replaced by ``_``. The header row is
  frozen and each column is as wide as its longest value (at most 60 characters).
* **Cells keep their type**: text as text cells, ``bool`` as booleans, numbers as numbers
  (written with Python's shortest exact form, so a float reads back exactly; xlsxwriter's
  own 16 digits would not), empty as an empty cell. An integer beyond ±2**53, which a
  float cannot hold, is written as text; NaN is an empty cell, ±inf the text ``inf``.
  Lists and dicts are JSON text, as in CSV. Dates reach here as ISO text (the registry
  keeps them so) and stay text.
* **Formulas never run**: every text cell and header cell goes through
  :func:`~rowpilot.sinks.cells.neutralise_cell`, the CSV rule (a leading ``'`` before
  ``=``, ``+``, ``-``, ``@`` and the rest), since a cell edited in Excel is read again as
  a formula, and a workbook is often saved on as CSV.
* **Excel's limits are errors, never silent cuts**: a text over 32,767 characters, more
  than 1,048,575 rows or 16,384 columns stops the export with one line naming the row
  and column (the registry keeps everything: export to .parquet, .jsonl or .csv instead).
* **Characters XML cannot hold** (control characters) are written as Excel's ``_xHHHH_``
  escapes, which Excel and rowpilot's reader decode: the file is never corrupt. A lone
  surrogate (a key from a file name that is not UTF-8) is no character at all: an error.
* Written through :func:`~rowpilot.sinks.atomic.atomic_write`: the whole new file or the
  old one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from rowpilot.errors import OutputPathError
from rowpilot.sinks.atomic import atomic_write
from rowpilot.sinks.cells import cell_text, neutralise_cell

MAX_TEXT = 32_767
MAX_ROWS = 1_048_576
MAX_COLUMNS = 16_384
MAX_SHEET_NAME = 31
MAX_WIDTH = 60
_EXACT_INTEGER = 2**53
_SHEET_NAME_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")
_LIMIT_HINT = "write the table as .parquet, .jsonl or .csv, which have no such limit"

KeyedRow = tuple[str | None, Sequence[Any]]
"""A row to write: its key (for errors; None if it has none) and its cells."""


def sheet_name_for(path: Path) -> str:
    """A valid Excel sheet name from the file's name (see the module docstring)."""
    name = _SHEET_NAME_FORBIDDEN.sub("_", Path(path).stem)
    while len(name.encode("utf-16-le", "surrogatepass")) > 2 * MAX_SHEET_NAME:
        name = name[:-1]  # Excel counts UTF-16 units: an emoji counts two
    name = name.strip("'")  # Excel refuses a name that starts or ends with a quote
    if not name or name.lower() == "history":  # "History" is Excel's own
        return "rows"
    return name


def write_workbook(path: Path, columns: Sequence[str], rows: Iterable[KeyedRow]) -> int:
    """Write ``columns`` and ``rows`` as an .xlsx file at ``path`` atomically; return the
    number of rows written."""
    _check_width(path, columns)
    with atomic_write(path, "wb") as handle:
        return _Writer(path, columns, handle).write(rows)


class _Writer:
    """One workbook being written: a frozen header, rows streamed, widths at the end."""

    def __init__(self, path: Path, columns: Sequence[str], handle: IO[bytes]) -> None:
        import xlsxwriter

        self.path = path
        self.columns = list(columns)
        self.workbook = xlsxwriter.Workbook(
            handle,
            {
                "constant_memory": True,  # rows go to disk as written: memory stays flat
                "strings_to_formulas": False,
                "strings_to_numbers": False,
                "strings_to_urls": False,
                "in_memory": False,
            },
        )
        self.sheet = self.workbook.add_worksheet(
            sheet_name_for(path), worksheet_class=_exact_worksheet_class()
        )
        self.widths = [len(name) for name in self.columns]

    def write(self, rows: Iterable[KeyedRow]) -> int:
        try:
            return self._write(rows)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Close and remove the sheet's temporary row file, which xlsxwriter removes only
        when the workbook is closed (closing would write the whole file to be discarded)."""
        with contextlib.suppress(Exception):
            self.sheet._opt_close()
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.remove(self.sheet.row_data_filename)

    def _write(self, rows: Iterable[KeyedRow]) -> int:
        for index, name in enumerate(self.columns):
            self._text(0, index, neutralise_cell(name), None)
        written = 0
        for key, values in rows:
            written += 1
            if written >= MAX_ROWS:
                raise OutputPathError(
                    f"the table has more than Excel's {MAX_ROWS - 1:,} rows a sheet",
                    file=str(self.path),
                    hint=_LIMIT_HINT,
                )
            for index, value in enumerate(values):
                self._cell(written, index, value, key)
        self.sheet.freeze_panes(1, 0)
        for index, width in enumerate(self.widths):
            self.sheet.set_column(index, index, min(width, MAX_WIDTH) + 2)
        self.workbook.close()
        return written

    def _cell(self, row: int, column: int, value: Any, key: str | None) -> None:
        if value is None:
            return
        kind = type(value)
        if kind is str:
            self._text(row, column, neutralise_cell(value), key)
        elif kind is bool:
            self.sheet.write_boolean(row, column, value)
            self._widen(column, 5)
        elif kind is int or kind is float:
            self._number(row, column, value, key)
        else:
            self._other(row, column, value, key)

    def _number(self, row: int, column: int, value: float, key: str | None) -> None:
        if isinstance(value, float) and math.isnan(value):
            return
        if isinstance(value, float) and math.isinf(value):
            self._text(row, column, neutralise_cell(str(value)), key)
        elif isinstance(value, int) and not -_EXACT_INTEGER <= value <= _EXACT_INTEGER:
            self._text(row, column, str(value), key)
        else:
            self.sheet.write_number(row, column, value)
            self._widen(column, len(repr(value)))

    def _other(self, row: int, column: int, value: Any, key: str | None) -> None:
        item = getattr(value, "item", None)  # a numpy scalar (a DataFrame's cell)
        if item is not None and getattr(value, "ndim", None) == 0:
            self._cell(row, column, item(), key)
            return
        self._text(row, column, neutralise_cell(cell_text(value)), key)

    def _text(self, row: int, column: int, text: str, key: str | None) -> None:
        if len(text) > MAX_TEXT:
            raise self._unwritable(
                row,
                column,
                key,
                f"a text of {len(text):,} characters is over Excel's limit of {MAX_TEXT:,} a cell",
            )
        if not text.isascii() and not _encodable(text):
            raise self._unwritable(
                row,
                column,
                key,
                "a text holding characters that are not Unicode (lone "
                "surrogates, as in a file name that is not UTF-8) cannot be written to Excel",
                hint="write the table as .jsonl, which escapes them",
            )
        if text:
            self.sheet.write_string(row, column, text)
            self._widen(column, len(text))

    def _unwritable(
        self, row: int, column: int, key: str | None, what: str, hint: str = _LIMIT_HINT
    ) -> OutputPathError:
        whose = f" (key {key!r})" if key is not None else ""
        return OutputPathError(
            f"row {row + 1}{whose}, column {self.columns[column]!r}: {what}",
            file=str(self.path),
            hint=hint,
        )

    def _widen(self, column: int, width: int) -> None:
        self.widths[column] = max(self.widths[column], width)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_width(path: Path, columns: Sequence[str]) -> None:
    if len(columns) > MAX_COLUMNS:
        raise OutputPathError(
            f"the table has {len(columns):,} columns, more than Excel's {MAX_COLUMNS:,}",
            file=str(path),
            hint=_LIMIT_HINT,
        )


_EXACT_CLASS: list[type[Any]] = []


def _exact_worksheet_class() -> type[Any]:
    """xlsxwriter's worksheet writing each number in Python's shortest exact form (``repr``)
    instead of 16 significant digits, which turn ``0.1 + 0.2`` into ``0.3``. The override is
    one private method; tests/sinks/test_excel.py's round trip fails if it stops applying."""
    if not _EXACT_CLASS:
        from xlsxwriter.worksheet import Worksheet

        class ExactNumbers(Worksheet):  # type: ignore[misc]  # xlsxwriter has no types
            def _xml_number_element(
                self, number: float, attributes: Sequence[tuple[str, Any]] = ()
            ) -> None:
                attrs = "".join(
                    f' {key}="{self._escape_attributes(value)}"' for key, value in attributes
                )
                self.fh.write(f"<c{attrs}><v>{number!r}</v></c>")

        _EXACT_CLASS.append(ExactNumbers)
    return _EXACT_CLASS[0]
