"""Shared outside capacity: requests and tokens per minute and calls in flight, adaptive.

Written by hand because it is the product's core. A ``Resource`` is one provider/model that
every call of a run shares; ``async with resource.slot(tokens) as permit`` waits for room,
and the call reports back through ``permit.settle(...)`` or ``permit.rate_limited(...)``.
Everything runs on one event loop, so the state needs no locks; the one ``asyncio.Lock``
is the queue. The rules:

* **Admission** is FIFO (the lock queues waiters in order, so a big request is never starved
  by small ones). The head of the queue waits for a concurrency slot, for the end of any
  pause, for one request in the request bucket and for ``tokens`` in the token bucket, then
  takes them all at once. Each wait is computed and slept, never polled.
* **Buckets** refill continuously at ``limit * headroom * factor / 60`` per second and hold
  ``burst_seconds`` of that (the providers' own buckets hold about a second's worth: ours
  staying under theirs absorbs the jitter of the network). They start full. A cost above
  the capacity passes when the bucket is full and leaves it in debt, so a huge prompt
  waits its turn instead of forever. Tokens are counted at admission, as OpenAI does
  (prompt estimate + max_tokens); ``settle(tokens=real)`` reconciles the difference.
* **A 429** (``rate_limited``) pauses every admission until ``retry_after`` (1 s if the
  provider did not say), empties the buckets so no burst follows the pause, and multiplies
  ``factor`` by 0.75 (floor 0.1). A burst of 429s is one signal: only a call admitted after
  the last decrease (so sent at the decreased rate), reporting after that decrease's pause
  and at least 0.25 s after it, decreases again. Without 429s the factor climbs back by
  1/15 per second, so a full recovery from a deep cut takes about 15 s. With no rate known
  at all, the same cut applies to a concurrency cap instead (``0.75 * in flight``, at
  least 1; +1 per cap's worth of successes, up to ``max_concurrent``).
* **Headers** of each answer (OpenAI ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``)
  teach the limits: with ``learn`` and no limit given, the provider's is adopted; a
  provider's limit lower than the one given wins. The tightest of Anthropic's tokens,
  input-tokens and output-tokens limits stands for tokens. When the provider says the
  requests are used up (or the tokens are below a typical call's cost), admissions pause
  until it has refilled enough: its reset time, or sooner when its limit says so.
  Malformed values are ignored. ``learn=False`` keeps the given limits but still honours
  the pauses.
* **Probing**: with ``learn`` and no rate given, the first call goes alone, so its headers
  set the pace before a blind burst can run into the provider's limit.
* **A share** (``share``, 1/N for one of N shards run by hand) is this process's part of
  an account that others use at the same time: it multiplies the limits in force, given or
  learned (a provider's headers report the whole account's), and rounds ``max_concurrent``
  down (at least 1). The ``remaining`` a header reports is the whole account's too: the
  share counts only its part of it, so a shard pauses when its part cannot pay a call and
  starts a learned bucket with its part, never with what the other shards may be about to
  take.
* A permit that neither settles nor reports a 429 (the call raised) keeps its reservation:
  the provider may have counted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from rowpilot.errors import ConfigError

__all__ = [
    "Limits",
    "Permit",
    "Quota",
    "Resource",
    "parse_duration",
    "parse_quotas",
    "parse_reset_time",
    "parse_retry_after",
]

Kind = Literal["requests", "tokens"]
_KINDS: tuple[Kind, ...] = ("requests", "tokens")

_DECREASE = 0.75  # the factor's (and the cap's) cut on a 429
_MIN_FACTOR = 0.1
_RECOVERY_SECONDS = 15.0  # 429-free seconds for the factor to climb by 1
_BURST_SPACING = 0.25  # 429s closer than this to the last cut are the same burst
_DEFAULT_RETRY_AFTER = 1.0
_MAX_WAIT = 86_400.0  # a pause longer than a day is a malformed header, not a limit
_COST_DECAY = 0.9  # weight of the past in the typical token cost of a call
_EPSILON = 1e-9  # a deficit this small (relative) is rounding, not a reason to sleep


# -- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The limits of a resource; None means unknown (or none)."""

    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute: prompt estimate + max_tokens, at admission
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, not {value!r}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, not {self.max_concurrent!r}")

    def shared(self, share: float) -> Limits:
        """``share`` of these limits, as a ``Resource`` with that share paces: the rates
        times it, ``max_concurrent`` rounded down (at least 1)."""
        _check_share(share)
        return Limits(
            rpm=None if self.rpm is None else self.rpm * share,
            tpm=None if self.tpm is None else self.tpm * share,
            max_concurrent=_shared_count(self.max_concurrent, share),
        )


def _check_share(share: float) -> None:
    if not (math.isfinite(share) and 0 < share <= 1):
        raise ValueError(f"share must be in (0, 1], not {share!r}")


def _shared_count(count: int | None, share: float) -> int | None:
    """``share`` of a count, rounded down, at least 1 (1e-9: 98 x 1/49 is 2, not 1.999...)."""
    if count is None:
        return None
    return max(1, math.floor(count * share + 1e-9))


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


def _wait(seconds: float | None) -> float | None:
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
        return _wait(plain)
    if not _DURATION.fullmatch(text):
        return None
    parts = _DURATION_PART.findall(text)
    return _wait(sum(float(value) * _UNIT_SECONDS[unit] for value, unit in parts))


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
    return _wait(max(0.0, seconds))  # a clock ahead of the provider's: reset is now


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

    kind: Kind = "requests" if name == "requests" else "tokens"
    return _quota(kind, get("limit"), get("remaining"), parse_reset_time(get("reset"), now))


def parse_quotas(headers: Mapping[str, str], now: datetime | None = None) -> list[Quota]:
    """The limits that rate-limit headers (lowercase names) describe; malformed values: None."""
    quotas = [_openai_quota(headers, kind) for kind in _KINDS]
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
    seconds = _wait(milliseconds / 1000.0) if milliseconds is not None else None
    if seconds is not None:
        return seconds
    return _retry_after_value(named.get("retry-after"), now)


def _retry_after_value(text: str | None, now: float | None) -> float | None:
    if text is None:
        return None
    seconds = _number(text)
    if seconds is not None:
        return _wait(seconds)
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
    return _wait(max(0.0, left))  # a date already past: the provider is ready now


# -- buckets --------------------------------------------------------------------------------


class _Bucket:
    """Capacity refilled continuously at ``rate`` per second, holding ``burst_s`` of it."""

    def __init__(self, rate: float, burst_s: float, now: float, level: float | None) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self.capacity = rate * burst_s
        self.level = self.capacity if level is None else min(self.capacity, level)
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        self._updated = max(self._updated, now)

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be taken; a cost above the capacity needs it full."""
        self._refill(now)
        need = min(cost, self.capacity)
        deficit = need - self.level
        if deficit <= _EPSILON * max(1.0, need):
            return 0.0
        return deficit / self.rate

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost  # may go into debt: see the module docstring

    def give(self, amount: float, now: float) -> None:
        """Return ``amount`` (negative: take more), never above the capacity."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def drain(self, now: float) -> None:
        self._refill(now)
        self.level = min(self.level, 0.0)

    def set_rate(self, rate: float, now: float) -> None:
        self._refill(now)  # the time so far refills at the old rate
        self.rate = rate
        self.capacity = rate * self.burst_s
        self.level = min(self.level, self.capacity)


# -- permits --------------------------------------------------------------------------------


class Permit:
    """One admitted call. Report how it went once: ``settle`` or ``rate_limited``."""

    def __init__(self, resource: Resource, tokens: int, admitted_at: float, charged: bool) -> None:
        self.tokens = tokens  # the reservation in the token bucket
        self.admitted_at = admitted_at
        self._resource = resource
        self._charged = charged  # whether a token bucket existed to take ``tokens`` from
        self._reported = False

    @property
    def reported(self) -> bool:
        return self._reported

    def settle(self, tokens: int | None = None, headers: Mapping[str, str] | None = None) -> None:
        """Success. ``tokens``: the real cost as the provider counts it (prompt + max_tokens)."""
        if self._reported:
            return  # the first report wins: a second one would count the call twice
        self._reported = True
        self._resource._settled(self, tokens, headers)

    def rate_limited(
        self, retry_after: float | None, headers: Mapping[str, str] | None = None
    ) -> None:
        """The call got a 429: the whole resource slows down (see the module docstring)."""
        if self._reported:
            return
        self._reported = True
        self._resource._rate_limited(self, retry_after, headers)


# -- the resource ---------------------------------------------------------------------------


class Resource:
    """A named outside capacity (a provider/model) shared by every call of a run.

    ``share`` is the run's part of it when other processes use the same account at the
    same time (1/N for a shard of N): see the module docstring. It belongs to the event
    loop it is first used on.
    """

    def __init__(
        self,
        name: str,
        limits: Limits = Limits(),
        *,
        headroom: float = 0.98,
        burst_seconds: float = 0.5,
        learn: bool = True,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], not {headroom!r}")
        if not (math.isfinite(burst_seconds) and burst_seconds > 0):
            raise ValueError(f"burst_seconds must be positive, not {burst_seconds!r}")
        _check_share(share)
        self.name = name
        self._given = limits
        self._share = share
        self._max_concurrent = _shared_count(limits.max_concurrent, share)
        self._headroom = headroom
        self._burst_s = burst_seconds
        self._learn = learn
        self._clock = clock
        self._queue = asyncio.Lock()  # FIFO: the head of the queue holds it while it waits
        self._wake = asyncio.Event()  # a slot freed or the cap rose: the head re-checks
        self._learned: dict[Kind, float] = {}
        self._buckets: dict[Kind, _Bucket] = {}
        self._factor = 1.0
        self._cap: float | None = None  # the adaptive concurrency cap; None: no cap
        self._in_flight = 0
        self._observed = False  # any call came back: the probe is over
        now = clock()
        self._pause_until = now
        self._last_cut = -math.inf
        self._calm_after = -math.inf  # 429s before this belong to the last cut's burst
        self._recovered_at = now
        self._typical_cost = 0.0
        self._requests = 0
        self._limited = 0
        self._waited = 0.0
        self._calls_ended = 0
        self._call_seconds = 0.0  # held slots, admission to end: the calls' own latency
        self._tokens_admitted = 0.0  # token costs at admission (estimates)
        self._tokens_settled = 0.0  # final token costs of the calls that settled with one
        self._calls_settled = 0
        self._sync_buckets(now)

    # -- public face --

    @property
    def limits(self) -> Limits:
        """The limits in force: the given ones, or lower ones the provider's headers set,
        times the share."""
        rpm, tpm = self._limit("requests"), self._limit("tokens")
        return Limits(rpm=rpm, tpm=tpm, max_concurrent=self._max_concurrent)

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        rates = {kind: bucket.rate * 60.0 for kind, bucket in self._buckets.items()}
        cap = self._concurrency_cap()
        return {
            "name": self.name,
            "requests": self._requests,
            "rate_limited": self._limited,
            "waited_seconds": self._waited,
            "calls_ended": self._calls_ended,
            "call_seconds": self._call_seconds,
            "tokens_per_call": self._tokens_per_call(),
            "in_flight": self._in_flight,
            "effective_rpm": rates.get("requests"),
            "effective_tpm": rates.get("tokens"),
            "factor": self._factor,
            "concurrency_cap": None if math.isinf(cap) else int(cap),
            "learned": self._learned_in_force(),
            "share": self._share,
            "paused_seconds": max(0.0, self._pause_until - now),
        }

    def _tokens_per_call(self) -> float | None:
        """What a call costs in the token bucket (for ``--workers auto``): the mean final
        cost of the settled calls; until one settled, the mean admission estimate."""
        if self._calls_settled:
            return self._tokens_settled / self._calls_settled
        return self._tokens_admitted / self._requests if self._requests else None

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[Permit]:
        """Wait (FIFO) for room for one call costing ``tokens``, hold it for the call."""
        permit = await self._admit(max(0, tokens))
        try:
            yield permit
        finally:
            self._in_flight -= 1
            self._calls_ended += 1
            self._call_seconds += max(0.0, self._clock() - permit.admitted_at)
            self._observed = True  # even a failed call ends the probe: it cannot teach more
            self._wake.set()

    # -- admission --

    async def _admit(self, tokens: int) -> Permit:
        asked = self._clock()
        async with self._queue:
            await self._until_admissible(tokens)
            now = self._clock()
            for kind, bucket in self._buckets.items():
                bucket.take(1.0 if kind == "requests" else float(tokens), now)
            self._in_flight += 1
            self._requests += 1
            self._waited += now - asked
            self._tokens_admitted += tokens
            self._note_cost(tokens)
            return Permit(self, tokens, now, charged="tokens" in self._buckets)

    async def _until_admissible(self, tokens: int) -> None:
        # Re-check after every wake: a 429 may have extended the pause meanwhile.
        while True:
            if self._in_flight >= self._concurrency_cap():
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._wait_seconds(tokens, self._clock())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _wait_seconds(self, tokens: int, now: float) -> float:
        waits = [self._pause_until - now]
        for kind, bucket in self._buckets.items():
            waits.append(bucket.wait(1.0 if kind == "requests" else float(tokens), now))
        return max(waits)

    def _concurrency_cap(self) -> float:
        given = self._max_concurrent
        cap = math.inf if given is None else float(given)
        if self._buckets:
            return cap  # a rate is known: the adaptation works on the rate
        if self._learn and not self._observed:
            return 1.0  # the probe: see the module docstring
        if self._cap is not None:
            cap = min(cap, max(1.0, math.floor(self._cap)))
        return cap

    def _note_cost(self, tokens: int) -> None:
        if self._typical_cost <= 0:
            self._typical_cost = float(tokens)
        else:
            self._typical_cost = self._typical_cost * _COST_DECAY + tokens * (1 - _COST_DECAY)

    # -- limits and buckets --

    def _limit(self, kind: Kind) -> float | None:
        """The tightest of the given and the learned limit, times the share: the one
        place the share divides a rate."""
        given = self._given.rpm if kind == "requests" else self._given.tpm
        known = [value for value in (given, self._learned.get(kind)) if value is not None]
        return min(known) * self._share if known else None

    def _learned_in_force(self) -> bool:
        """Whether a limit in force came from headers (below the given one, or none given)."""
        for kind, learned in self._learned.items():
            given = self._given.rpm if kind == "requests" else self._given.tpm
            if given is None or learned < given:
                return True
        return False

    def _sync_buckets(self, now: float, levels: Mapping[Kind, float] | None = None) -> None:
        """Create or re-rate the buckets to the limits and factor in force."""
        for kind in _KINDS:
            limit = self._limit(kind)
            if limit is None:
                continue
            rate = limit * self._headroom * self._factor / 60.0
            bucket = self._buckets.get(kind)
            if bucket is None:
                level = (levels or {}).get(kind)
                self._buckets[kind] = _Bucket(rate, self._burst_s, now, level)
            else:
                bucket.set_rate(rate, now)

    # -- reports --

    def _settled(
        self, permit: Permit, tokens: int | None, headers: Mapping[str, str] | None
    ) -> None:
        now = self._clock()
        self._observed = True
        bucket = self._buckets.get("tokens")
        if tokens is not None and tokens >= 0:
            self._calls_settled += 1
            self._tokens_settled += tokens
            if bucket is not None and permit._charged:
                bucket.give(permit.tokens - tokens, now)
            self._note_cost(tokens)
        self._recover(now)
        if headers:
            self._read_headers(headers, now)
        self._wake.set()

    def _rate_limited(
        self, permit: Permit, retry_after: float | None, headers: Mapping[str, str] | None
    ) -> None:
        now = self._clock()
        self._observed = True
        self._limited += 1
        if headers:
            self._read_headers(headers, now)
        wait = _wait(retry_after)
        if wait is None:
            wait = parse_retry_after(headers)
        self._pause(now, _DEFAULT_RETRY_AFTER if wait is None else wait)
        for bucket in self._buckets.values():
            bucket.drain(now)  # the provider's bucket is empty: no burst after the pause
        if permit.admitted_at > self._last_cut and now >= self._calm_after:
            self._cut(now)
        self._recovered_at = now
        self._wake.set()

    def _pause(self, now: float, seconds: float) -> None:
        self._pause_until = max(self._pause_until, now + seconds)

    def _cut(self, now: float) -> None:
        """The multiplicative decrease: of the rate if one is known, else of concurrency."""
        self._last_cut = now
        self._calm_after = max(self._pause_until, now + _BURST_SPACING)
        if self._buckets:
            self._factor = max(_MIN_FACTOR, self._factor * _DECREASE)
            self._sync_buckets(now)
        else:
            self._cap = max(1.0, self._in_flight * _DECREASE)

    def _recover(self, now: float) -> None:
        """The additive increase, paid by the 429-free time since the last report."""
        elapsed = max(0.0, now - self._recovered_at)
        self._recovered_at = now
        if self._factor < 1.0:
            self._factor = min(1.0, self._factor + elapsed / _RECOVERY_SECONDS)
            self._sync_buckets(now)
        if self._cap is not None:
            # +1 per cap's worth of successes: about one more slot per round trip.
            ceiling = self._max_concurrent or math.inf
            self._cap = min(ceiling, self._cap + 1.0 / self._cap)

    def _read_headers(self, headers: Mapping[str, str], now: float) -> None:
        quotas = parse_quotas(headers)
        if self._learn:
            self._learn_limits(quotas, now)
        self._pause_for(quotas, now)

    def _learn_limits(self, quotas: Sequence[Quota], now: float) -> None:
        levels: dict[Kind, float] = {}
        changed = False
        for kind in _KINDS:
            mine = [q for q in quotas if q.kind == kind]
            limits = [q.limit for q in mine if q.limit is not None]
            if not limits:
                continue
            if self._learned.get(kind) != min(limits):
                self._learned[kind] = min(limits)
                changed = True
            remaining = [q.remaining for q in mine if q.remaining is not None]
            if remaining:
                # A new bucket starts with what is left: its part of it, with a share.
                levels[kind] = min(remaining) * self._share
        if changed:
            self._sync_buckets(now, levels)

    def _pause_for(self, quotas: Iterable[Quota], now: float) -> None:
        """Pause until the provider has room again when it says it has none: with a
        share, until this run's part of what is left (and of the refill) pays a call."""
        for quota in quotas:
            if quota.remaining is None or quota.reset_s is None:
                continue
            need = 1.0 if quota.kind == "requests" else self._typical_cost
            mine = quota.remaining * self._share
            if mine >= need:
                continue
            wait = quota.reset_s
            if quota.limit is not None:
                # The reset is when it is full; it has room for one call sooner.
                wait = min(wait, (need - mine) * 60.0 / (quota.limit * self._share))
            self._pause(now, wait)
