"""The rowpilot exception tree.

Every error rowpilot raises on purpose is one of these. User errors exit 2 from the CLI
with one line (no traceback unless ``--debug``) and leave the state untouched.

RowpilotError                   base of everything rowpilot raises on purpose
├── UserError                   the user can fix it; CLI exit code 2
│   ├── ConfigError             a bad flag, job-file value or combination of settings
│   ├── SourceError             the input data cannot be read as asked (names file/row/column)
│   │   ├── SourceNotFoundError     the input file or folder does not exist
│   │   ├── SourceEncodingError     bytes that do not decode with the chosen encoding
│   │   ├── SourceFormatError       a ragged CSV row, a JSONL line that is not an object, ...
│   │   ├── EmptySourceError        no header, or a header and no rows
│   │   ├── KeyColumnError          the key column is unknown, or a row has no key value
│   │   └── DuplicateKeyError       the same key on several rows (see ``--duplicates first``)
│   ├── TaskLoadError           the task path does not import or names nothing callable
│   ├── TaskOutputError         the task returned something that is not a dict or a model
│   │   └── OutputCollisionError    an output field is named like an input column
│   ├── OutputPathError         an output path cannot be written
│   ├── StateError              the state directory is unusable
│   │   └── StateLockedError    another run holds the state directory
│   └── ProviderSetupError      the preflight check failed: bad key, model or endpoint
├── ItemTimeoutError            one attempt of an item ran past ``--timeout`` (retryable)
├── SubItemError                sub-items of ``ctx.map`` failed (each named with its error)
└── ProviderError               a provider call failed; ``cause`` and ``retryable`` say how
    ├── RateLimitError              rate_limit: 429 (``retry_after`` when the provider said)
    ├── ProviderAuthError           auth: a wrong key, no permission, no credit
    ├── ProviderTimeoutError        timeout (retryable)
    ├── ProviderConnectionError     connection refused or reset (retryable)
    ├── ProviderServerError         server: 5xx, 409, overloaded (retryable)
    ├── BadRequestError             bad_request: the request itself is wrong
    ├── ModelNotFoundError          not_found: an unknown model or endpoint
    ├── ContentFilterError          content_filter: refused by the provider's filter
    ├── OutputTruncatedError        length: the answer hit max_tokens
    └── InvalidOutputError          invalid_output: a body or answer not as asked (retryable)

Errors carry their context as attributes and survive pickling, so process and Ray
executors can send them back unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "BadRequestError",
    "ConfigError",
    "ContentFilterError",
    "DuplicateKeyError",
    "EmptySourceError",
    "InvalidOutputError",
    "ItemTimeoutError",
    "KeyColumnError",
    "ModelNotFoundError",
    "OutputCollisionError",
    "OutputPathError",
    "OutputTruncatedError",
    "ProviderAuthError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderSetupError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RowpilotError",
    "SourceEncodingError",
    "SourceError",
    "SourceFormatError",
    "SourceNotFoundError",
    "StateError",
    "StateLockedError",
    "SubItemError",
    "TaskLoadError",
    "TaskOutputError",
    "UserError",
    "WorkerCrashError",
]

_CONTEXT_FIELDS = ("file", "row", "line", "column", "key")


def _rebuild(cls: type[RowpilotError], message: str, context: dict[str, Any]) -> RowpilotError:
    return cls(message, **context)


class RowpilotError(Exception):
    """Base of every error rowpilot raises on purpose.

    ``message`` says what went wrong; ``hint`` says how to fix it. The context
    attributes (file, row, line, column, key) are ``None`` where they do not apply.
    ``row`` is the 0-based data row (the numbering of ``--rows``); ``line`` is the
    1-based physical line in a text file.
    """

    exit_code = 1
    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        file: str | None = None,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.file = file
        self.row = row
        self.line = line
        self.column = column
        self.key = key

    def _context(self) -> dict[str, Any]:
        context: dict[str, Any] = {name: getattr(self, name) for name in _CONTEXT_FIELDS}
        context["hint"] = self.hint
        return context

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._context()))

    def where(self) -> str:
        """The location part of the message: ``data.csv line 4, column 'id'``."""
        parts: list[str] = []
        if self.file is not None:
            parts.append(self.file)
        if self.line is not None:
            parts.append(f"line {self.line}")
        elif self.row is not None:
            parts.append(f"row {self.row}")
        where = " ".join(parts)
        if self.column is not None:
            where = f"{where}, column {self.column!r}" if where else f"column {self.column!r}"
        return where

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text = f"{text} (hint: {self.hint})"
        return text


class UserError(RowpilotError):
    """Something the user can fix: bad input, bad settings. The CLI exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """A bad flag, job-file value or combination of settings."""


class SourceError(UserError):
    """The input data cannot be read as asked."""

    default_hint = "check the file, its --format and its --encoding"


class SourceNotFoundError(SourceError):
    """The input file or folder does not exist."""


class SourceEncodingError(SourceError):
    """Bytes in the input that do not decode with the chosen encoding."""


class SourceFormatError(SourceError):
    """Input that is not of its format: a ragged CSV row, a JSONL line that is no object."""


class EmptySourceError(SourceError):
    """An input with no header, or a header and no rows."""

    default_hint = "check that this is the right file: a job needs a header and at least one row"


class KeyColumnError(SourceError):
    """The key column is not in the input, or a row has no value in it."""


class DuplicateKeyError(SourceError):
    """The same key on more than one row."""


class TaskLoadError(UserError):
    """The task path does not import, or names nothing callable."""


class TaskOutputError(UserError):
    """The task returned something that is not a dict or a pydantic model."""


class OutputCollisionError(TaskOutputError):
    """An output field is named like an input column: in a table it would overwrite the
    input (the key included). Pass ``--output-prefix`` to name the outputs apart."""

    default_hint = (
        "rename the field, or pass --output-prefix out_ (output_prefix= in Python) to prefix "
        "every output field"
    )


class OutputPathError(UserError):
    """An output path cannot be written."""


class StateError(UserError):
    """The state directory is unusable (unreadable, or written by a newer rowpilot)."""


class StateLockedError(StateError):
    """Another run holds the state directory."""


class ProviderSetupError(UserError):
    """A provider cannot be used: a bad key, an unknown model, an endpoint that does not answer.

    Raised by the preflight check, before any item, so nothing else was spent.
    """

    default_hint = "check the model name, the base_url and the API key's environment variable"


class ItemTimeoutError(RowpilotError):
    """One attempt of an item ran past its timeout. Retried like any retryable error."""


class WorkerCrashError(RowpilotError):
    """An item was running in a worker process or Ray actor that died, as many times as
    an item may (``--max-attempts``): it fails with cause ``process_crash``, never retried."""


class SubItemError(RowpilotError):
    """Sub-items of ``ctx.map`` failed; ``failures`` maps each one's index to its error.

    The message names each failed sub-item and its error, so the parent item's failure in
    ``rowpilot failures`` says which file or part went wrong.
    """

    @classmethod
    def of(cls, failures: dict[int, tuple[Any, BaseException]], total: int) -> SubItemError:
        shown = "; ".join(
            f"#{index} {_shown(subitem)}: {type(error).__name__}: {error}"
            for index, (subitem, error) in list(failures.items())[:5]
        )
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        error = cls(
            f"{len(failures)} of {total} sub-items failed: {shown}{more}",
            hint="see each sub-item's error; fixed sub-items are replayed from the journal",
        )
        error.failures = {index: failed for index, (_, failed) in failures.items()}
        return error

    failures: dict[int, BaseException] = {}  # noqa: RUF012 (set per instance by ``of``)


def _shown(subitem: Any, limit: int = 60) -> str:
    """A sub-item as a failure names it: a long text keeps its end (a path's file name),
    anything else its start."""
    text = repr(subitem)
    if len(text) <= limit:
        return text
    if isinstance(subitem, str):
        return "'…" + subitem[-(limit - 3) :] + "'"
    return text[: limit - 1] + "…"


# -- provider errors: raised at the one boundary in _providers.py -----------------------

Cause = Literal[
    "rate_limit",
    "auth",
    "timeout",
    "bad_request",
    "invalid_output",
    "content_filter",
    "length",
    "server",
    "connection",
    "not_found",
]


def _rebuild_provider_error(
    cls: type[ProviderError], message: str, state: dict[str, Any]
) -> ProviderError:
    return cls(message, **state)


class ProviderError(RowpilotError):
    """A call to a model provider failed. Subclasses name why; this base means "unmapped".

    ``provider`` and ``model`` say which call, ``status`` is the HTTP status when there was
    a response, ``retry_after`` the seconds the provider asked to wait (``None`` if it did
    not say). ``sent`` is False when the request never left this machine (the connection
    was refused, no connection was free), so the provider cannot have billed it.
    ``retryable`` and ``cause`` are class attributes.
    """

    cause: Cause = "bad_request"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
        hint: str | None = None,
        file: str | None = None,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, file=file, row=row, line=line, column=column, key=key)
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.sent = sent
        self.headers: dict[str, str] = {}  # the response's rate-limit headers, if any

    @property
    def resource(self) -> str | None:
        """The model the call went to, named as resources are (``provider/model``)."""
        return f"{self.provider}/{self.model}" if self.provider and self.model else None

    def __reduce__(self) -> tuple[Any, ...]:
        state = self._context()
        state.update(
            provider=self.provider,
            model=self.model,
            status=self.status,
            retry_after=self.retry_after,
            sent=self.sent,
        )
        return (_rebuild_provider_error, (type(self), self.message, state))

    def __str__(self) -> str:
        who = "/".join(part for part in (self.provider, self.model) if part)
        text = super().__str__()
        if self.status is not None:
            text = f"HTTP {self.status}: {text}"
        return f"{who}: {text}" if who else text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, provider={self.provider!r}, "
            f"model={self.model!r}, status={self.status!r}, retry_after={self.retry_after!r})"
        )


class RateLimitError(ProviderError):
    """The provider refused the call for its rate or concurrency limit (429)."""

    cause: Cause = "rate_limit"
    retryable = True


class ProviderAuthError(ProviderError):
    """A missing or wrong API key, a forbidden model, or an account without credit."""

    cause: Cause = "auth"
    default_hint = "check the API key in the provider's environment variable"


class ProviderTimeoutError(ProviderError):
    """The call ran past the client timeout, or the provider said it timed out."""

    cause: Cause = "timeout"
    retryable = True


class ProviderConnectionError(ProviderError):
    """No connection, or the connection broke before a response."""

    cause: Cause = "connection"
    retryable = True


class ProviderServerError(ProviderError):
    """The provider failed on its side (5xx, overloaded, a conflict to retry)."""

    cause: Cause = "server"
    retryable = True


class BadRequestError(ProviderError):
    """The provider rejected the request itself (400, 413, 422, ...)."""

    cause: Cause = "bad_request"


class ModelNotFoundError(ProviderError):
    """The provider does not know the model (404)."""

    cause: Cause = "not_found"
    default_hint = "check the model name, e.g. openai/gpt-4o-mini"


class ContentFilterError(ProviderError):
    """The provider's content filter refused the prompt or the answer."""

    cause: Cause = "content_filter"


class OutputTruncatedError(ProviderError):
    """The answer stopped at ``max_tokens``."""

    cause: Cause = "length"
    default_hint = "raise max_tokens, or send fewer rows per request"


class InvalidOutputError(ProviderError):
    """A response body, or an answer, that is not what was asked for. Retried."""

    cause: Cause = "invalid_output"
    retryable = True
