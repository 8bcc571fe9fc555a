"""Rate-limit headers: what a provider's response says of its limits (OpenAI's
``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``) and of when to come back
(``retry-after``, ``retry-after-ms``), parsed for ``rowpilot.llm.limits``. A value that
does not parse is None, never an error: a provider's odd header must not stop a run.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Kind = Literal["requests", "tokens", "input_tokens", "output_tokens"]
_MAX_WAIT = 86_400.0  # a pause longer than a day is a malformed header, not a limit


# -- headers --------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d{1,15}(?:\.\d{1,9})?")
_DURATION = re.compile(r"(?:\d{1,15}(?:\.\d{1,9})?(?:ms|us|µs|ns|h|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Quota:
    """One limit as a response's headers describe it: per minute, what is left, until full."""

    kind: Kind
    limit: float | None
    remaining: float | None
    reset_s: float | None


def _number(text: str | None) -> float | None:
    """A plain non-negative decimal (no signs, exponents, nan or inf), else None."""
    if text is None or not _NUMBER.fullmatch(text.strip()):
        return None
    return float(text.strip())


def bounded_wait(seconds: float | None) -> float | None:
    """A usable wait in seconds, or None for a negative, infinite or absurd one."""
    if seconds is None or not (0 <= seconds <= _MAX_WAIT):  # also rejects nan
        return None
    return seconds


def parse_duration(text: str | None) -> float | None:
    """Seconds of an OpenAI reset (``350ms``, ``1.2s``, ``6m0s``, ``2h``) or a bare number."""
    if text is None:
        return None
    text = text.strip()
    if len(text) > 64:
        return None
    plain = _number(text)
    if plain is not None:
        return bounded_wait(plain)
    if not _DURATION.fullmatch(text):
        return None
    parts = _DURATION_PART.findall(text)
    return bounded_wait(sum(float(value) * _UNIT_SECONDS[unit] for value, unit in parts))


def parse_reset_time(text: str | None, now: datetime | None = None) -> float | None:
    """Seconds from ``now`` until an Anthropic reset (RFC 3339); a duration is read too."""
    if text is None:
        return None
    text = text.strip()
    if len(text) > 64:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return parse_duration(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    except (OverflowError, TypeError):
        return None
    return bounded_wait(max(0.0, seconds))  # a clock ahead of the provider's: reset is now


def _quota(kind: Kind, limit: str | None, remaining: str | None, reset: float | None) -> Quota:
    limit_value = _number(limit)
    if limit_value is not None and limit_value <= 0:
        limit_value = None  # a zero limit would stop the run forever: take it as malformed
    return Quota(kind, limit_value, _number(remaining), reset)


def _openai_quota(headers: Mapping[str, str], kind: Kind) -> Quota:
    def get(field: str) -> str | None:
        return headers.get(f"x-ratelimit-{field}-{kind}")

    return _quota(kind, get("limit"), get("remaining"), parse_duration(get("reset")))


def _anthropic_quota(headers: Mapping[str, str], name: str, now: datetime | None) -> Quota:
    def get(field: str) -> str | None:
        return headers.get(f"anthropic-ratelimit-{name}-{field}")

    kinds: dict[str, Kind] = {
        "requests": "requests",
        "tokens": "tokens",
        "input-tokens": "input_tokens",
        "output-tokens": "output_tokens",
    }
    kind = kinds[name]
    return _quota(kind, get("limit"), get("remaining"), parse_reset_time(get("reset"), now))


def parse_quotas(headers: Mapping[str, str], now: datetime | None = None) -> list[Quota]:
    """The limits that rate-limit headers (lowercase names) describe; malformed values: None."""
    quotas = [_openai_quota(headers, kind) for kind in ("requests", "tokens")]
    for name in ("requests", "tokens", "input-tokens", "output-tokens"):
        quotas.append(_anthropic_quota(headers, name, now))
    return [q for q in quotas if (q.limit, q.remaining, q.reset_s) != (None, None, None)]


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait that a response's headers ask for, or None if they do not say.

    The one reader of Retry-After for providers, the limiter and ``ctx.call``: header
    names in any case; ``retry-after-ms`` (OpenAI's) first, then ``retry-after`` as
    seconds or as an HTTP date (counted from ``now``, a Unix time, default the clock's).
    A negative, unreadable or absurd (over a day) value counts as not said.
    """
    if not headers:
        return None
    named = {str(name).lower(): value for name, value in headers.items()}
    milliseconds = _number(named.get("retry-after-ms"))
    seconds = bounded_wait(milliseconds / 1000.0) if milliseconds is not None else None
    if seconds is not None:
        return seconds
    return _retry_after_value(named.get("retry-after"), now)


def _retry_after_value(text: str | None, now: float | None) -> float | None:
    if text is None:
        return None
    seconds = _number(text)
    if seconds is not None:
        return bounded_wait(seconds)
    try:
        moment = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        left = moment.timestamp() - (time.time() if now is None else now)
    except (OverflowError, ValueError, OSError):
        return None
    return bounded_wait(max(0.0, left))  # a date already past: the provider is ready now
