"""A local simulator of the OpenAI and Anthropic APIs, to test and benchmark against.

A real HTTP server on 127.0.0.1 (aiohttp) that the official SDKs talk to unchanged: point
``openai.OpenAI(base_url=sim.openai_base_url)`` or ``anthropic.Anthropic(base_url=
sim.anthropic_base_url)`` at it. It enforces rate limits the way the providers do, injects
faults on demand, and answers deterministically from the prompt, so a test can prove that
every output reached the right row.

Endpoints
---------
``POST /v1/chat/completions``  OpenAI chat (no streaming: ``stream: true`` is a 400)
``POST /v1/embeddings``        OpenAI embeddings (``encoding_format`` float or base64)
``GET  /v1/models``            the simulated models; Anthropic's shape when the request
                               carries an ``anthropic-version`` header, else OpenAI's
``POST /v1/messages``          Anthropic messages (no streaming)
``POST /search``               a web-search API with its own rate limit, see Search below
``GET  /stats``                counters, see below; ``POST /stats/reset`` zeroes them
``GET  /stats/admissions``     when each model and the search API let requests in
``POST /v1/files``             OpenAI Files: multipart ``file`` and ``purpose``; ``GET``
                               (or the delete method) ``/v1/files/{id}``, ``GET
                               /v1/files/{id}/content``
``POST /v1/batches``           OpenAI Batches (chat completions or embeddings): ``GET
                               /v1/batches/{id}``, ``GET /v1/batches?limit=&after=``,
                               ``POST /v1/batches/{id}/cancel``; see Batches below
``POST /v1/messages/batches``  Anthropic Message Batches: ``GET`` (or delete) ``.../{id}``,
                               ``GET ...?limit=&after_id=&before_id=``, ``POST
                               .../{id}/cancel``, ``GET .../{id}/results`` (JSONL)
``POST /batches/advance``      ``?seconds=N``: move the batch clock (no key needed)

Errors have each provider's JSON shape: OpenAI ``{"error": {"message", "type", "param",
"code"}}``, Anthropic ``{"type": "error", "error": {"type", "message"}}``. A wrong or
missing key (when the simulator has an ``api_key``) is a 401: OpenAI endpoints read
``Authorization: Bearer <key>``, Anthropic's read ``x-api-key: <key>`` or (as recent
anthropic SDKs send it) ``Authorization: Bearer <key>``. An unknown model is
a 404 (OpenAI code ``model_not_found``, Anthropic type ``not_found_error``).

Answers
-------
What to answer comes from the LAST user message (the *prompt*); how to answer (JSON or
text, which fields) also reads the system prompt. Together they are the *instructions*.

1. **Rows.** Prompt lines of the form ``[key=K] text`` are rows of a batch; anything else
   in the prompt is ignored when there is at least one. The answer is
   ``{"results": [{"key": "K", ...fields...}, ...]}``, one entry per tagged line in prompt
   order, each computed from that line's text alone (so reordering the lines changes no
   entry). The key is a string, or an integer when the schema types ``key`` as integer.
   Without tagged lines the prompt minus its ``Fields:``/``Labels:`` lines is one row
   and the answer is the row object itself.
2. **JSON or text.** The answer is JSON when ``response_format`` is ``json_object`` or
   ``json_schema`` (Anthropic: ``output_config.format`` or ``output_format``), when the
   instructions contain the word ``JSON``, a ``Fields:`` or ``Labels:`` line, or when the
   prompt has rows. Otherwise it is the text ``Answer <hash8>: <SUMMARY>`` where hash8 is
   blake2b-32 of the prompt in hex.
3. **Fields.** A JSON schema names them: for a batch, the properties of
   ``results.items`` (without ``key``) when the schema has a ``results`` array, else the
   top-level properties; local ``$ref``s are followed (pydantic schemas work). Without a
   schema, instruction lines name them::

       Fields: title, pages:int, score:number, done:bool, tags:list
       Labels: spam, urgent

   ``Fields:`` entries are strings unless typed ``:str``, ``:int``, ``:number``,
   ``:bool`` or ``:list``; ``Labels:`` entries are booleans. Lines start with the keyword
   (any case). With no fields at all a row is ``{"answer": SUMMARY, "length": n,
   "hash": hash8}``.
4. **Values** from a row's text: string = its first 12 words upper-cased (SUMMARY);
   integer or number = ``len(text)``; boolean = true when the field name occurs in the
   text as a word (any case), else the low bit of blake2b(name + "\\0" + text); enum = the
   first option that occurs in the text as a word, else a blake2b-chosen option; array =
   one value per word of the first three words; object = its properties filled by the same
   rules; const = the const.
5. **Disagreement.** ``disagree`` gives a model a share s of rows it answers against the
   rule: a row (a tagged line's text, the prompt minus its instruction lines, or for a text
   answer the prompt) whose draw, ``disagreement_draw(text)`` = blake2b-64 of
   ``"disagree\\0" + text`` / 2**64, is below s. Every value of such a row is another valid
   one: the next enum option (cyclic), the boolean flipped, a number + 1, ``"NOT "`` before
   a string (a text answer too), each item of an array and property of an object alike; a
   key, a const, a null or a one-option enum stay. The draw does not depend on the model,
   so the rows of a smaller share are among those of a larger one: models with shares
   s1 <= s2 differ exactly on the rows whose draw lies in [s1, s2), each from the rule on
   those below its own share; agreement on a sample is known row by row in advance.
   Embeddings never disagree.
6. **Usage.** Prompt tokens = ceil(characters of every message (and system) / 4);
   completion tokens = ceil(len(answer) / 4), at least 1. An answer longer than
   ``max_tokens`` (or ``max_completion_tokens``) * 4 characters is cut there and finishes
   with ``length`` (Anthropic ``max_tokens``). Embeddings are unit vectors of
   ``dimensions`` (default 64) read from shake-256 of each text.

Rate limits
-----------
``rpm`` and ``tpm`` are per model, each a bucket that refills continuously at limit/60 per
second and holds ``limit * window_s / 60`` (default one second's worth), so there is no
full-minute burst. A request costs one request and prompt tokens + max_tokens (default
1024) tokens (embeddings: prompt tokens); it passes when each bucket holds its cost, or is
full when the cost exceeds the capacity (the bucket then goes into debt). A request whose
tokens exceed ``tpm`` itself can never pass: 429 without ``retry-after``.

``token_accounting`` says when the tokens bucket counts an answer's output: "admission"
(the default, as OpenAI does) keeps prompt + max_tokens charged; "usage" (as Anthropic's
output limit does) gives back max_tokens - completion tokens when the answer is done, so
the bucket ends charged prompt + real completion tokens. ``input_tpm`` and ``output_tpm``
are Anthropic's separate limits, each a bucket like ``tpm``'s: input tokens are charged at
admission; output tokens are reserved at max_tokens and settled to the real count when the
answer is done, whatever ``token_accounting`` says. A request that fails (a fault) keeps
its whole charge. The simulator has no prompt cache, so no input is a cache read: every
input token counts. The remaining a response reports is the bucket after the request's
own charge (and, where its answer settles, after the settlement). An Anthropic answer
carries ``anthropic-ratelimit-input-tokens-*`` and ``-output-tokens-*`` for those limits,
and ``-tokens-*`` for ``tpm``, or without it, as Anthropic does, for the most restrictive
of the two now (the one with less remaining); OpenAI answers carry only requests and
tokens.

A refused request gets 429 with ``retry-after`` (seconds, float) and, on OpenAI endpoints,
``retry-after-ms``. Every response on a limited model carries, per limited resource
(requests, tokens): OpenAI ``x-ratelimit-limit-<r>`` (per minute),
``x-ratelimit-remaining-<r>`` (what the bucket holds now), ``x-ratelimit-reset-<r>``
(until full, like ``1.2s`` or ``350ms``); Anthropic ``anthropic-ratelimit-<r>-limit``,
``-remaining`` and ``-reset`` (the RFC 3339 time it is full). ``max_concurrent`` refuses a
request beyond that many in flight with a 429 too (code ``concurrency_limit_exceeded``,
``retry-after`` = the median latency, at least 10 ms): it is a limit the client must
respect, not a server failure.

Faults and latency
------------------
Admitted requests wait ``latency_ms`` * lognormal(0, ``latency_jitter``) (so
``latency_ms`` is the median), then may fail: ``error_500``, ``error_503`` (provider error
bodies), ``hang`` (sleep ``hang_seconds``, then drop the connection), ``reset`` (TCP reset,
no response), ``malformed`` (200 with a body that is not JSON), ``bad_content`` (JSON was
asked, the content is not JSON), ``missing_field`` (JSON content missing its last field,
or a batch missing its last row). The two content faults apply to JSON answers only (not
to text answers nor embeddings). Rates are probabilities in 0..1 that sum to at most 1.
The header ``x-sim-fault: 500|503|hang|reset|malformed|bad_content|missing_field|none``
forces one (``none``: no fault). Randomness is reproducible: the n-th request with
identical bytes on an endpoint always draws the same fault and latency for a given
``seed``, whatever the arrival order of the other requests.
``refuse_word`` (off by default) plays a content filter: a request whose prompt mentions
the word (as a word, any case) is answered with no content and finish reason
``content_filter`` (Anthropic: stop reason ``refusal``), counted under faults as
``refused``. In a batch, one such row refuses the whole request, as real filters do.

Search
------
``POST /search`` with a JSON body ``{"query": str, "max_results": int}`` (1..20, default
5) stands for a web-search API (asked as Tavily's is: ``Authorization: Bearer <api_key>``
when the simulator has one, a 401 otherwise). It answers ``{"query": q, "results":
[{"title", "url", "snippet", "score"}, ...]}`` (Tavily calls the snippet ``content``),
``max_results`` entries, each derived from
blake2b(query + "\\0" + rank) alone (``search_answer``): a domain and a news-like phrase
picked by the hash, so a test knows every result, and an LLM prompt built from them gets
a deterministic answer too. Its limit is its own: ``search_rpm`` (a bucket like a model's,
holding ``window_s`` seconds' worth), 429 with ``retry-after`` and the
``x-ratelimit-*-requests`` headers when over, whatever the models' buckets hold (and the
other way round). It waits ``search_latency_ms`` (default: ``latency_ms``) with the same
jitter, and draws the status and transport faults (``500``, ``503``, ``hang``,
``reset``, ``malformed``) at the configured rates or from ``x-sim-fault``; the content
faults do not apply. It is not counted ``in_flight`` nor held to ``max_concurrent``,
which are the models'.

Batches
-------
``rowpilot.simulator.batches`` serves both providers' batch endpoints. Every row is
answered by the online endpoint's rules for its body (the same content, usage and finish
reason, a 4xx where the call would get one, ``refuse_word`` and ``disagree`` alike),
without rate limits, latency or the online faults (batch rows have content faults of their
own, below): batches do not count against ``rpm``/``tpm`` nor in "tokens" and "faults"
below, as providers keep batch queues apart.

*Time.* Batches run on the batch clock: the wall clock plus every advance so far (``POST
/batches/advance?seconds=N`` or ``Simulator.advance_batches(N)``). A batch of n rows
created at t0 has row i (file or list order, from 0) done at ``t0 + completion_delay_s *
(i + 1) / n`` and expires at ``t0 + expire_after_s`` (default 24 h) with the rows not done
by then. A batch is brought up to date whenever a request names or lists it, so with the
default delay of 0 it is done at the first look after its creation. A test sets a delay
of hours and moves the clock instead of sleeping: its own wall seconds are nothing beside.

*OpenAI.* The create call answers ``validating``; the next look shows ``failed`` (with
``errors``) or ``in_progress`` (``request_counts`` count the rows done so far), then
``completed`` once every row is done (``finalizing_at`` = ``completed_at``: finalizing is
never seen). A cancel answers ``cancelling``, the next look ``cancelled``; a batch past
its expiry is ``expired``. ``output_file_id`` names the file of the rows answered 200 (none
if no row was), ``error_file_id`` the file of the others (none if every row succeeded):
lines ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error":
null}``; a row that never ran has ``"response": null`` and ``error`` code
``batch_cancelled`` or ``batch_expired``. At the end ``completed + failed = total``;
``usage`` sums the rows answered 200; ``model`` is the file's. A batch file is checked when
the batch is created and the outcome shown at the next look: a line that is not JSON
(``invalid_json_line``), not an object or without ``custom_id``, ``method`` POST, a
``body`` with a ``model`` (``invalid_request``), with another ``url`` than the batch's
endpoint (``invalid_url``), a ``custom_id`` seen on an earlier line
(``duplicate_custom_id``), a model not served (``model_not_found``) or other than the
first line's (``mismatched_model``: one model per file), more than ``batch_max_requests``
lines (default 50,000: ``too_many_requests``), more than ``batch_max_bytes`` (default 200
MiB: ``file_too_large``), or, with ``batch_queue_tokens``, prompt tokens that with those of
the model's running batches pass that limit (``token_limit_exceeded``, OpenAI's enqueued
token limit) each fail it; the first 100 errors are listed. Codes other than
``invalid_json_line``, ``duplicate_custom_id`` and ``token_limit_exceeded`` are the
simulator's own names. An upload for purpose ``batch`` must be a ``.jsonl`` file; any
upload holds at most 512 MiB (413 beyond). Cancelling an ended batch is a 409. Batches
list newest first, ``limit`` 1..100 (default 20), ``after`` an id (an unknown id: an empty
page), with ``has_more``, ``first_id`` and ``last_id`` as the SDK's cursor page reads them.

*Anthropic.* A batch is ``in_progress`` (every row counted ``processing``, as Anthropic
counts until the end), ``canceling`` in the cancel call's answer, then ``ended`` with
``ended_at``, ``results_url`` (an absolute URL to this server, which the SDK follows) and
the counts ``succeeded``, ``errored`` (the result's ``error`` is the online error body),
``canceled`` and ``expired``. Creation refuses (400) an empty ``requests``, an entry
without a ``custom_id`` matching ``^[a-zA-Z0-9_-]{1,64}$`` or without ``params``, a
repeated ``custom_id``, more than ``batch_max_requests`` entries (default 100,000), and a
body over ``batch_max_bytes`` (default 256 MiB: 413 ``request_too_large``); ``params`` are
checked as each row runs (an ``errored`` result), and one batch may name several models.
Results before the end, a cancel after it and a delete before it are 400s. Batches list
newest first, ``limit`` 1..1000 (default 20), ``after_id`` (older) or ``before_id``
(newer). Anthropic batches carry no metadata and the simulator invents none: a client
that lost a batch's id can only list batches (id, ``created_at``, ``request_counts``) and,
once one has ended, read its results' ``custom_id``s. So a client records the id before
anything else and gives its ``custom_id``s a prefix of its own run. (OpenAI's
``metadata``, 16 string pairs, is kept and listed.)

*Held requests.* ``Simulator.hold_batches("create")`` makes each batch create take
effect at once (the batch exists, is listed and counted) while its answer waits for
``release_batches()`` (or a reset); with ``applied=False`` the create waits before it
takes effect and is then refused (503), as a request lost on the way. ``"results"`` holds
reads of a batch's answers (an OpenAI file's content, Anthropic results) past the first
``after``. A test kills its client in such a gap: between the provider's create and the
client's record of the id, before a create, or between two batches' collection.
``fail_batch_requests(n)`` answers the next n batch requests with a 500, unapplied.

Output lines and results come in an order of their own (by blake2b of batch id and
custom_id), not the input's: a client matches them by ``custom_id``.

*Row errors.* ``batch_row_errors`` is a share of rows answered as a server error (OpenAI:
status 500 in the error file; Anthropic: ``errored`` with ``api_error``): a row errs when
``int.from_bytes(blake2b("batch-error\\0" + custom_id, digest_size=8)) / 2**64`` is below
the share, and, unless ``batch_errors_persist``, only in the first batch (of its
provider) its ``custom_id`` was submitted in: a retry under the same ``custom_id``
succeeds.

*Content faults.* ``batch_bad_content`` and ``batch_missing_field`` are shares of batch
rows answered as the online ``bad_content`` and ``missing_field`` faults answer (content
that is not JSON; JSON missing its last field, or a batched answer its last row). A row
draws them by ``blake2b("batch-content\\0" + its body as sorted JSON)``, below
``batch_bad_content`` for the first, below the two shares' sum for the second: the same
request gets the same fault in every batch. The online fault knobs do not apply to batch
rows.

Stats
-----
``{"requests": {endpoint: {status: n}}, "requests_total", "rate_limited" (429s),
"concurrency_rejected", "faults": {kind: n}, "tokens": {"input", "output", "charged"},
"in_flight", "in_flight_max", "batches"}``; ``charged`` is what the models' token limits
counted (prompt + max_tokens at admission, less what settling at real usage gave back),
the measure of how much of a token ceiling a client used. Endpoints are
``chat.completions``, ``embeddings``, ``messages``, ``models``, ``search``, and for the
batch APIs ``files``, ``batches``, ``messages.batches`` and ``batches.advance``; a
connection dropped by a fault counts under status ``dropped``. ``batches`` has per
provider (``openai``, ``anthropic``) ``created``, ``rows`` (the requests of the batches
created; of an OpenAI file that fails validation, its valid lines), ``rows_per_batch``
(one entry per batch created, in order), ``row_errors`` (drawn errors answered),
``results_downloads`` (output or error file contents read; Anthropic: results read), the
batches ended ``completed``, ``failed``, ``expired`` and ``cancelled``, and for OpenAI
``files_uploaded``; and ``advanced_s``, how far the batch clock moved since the reset.
Resetting the stats leaves the rate-limit buckets, the fault draws and the batches as they
are.

Admissions: every request that reaches a rate limit (a model's or the search API's,
limited or not) is an *arrival* at that resource (the model's name, or ``search``), and an
*admission* when the limit let it in. ``Simulator.admissions(window_s)`` and ``GET
/stats/admissions?window_s=W`` give per resource ``{"arrived", "admitted",
"max_arrived", "max_admitted", "window_s"}``: the most requests that arrived (were let in)
within any ``W`` seconds, so a test can check that a client kept to a limit by itself
(arrivals) and that the limit held (admissions). ``&times=1`` adds ``"times"``: each
admission's seconds since the simulator started. The last 200,000 arrivals per resource
are kept; resetting the stats clears them.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import math
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import hdrs, web

from rowpilot.errors import ConfigError
from rowpilot.simulator.batches import ANTHROPIC, Batches, BatchSettings, Refused, Route

# What Simulator.hold_batches holds: a batch create, or a read of a batch's answers.
_HELD_PATHS = {
    "create": frozenset({"/v1/batches", "/v1/messages/batches"}),
    "results": frozenset({"/v1/files/{id}/content", "/v1/messages/batches/{id}/results"}),
}

__all__ = [
    "DEFAULT_MODELS",
    "FAULTS",
    "SEARCH_RESOURCE",
    "TOKEN_ACCOUNTING",
    "Simulator",
    "SimulatorConfig",
    "disagreement_draw",
    "search_answer",
    "serve_forever",
]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
)
FAULTS: tuple[str, ...] = (
    "500",
    "503",
    "hang",
    "reset",
    "malformed",
    "bad_content",
    "missing_field",
)
_FAULT_RATES = dict(zip(FAULTS, ("error_500", "error_503", *FAULTS[2:]), strict=True))
TOKEN_ACCOUNTING: tuple[str, ...] = ("admission", "usage")  # how the tokens bucket counts
SEARCH_RESOURCE = "search"  # the search API's name in the stats and the admissions
_ARRIVALS_KEPT = 200_000  # per resource: enough for any test or benchmark, bounded for a server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator listens, limits, waits and fails. Rates are probabilities."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    latency_ms: float = 0.0
    latency_jitter: float = 0.0
    seed: int = 0
    rpm: float | None = None
    tpm: float | None = None
    input_tpm: float | None = None  # Anthropic-style: input tokens per minute, apart
    output_tpm: float | None = None  # output tokens per minute, reserved then settled
    token_accounting: str = "admission"  # or "usage": unused max_tokens given back
    window_s: float = 1.0
    max_concurrent: int | None = None
    error_500: float = 0.0
    error_503: float = 0.0
    hang: float = 0.0
    reset: float = 0.0
    malformed: float = 0.0
    bad_content: float = 0.0
    missing_field: float = 0.0
    hang_seconds: float = 30.0
    default_max_tokens: int = 1024
    embedding_dimensions: int = 64
    refuse_word: str | None = None  # a prompt that mentions it is refused (content filter)
    search_rpm: float | None = None  # POST /search's own requests/min (None: unlimited)
    search_latency_ms: float | None = None  # POST /search's median latency (None: latency_ms)
    # model -> share of rows answered against the rule; kept as sorted pairs (hashable)
    disagree: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    completion_delay_s: float = 0.0  # a batch's last row is done this long after creation
    expire_after_s: float = 86_400.0  # a batch's rows not done by then expire
    batch_row_errors: float = 0.0  # share of batch rows answered as a server error
    batch_errors_persist: bool = False  # False: a row errs only in its first batch
    batch_bad_content: float = 0.0  # share of batch rows answered with content not JSON
    batch_missing_field: float = 0.0  # share answered without their last field (or row)
    batch_max_requests: int | None = None  # None: each provider's own limit
    batch_max_bytes: int | None = None
    batch_queue_tokens: int | None = None  # OpenAI's enqueued prompt tokens per model

    def __post_init__(self) -> None:
        shares = dict(self.disagree)
        object.__setattr__(self, "disagree", tuple(sorted(shares.items())))
        _check_listening(self)
        _check_limits(self)
        _check_faults(self)
        _check_search(self)
        _check_batches(self)

    def disagree_share(self, model: str) -> float:
        """The share of rows ``model`` answers against the rule (see Answers)."""
        return dict(self.disagree).get(model, 0.0)

    def batch_settings(self) -> BatchSettings:
        """The batch knobs, for ``rowpilot.simulator.batches``."""
        return BatchSettings(
            models=frozenset(self.models),
            completion_delay_s=self.completion_delay_s,
            expire_after_s=self.expire_after_s,
            row_errors=self.batch_row_errors,
            errors_persist=self.batch_errors_persist,
            max_requests=self.batch_max_requests,
            max_bytes=self.batch_max_bytes,
            queue_tokens=self.batch_queue_tokens,
        )

    @classmethod
    def from_options(cls, **options: object) -> SimulatorConfig:
        """Build from CLI-style options: strings are parsed, ``None`` means the default.

        Names may use dashes (``latency-ms``); ``models`` may be a comma-separated string.
        """
        given = {_option_name(name): value for name, value in options.items() if value is not None}
        parsed: dict[str, Any] = {name: _parse_option(name, value) for name, value in given.items()}
        return cls(**parsed)

    def fault_rate(self, fault: str) -> float:
        """The configured probability of one fault kind (one of ``FAULTS``)."""
        rate: float = getattr(self, _FAULT_RATES[fault])
        return rate


def _shares(value: object) -> dict[str, float]:
    """``disagree`` from the command line: ``model=share`` entries, a list of them or one
    comma-separated string (or a mapping already)."""
    if isinstance(value, Mapping):
        return {str(model): float(share) for model, share in value.items()}
    entries = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    shares: dict[str, float] = {}
    for entry in filter(None, (str(item).strip() for item in entries)):
        model, sign, share = entry.partition("=")
        if not sign:
            raise ValueError(f"{entry!r} is not model=share")
        shares[model.strip()] = float(share)
    return shares


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{value!r} is not a boolean")
    return text in ("true", "1", "yes")


_OPTION_TYPES: dict[str, Callable[[Any], object]] = {
    "host": str,
    "port": int,
    "api_key": str,
    "refuse_word": str,
    "token_accounting": str,
    "models": lambda value: tuple(
        name.strip() for name in (value.split(",") if isinstance(value, str) else value)
    ),
    "seed": int,
    "max_concurrent": int,
    "default_max_tokens": int,
    "embedding_dimensions": int,
    "disagree": _shares,
    "batch_errors_persist": _flag,
    "batch_max_requests": int,
    "batch_max_bytes": int,
    "batch_queue_tokens": int,
}


def _option_name(name: str) -> str:
    field_name = name.replace("-", "_")
    known = [item.name for item in fields(SimulatorConfig)]
    if field_name not in known:
        raise ConfigError(
            f"unknown simulator option {name!r}", hint=f"use one of: {', '.join(known)}"
        )
    return field_name


def _parse_option(name: str, value: object) -> object:
    try:
        return _OPTION_TYPES.get(name, float)(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"simulator option {name}: cannot read {value!r}") from exc


def _check_listening(config: SimulatorConfig) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is out of range", hint="use 0 for any free port")
    if config.api_key == "":
        raise ConfigError("the simulator api key is empty", hint="give a key, or none")
    if not config.models or not all(config.models):
        raise ConfigError("the simulator needs at least one model name, and no empty names")


def _check_limits(config: SimulatorConfig) -> None:
    if config.token_accounting not in TOKEN_ACCOUNTING:
        raise ConfigError(
            f"token_accounting {config.token_accounting!r} is not known",
            hint=f"use one of: {', '.join(TOKEN_ACCOUNTING)}",
        )
    for name in ("rpm", "tpm", "input_tpm", "output_tpm", "max_concurrent"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1", hint=f"leave {name} unset for no limit")
    positive = ("window_s", "default_max_tokens", "embedding_dimensions")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, not {getattr(config, name)}")
    for name in ("latency_ms", "latency_jitter", "hang_seconds"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} cannot be negative")


def _check_search(config: SimulatorConfig) -> None:
    if config.search_rpm is not None and config.search_rpm < 1:
        raise ConfigError("search_rpm must be at least 1", hint="leave it unset for no limit")
    if config.search_latency_ms is not None and config.search_latency_ms < 0:
        raise ConfigError("search_latency_ms cannot be negative")


def _check_batches(config: SimulatorConfig) -> None:
    for model, share in dict(config.disagree).items():
        if model not in config.models:
            raise ConfigError(
                f"disagree names {model!r}, which the simulator does not serve",
                hint=f"use one of: {', '.join(config.models)}",
            )
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"disagree share {model}={share} is not between 0 and 1")
    for name in ("batch_row_errors", "batch_bad_content", "batch_missing_field"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ConfigError(f"{name}={getattr(config, name)} is not between 0 and 1")
    if config.batch_bad_content + config.batch_missing_field > 1.0:
        raise ConfigError("batch_bad_content + batch_missing_field is more than 1")
    if config.completion_delay_s < 0:
        raise ConfigError("completion_delay_s cannot be negative")
    if not config.expire_after_s > 0:
        raise ConfigError("expire_after_s must be positive")
    for name in ("batch_max_requests", "batch_max_bytes", "batch_queue_tokens"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(
                f"{name} must be at least 1", hint=f"leave {name} unset for the default"
            )


def _check_faults(config: SimulatorConfig) -> None:
    rates = {fault: config.fault_rate(fault) for fault in FAULTS}
    for fault, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"fault rate {_FAULT_RATES[fault]}={rate} is not between 0 and 1")
    if sum(rates.values()) > 1.0 + 1e-9:
        raise ConfigError(
            "the fault rates add up to more than 1", hint="they are exclusive probabilities"
        )


# -- rate limits ----------------------------------------------------------------------------


class _TokenBucket:
    """``limit`` per minute, refilled continuously, holding ``window_s`` seconds' worth."""

    def __init__(self, limit: float, window_s: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = limit * window_s / 60.0
        self._level = self.capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._level = min(self.capacity, self._level + elapsed * self.rate)
        self._updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be taken; a cost above the capacity needs it full."""
        self._refill(now)
        return max(0.0, (min(cost, self.capacity) - self._level) / self.rate)

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self._level -= cost

    def give(self, amount: float, now: float) -> None:
        """Give back part of a charge (never above the capacity)."""
        self._refill(now)
        self._level = min(self.capacity, self._level + amount)

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, math.floor(self._level))

    def until_full(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self._level) / self.rate


@dataclass(frozen=True)
class _Refusal:
    """Why a request was not admitted. ``wait_s`` is None when waiting cannot help."""

    resource: str
    limit: float
    cost: float
    wait_s: float | None


@dataclass(frozen=True)
class _LimitState:
    resource: str
    limit: float
    remaining: int
    reset_s: float


class _ModelLimits:
    """The request and token buckets of one model (see "Rate limits" above)."""

    def __init__(self, config: SimulatorConfig, now: float) -> None:
        self._buckets: dict[str, _TokenBucket] = {}
        self._usage = config.token_accounting == "usage"
        per_minute = {
            "requests": config.rpm,
            "tokens": config.tpm,
            "input-tokens": config.input_tpm,
            "output-tokens": config.output_tpm,
        }
        for name, limit in per_minute.items():
            if limit is not None:
                self._buckets[name] = _TokenBucket(limit, config.window_s, now)

    def admit(self, prompt_tokens: int, max_tokens: int, now: float) -> _Refusal | None:
        """Take one request, prompt + max_tokens tokens (and each apart, where limited),
        or say why not (taking nothing)."""
        costs = {
            "requests": 1.0,
            "tokens": float(prompt_tokens + max_tokens),
            "input-tokens": float(prompt_tokens),
            "output-tokens": float(max_tokens),
        }
        refusals = [self._refusal(name, costs[name], now) for name in self._buckets]
        refused = [refusal for refusal in refusals if refusal is not None]
        if refused:
            # The longest wait covers both buckets; a refusal waiting cannot help (None) wins.
            return max(refused, key=lambda refusal: refusal.wait_s or math.inf)
        for name, bucket in self._buckets.items():
            bucket.take(costs[name], now)
        return None

    def settle(self, max_tokens: int, completion_tokens: int, now: float) -> None:
        """An answer is done: the output reservation becomes the real count where the
        rule says so (the output-tokens bucket always, the tokens bucket with "usage")."""
        unused = float(max(0, max_tokens - completion_tokens))
        names = ["output-tokens"] + (["tokens"] if self._usage else [])
        for name in names:
            bucket = self._buckets.get(name)
            if bucket is not None:
                bucket.give(unused, now)

    def _refusal(self, name: str, cost: float, now: float) -> _Refusal | None:
        bucket = self._buckets[name]
        if cost > bucket.limit:
            return _Refusal(name, bucket.limit, cost, None)
        wait = bucket.wait(cost, now)
        return _Refusal(name, bucket.limit, cost, wait) if wait > 0 else None

    def states(self, now: float) -> list[_LimitState]:
        return [
            _LimitState(name, bucket.limit, bucket.remaining(now), bucket.until_full(now))
            for name, bucket in self._buckets.items()
        ]


def _duration(seconds: float) -> str:
    """A reset time the way OpenAI writes it: ``350ms``, ``1.2s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60.0)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _seconds(seconds: float) -> str:
    """A retry-after value, rounded up to the millisecond so waiting it is always enough."""
    return f"{math.ceil(seconds * 1000) / 1000:.3f}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# -- providers ------------------------------------------------------------------------------


class _Provider(abc.ABC):
    """One provider's wire conventions: error bodies, auth header, rate-limit headers."""

    request_id_header = ""
    error_types: Mapping[int, str] = {}

    @abc.abstractmethod
    def error(
        self, status: int, message: str, *, code: str | None = None, kind: str | None = None
    ) -> web.Response:
        """The provider's error body; ``kind`` overrides OpenAI's error type (429s)."""

    @abc.abstractmethod
    def authorized(self, request: web.Request, api_key: str) -> bool:
        """Whether the request carries ``api_key`` the way this provider's clients send it."""

    @abc.abstractmethod
    def limit_headers(self, states: Iterable[_LimitState]) -> dict[str, str]:
        """The rate-limit headers every response on a limited model carries."""

    def retry_headers(self, wait_s: float) -> dict[str, str]:
        return {"retry-after": _seconds(wait_s)}


class _OpenAI(_Provider):
    request_id_header = "x-request-id"
    error_types: Mapping[int, str] = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        409: "invalid_request_error",
        413: "invalid_request_error",
        429: "requests",
        500: "server_error",
        503: "server_error",
    }

    def error(
        self, status: int, message: str, *, code: str | None = None, kind: str | None = None
    ) -> web.Response:
        error = {"message": message, "type": kind or self.error_types[status], "param": None}
        return web.json_response({"error": {**error, "code": code}}, status=status)

    def authorized(self, request: web.Request, api_key: str) -> bool:
        return request.headers.get("Authorization") == f"Bearer {api_key}"

    def limit_headers(self, states: Iterable[_LimitState]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for state in states:
            if state.resource not in ("requests", "tokens"):
                continue  # OpenAI has no separate input and output limits
            headers[f"x-ratelimit-limit-{state.resource}"] = _number(state.limit)
            headers[f"x-ratelimit-remaining-{state.resource}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{state.resource}"] = _duration(state.reset_s)
        return headers

    def retry_headers(self, wait_s: float) -> dict[str, str]:
        return {"retry-after": _seconds(wait_s), "retry-after-ms": str(math.ceil(wait_s * 1000))}


class _Anthropic(_Provider):
    request_id_header = "request-id"
    error_types: Mapping[int, str] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        503: "overloaded_error",
    }

    def error(
        self, status: int, message: str, *, code: str | None = None, kind: str | None = None
    ) -> web.Response:
        error = {"type": self.error_types[status], "message": message}
        return web.json_response({"type": "error", "error": error}, status=status)

    def authorized(self, request: web.Request, api_key: str) -> bool:
        # SDKs before 1.0 send x-api-key; later ones send the key as a bearer token.
        bearer = request.headers.get("Authorization") == f"Bearer {api_key}"
        return bearer or request.headers.get("x-api-key") == api_key

    def limit_headers(self, states: Iterable[_LimitState]) -> dict[str, str]:
        headers: dict[str, str] = {}
        now = datetime.now(UTC)
        for state in _with_combined_tokens(list(states)):
            prefix = f"anthropic-ratelimit-{state.resource}"
            reset = now + timedelta(seconds=state.reset_s)
            headers[f"{prefix}-limit"] = _number(state.limit)
            headers[f"{prefix}-remaining"] = str(state.remaining)
            headers[f"{prefix}-reset"] = reset.isoformat(timespec="milliseconds")[:-6] + "Z"
        return headers


def _with_combined_tokens(states: list[_LimitState]) -> list[_LimitState]:
    """Anthropic's ``tokens`` headers: the tpm bucket's, or without one the most
    restrictive of the input and output limits in effect now (least remaining)."""
    names = {state.resource for state in states}
    apart = [state for state in states if state.resource in ("input-tokens", "output-tokens")]
    if "tokens" in names or not apart:
        return states
    tightest = min(apart, key=lambda state: state.remaining)
    return [*states, replace(tightest, resource="tokens")]


_OPENAI = _OpenAI()
_ANTHROPIC = _Anthropic()


class _Reject(Exception):
    """Ends a request early with an error response."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _Dropped(web.Response):
    """Stands for a connection closed without an answer (nothing reaches the client)."""


# -- answers --------------------------------------------------------------------------------

_TAGGED = re.compile(r"^\s*\[key=([^\]]*)\][ \t]?(.*)$")
_INSTRUCTION = re.compile(r"^\s*(fields|labels)\s*:(.*)$", re.IGNORECASE)
_JSON_WORD = re.compile(r"\bjson\b", re.IGNORECASE)
_FIELD_TYPES: Mapping[str, Mapping[str, Any]] = {
    "str": {"type": "string"},
    "string": {"type": "string"},
    "int": {"type": "integer"},
    "integer": {"type": "integer"},
    "float": {"type": "number"},
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "boolean": {"type": "boolean"},
    "list": {"type": "array", "items": {"type": "string"}},
}
_STRING: Mapping[str, Any] = {"type": "string"}
_BAD_CONTENT_PREFIX = "Sure! Here is the JSON you asked for:\n"


@dataclass(frozen=True)
class _Ask:
    """A chat or messages request, as the answer rules read it."""

    prompt: str
    instructions: str
    schema: Mapping[str, Any] | None
    json_format: bool
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class _Answer:
    content: str
    completion_tokens: int
    truncated: bool
    refused: bool = False


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _digest(text: str, size: int = 8) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


def _short_hash(text: str) -> str:
    return _digest(text, 4).hex()


def _summary(text: str) -> str:
    return " ".join(text.split()[:12]).upper()


def _mentions(word: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _compose(ask: _Ask, disagree: float = 0.0) -> dict[str, Any] | str:
    """The answer object (JSON asked) or text, following the rules of the module docstring;
    ``disagree`` is the model's share of rows answered against the rule."""
    rows = _tagged_rows(ask.prompt)
    lines = _instruction_fields(ask.instructions)
    wants_json = ask.json_format or bool(rows or lines) or bool(_JSON_WORD.search(ask.instructions))
    if not wants_json:
        text = f"Answer {_short_hash(ask.prompt)}: {_summary(ask.prompt)}".rstrip()
        return _contrary(text, {}) if disagreement_draw(ask.prompt) < disagree else text
    schema_fields, key_schema = _schema_fields(ask.schema, batch=bool(rows))
    row_fields = schema_fields if ask.schema is not None else lines
    if not rows:
        return _row_answer(_untagged_text(ask.prompt), row_fields, disagree)
    entries = [
        {"key": _key(key, key_schema), **_row_answer(text, row_fields, disagree)}
        for key, text in rows
    ]
    return {"results": entries}


def _row_answer(
    text: str, row_fields: Mapping[str, Mapping[str, Any]], disagree: float
) -> dict[str, Any]:
    """A row's object by the rule, or against it when the row's draw falls below the share."""
    answer = _row_object(text, row_fields)
    if disagreement_draw(text) >= disagree:
        return answer
    return {name: _contrary(value, row_fields.get(name, {})) for name, value in answer.items()}


def disagreement_draw(text: str) -> float:
    """A row text's draw in [0, 1): a model with ``disagree`` share s answers the row against
    the rule exactly when its draw is below s (blake2b-64 of "disagree\\0" + text)."""
    digest = hashlib.blake2b(f"disagree\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def _contrary(value: Any, schema: Mapping[str, Any]) -> Any:
    """Another valid value than the rule's: the next enum option, a flipped boolean, a number
    + 1, "NOT " before a string, each item or property so; a const or null stays."""
    schema = _concrete(schema)
    options = schema.get("enum")
    if "const" in schema or value is None:
        return value
    if isinstance(options, list) and options:
        return options[(options.index(value) + 1) % len(options)] if value in options else value
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return f"NOT {value}"
    if isinstance(value, list):
        items = _concrete(schema.get("items", {}))
        return [_contrary(item, items) for item in value]
    if isinstance(value, dict):
        properties = _properties(schema)
        return {name: _contrary(item, properties.get(name, {})) for name, item in value.items()}
    return value


def _tagged_rows(prompt: str) -> list[tuple[str, str]]:
    matches = (_TAGGED.match(line) for line in prompt.splitlines())
    return [(match[1].strip(), match[2].strip()) for match in matches if match]


def _untagged_text(prompt: str) -> str:
    kept = [line for line in prompt.splitlines() if not _INSTRUCTION.match(line)]
    return "\n".join(kept).strip()


def _instruction_fields(instructions: str) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for match in filter(None, map(_INSTRUCTION.match, instructions.splitlines())):
        labels = match[1].lower() == "labels"
        for entry in filter(None, (part.strip() for part in match[2].split(","))):
            name, _, kind = entry.partition(":")
            schema = {"type": "boolean"} if labels else _FIELD_TYPES.get(kind.strip(), _STRING)
            found[name.strip()] = schema
    return found


def _schema_fields(
    schema: Mapping[str, Any] | None, *, batch: bool
) -> tuple[dict[str, Mapping[str, Any]], Mapping[str, Any]]:
    """The fields of one row and the schema of a batch entry's key."""
    if schema is None:
        return {}, _STRING
    properties = _properties(_inline_refs(schema, schema, ()))
    results = _concrete(properties.get("results", {}))
    if batch and _kind(results) == "array":
        properties = _properties(_concrete(results.get("items", {})))
    key_schema = properties.get("key", _STRING) if batch else _STRING
    row_fields = {name: sub for name, sub in properties.items() if not (batch and name == "key")}
    return row_fields, key_schema


def _row_object(text: str, row_fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    if not row_fields:
        return {"answer": _summary(text), "length": len(text), "hash": _short_hash(text)}
    return {name: _value(name, schema, text) for name, schema in row_fields.items()}


def _key(key: str, schema: Mapping[str, Any]) -> str | int:
    integer = _kind(_concrete(schema)) == "integer" and re.fullmatch(r"-?\d+", key)
    return int(key) if integer else key


def _value(name: str, schema: Mapping[str, Any], text: str) -> Any:
    schema = _concrete(schema)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return _choice(name, schema["enum"], text)
    kind = _kind(schema)
    if kind == "boolean":
        return _mentions(name, text) or bool(_digest(f"{name}\0{text}")[0] & 1)
    if kind in ("integer", "number"):
        return len(text)
    if kind == "array":
        items = _concrete(schema.get("items", _STRING))
        return [_value(name, items, word) for word in text.split()[:3]]
    if kind == "object":
        return {prop: _value(prop, sub, text) for prop, sub in _properties(schema).items()}
    return None if kind == "null" else _summary(text)


def _choice(name: str, options: Sequence[Any], text: str) -> Any:
    for option in options:
        if _mentions(str(option), text):
            return option
    index = int.from_bytes(_digest(f"{name}\0{text}")) % len(options)
    return options[index]


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((option for option in kind if option != "null"), "null")
    if kind is None and "properties" in schema:
        return "object"
    return kind if isinstance(kind, str) else "string"


def _concrete(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first non-null option of an ``anyOf``/``oneOf`` (pydantic's ``X | None``)."""
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if not isinstance(options, list):
        return schema
    typed = [_concrete(option) for option in options if isinstance(option, Mapping)]
    return next((option for option in typed if _kind(option) != "null"), schema)


def _properties(schema: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    return {name: sub for name, sub in properties.items() if isinstance(sub, Mapping)}


def _inline_refs(node: Any, root: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    """``node`` with local ``$ref``s replaced by their targets; a cycle becomes ``{}``."""
    if isinstance(node, list):
        return [_inline_refs(item, root, seen) for item in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return {}
        return _inline_refs(_resolve(ref, root), root, (*seen, ref))
    skipped = ("$defs", "definitions")
    return {
        key: _inline_refs(value, root, seen) for key, value in node.items() if key not in skipped
    }


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    target: Any = root
    for part in ref.removeprefix("#").strip("/").split("/") if ref.startswith("#") else ["?"]:
        name = part.replace("~1", "/").replace("~0", "~")
        target = target.get(name, {}) if isinstance(target, Mapping) else {}
    return target


def _faulty_content(answer: dict[str, Any] | str, fault: str | None) -> tuple[str, str | None]:
    """The content string after a content fault; the fault if it applied (JSON answers only)."""
    if isinstance(answer, str):
        return answer, None
    if fault == "missing_field":
        return json.dumps(_drop_last(answer), ensure_ascii=False), fault
    text = json.dumps(answer, ensure_ascii=False)
    if fault == "bad_content":
        return _BAD_CONTENT_PREFIX + text[: max(1, len(text) // 2)], fault
    return text, None


def _drop_last(answer: dict[str, Any]) -> dict[str, Any]:
    results = answer.get("results")
    if isinstance(results, list) and results:
        return {**answer, "results": results[:-1]}
    return dict(list(answer.items())[:-1])


def _cut(content: str, max_tokens: int) -> _Answer:
    if _tokens(len(content)) <= max_tokens:
        return _Answer(content, max(1, _tokens(len(content))), truncated=False)
    return _Answer(content[: max_tokens * 4], max_tokens, truncated=True)


def _embedding(text: str, dimensions: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(4 * dimensions)
    values = [word / 2**31 - 1.0 for word in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


# -- the search API's answers ---------------------------------------------------------------

_SEARCH_DOMAINS = (
    "news.example.com",
    "reviews.example.org",
    "markets.example.net",
    "encyclopedia.example.org",
    "trade.example.com",
    "blog.example.net",
)
# News-like phrases; some carry words a sentiment enum would pick (positive, mixed, negative).
_SEARCH_PHRASES = (
    "customer reviews are mostly positive",
    "opinions are mixed after the price rise",
    "a negative report on delivery times",
    "sales grew strongly last year",
    "launched a new product line",
    "opened stores in three more cities",
    "won an industry award for design",
    "faces supply problems this season",
)
_MAX_SEARCH_RESULTS = 20


def search_answer(query: str, max_results: int = 5) -> dict[str, Any]:
    """What ``POST /search`` answers for ``query``: ``max_results`` results, each from
    blake2b(query + "\\0" + rank) alone."""
    words = query.split()
    head = " ".join(words[:8])
    slug = "-".join(re.findall(r"\w+", query.lower())[:6]) or "result"
    results = []
    for rank in range(max_results):
        digest = _digest(f"{query}\0{rank}")
        domain = _SEARCH_DOMAINS[digest[0] % len(_SEARCH_DOMAINS)]
        phrase = _SEARCH_PHRASES[digest[1] % len(_SEARCH_PHRASES)]
        results.append(
            {
                "title": f"{head}: {phrase}",
                "url": f"https://{domain}/{slug}-{digest[2:6].hex()}",
                "snippet": f"{head} {phrase}, according to {domain}.",
                "score": round(0.95 - 0.05 * rank - digest[6] / 10_000, 4),
            }
        )
    return {"query": query, "results": results}


def _search_ask(body: Mapping[str, Any]) -> tuple[str, int]:
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise _bad_request(_OPENAI, "query: a non-empty string is required")
    count = body.get("max_results", 5)
    if isinstance(count, bool) or not isinstance(count, int):
        raise _bad_request(_OPENAI, "max_results: an integer is required")
    if not 1 <= count <= _MAX_SEARCH_RESULTS:
        raise _bad_request(_OPENAI, f"max_results: between 1 and {_MAX_SEARCH_RESULTS}")
    return query, count


# -- request parsing ------------------------------------------------------------------------


def _bad_request(provider: _Provider, message: str) -> _Reject:
    return _Reject(provider.error(400, message))


def _text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (part.get("text") for part in content if isinstance(part, Mapping))
        return "\n".join(part for part in parts if isinstance(part, str))
    return ""


def _messages(provider: _Provider, body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request(provider, "messages: a non-empty list of messages is required")
    if not all(isinstance(message, Mapping) for message in messages):
        raise _bad_request(provider, "messages: every message must be an object")
    if body.get("stream"):
        raise _bad_request(provider, "streaming not simulated")
    return messages


def _last_user_text(provider: _Provider, messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    raise _bad_request(provider, "messages: at least one user message is required")


def _max_tokens(provider: _Provider, value: Any, default: int | None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad_request(provider, "max_tokens: a positive integer is required")
    return value


def _openai_ask(body: Mapping[str, Any], default_max_tokens: int) -> _Ask:
    messages = _messages(_OPENAI, body)
    prompt = _last_user_text(_OPENAI, messages)
    system = [_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    response_format = body.get("response_format")
    response_format = response_format if isinstance(response_format, Mapping) else {}
    json_schema = response_format.get("json_schema")
    schema = json_schema.get("schema") if isinstance(json_schema, Mapping) else None
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return _Ask(
        prompt=prompt,
        instructions="\n".join([*system, prompt]),
        schema=schema if isinstance(schema, Mapping) else None,
        json_format=response_format.get("type") in ("json_object", "json_schema"),
        prompt_tokens=_tokens(sum(len(_text(m.get("content"))) for m in messages)),
        max_tokens=_max_tokens(_OPENAI, limit, default_max_tokens),
    )


def _anthropic_ask(body: Mapping[str, Any]) -> _Ask:
    messages = _messages(_ANTHROPIC, body)
    prompt = _last_user_text(_ANTHROPIC, messages)
    system = _text(body.get("system"))
    output_config = body.get("output_config")
    output_format = (output_config if isinstance(output_config, Mapping) else {}).get("format")
    output_format = output_format or body.get("output_format")
    schema = output_format.get("schema") if isinstance(output_format, Mapping) else None
    chars = len(system) + sum(len(_text(m.get("content"))) for m in messages)
    return _Ask(
        prompt=prompt,
        instructions=f"{system}\n{prompt}",
        schema=schema if isinstance(schema, Mapping) else None,
        json_format=isinstance(schema, Mapping),
        prompt_tokens=_tokens(chars),
        max_tokens=_max_tokens(_ANTHROPIC, body.get("max_tokens"), None),
    )


def _embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise _bad_request(_OPENAI, "input: a string or a non-empty list of strings is required")
    return inputs


# -- responses ------------------------------------------------------------------------------


def _finish(answer: _Answer, refused: str, truncated: str, complete: str) -> str:
    if answer.refused:
        return refused
    return truncated if answer.truncated else complete


def _chat_body(model: str, request_id: str, answer: _Answer, ask: _Ask) -> dict[str, Any]:
    message = {"role": "assistant", "content": answer.content, "refusal": None}
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": _finish(answer, "content_filter", "length", "stop"),
        "logprobs": None,
    }
    usage = {
        "prompt_tokens": ask.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": ask.prompt_tokens + answer.completion_tokens,
    }
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
        "system_fingerprint": "fp_rowpilot_sim",
    }


def _messages_body(model: str, request_id: str, answer: _Answer, ask: _Ask) -> dict[str, Any]:
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer.content}],
        "stop_reason": _finish(answer, "refusal", "max_tokens", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": ask.prompt_tokens, "output_tokens": answer.completion_tokens},
    }


def _embeddings_body(
    model: str, inputs: Sequence[str], dimensions: int, encoding: Any
) -> dict[str, Any]:
    data = []
    for index, text in enumerate(inputs):
        vector: list[float] | str = _embedding(text, dimensions)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = _tokens(sum(map(len, inputs)))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _models_body(provider: _Provider, models: Sequence[str]) -> dict[str, Any]:
    if provider is _ANTHROPIC:
        created_at = "2025-01-01T00:00:00Z"
        data: list[dict[str, Any]] = [
            {"type": "model", "id": m, "display_name": m, "created_at": created_at} for m in models
        ]
        return {"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]}
    data = [
        {"id": m, "object": "model", "created": 1735689600, "owned_by": "rowpilot-simulator"}
        for m in models
    ]
    return {"object": "list", "data": data}


def _malformed() -> web.Response:
    body = '{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"ind'
    return web.Response(status=200, text=body, content_type="application/json")


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection with a TCP reset, so the client sees no response at all."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return _Dropped()


# -- the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One model request after auth, parsing and the model check."""

    request: web.Request
    provider: _Provider
    body: Mapping[str, Any]
    raw: bytes
    model: str
    forced_fault: str | None
    request_id: str


class _Stats:
    """Counters behind ``GET /stats``; a lock because ``stats()`` may read from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters; requests in flight stay counted."""
        with self._lock:
            self._requests: dict[str, Counter[str]] = {}
            self._faults: Counter[str] = Counter(dict.fromkeys(FAULTS, 0))
            self._rate_limited = 0
            self._concurrency_rejected = 0
            self._tokens_in = 0
            self._tokens_out = 0
            self._tokens_charged = 0
            self._in_flight_max = self._in_flight
            self._arrivals: dict[str, collections.deque[tuple[float, bool]]] = {}

    def record(self, endpoint: str, response: web.StreamResponse) -> None:
        status = "dropped" if isinstance(response, _Dropped) else str(response.status)
        with self._lock:
            self._requests.setdefault(endpoint, Counter())[status] += 1
            self._rate_limited += response.status == 429

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def arrived(self, resource: str, now: float, admitted: bool) -> None:
        """A request reached ``resource``'s limit at ``now`` and was let in, or not."""
        with self._lock:
            arrivals = self._arrivals.get(resource)
            if arrivals is None:
                arrivals = self._arrivals[resource] = collections.deque(maxlen=_ARRIVALS_KEPT)
            arrivals.append((now, admitted))

    def arrivals(self) -> dict[str, list[tuple[float, bool]]]:
        with self._lock:
            return {resource: list(times) for resource, times in self._arrivals.items()}

    def concurrency_rejected(self) -> None:
        with self._lock:
            self._concurrency_rejected += 1

    def tokens(self, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            self._tokens_in += tokens_in
            self._tokens_out += tokens_out

    def charged(self, tokens: int) -> None:
        """The token limits counted ``tokens`` more (fewer, when settling gave some back)."""
        with self._lock:
            self._tokens_charged += tokens

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._in_flight_max = max(self._in_flight_max, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            requests = {name: dict(counts) for name, counts in self._requests.items()}
            return {
                "requests": requests,
                "requests_total": sum(sum(counts.values()) for counts in requests.values()),
                "rate_limited": self._rate_limited,
                "concurrency_rejected": self._concurrency_rejected,
                "faults": dict(self._faults),
                "tokens": {
                    "input": self._tokens_in,
                    "output": self._tokens_out,
                    "charged": self._tokens_charged,
                },
                "in_flight": self._in_flight,
                "in_flight_max": self._in_flight_max,
            }


def _max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most of the sorted ``times`` that fall within any ``window_s`` seconds."""
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


class _Dice:
    """Reproducible randomness: the n-th request with identical bytes always rolls the same."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._seen: Counter[bytes] = Counter()

    def roll(self, endpoint: str, raw: bytes) -> random.Random:
        digest = hashlib.blake2b(endpoint.encode() + b"\0" + raw, digest_size=16).digest()
        occurrence = self._seen[digest]
        self._seen[digest] += 1
        material = f"{self._seed}\0{occurrence}\0".encode() + digest
        return random.Random(int.from_bytes(hashlib.blake2b(material, digest_size=8).digest()))


class Simulator:
    """The simulator server. Start it on your loop (``start``) or in a thread (``with``)."""

    def __init__(self, config: SimulatorConfig = SimulatorConfig()) -> None:
        self.config = config
        self._stats = _Stats()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._batches = Batches(config.batch_settings(), _BatchAnswers(config))
        self._released = threading.Event()  # cleared: hold_batches holds its requests
        self._hold: tuple[str, bool, int] = ("", True, 0)  # what, applied, let through first
        self._batch_failures = 0  # batch requests still to answer with a 500
        self.reset()

    def reset(self) -> None:
        """Forget every request so far, as a fresh server would: counters, the dice, rate
        buckets, request ids, files, batches and the batch clock's advance. The socket stays
        open, so one server can serve many tests."""
        self._stats.reset()
        self._batches.reset()
        self._released.set()
        self._dice = _Dice(self.config.seed)
        self._limits: dict[str, _ModelLimits] = {}
        self._request_ids = 0
        self._started = time.monotonic()  # admissions are told in seconds since then
        self._search_bucket = (
            None
            if self.config.search_rpm is None
            else _TokenBucket(self.config.search_rpm, self.config.window_s, self._started)
        )

    # -- lifecycle --

    async def start(self) -> None:
        """Listen on ``config.host:config.port`` (port 0: any free port) on the running loop."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the simulator cannot listen on {self.config.host}:{self.config.port}: {exc}",
                hint="choose another port, or 0 for any free port",
            ) from exc
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening; requests still running (a hang) are cancelled after 0.5 s."""
        runner, self._runner = self._runner, None
        # A connection accepted in this very iteration must reach its transport before the
        # listening socket closes, or asyncio (3.11) drops it half-made and unclosed.
        await asyncio.sleep(0)
        if runner is not None:
            await runner.cleanup()
        # aiohttp forgets a handler whose client has gone; a hang would outlive the loop.
        pending = [task for task in self._handlers if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0)  # let aiohttp's connection tasks see the cancellation

    @contextlib.contextmanager
    def _tracked(self, request: web.Request) -> Iterator[None]:
        """Remember the handler's task so ``stop`` can cancel it; close its connection if so."""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            yield
        except asyncio.CancelledError:
            _drop(request)
            raise
        finally:
            if task is not None:
                self._handlers.discard(task)

    def start_in_thread(self) -> None:
        """Run the simulator on its own loop in a daemon thread (for sync code and the CLI)."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running in a thread")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="rowpilot-simulator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
        except BaseException:
            self._end_thread()
            raise

    def stop_in_thread(self) -> None:
        """Stop the server started by ``start_in_thread`` and end its thread and loop."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=30)
            asyncio.run_coroutine_threadsafe(_quiesce(), self._loop).result(timeout=30)
        finally:
            self._end_thread()

    def _end_thread(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()

    def __enter__(self) -> Simulator:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_in_thread()

    # -- public face --

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the simulator has not been started")
        return f"http://{self.config.host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def search_url(self) -> str:
        return f"{self.url}/search"

    def stats(self) -> dict[str, Any]:
        """The counters of ``GET /stats`` (see the module docstring)."""
        return {**self._stats.snapshot(), "batches": self._batches.stats()}

    def reset_stats(self) -> None:
        self._stats.reset()
        self._batches.reset_stats()

    def hold_batches(self, what: str, *, applied: bool = True, after: int = 0) -> None:
        """Hold batch requests of one kind until ``release_batches`` (see Batches, "Held
        requests"): ``"create"`` (either provider's) or ``"results"`` (an OpenAI file's
        content, an Anthropic batch's results), past the first ``after`` of them;
        ``applied=False`` holds a create before it takes effect and then refuses it."""
        if what not in _HELD_PATHS:
            raise ValueError(f"hold 'create' or 'results', not {what!r}")
        self._released.clear()
        self._hold = (what, applied, after)

    def fail_batch_requests(self, count: int) -> None:
        """Answer the next ``count`` requests to the batch endpoints (either provider's, the
        clock's aside) with a 500, unapplied (see Batches, "Held requests")."""
        self._batch_failures = count

    def release_batches(self) -> None:
        """Let the held requests go (a create held before it took effect is refused) and
        hold no more."""
        self._hold = ("", True, 0)
        self._released.set()

    async def _held(self, route: Route) -> web.StreamResponse | None:
        """Hold a request as ``hold_batches`` says; a refusal when it is to be dropped."""
        what, applied, after = self._hold
        if route.path not in _HELD_PATHS.get(what, ()) or route.method == hdrs.METH_DELETE:
            return None
        if after > 0:
            self._hold = (what, applied, after - 1)
            return None
        await asyncio.to_thread(self._released.wait)
        if not applied:
            provider = _ANTHROPIC if route.provider == ANTHROPIC else _OPENAI
            return provider.error(503, "held and dropped by the simulator", code=None)
        return None

    def advance_batches(self, seconds: float) -> float:
        """Move the batch clock ``seconds`` forward (see Batches); the total advance so far."""
        return self._batches.advance(seconds)

    @property
    def handling(self) -> int:
        """Requests being handled now (model calls and searches, admitted or not), so that
        a caller can wait until a killed client's requests are done instead of sleeping."""
        return len(self._handlers)

    def admissions(self, window_s: float = 1.0, *, times: bool = False) -> dict[str, Any]:
        """Per resource (a model's name, or ``search``): requests that arrived at its limit
        and were admitted, and the most of each within any ``window_s`` seconds; with
        ``times``, each admission's seconds since the simulator started."""
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, not {window_s!r}")
        view: dict[str, Any] = {}
        for resource, arrivals in sorted(self._stats.arrivals().items()):
            arrived = [moment for moment, _ in arrivals]
            admitted = [moment for moment, let_in in arrivals if let_in]
            view[resource] = {
                "arrived": len(arrived),
                "admitted": len(admitted),
                "max_arrived": _max_in_window(arrived, window_s),
                "max_admitted": _max_in_window(admitted, window_s),
                "window_s": window_s,
            }
            if times:
                view[resource]["times"] = [round(t - self._started, 6) for t in admitted]
        return view

    # -- routing --

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._model_route("chat.completions", _OPENAI)),
                web.post("/v1/embeddings", self._model_route("embeddings", _OPENAI)),
                web.post("/v1/messages", self._model_route("messages", _ANTHROPIC)),
                web.get("/v1/models", self._models),
                web.get("/stats", self._get_stats),
                web.post("/stats/reset", self._reset_stats),
                web.post("/search", self._search),
                web.get("/stats/admissions", self._get_admissions),
                *(self._batch_route(route) for route in self._batches.routes()),
            ]
        )
        return app

    def _batch_route(self, route: Route) -> web.RouteDef:
        """A batch route behind the key check, with errors in its provider's shape, counted."""
        provider = _ANTHROPIC if route.provider == ANTHROPIC else _OPENAI

        async def handle(request: web.Request) -> web.StreamResponse:
            with self._tracked(request):
                try:
                    if route.provider is not None:
                        self._authorize(request, provider)
                    _, applied, _ = self._hold
                    held = await self._held(route) if not applied else None
                    if self._batch_failures > 0 and route.provider is not None:
                        self._batch_failures -= 1
                        held = provider.error(500, "failed by the simulator", code=None)
                    response = held or await route.handler(request)
                    if applied:
                        await self._held(route)
                except _Reject as reject:
                    response = reject.response
                except Refused as refused:
                    response = provider.error(refused.status, refused.message, code=refused.code)
            self._stats.record(route.endpoint, response)
            return response

        return web.route(route.method, route.path, handle)

    def _model_route(self, endpoint: str, provider: _Provider) -> Handler:
        handlers: dict[str, Callable[[_Call], Awaitable[web.StreamResponse]]] = {
            "chat.completions": self._chat,
            "embeddings": self._embeddings,
            "messages": self._anthropic_messages,
        }

        async def handle(request: web.Request) -> web.StreamResponse:
            with self._tracked(request):
                try:
                    response = await handlers[endpoint](await self._call(request, provider))
                except _Reject as reject:
                    response = reject.response
            self._stats.record(endpoint, response)
            return response

        return handle

    async def _models(self, request: web.Request) -> web.StreamResponse:
        provider = _ANTHROPIC if "anthropic-version" in request.headers else _OPENAI
        try:
            self._authorize(request, provider)
            response: web.StreamResponse = web.json_response(
                _models_body(provider, self.config.models)
            )
        except _Reject as reject:
            response = reject.response
        self._stats.record("models", response)
        return response

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response(self.stats())

    async def _get_admissions(self, request: web.Request) -> web.StreamResponse:
        try:
            window_s = float(request.query.get("window_s", "1"))
            view = self.admissions(window_s, times=request.query.get("times") in ("1", "true"))
        except ValueError:
            return _OPENAI.error(400, "window_s: a positive number of seconds is required")
        return web.json_response(view)

    # -- the search API --

    async def _search(self, request: web.Request) -> web.StreamResponse:
        with self._tracked(request):
            try:
                response = await self._search_answer(request)
            except _Reject as reject:
                response = reject.response
        self._stats.record(SEARCH_RESOURCE, response)
        return response

    async def _search_answer(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request, _OPENAI)  # a bearer token, as Tavily's clients send it
        raw = await request.read()
        body = _json_object(_OPENAI, raw)
        query, max_results = _search_ask(body)
        self._request_ids += 1
        call = _Call(
            request,
            _OPENAI,
            body,
            raw,
            SEARCH_RESOURCE,
            _forced_fault(request),
            f"sim{self._request_ids:08d}",
        )
        headers = self._take_search_limit(call)
        rng = self._dice.roll(request.path, raw)
        draw, factor = rng.random(), rng.lognormvariate(0.0, self.config.latency_jitter)
        latency_ms = self.config.search_latency_ms
        latency_ms = self.config.latency_ms if latency_ms is None else latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms * factor / 1000)
        fault = call.forced_fault or _pick_fault(self.config, draw)
        failed = await self._fail(call, None if fault == "none" else fault, headers)
        if failed is not None:
            return failed
        return self._ok(call, search_answer(query, max_results), headers)

    def _take_search_limit(self, call: _Call) -> dict[str, str]:
        """The search API's own bucket: one request per call, whatever the models hold."""
        now = time.monotonic()
        bucket = self._search_bucket
        if bucket is None:
            self._stats.arrived(SEARCH_RESOURCE, now, admitted=True)
            return {}
        wait = bucket.wait(1.0, now)
        if wait <= 0:
            bucket.take(1.0, now)
        self._stats.arrived(SEARCH_RESOURCE, now, admitted=wait <= 0)
        state = _LimitState("requests", bucket.limit, bucket.remaining(now), bucket.until_full(now))
        headers = _OPENAI.limit_headers([state])
        if wait > 0:
            refusal = _Refusal("requests", bucket.limit, 1.0, wait)
            raise _Reject(_rate_limited(call, refusal, headers))
        return headers

    # -- one model request --

    async def _call(self, request: web.Request, provider: _Provider) -> _Call:
        self._authorize(request, provider)
        raw = await request.read()
        body = _json_object(provider, raw)
        model = body.get("model")
        if not isinstance(model, str) or model not in self.config.models:
            raise _Reject(_unknown_model(provider, model))
        self._request_ids += 1
        request_id = f"sim{self._request_ids:08d}"
        return _Call(request, provider, body, raw, model, _forced_fault(request), request_id)

    def _authorize(self, request: web.Request, provider: _Provider) -> None:
        key = self.config.api_key
        if key is None or provider.authorized(request, key):
            return
        message = "invalid x-api-key" if provider is _ANTHROPIC else "Incorrect API key provided."
        raise _Reject(provider.error(401, message, code="invalid_api_key"))

    async def _chat(self, call: _Call) -> web.StreamResponse:
        ask = _openai_ask(call.body, self.config.default_max_tokens)
        return await self._answer(call, ask, _chat_body)

    async def _anthropic_messages(self, call: _Call) -> web.StreamResponse:
        return await self._answer(call, _anthropic_ask(call.body), _messages_body)

    async def _answer(self, call: _Call, ask: _Ask, render: _Render) -> web.StreamResponse:
        async with self._admitted(call, ask.prompt_tokens, ask.max_tokens) as headers:
            fault = await self._wait_and_roll(call)
            failed = await self._fail(call, fault, headers)
            if failed is not None:
                return failed
            answer, counted = _respond(self.config, call.model, ask, fault)
            if counted is not None:
                self._stats.fault(counted)
            self._stats.tokens(ask.prompt_tokens, answer.completion_tokens)
            settled = self._settle_limits(call, ask.max_tokens, answer.completion_tokens)
            return self._ok(
                call, render(call.model, call.request_id, answer, ask), settled or headers
            )

    async def _embeddings(self, call: _Call) -> web.StreamResponse:
        body = _embeddings_answer(self.config, call.model, call.body)
        tokens = body["usage"]["prompt_tokens"]
        async with self._admitted(call, tokens, 0) as headers:
            failed = await self._fail(call, await self._wait_and_roll(call), headers)
            if failed is not None:
                return failed
            self._stats.tokens(tokens, 0)
            return self._ok(call, body, headers)

    def _ok(self, call: _Call, body: Mapping[str, Any], headers: Mapping[str, str]) -> web.Response:
        return _stamped(call, web.json_response(body), headers)

    # -- admission, latency, faults --

    @contextlib.asynccontextmanager
    async def _admitted(
        self, call: _Call, prompt_tokens: int, max_tokens: int
    ) -> AsyncIterator[dict[str, str]]:
        """Admit the call against the concurrency and rate limits, or reject it with a 429."""
        self._check_concurrency(call)
        headers = self._take_limits(call, prompt_tokens, max_tokens)
        self._stats.enter()
        try:
            yield headers
        finally:
            self._stats.leave()

    def _check_concurrency(self, call: _Call) -> None:
        limit = self.config.max_concurrent
        if limit is None or self._stats.in_flight < limit:
            return
        self._stats.concurrency_rejected()
        message = f"Too many concurrent requests: limit {limit}."
        response = call.provider.error(429, message, code="concurrency_limit_exceeded")
        response.headers.update(
            call.provider.retry_headers(max(self.config.latency_ms / 1000, 0.01))
        )
        raise _Reject(response)

    def _take_limits(self, call: _Call, prompt_tokens: int, max_tokens: int) -> dict[str, str]:
        now = time.monotonic()
        limits = self._limits.get(call.model)
        if limits is None:
            limits = self._limits[call.model] = _ModelLimits(self.config, now)
        refusal = limits.admit(prompt_tokens, max_tokens, now)
        self._stats.arrived(call.model, now, admitted=refusal is None)
        headers = call.provider.limit_headers(limits.states(now))
        if refusal is not None:
            raise _Reject(_rate_limited(call, refusal, headers))
        self._stats.charged(prompt_tokens + max_tokens)
        return headers

    def _settle_limits(
        self, call: _Call, max_tokens: int, completion_tokens: int
    ) -> dict[str, str] | None:
        """Settle an answer's output tokens; the headers after it, or None when nothing
        settles (the headers of the admission stand)."""
        limits = self._limits.get(call.model)
        settles = self.config.token_accounting == "usage" or self.config.output_tpm is not None
        if limits is None or not settles:
            return None
        now = time.monotonic()
        limits.settle(max_tokens, completion_tokens, now)
        if self.config.token_accounting == "usage":
            self._stats.charged(min(0, completion_tokens - max_tokens))
        return call.provider.limit_headers(limits.states(now))

    async def _wait_and_roll(self, call: _Call) -> str | None:
        """Sleep the call's latency; return the fault it draws (or the forced one)."""
        rng = self._dice.roll(call.request.path, call.raw)
        draw, factor = rng.random(), rng.lognormvariate(0.0, self.config.latency_jitter)
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms * factor / 1000)
        if call.forced_fault is not None:
            return None if call.forced_fault == "none" else call.forced_fault
        return _pick_fault(self.config, draw)

    async def _fail(
        self, call: _Call, fault: str | None, headers: Mapping[str, str]
    ) -> web.StreamResponse | None:
        """The response of a transport or status fault, or None to answer normally."""
        if fault not in ("500", "503", "hang", "reset", "malformed"):
            return None
        self._stats.fault(fault)
        if fault == "hang":
            await asyncio.sleep(self.config.hang_seconds)
        if fault in ("hang", "reset"):
            return _drop(call.request)
        response = (
            _malformed() if fault == "malformed" else _server_error(call.provider, int(fault))
        )
        return _stamped(call, response, headers)


def _stamped(call: _Call, response: web.Response, headers: Mapping[str, str]) -> web.Response:
    """Add the rate-limit headers and the provider's request id header to a response."""
    response.headers.update(headers)
    response.headers[call.provider.request_id_header] = call.request_id
    return response


_Render = Callable[[str, str, _Answer, _Ask], dict[str, Any]]


def _respond(
    config: SimulatorConfig, model: str, ask: _Ask, fault: str | None
) -> tuple[_Answer, str | None]:
    """The answer to an admitted request, and the fault to count for it (or None)."""
    word = config.refuse_word
    if word and _mentions(word, ask.prompt):
        # A content filter refuses the whole request: one row can sink a batch.
        return _Answer("", 1, truncated=False, refused=True), "refused"
    composed = _compose(ask, config.disagree_share(model))
    content, applied = _faulty_content(composed, fault)
    return _cut(content, ask.max_tokens), applied


def _embeddings_answer(
    config: SimulatorConfig, model: str, body: Mapping[str, Any]
) -> dict[str, Any]:
    inputs = _embedding_inputs(body)
    dimensions = body.get("dimensions") or config.embedding_dimensions
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise _bad_request(_OPENAI, "dimensions: a positive integer is required")
    return _embeddings_body(model, inputs, dimensions, body.get("encoding_format"))


class _BatchAnswers:
    """The online answers lent to ``rowpilot.simulator.batches`` for batch rows: the same
    rules, usage and finish reasons, without rate limits, latency or the online faults
    (batch rows draw content faults of their own: "Content faults")."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config

    def answer(
        self, endpoint: str, body: Mapping[str, Any], request_id: str
    ) -> tuple[int, dict[str, Any]]:
        provider = _ANTHROPIC if endpoint == "/v1/messages" else _OPENAI
        try:
            model = body.get("model")
            if not isinstance(model, str) or model not in self._config.models:
                raise _Reject(_unknown_model(provider, model))
            if endpoint == "/v1/embeddings":
                return 200, _embeddings_answer(self._config, model, body)
            ask, render = self._ask(provider, body)
            answer, _ = _respond(self._config, model, ask, self._content_fault(body))
            return 200, render(model, request_id, answer, ask)
        except _Reject as reject:
            return reject.response.status, _error_body(reject.response)

    def _ask(self, provider: _Provider, body: Mapping[str, Any]) -> tuple[_Ask, _Render]:
        if provider is _ANTHROPIC:
            return _anthropic_ask(body), _messages_body
        return _openai_ask(body, self._config.default_max_tokens), _chat_body

    def _content_fault(self, body: Mapping[str, Any]) -> str | None:
        """The row's content fault (see "Content faults"): drawn from its body, so that a
        request sent again in a later batch draws the same."""
        config = self._config
        text = "batch-content\0" + json.dumps(body, sort_keys=True, default=str)
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        draw = int.from_bytes(digest, "big") / 2**64
        if draw < config.batch_bad_content:
            return "bad_content"
        if draw < config.batch_bad_content + config.batch_missing_field:
            return "missing_field"
        return None

    def server_error(self, endpoint: str) -> dict[str, Any]:
        provider = _ANTHROPIC if endpoint == "/v1/messages" else _OPENAI
        return _error_body(_server_error(provider, 500))

    def prompt_tokens(self, endpoint: str, body: Mapping[str, Any]) -> int:
        try:
            if endpoint == "/v1/embeddings":
                return _tokens(sum(map(len, _embedding_inputs(body))))
            provider = _ANTHROPIC if endpoint == "/v1/messages" else _OPENAI
            return self._ask(provider, body)[0].prompt_tokens
        except _Reject:
            return 0


def _error_body(response: web.StreamResponse) -> dict[str, Any]:
    """The JSON body of one of our own error responses."""
    text = response.text if isinstance(response, web.Response) else None
    body: dict[str, Any] = json.loads(text or "{}")
    return body


async def _quiesce() -> None:
    """Finish the simulator's own loop the way ``asyncio.run`` does before it closes.

    Whatever is left is cancelled, so no task or transport is left to the garbage collector.
    """
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)  # let the closed transports run their connection_lost
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


def _json_object(provider: _Provider, raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _bad_request(provider, "We could not parse the JSON body of your request.")
    return body


def _unknown_model(provider: _Provider, model: object) -> web.Response:
    if provider is _ANTHROPIC:
        return provider.error(404, f"model: {model}")
    message = f"The model `{model}` does not exist or you do not have access to it."
    return provider.error(404, message, code="model_not_found")


def _forced_fault(request: web.Request) -> str | None:
    value = request.headers.get("x-sim-fault")
    if value is None:
        return None
    fault = value.strip().lower()
    if fault not in (*FAULTS, "none"):
        provider = _ANTHROPIC if request.path == "/v1/messages" else _OPENAI
        raise _bad_request(provider, f"x-sim-fault: unknown fault {value!r}")
    return fault


def _pick_fault(config: SimulatorConfig, draw: float) -> str | None:
    threshold = 0.0
    for fault in FAULTS:
        threshold += config.fault_rate(fault)
        if draw < threshold:
            return fault
    return None


def _server_error(provider: _Provider, status: int) -> web.Response:
    if status == 503:
        return provider.error(503, "The server is overloaded, please try again later.")
    return provider.error(500, "The server had an error while processing your request.")


def _rate_limited(call: _Call, refusal: _Refusal, headers: Mapping[str, str]) -> web.Response:
    limit, cost = _number(refusal.limit), _number(refusal.cost)
    what = f"for {call.model} on {refusal.resource} per min: Limit {limit}, Requested {cost}."
    if refusal.wait_s is None:
        message = f"Request too large {what} Reduce the input or max tokens."
    else:
        message = f"Rate limit reached {what} Please try again in {_duration(refusal.wait_s)}."
    response = call.provider.error(429, message, code="rate_limit_exceeded", kind=refusal.resource)
    response.headers.update(headers)
    if refusal.wait_s is not None:
        response.headers.update(call.provider.retry_headers(refusal.wait_s))
    return response


# -- command line ---------------------------------------------------------------------------


def serve_forever(config: SimulatorConfig) -> None:
    """Run the simulator in the foreground, printing its URLs, until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config))


async def _serve(config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    await simulator.start()
    print(f"rowpilot simulator listening on {simulator.url}", flush=True)
    print(f"  OpenAI base URL:    {simulator.openai_base_url}", flush=True)
    print(f"  Anthropic base URL: {simulator.anthropic_base_url}", flush=True)
    print(f"  Search URL:         {simulator.search_url}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
