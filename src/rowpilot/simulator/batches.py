"""The simulator's Batch APIs: OpenAI's Files and Batches, Anthropic's Message Batches.

The rules (time, lifecycle, validation and limits, row errors, stats) are written once, in
``rowpilot.simulator.server``'s docstring ("Batches"). The server adds ``Batches.routes()``
to its app behind its key check, writes a ``Refused`` as the provider's error body, counts
each request, and lends an ``Answerer``: its own online answer rules (the one copy), so a
batch row gets the very answer, usage and finish reason a call with its body would.
Batches never touch the online rate limits. State is kept under one lock: tests advance
the clock and read the stats from their own thread while the server's loop serves.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import BodyPartReader, hdrs, web

__all__ = ["ANTHROPIC", "OPENAI", "Answerer", "BatchSettings", "Batches", "Refused", "Route"]

OPENAI = "openai"
ANTHROPIC = "anthropic"
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 2**20
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 2**20
FILE_MAX_BYTES = 512 * 2**20  # the Files API's own limit, whatever the purpose
MESSAGES = "/v1/messages"
OPENAI_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_OPENAI_PATH, _ANTHROPIC_PATH = "/v1/batches", "/v1/messages/batches"
_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_FILE_LIFE_S = 30 * 86_400  # batch files expire after 30 days
_ERRORS_LISTED = 100
_CANCELLED = "This request was not executed because the batch was cancelled."
_EXPIRED = "This request could not be executed before the completion window expired."
_NOT_RUN = {"cancelled": ("batch_cancelled", _CANCELLED), "expired": ("batch_expired", _EXPIRED)}


class Answerer(Protocol):
    """What the server lends this module: its online answers, without limits or faults."""

    def answer(
        self, endpoint: str, body: Mapping[str, Any], request_id: str
    ) -> tuple[int, dict[str, Any]]:
        """The status and body ``POST endpoint`` answers ``body`` with."""

    def server_error(self, endpoint: str) -> dict[str, Any]:
        """The body of a 500 in the endpoint's provider's shape."""

    def prompt_tokens(self, endpoint: str, body: Mapping[str, Any]) -> int:
        """The prompt tokens the endpoint counts for ``body`` (0 when it cannot read it)."""


@dataclass(frozen=True)
class BatchSettings:
    """The batch knobs of ``SimulatorConfig`` (checked there); None limits: the provider's."""

    models: frozenset[str]
    completion_delay_s: float = 0.0
    expire_after_s: float = 86_400.0
    row_errors: float = 0.0
    errors_persist: bool = False
    max_requests: int | None = None
    max_bytes: int | None = None
    queue_tokens: int | None = None

    def limits(self, provider: str) -> tuple[int, int]:
        """Requests and bytes a batch may hold at most."""
        requests, size = (
            (OPENAI_MAX_REQUESTS, OPENAI_MAX_BYTES)
            if provider == OPENAI
            else (ANTHROPIC_MAX_REQUESTS, ANTHROPIC_MAX_BYTES)
        )
        return self.max_requests or requests, self.max_bytes or size


class Refused(Exception):
    """A batch request refused with ``status``; the server writes the provider's error body."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class Route:
    """One batch route: ``provider`` says whose key and error shape (None: the admin's)."""

    method: str
    path: str
    endpoint: str
    provider: str | None
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: float


@dataclass(frozen=True)
class _Outcome:
    status: int
    body: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class _Row:
    custom_id: str
    body: dict[str, Any]  # OpenAI: the line's body; Anthropic: the entry's params
    fails: bool  # drew a server error (see "Row errors")
    outcome: _Outcome | None = None


@dataclass
class _Batch:
    id: str
    provider: str
    endpoint: str
    created_at: float
    delay_s: float
    expire_s: float
    rows: list[_Row]
    input_file_id: str | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation: the batch fails
    cancel_at: float | None = None
    end: str | None = None  # completed, failed, expired, cancelled
    ended_at: float | None = None
    stopped_at: float = math.inf  # rows done by then have run
    output_file_id: str | None = None
    error_file_id: str | None = None
    prompt_tokens: int = 0

    def done(self, at: float) -> int:
        """How many rows (from the first) are done at ``at``."""
        at = min(at, self.stopped_at)
        if self.end == "failed" or at < self.created_at:
            return 0
        if at >= self.created_at + self.delay_s:
            return len(self.rows)
        return math.floor((at - self.created_at) * len(self.rows) / self.delay_s + 1e-9)

    def running(self) -> bool:
        return self.end is None and not self.errors


class _Clock:
    """The wall clock plus what tests advanced it by, as Unix seconds."""

    def __init__(self) -> None:
        self._origin = time.time() - time.monotonic()
        self.advanced = 0.0

    def now(self) -> float:
        return self._origin + time.monotonic() + self.advanced


def _counts(provider: str) -> dict[str, Any]:
    counts: dict[str, Any] = {"created": 0, "rows": 0, "rows_per_batch": [], "row_errors": 0}
    counts.update(results_downloads=0, completed=0, failed=0, expired=0, cancelled=0)
    return counts | ({"files_uploaded": 0} if provider == OPENAI else {})


# -- the service ----------------------------------------------------------------------------


class Batches:
    """Files, batches and their clock; thread-safe (tests read stats and advance the clock
    from their own thread while the server's loop handles requests)."""

    def __init__(self, settings: BatchSettings, answerer: Answerer) -> None:
        self.settings = settings
        self._answerer = answerer
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every file, batch, custom_id seen and count, and the clock's advance."""
        with self._lock:
            self._clock = _Clock()
            self._files: dict[str, _File] = {}
            self._batches: dict[str, _Batch] = {}  # in creation order
            self._seen: dict[str, set[str]] = {OPENAI: set(), ANTHROPIC: set()}
            self._ids = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {OPENAI: _counts(OPENAI), ANTHROPIC: _counts(ANTHROPIC)}
            self._advanced_at_reset = self._clock.advanced

    def stats(self) -> dict[str, Any]:
        with self._lock:
            view: dict[str, Any] = json.loads(json.dumps(self._stats))
            view["advanced_s"] = self._clock.advanced - self._advanced_at_reset
            return view

    def advance(self, seconds: float) -> float:
        """Move the batch clock forward; the total advance so far."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, not {seconds!r}")
        with self._lock:
            self._clock.advanced += seconds
            return self._clock.advanced

    def routes(self) -> list[Route]:
        one, two = _OPENAI_PATH + "/{id}", _ANTHROPIC_PATH + "/{id}"
        openai = [
            ("POST", "/v1/files", "files", self._upload),
            ("GET", "/v1/files/{id}", "files", self._get_file),
            ("GET", "/v1/files/{id}/content", "files", self._file_content),
            (hdrs.METH_DELETE, "/v1/files/{id}", "files", self._delete_file),
            ("POST", _OPENAI_PATH, "batches", self._create_openai),
            ("GET", _OPENAI_PATH, "batches", self._list_openai),
            ("GET", one, "batches", self._get_openai),
            ("POST", one + "/cancel", "batches", self._cancel_openai),
        ]
        anthropic = [
            ("POST", _ANTHROPIC_PATH, self._create_anthropic),
            ("GET", _ANTHROPIC_PATH, self._list_anthropic),
            ("GET", two, self._get_anthropic),
            ("POST", two + "/cancel", self._cancel_anthropic),
            ("GET", two + "/results", self._results),
            (hdrs.METH_DELETE, two, self._delete_anthropic),
        ]
        return [
            *(Route(method, path, name, OPENAI, handler) for method, path, name, handler in openai),
            *(Route(m, path, "messages.batches", ANTHROPIC, h) for m, path, h in anthropic),
            Route("POST", "/batches/advance", "batches.advance", None, self._advance),
        ]

    def _new_batch(
        self, prefix: str, provider: str, endpoint: str, now: float, rows: list[_Row]
    ) -> _Batch:
        delay, expiry = self.settings.completion_delay_s, self.settings.expire_after_s
        return _Batch(self._next_id(prefix), provider, endpoint, now, delay, expiry, rows)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}sim{self._ids:08d}"

    # -- OpenAI files --

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            raise Refused(400, "Uploads must be multipart/form-data with file and purpose.")
        reader = await request.multipart()
        form: dict[str, str] = {}
        upload: tuple[str, bytes] | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise Refused(400, "A nested multipart body is not supported.")
            if part.name == "file":
                upload = (
                    part.filename or "upload",
                    await _capped(_part_chunks(part), FILE_MAX_BYTES),
                )
            else:
                form[part.name or ""] = await part.text()
        purpose = form.get("purpose")
        if upload is None or purpose is None:
            raise Refused(400, "Both file and purpose are required.", "missing_required_parameter")
        if purpose not in _PURPOSES:
            raise Refused(400, f"purpose: {purpose!r} is not one of {', '.join(_PURPOSES)}.")
        if purpose == "batch" and not upload[0].endswith(".jsonl"):
            raise Refused(400, "Invalid file format for Batch API. Must be .jsonl")
        with self._lock:
            file = _File(self._next_id("file-"), upload[0], purpose, upload[1], self._clock.now())
            self._files[file.id] = file
            self._stats[OPENAI]["files_uploaded"] += 1
        return web.json_response(_file_object(file))

    def _file(self, request: web.Request) -> _File:
        file = self._files.get(request.match_info["id"])
        if file is None:
            raise Refused(404, f"No such File object: {request.match_info['id']}")
        return file

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            return web.json_response(_file_object(self._file(request)))

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            file = self._file(request)
            if file.purpose == "batch_output":
                self._stats[OPENAI]["results_downloads"] += 1
        return web.Response(body=file.data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            file = self._file(request)
            del self._files[file.id]
        return web.json_response({"id": file.id, "object": "file", "deleted": True})

    # -- OpenAI batches --

    async def _create_openai(self, request: web.Request) -> web.StreamResponse:
        body = _parse_json(await request.read())
        endpoint, window = body.get("endpoint"), body.get("completion_window")
        if endpoint not in OPENAI_ENDPOINTS:
            raise Refused(400, f"endpoint: one of {', '.join(OPENAI_ENDPOINTS)} is simulated.")
        if window != "24h":
            raise Refused(400, "completion_window: only '24h' is supported.")
        metadata = _metadata(body.get("metadata"))
        with self._lock:
            file = self._files.get(str(body.get("input_file_id")))
            if file is None:
                raise Refused(404, f"No such File object: {body.get('input_file_id')}")
            if file.purpose != "batch":
                raise Refused(400, "input_file_id: the file must be uploaded with purpose 'batch'.")
            now = self._clock.now()
            batch = self._validated(file, endpoint, now)
            batch.metadata = metadata
            self._created(batch)
            view = self._openai_view(batch, now, validating=True)
        return web.json_response(view)

    def _validated(self, file: _File, endpoint: str, now: float) -> _Batch:
        settings = self.settings
        batch = self._new_batch("batch_", OPENAI, endpoint, now, [])
        batch.input_file_id = file.id
        max_requests, max_bytes = settings.limits(OPENAI)
        rows, errors, model = _read_lines(file.data, endpoint, settings.models)
        batch.rows, batch.model = rows, model
        if len(file.data) > max_bytes:
            message = f"The batch input file is larger than the {max_bytes} bytes maximum."
            errors.insert(0, _error("file_too_large", message, None))
        if len(rows) > max_requests:
            message = f"The batch input file has {len(rows)} requests, more than {max_requests}."
            errors.insert(0, _error("too_many_requests", message, None))
        if not rows and not errors:
            errors.append(_error("empty_file", "The batch input file has no requests.", None))
        if not errors:
            tokens = self._answerer.prompt_tokens
            batch.prompt_tokens = sum(tokens(endpoint, row.body) for row in rows)
            errors = self._queue_errors(batch)
        batch.errors = errors[:_ERRORS_LISTED]
        return batch

    def _queue_errors(self, batch: _Batch) -> list[dict[str, Any]]:
        """OpenAI's enqueued-token limit: the model's running batches' prompt tokens."""
        limit = self.settings.queue_tokens
        if limit is None:
            return []
        for other in self._batches.values():
            self._refresh(other, batch.created_at)
        queued = sum(
            other.prompt_tokens
            for other in self._batches.values()
            if other.running() and other.provider == OPENAI and other.model == batch.model
        )
        if queued + batch.prompt_tokens <= limit:
            return []
        message = (
            f"Enqueued token limit reached for {batch.model} in organization org-sim. Limit: "
            f"{limit} enqueued tokens. Please try again once some in_progress batches have "
            "been completed."
        )
        return [_error("token_limit_exceeded", message, None)]

    def _created(self, batch: _Batch) -> None:
        """Keep a new batch, draw its rows' errors and count it."""
        seen = self._seen[batch.provider]
        if not batch.errors:
            for row in batch.rows:
                drawn = _unit(f"batch-error\0{row.custom_id}") < self.settings.row_errors
                row.fails = drawn and (self.settings.errors_persist or row.custom_id not in seen)
            seen.update(row.custom_id for row in batch.rows)
        self._batches[batch.id] = batch
        counts = self._stats[batch.provider]
        counts["created"] += 1
        counts["rows"] += len(batch.rows)
        counts["rows_per_batch"].append(len(batch.rows))

    def _batch(self, request: web.Request, provider: str) -> _Batch:
        batch = self._batches.get(request.match_info["id"])
        if batch is None or batch.provider != provider:
            if provider == ANTHROPIC:
                raise Refused(404, f"Message Batch {request.match_info['id']} not found.")
            raise Refused(404, f"No batch found with id '{request.match_info['id']}'.")
        self._refresh(batch, self._clock.now())
        return batch

    async def _get_openai(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batch = self._batch(request, OPENAI)
            return web.json_response(self._openai_view(batch, self._clock.now()))

    async def _list_openai(self, request: web.Request) -> web.StreamResponse:
        limit = _limit(request, "limit", 100)
        after = request.query.get("after")
        with self._lock:
            now = self._clock.now()
            newest = self._newest(OPENAI, now)
            page, more = _page_after(newest, after, limit)
            data = [self._openai_view(batch, now) for batch in page]
        return web.json_response({"object": "list", **_page_body(data, more)})

    async def _cancel_openai(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batch = self._batch(request, OPENAI)
            if batch.end is not None:
                raise Refused(409, f"Cannot cancel a batch with status '{batch.end}'.")
            return web.json_response(self._openai_view(batch, _cancel(batch, self._clock.now())))

    # -- Anthropic message batches --

    async def _create_anthropic(self, request: web.Request) -> web.StreamResponse:
        _, max_bytes = self.settings.limits(ANTHROPIC)
        raw = await _capped(request.content.iter_chunked(2**16), max_bytes)
        body = _parse_json(raw)
        entries = _anthropic_entries(body.get("requests"), self.settings.limits(ANTHROPIC)[0])
        with self._lock:
            now = self._clock.now()
            rows = [_Row(custom_id, params, fails=False) for custom_id, params in entries]
            batch = self._new_batch("msgbatch_", ANTHROPIC, MESSAGES, now, rows)
            self._created(batch)
            view = self._anthropic_view(batch, now, _origin(request))
        return web.json_response(view)

    async def _get_anthropic(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batch = self._batch(request, ANTHROPIC)
            return web.json_response(
                self._anthropic_view(batch, self._clock.now(), _origin(request))
            )

    async def _list_anthropic(self, request: web.Request) -> web.StreamResponse:
        limit = _limit(request, "limit", 1000)
        after, before = request.query.get("after_id"), request.query.get("before_id")
        with self._lock:
            now = self._clock.now()
            newest = self._newest(ANTHROPIC, now)
            if before is not None:
                older_first, more = _page_after(newest[::-1], before, limit)
                page = older_first[::-1]
            else:
                page, more = _page_after(newest, after, limit)
            data = [self._anthropic_view(batch, now, _origin(request)) for batch in page]
        return web.json_response(_page_body(data, more))

    async def _cancel_anthropic(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batch = self._batch(request, ANTHROPIC)
            if batch.end is not None:
                raise Refused(400, f"Message Batch {batch.id} has ended and cannot be canceled.")
            now = _cancel(batch, self._clock.now())
            return web.json_response(self._anthropic_view(batch, now, _origin(request)))

    async def _results(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batch = self._batch(request, ANTHROPIC)
            if batch.end is None:
                raise Refused(400, f"Message Batch {batch.id} has not ended: no results yet.")
            lines = [self._anthropic_result(batch, index, row) for index, row in _shuffled(batch)]
            self._stats[ANTHROPIC]["results_downloads"] += 1
        return web.Response(body=_jsonl(lines), content_type="application/x-jsonl")

    async def _delete_anthropic(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batch = self._batch(request, ANTHROPIC)
            if batch.end is None:
                raise Refused(400, f"Message Batch {batch.id} is processing: cancel it first.")
            del self._batches[batch.id]
        return web.json_response({"id": batch.id, "type": "message_batch_deleted"})

    # -- the clock --

    async def _advance(self, request: web.Request) -> web.StreamResponse:
        try:
            advanced = self.advance(float(request.query.get("seconds", "")))
        except ValueError as exc:
            raise Refused(400, f"seconds: a finite number >= 0 is required ({exc})") from exc
        return web.json_response({"advanced_s": advanced, "now": self._clock.now()})

    # -- bringing batches up to date --

    def _newest(self, provider: str, now: float) -> list[_Batch]:
        batches = [batch for batch in self._batches.values() if batch.provider == provider]
        for batch in batches:
            self._refresh(batch, now)
        return batches[::-1]

    def _refresh(self, batch: _Batch, now: float) -> None:
        """End the batch if its time has come (see "Lifecycle" above)."""
        if batch.end is not None:
            return
        expiry, last = batch.created_at + batch.expire_s, batch.created_at + batch.delay_s
        if batch.errors:
            self._finish(batch, "failed", batch.created_at)
        elif batch.cancel_at is not None:
            self._finish(batch, "cancelled", now)
        elif last <= expiry and now >= last:
            self._finish(batch, "completed", last)
        elif last > expiry and now >= expiry:
            batch.stopped_at = expiry
            self._finish(batch, "expired", expiry)

    def _finish(self, batch: _Batch, end: str, at: float) -> None:
        batch.end, batch.ended_at = end, at
        self._stats[batch.provider][end] += 1
        if batch.provider == OPENAI and end != "failed":
            self._write_files(batch)

    def _write_files(self, batch: _Batch) -> None:
        done = batch.done(math.inf)
        succeeded: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for index, row in _shuffled(batch):
            if index >= done:
                code, message = _NOT_RUN[batch.end or "expired"]
                failed.append(_output_line(batch, row, None, {"code": code, "message": message}))
                continue
            outcome = self._outcome(batch, index, row)
            response = {
                "status_code": outcome.status,
                "request_id": _request_id(batch, index),
                "body": outcome.body,
            }
            (succeeded if outcome.status == 200 else failed).append(
                _output_line(batch, row, response, None)
            )
        batch.output_file_id = self._output_file(batch, "output", succeeded)
        batch.error_file_id = self._output_file(batch, "error", failed)

    def _output_file(self, batch: _Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        name, moment = f"{batch.id}_{kind}.jsonl", batch.ended_at or batch.created_at
        file = _File(self._next_id("file-"), name, "batch_output", _jsonl(lines), moment)
        self._files[file.id] = file
        return file.id

    def _outcome(self, batch: _Batch, index: int, row: _Row) -> _Outcome:
        """The row's answer, computed once (the answer rules are pure, so once is enough)."""
        if row.outcome is None:
            if row.fails:
                self._stats[batch.provider]["row_errors"] += 1
                row.outcome = _Outcome(500, self._answerer.server_error(batch.endpoint))
            else:
                status, body = self._answerer.answer(
                    batch.endpoint, row.body, _request_id(batch, index)
                )
                row.outcome = _Outcome(status, body, *_usage(body) if status == 200 else (0, 0))
        return row.outcome

    # -- views --

    def _openai_view(
        self, batch: _Batch, now: float, *, validating: bool = False
    ) -> dict[str, Any]:
        done = 0 if validating else batch.done(now)
        outcomes = [self._outcome(batch, index, batch.rows[index]) for index in range(done)]
        ok = [outcome for outcome in outcomes if outcome.status == 200]
        ended = batch.end in ("cancelled", "expired")
        counts = {
            "total": 0 if validating or batch.errors else len(batch.rows),
            "completed": len(ok),
            "failed": len(outcomes) - len(ok) + (len(batch.rows) - done if ended else 0),
        }
        if validating:
            status = "validating"
        elif batch.end is None:
            status = "in_progress" if batch.cancel_at is None else "cancelling"
        else:
            status = batch.end
        tokens_in = sum(outcome.input_tokens for outcome in ok)
        tokens_out = sum(outcome.output_tokens for outcome in ok)
        stamp = _stamps(batch, validating)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at),
            "expires_at": int(batch.created_at + batch.expire_s),
            **stamp,
            "request_counts": counts,
            "metadata": batch.metadata,
            "usage": {
                "input_tokens": tokens_in,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": tokens_out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": tokens_in + tokens_out,
            },
        }

    def _anthropic_view(self, batch: _Batch, now: float, origin: str) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if batch.end is None:
            counts["processing"] = len(batch.rows)
            status = "in_progress" if batch.cancel_at is None else "canceling"
        else:
            status = "ended"
            for index, row in enumerate(batch.rows):
                counts[self._anthropic_kind(batch, index, row)] += 1
        ended = batch.ended_at
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": None if ended is None else _rfc3339(ended),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + batch.expire_s),
            "archived_at": None,
            "cancel_initiated_at": None if batch.cancel_at is None else _rfc3339(batch.cancel_at),
            "results_url": None
            if ended is None
            else f"{origin}{_ANTHROPIC_PATH}/{batch.id}/results",
        }

    def _anthropic_kind(self, batch: _Batch, index: int, row: _Row) -> str:
        if index >= batch.done(math.inf):
            return "canceled" if batch.end == "cancelled" else "expired"
        return "succeeded" if self._outcome(batch, index, row).status == 200 else "errored"

    def _anthropic_result(self, batch: _Batch, index: int, row: _Row) -> dict[str, Any]:
        kind = self._anthropic_kind(batch, index, row)
        result: dict[str, Any] = {"type": kind}
        if kind == "succeeded":
            result["message"] = self._outcome(batch, index, row).body
        elif kind == "errored":
            result["error"] = self._outcome(batch, index, row).body
        return {"custom_id": row.custom_id, "result": result}


# -- reading requests -----------------------------------------------------------------------


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(2**16):
        yield chunk


async def _capped(chunks: AsyncIterator[bytes], most: int) -> bytes:
    """All of ``chunks``, read past the app's own body limit, refused (413) past ``most``."""
    kept, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > most:
            raise Refused(413, f"Request exceeds the maximum size of {most} bytes.")
        kept.append(chunk)
    return b"".join(kept)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Refused(400, "We could not parse the JSON body of your request.")
    return body


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    pairs = value.items() if isinstance(value, dict) else None
    if pairs is None or len(value) > _METADATA_PAIRS:
        raise Refused(400, f"metadata: an object of at most {_METADATA_PAIRS} pairs is required.")
    for key, item in pairs:
        if not isinstance(item, str) or len(key) > _METADATA_KEY or len(item) > _METADATA_VALUE:
            limits = f"keys of at most {_METADATA_KEY} characters, values {_METADATA_VALUE}"
            raise Refused(400, f"metadata: string values are required, {limits}.")
    return dict(value)


def _limit(request: web.Request, name: str, most: int) -> int:
    text = request.query.get(name, "20")
    if not (text.isdigit() and 1 <= int(text) <= most):
        raise Refused(400, f"{name}: an integer from 1 to {most} is required.")
    return int(text)


def _page_after(
    batches: Sequence[_Batch], after: str | None, limit: int
) -> tuple[list[_Batch], bool]:
    """The ``limit`` batches after the one named ``after`` (from the start without it), and
    whether more follow; an id not found gives an empty page."""
    start = 0
    if after is not None:
        ids = [batch.id for batch in batches]
        start = ids.index(after) + 1 if after in ids else len(batches)
    return list(batches[start : start + limit]), start + limit < len(batches)


def _cancel(batch: _Batch, now: float) -> float:
    """Stop the batch's rows at ``now`` (a second cancel changes nothing); ``now``."""
    if batch.cancel_at is None:
        batch.cancel_at = batch.stopped_at = now
    return now


def _page_body(data: Sequence[Mapping[str, Any]], more: bool) -> dict[str, Any]:
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"data": list(data), "has_more": more, "first_id": first, "last_id": last}


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _anthropic_entries(requests: Any, max_requests: int) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(requests, list) or not requests:
        raise Refused(400, "requests: a non-empty list of requests is required.")
    if len(requests) > max_requests:
        raise Refused(400, f"requests: at most {max_requests} requests are allowed in a batch.")
    entries: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, entry in enumerate(requests):
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        params = entry.get("params") if isinstance(entry, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            raise Refused(400, f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if not isinstance(params, dict):
            raise Refused(400, f"requests.{index}.params: an object is required.")
        if custom_id in seen:
            raise Refused(400, f"requests.{index}.custom_id: {custom_id!r} is not unique.")
        seen.add(custom_id)
        entries.append((custom_id, params))
    return entries


def _read_lines(
    data: bytes, endpoint: str, models: frozenset[str]
) -> tuple[list[_Row], list[dict[str, Any]], str | None]:
    """An OpenAI input file's rows, the errors that fail it, and its model."""
    rows: list[_Row] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        request, error = _line_request(line, endpoint, number)
        if error is None and request["custom_id"] in seen:
            message = (
                "The custom_id for this request is a duplicate of another request. The "
                "custom_id parameter must be unique for each request in a batch."
            )
            error = _error("duplicate_custom_id", message, number, "custom_id")
        if error is None:
            line_model = request["body"]["model"]
            model = model or line_model
            if line_model not in models:
                message = (
                    f"The model `{line_model}` does not exist or you do not have access to it."
                )
                error = _error("model_not_found", message, number, "body.model")
            elif line_model != model:
                message = f"Model {line_model!r} differs from {model!r}: one model per batch file."
                error = _error("mismatched_model", message, number, "body.model")
        if error is not None:
            errors.append(error)
            continue
        seen.add(request["custom_id"])
        rows.append(_Row(request["custom_id"], request["body"], fails=False))
    return rows, errors, model


def _line_request(
    line: bytes, endpoint: str, number: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    try:
        request = json.loads(line)
    except ValueError:
        message = "This line is not parseable as valid JSON."
        return {}, _error("invalid_json_line", message, number)
    if not isinstance(request, dict):
        return {}, _error("invalid_request", "Each line must be a JSON object.", number)
    for name, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        if not isinstance(request.get(name), kind):
            message = f"Missing or invalid required parameter: {name}."
            return {}, _error("invalid_request", message, number, name)
    if request["method"] != "POST":
        return {}, _error("invalid_request", "Only POST is supported.", number, "method")
    if request["url"] != endpoint:
        message = "The URL provided for this request does not match the batch endpoint."
        return {}, _error("invalid_url", message, number, "url")
    if not isinstance(request["body"].get("model"), str):
        message = "Missing required parameter: body.model."
        return {}, _error("invalid_request", message, number, "body.model")
    return request, None


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


# -- writing answers ------------------------------------------------------------------------


def _blake(text: str, size: int = 8) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


def _unit(text: str) -> float:
    """blake2b-64 of ``text`` as a number in [0, 1)."""
    return int.from_bytes(_blake(text)) / 2**64


def _shuffled(batch: _Batch) -> list[tuple[int, _Row]]:
    """The rows with their index, in the order results are written (not the input's)."""
    return sorted(
        enumerate(batch.rows), key=lambda pair: _blake(f"{batch.id}\0{pair[1].custom_id}")
    )


def _request_id(batch: _Batch, index: int) -> str:
    return f"{batch.id}-{index}"


def _output_line(
    batch: _Batch, row: _Row, response: dict[str, Any] | None, error: dict[str, str] | None
) -> dict[str, Any]:
    line_id = "batch_req_" + _blake(f"{batch.id}\0{row.custom_id}", 12).hex()
    return {"id": line_id, "custom_id": row.custom_id, "response": response, "error": error}


def _jsonl(lines: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def _usage(body: Mapping[str, Any]) -> tuple[int, int]:
    """Input and output tokens of an answer, whichever provider's shape it has."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return 0, 0
    tokens_in = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    tokens_out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return int(tokens_in), int(tokens_out)


def _file_object(file: _File) -> dict[str, Any]:
    expires = file.created_at + _FILE_LIFE_S if file.purpose in ("batch", "batch_output") else None
    return {
        "id": file.id,
        "object": "file",
        "bytes": len(file.data),
        "created_at": int(file.created_at),
        "expires_at": None if expires is None else int(expires),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def _stamps(batch: _Batch, validating: bool) -> dict[str, int | None]:
    """The OpenAI batch's timestamps of the steps it has passed."""

    def at(moment: float | None, when: bool = True) -> int | None:
        return None if moment is None or not when else int(moment)

    end, ended = batch.end, batch.ended_at
    return {
        "in_progress_at": at(batch.created_at, not validating and end != "failed"),
        "finalizing_at": at(ended, end == "completed"),
        "completed_at": at(ended, end == "completed"),
        "failed_at": at(ended, end == "failed" and not validating),
        "expired_at": at(ended, end == "expired"),
        "cancelling_at": at(batch.cancel_at),
        "cancelled_at": at(ended, end == "cancelled"),
    }


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
