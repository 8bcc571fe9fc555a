"""JSON Lines files: one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from rowpilot.errors import EmptySourceError, SourceFormatError
from rowpilot.sources.base import Row, RowStream, SourceOptions, checked_size, chunked, open_text
from rowpilot.sources.text import encoding_error, line_of_bad_bytes, read_head

JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


class JsonlSource:
    """One JSON object per line; blank lines are skipped."""

    reiterable = True

    def __init__(self, path: str, encoding: str) -> None:
        self.name = path
        self._encoding = encoding
        head = read_head(path, encoding)
        if head.whole_file and not head.text.strip():
            raise EmptySourceError("is empty", file=path)

    def columns(self) -> None:
        return None

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has no rows (only blank lines)", file=self.name)
        return chunked(self._rows(), checked_size(size), empty)

    def _rows(self) -> RowStream:
        # newline="\n": JSON text may hold a bare "\r" as whitespace; it must not end a line.
        with open_text(self.name, self._encoding, newline="\n") as file:
            line = 0
            try:
                index = 0
                for line, text in enumerate(file, start=1):
                    if text.strip():
                        yield index, line, self._parse(text, index, line)
                        index += 1
            except UnicodeDecodeError:
                line = line_of_bad_bytes(self.name, self._encoding) or line + 1
                raise encoding_error(self.name, self._encoding, line) from None

    def _parse(self, text: str, index: int, line: int) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise SourceFormatError(
                f"not valid JSON: {error.msg} (column {error.colno})",
                file=self.name,
                row=index,
                line=line,
                hint="each line must hold one complete JSON object",
            ) from None
        if not isinstance(value, dict):
            kind = JSON_TYPE_NAMES.get(type(value), type(value).__name__)
            raise SourceFormatError(
                f"the line is {kind}, not a JSON object",
                file=self.name,
                row=index,
                line=line,
                hint='each line must be an object such as {"id": 1, "text": "..."}',
            )
        return value


def open_jsonl(name: str, options: SourceOptions) -> JsonlSource:
    return JsonlSource(name, options.encoding)
