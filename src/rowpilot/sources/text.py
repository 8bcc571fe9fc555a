"""Decoding a text file in blocks: its head (for sniffing and early errors), and the line
of the first bytes that do not decode, for an error that names it."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass

from rowpilot.errors import SourceEncodingError
from rowpilot.sources.base import open_binary

HEAD_BYTES = 64 * 1024
ENCODING_HINT = "pass --encoding latin-1 (or the file's real encoding)"


class _LineCounter:
    """Counts physical lines as the csv module does: ``\\n``, ``\\r\\n`` and ``\\r`` end one."""

    def __init__(self) -> None:
        self.breaks = 0
        self._ends_with_cr = False

    def feed(self, text: str) -> None:
        if not text:
            return
        crlf = text.count("\r\n") + (self._ends_with_cr and text.startswith("\n"))
        self.breaks += text.count("\n") + text.count("\r") - crlf
        self._ends_with_cr = text.endswith("\r")

    @property
    def line(self) -> int:
        """The line the next character is on."""
        return self.breaks + 1


def _decode_prefix(
    decoder: codecs.IncrementalDecoder, block: bytes, final: bool
) -> tuple[str, bool]:
    """Decode ``block``; if it holds bad bytes, decode only what comes before them.

    Returns the text and whether the whole block decoded. Binary search, because the
    offset in a UnicodeDecodeError is not reliable across codecs (BOM handling).
    """
    state = decoder.getstate()
    try:
        return decoder.decode(block, final), True
    except UnicodeDecodeError:
        pass
    good, bad = 0, len(block)
    while bad - good > 1:
        middle = (good + bad) // 2
        decoder.setstate(state)
        try:
            decoder.decode(block[:middle])
            good = middle
        except UnicodeDecodeError:
            bad = middle
    decoder.setstate(state)
    return decoder.decode(block[:good]), False


def decoded_blocks(name: str, encoding: str) -> Iterator[tuple[str, bool, bool]]:
    """Yield ``(text, decoded, at_end)`` per 64 KiB block; stops at the first bad byte."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open_binary(name) as file:
        while True:
            block = file.read(HEAD_BYTES)
            at_end = len(block) < HEAD_BYTES
            text, decoded = _decode_prefix(decoder, block, final=at_end)
            yield text, decoded, at_end
            if at_end or not decoded:
                return


def line_of_bad_bytes(name: str, encoding: str) -> int | None:
    """The 1-based line of the first bytes that do not decode, or None if all decode."""
    counter = _LineCounter()
    for text, decoded, _at_end in decoded_blocks(name, encoding):
        counter.feed(text)
        if not decoded:
            return counter.line
    return None


def encoding_error(name: str, encoding: str, line: int | None) -> SourceEncodingError:
    return SourceEncodingError(
        f"bytes that do not decode as {encoding}", file=name, line=line, hint=ENCODING_HINT
    )


@dataclass(frozen=True)
class Head:
    """The decoded start of a text file: at least 64 KiB, cut after a complete line."""

    text: str
    whole_file: bool
    bad_line: int | None  # where undecodable bytes cut the head short


def read_head(name: str, encoding: str) -> Head:
    parts: list[str] = []
    counter = _LineCounter()
    for text, decoded, at_end in decoded_blocks(name, encoding):
        parts.append(text)
        counter.feed(text)
        if not decoded:
            return Head(through_last_line_break("".join(parts)), False, counter.line)
        if at_end:
            return Head("".join(parts), True, None)
        if "\n" in text or "\r" in text:
            break
    return Head(through_last_line_break("".join(parts)), False, None)


def through_last_line_break(text: str) -> str:
    return text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
