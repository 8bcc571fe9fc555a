"""Prompt templates: Python format syntax with named columns only.

``"{title}: {body}"``, ``"{product name}"``, ``"{{literal braces}}"``. Positional fields,
attribute or index access, format specs and conversions are refused when the template is
read, so a typo fails at startup rather than on row 1,000,000. A template must name a
column: without one every row would get the same prompt.
"""

from __future__ import annotations

import difflib
import json
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

from rowpilot.errors import ConfigError, KeyColumnError

# -- templates ------------------------------------------------------------------------------

_COLUMNS_SHOWN = 10
_FORMATTER = string.Formatter()
_TEMPLATE_HINT = "write {column} for a column and {{ or }} for a literal brace"


class PromptTemplate:
    """A prompt with ``{column}`` placeholders, rendered once per row."""

    def __init__(self, template: str) -> None:
        if not isinstance(template, str):
            raise ConfigError(f"the prompt template must be text, not {type(template).__name__}")
        self.template = template
        self._parts = _parse_template(template)
        self.columns: tuple[str, ...] = tuple(
            dict.fromkeys(column for _, column in self._parts if column is not None)
        )
        if not self.columns:
            raise ConfigError(
                "the prompt template uses no column, so every row would get the same prompt",
                hint="put a column in braces, e.g. 'Summarize: {text}' ({{text}} is literal "
                "text, not a column)",
            )

    @classmethod
    def column(cls, name: str) -> PromptTemplate:
        """The template that is one column's text, whatever characters its name holds."""
        template = cls("{text}")
        template.template = "{" + name.replace("{", "{{").replace("}", "}}") + "}"
        template._parts = [("", name)]
        template.columns = (name,)
        return template

    def check(self, columns: Sequence[str]) -> None:
        """ConfigError when the template uses a column that the data does not have."""
        available = list(columns)
        known = set(available)
        unknown = [column for column in self.columns if column not in known]
        if not unknown:
            return
        first = unknown[0]
        message = f"the prompt template uses column {first!r}, which the data does not have"
        if len(unknown) > 1:
            message += f" (nor {', '.join(repr(name) for name in unknown[1:4])})"
        shown = ", ".join(repr(name) for name in available[:_COLUMNS_SHOWN])
        if len(available) > _COLUMNS_SHOWN:
            shown += f", ... ({len(available) - _COLUMNS_SHOWN} more)"
        close = difflib.get_close_matches(first, available, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        hint += f"the columns are: {shown}" if available else "the data has no columns"
        raise ConfigError(message, hint=hint, column=first)

    def render(self, row: Mapping[str, Any]) -> str:
        """The prompt for one row: None (and NaN) become "", other values ``str()``."""
        pieces: list[str] = []
        for literal, column in self._parts:
            pieces.append(literal)
            if column is None:
                continue
            if column not in row:
                raise KeyColumnError(
                    f"the row has no column {column!r}, which the prompt template uses",
                    column=column,
                    hint="check the column names in the template against the data",
                )
            pieces.append(_cell_text(row[column]))
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"PromptTemplate({self.template!r})"


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """``(literal, column)`` pairs; ``column`` None for trailing literal text."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"the prompt template cannot be read: {exc}", hint=_TEMPLATE_HINT
        ) from exc
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            _check_placeholder(name, spec or "", conversion)
        parts.append((literal, name))
    return parts


def _check_placeholder(name: str, spec: str, conversion: str | None) -> None:
    shown = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "")
    shown += "}"
    if not name or name.isdigit():
        raise ConfigError(
            f"the prompt template has a positional field {shown}",
            hint="name a column inside the braces, e.g. {text}; " + _TEMPLATE_HINT,
        )
    if "." in name or "[" in name:
        raise ConfigError(
            f"the prompt template field {shown} uses attribute or index access",
            hint="a template names whole columns only; give the value its own column",
        )
    if conversion is not None or spec:
        raise ConfigError(
            f"the prompt template field {shown} has a conversion or format spec",
            hint=f"write {{{name}}}: values are inserted as text; format them in the data",
        )


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""  # missing: pandas reads an empty cell as NaN
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):  # nested JSONL values read better as JSON
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
