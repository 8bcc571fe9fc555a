"""Sources: stream the rows of an input (CSV/TSV, JSONL, Parquet, an Excel sheet, a folder
of files, a Google Sheets worksheet, a DataFrame or an iterable) in chunks.

``open_source`` picks a reader (see :mod:`rowpilot.sources.registry`) and returns a
:class:`Source`; ``Source.chunks(size)`` yields lists of at most ``size`` rows, each row a
``(row, line, fields)`` tuple. Files are read lazily and in pieces, so memory stays
bounded by the chunk size, whatever the file size. One module per kind: ``csv``,
``jsonl``, ``parquet``, ``excel``, ``folder``, ``gsheet``, ``memory`` (DataFrame, iterable).

Where errors are raised:

* ``open_source`` raises what is wrong before any row is read: a bad ``format`` or
  ``encoding`` or an unknown suffix (ConfigError), a missing file (SourceNotFoundError),
  an unreadable file (SourceError), an empty file or a file with only a header when that
  is visible in its first 64 KiB, or a folder with no file to read (EmptySourceError),
  and problems in the CSV header: undecodable (SourceEncodingError), duplicate or empty
  column names (SourceFormatError). A Parquet file that cannot be opened raises
  SourceFormatError, and an empty DataFrame, list or tuple raises EmptySourceError. An
  Excel workbook that is encrypted, an old .xls, no zip or damaged, or whose header has
  duplicate or empty names, raises SourceFormatError; a sheet it does not have
  SourceNotFoundError (listing its sheets); an empty sheet or header row, or a header and
  no rows, EmptySourceError.
  A Google Sheets worksheet is reached when opened: missing or refused credentials
  (ProviderSetupError), an unknown spreadsheet or worksheet (SourceNotFoundError), a
  header as a CSV file's (EmptySourceError, SourceFormatError).
* ``chunks()`` raises row-level problems lazily, from the chunk where they occur: ragged
  CSV rows, broken CSV quotes (see CsvSource; a header eaten by one is raised on opening,
  and quotes that do not pair up at the end of the pass), invalid JSONL lines, bytes that
  do not decode (in a folder: a file that does not decode or holds NUL characters, a file
  name that is not UTF-8, a subfolder that cannot be listed), corrupt Parquet data,
  items that are not mappings, an Excel value outside the header's columns or damaged
  sheet XML met while reading. A pass that finds no rows at all (a long file of blank
  lines, an empty generator) raises EmptySourceError. Calling ``chunks()`` a second time
  on a one-shot iterator raises ConfigError at the call.

What is skipped without an error is told by ``FolderSource.notices()`` (symlinks that
point outside the folder), for the caller to print as warnings.
"""

from rowpilot.sources.base import Opener, Row, RowStream, Source, SourceOptions
from rowpilot.sources.csv import CsvSource
from rowpilot.sources.excel import ExcelSource
from rowpilot.sources.folder import FolderSource
from rowpilot.sources.jsonl import JsonlSource
from rowpilot.sources.memory import DataFrameSource, IterableSource
from rowpilot.sources.parquet import ParquetSource
from rowpilot.sources.registry import (
    SourceKind,
    open_source,
    register_source,
    supported_formats,
    unregister_source,
)

__all__ = [
    "CsvSource",
    "DataFrameSource",
    "ExcelSource",
    "FolderSource",
    "IterableSource",
    "JsonlSource",
    "Opener",
    "ParquetSource",
    "Row",
    "RowStream",
    "Source",
    "SourceKind",
    "SourceOptions",
    "open_source",
    "register_source",
    "supported_formats",
    "unregister_source",
]
