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
  ``burst_seconds`` of that for requests (the providers' own buckets hold about a second's
  worth: ours staying under theirs absorbs the jitter of the network) and
  ``token_burst_seconds`` (a second, less headroom) for tokens: one request may cost a
  large part of a second's tokens (a 10-row request, ~3,200 at 300,000 tpm), and a bucket
  that holds less than the next request admits it only when full, so the provider's
  remaining (below) could never raise it in time (0.93 of a usage-settling provider's
  ceiling at half a second, 0.98 at a second: docs/benchmarks.md, issue 13). Once the
  provider reports its remaining, the level never passes it. They start full. A cost above
  the capacity passes when the bucket is full and leaves it in debt, so a huge prompt
  waits its turn instead of forever. A call reserves its prompt estimate + max_tokens
  (``slot(tokens, output=max_tokens)``) and settles with the real counts
  (``settle(prompt, completion, cached=)``); the resource's rule says what it finally costs.
* **Token accounting** (``accounting``; the rule for each provider is chosen in one table,
  ``providers.accounting_rule``, and docs/limits.md says why):

  - ``"admission"`` (OpenAI, Azure): a call costs its real prompt + max_tokens; settling
    corrects the prompt estimate and never gives back unused output.
  - ``"usage"`` (Anthropic): the output reserved at max_tokens is settled at the real
    count (the difference goes back to the bucket), and cache reads do not count as input.
    Its separate input and output limits (given as ``input_tpm``/``output_tpm``, or learned
    from ``anthropic-ratelimit-input-tokens-*``/``-output-tokens-*``) get buckets of their
    own: a call takes its prompt estimate from one and max_tokens from the other; its
    combined ``tokens`` headers (the tighter of the two, not a limit of their sum) are then
    left out. ``tpm`` stays the combined limit when one is given.
  - ``"learn"`` (any other server): ``"admission"`` until the provider's remaining tokens
    show that it settles at real usage (how: ``rowpilot.llm.accounting``); the change is
    a ``limits.accounting_changed`` event with the evidence, through ``listen``. No
    headers: it stays "admission". Cache reads count as input under a learned "usage".

  The limits of Anthropic's headers are folded into tokens (the tightest of the three)
  under any rule but "usage". ``stats()["tokens_per_call"]`` is the mean final cost of the
  calls ended (a call that raised or got a 429 keeps its reservation);
  ``stats()["least_tokens_per_call"]`` is the mean the answers say they used (prompt +
  completion; cache reads out under "usage"), the least any rule charges: ``--workers
  auto`` sizes by it, so that the limiter, not the count, holds the pace.
* **The provider's remaining bounds each bucket** on every answer: never above this run's
  part of what the provider says is left, and a token bucket (without a share) never
  below it less headroom minus all this run admitted after this call, ended or not (a
  remaining read at the call's admission counts none of it). Stale, never ahead: since it
  was read the provider refilled and admitted at most what this run sent after the call,
  so a bucket raised to it admits nothing the provider lacks. Not raised: requests (never
  given back; raised, an opening burst got 2-4 429s in 160), nor a shard (the other
  shards' calls since are not in the figure: four side by side got 1% 429s).
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
  provider's limit lower than the one given wins (Anthropic's token limits: see token
  accounting). When the provider says the requests are used up (or the tokens are below a
  typical call's cost of that kind), admissions pause until it has refilled enough: its
  reset time, or sooner when its limit says so.
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
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rowpilot._latency import LatencyHistogram
from rowpilot.errors import ConfigError
from rowpilot.llm.accounting import VERDICTS_TO_SWITCH, Evidence, Rule, Verdict
from rowpilot.llm.quotas import (
    Kind,
    Quota,
    bounded_wait,
    parse_duration,
    parse_quotas,
    parse_reset_time,
    parse_retry_after,
)

__all__ = [
    "ACCOUNTING",
    "Accounting",
    "Limits",
    "Permit",
    "Quota",
    "Resource",
    "parse_duration",
    "parse_quotas",
    "parse_reset_time",
    "parse_retry_after",
]

_KINDS: tuple[Kind, ...] = ("requests", "tokens", "input_tokens", "output_tokens")
_APART: tuple[Kind, ...] = ("input_tokens", "output_tokens")  # Anthropic's separate limits
Accounting = Literal["admission", "usage", "learn"]  # a resource's rule (module docstring)
ACCOUNTING: tuple[Accounting, ...] = ("admission", "usage", "learn")

_DECREASE = 0.75  # the factor's (and the cap's) cut on a 429
_MIN_FACTOR = 0.1
_RECOVERY_SECONDS = 15.0  # 429-free seconds for the factor to climb by 1
_BURST_SPACING = 0.25  # 429s closer than this to the last cut are the same burst
_DEFAULT_RETRY_AFTER = 1.0
_COST_DECAY = 0.9  # weight of the past in the typical token cost of a call
_EPSILON = 1e-9  # a deficit this small (relative) is rounding, not a reason to sleep


# -- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The limits of a resource; None means unknown (or none)."""

    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute, input and output together
    max_concurrent: int | None = None
    input_tpm: float | None = None  # input tokens per minute, apart (Anthropic)
    output_tpm: float | None = None  # output tokens per minute, apart (Anthropic)

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "input_tpm", "output_tpm"):
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
            rpm=_times(self.rpm, share),
            tpm=_times(self.tpm, share),
            max_concurrent=_shared_count(self.max_concurrent, share),
            input_tpm=_times(self.input_tpm, share),
            output_tpm=_times(self.output_tpm, share),
        )

    def of(self, kind: Kind) -> float | None:
        """The per-minute limit of one kind of bucket."""
        return {
            "requests": self.rpm,
            "tokens": self.tpm,
            "input_tokens": self.input_tpm,
            "output_tokens": self.output_tpm,
        }[kind]


def _times(value: float | None, share: float) -> float | None:
    return None if value is None else value * share


def _check_share(share: float) -> None:
    if not (math.isfinite(share) and 0 < share <= 1):
        raise ValueError(f"share must be in (0, 1], not {share!r}")


def _shared_count(count: int | None, share: float) -> int | None:
    """``share`` of a count, rounded down, at least 1 (1e-9: 98 x 1/49 is 2, not 1.999...)."""
    if count is None:
        return None
    return max(1, math.floor(count * share + 1e-9))


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

    def bound(self, low: float, high: float, now: float) -> None:
        """Keep the level within ``low`` .. ``high`` (and never above the capacity)."""
        self._refill(now)
        self.level = min(self.capacity, high, max(self.level, low))

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
    """One admitted call. Report how it went once: ``settle`` or ``rate_limited``.

    ``tokens`` is its reservation (prompt estimate + ``output``, the max_tokens asked);
    ``charges`` what each bucket took of it; ``cost`` what it finally costs in the token
    bucket under the resource's rule (the reservation until it settles)."""

    def __init__(
        self,
        resource: Resource,
        tokens: int,
        admitted_at: float,
        *,
        output: int = 0,
        charges: Mapping[Kind, float] | None = None,
    ) -> None:
        self.tokens = tokens
        self.output = min(max(0, output), tokens)
        self.admitted_at = admitted_at
        self.charges: dict[Kind, float] = dict(charges or {})
        self.cost = float(tokens)
        self.number = 0  # its place in the order of admission (1, 2, ...)
        self.charged_before: dict[Kind, float] = {}  # all charges admitted before it
        self._resource = resource
        self._reported = False

    @property
    def reported(self) -> bool:
        return self._reported

    @property
    def prompt_estimate(self) -> int:
        return self.tokens - self.output

    def settle(
        self,
        prompt: int | None = None,
        completion: int | None = None,
        *,
        cached: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Success, with the real numbers the answer gave: ``prompt`` tokens (all of them,
        cache reads included), ``completion`` tokens and ``cached`` (of the prompt, read
        from the provider's cache); None where unknown (the reservation stands for it).
        The resource's rule turns them into the call's cost (see the module docstring)."""
        if self._reported:
            return  # the first report wins: a second one would count the call twice
        self._reported = True
        self._resource._settled(self, _Usage(prompt, completion, max(0, cached)), headers)

    def rate_limited(
        self, retry_after: float | None, headers: Mapping[str, str] | None = None
    ) -> None:
        """The call got a 429: the whole resource slows down (see the module docstring)."""
        if self._reported:
            return
        self._reported = True
        self._resource._rate_limited(self, retry_after, headers)


@dataclass(frozen=True)
class _Usage:
    """What an answer says it used; None: not said."""

    prompt: int | None
    completion: int | None
    cached: int


# -- the resource ---------------------------------------------------------------------------


Listener = Callable[[str, dict[str, Any]], None]


class Resource:
    """A named outside capacity (a provider/model) shared by every call of a run.

    ``share`` is the run's part of it when other processes use the same account at the
    same time (1/N for a shard of N); ``accounting`` is how the provider counts tokens
    (``why`` says how that was decided): see the module docstring. It belongs to the
    event loop it is first used on.
    """

    def __init__(
        self,
        name: str,
        limits: Limits = Limits(),
        *,
        headroom: float = 0.98,
        burst_seconds: float = 0.5,
        token_burst_seconds: float = 1.0,
        learn: bool = True,
        share: float = 1.0,
        accounting: Accounting = "admission",
        why: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], not {headroom!r}")
        for what, seconds in (("burst", burst_seconds), ("token_burst", token_burst_seconds)):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{what}_seconds must be positive, not {seconds!r}")
        if accounting not in ACCOUNTING:
            raise ValueError(f"accounting must be one of {ACCOUNTING}, not {accounting!r}")
        _check_share(share)
        self.name = name
        self.accounting: Accounting = accounting
        self.why = why
        self._rule: Rule = "usage" if accounting == "usage" else "admission"
        self._evidence = Evidence()
        self._verdicts: list[Verdict] = []
        self._listener: Listener | None = None
        self._given = limits
        self._share = share
        self._max_concurrent = _shared_count(limits.max_concurrent, share)
        self._headroom = headroom
        self._burst_s = burst_seconds
        self._token_burst_s = token_burst_seconds
        self._learn = learn
        self._clock = clock
        self._queue = asyncio.Lock()  # FIFO: the head of the queue holds it while it waits
        self._wake = asyncio.Event()  # a slot freed or the cap rose: the head re-checks
        self._learned: dict[Kind, float] = {}
        self._buckets: dict[Kind, _Bucket] = {}
        self._factor = 1.0
        self._cap: float | None = None  # the adaptive concurrency cap; None: no cap
        self._in_flight = 0
        self._charged: dict[Kind, float] = {}  # every charge admitted so far, by kind
        self._observed = False  # any call came back: the probe is over
        now = clock()
        self._pause_until = now
        self._last_cut = -math.inf
        self._calm_after = -math.inf  # 429s before this belong to the last cut's burst
        self._recovered_at = now
        self._typical: dict[Kind, float] = {}  # the typical cost of a call, per kind
        self._requests = 0
        self._limited = 0
        self._waited = 0.0
        self._calls_ended = 0
        self._call_seconds = 0.0  # held slots, admission to end: the calls' own latency
        self._latency = LatencyHistogram()  # the same durations, for the report's quantiles
        self._tokens_ended = 0.0  # what the ended calls finally cost in the token bucket
        self._tokens_admitted = 0.0  # token costs at admission (estimates)
        self._tokens_used = 0.0  # prompt + completion the answers said, where they said both
        self._calls_used = 0
        self._sync_buckets(now)

    # -- public face --

    @property
    def limits(self) -> Limits:
        """The limits in force: the given ones, or lower ones the provider's headers set,
        times the share."""
        return Limits(
            rpm=self._limit("requests"),
            tpm=self._limit("tokens"),
            max_concurrent=self._max_concurrent,
            input_tpm=self._limit("input_tokens"),
            output_tpm=self._limit("output_tokens"),
        )

    @property
    def rule(self) -> Rule:
        """The rule in force: ``accounting``'s, or for "learn" what was learned so far."""
        return self._rule

    def listen(self, listener: Listener | None) -> None:
        """``listener(event, fields)`` hears of a change of the rule in force
        (``limits.accounting_changed``)."""
        self._listener = listener

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        rates = {kind: bucket.rate * 60.0 for kind, bucket in self._buckets.items()}
        cap = self._concurrency_cap()
        ended = self._calls_ended
        return {
            "name": self.name,
            "requests": self._requests,
            "rate_limited": self._limited,
            "waited_seconds": self._waited,
            "calls_ended": ended,
            "call_seconds": self._call_seconds,
            "tokens_per_call": self._tokens_per_call(),
            "least_tokens_per_call": (
                self._tokens_used / self._calls_used
                if self._calls_used
                else self._tokens_per_call()
            ),
            "in_flight": self._in_flight,
            "effective_rpm": rates.get("requests"),
            "effective_tpm": rates.get("tokens"),
            "factor": self._factor,
            "concurrency_cap": None if math.isinf(cap) else int(cap),
            "learned": self._learned_in_force(),
            "share": self._share,
            "paused_seconds": max(0.0, self._pause_until - now),
            "accounting": self.accounting,
            "rule": self._rule,
            "latency_counts": dict(self._latency.counts),
            **dataclasses.asdict(self.limits),  # in force: rpm, tpm, max_concurrent, ...
        }

    def _tokens_per_call(self) -> float | None:
        """What a call costs in the token bucket (for ``--workers auto``): the mean final
        cost of the ended calls under the rule in force; until one ended, the mean
        admission estimate."""
        if self._calls_ended:
            return self._tokens_ended / self._calls_ended
        return self._tokens_admitted / self._requests if self._requests else None

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int, *, output: int = 0) -> AsyncIterator[Permit]:
        """Wait (FIFO) for room for one call reserving ``tokens`` (of which ``output``,
        the max_tokens asked, is its answer's part), hold it for the call."""
        permit = await self._admit(max(0, tokens), max(0, output))
        try:
            yield permit
        finally:
            self._in_flight -= 1
            self._calls_ended += 1
            held = max(0.0, self._clock() - permit.admitted_at)
            self._call_seconds += held
            self._latency.add(held)
            self._tokens_ended += permit.cost
            self._observed = True  # even a failed call ends the probe: it cannot teach more
            self._wake.set()

    # -- admission --

    async def _admit(self, tokens: int, output: int) -> Permit:
        asked = self._clock()
        async with self._queue:
            costs = _costs(tokens, min(output, tokens))
            await self._until_admissible(costs)
            now = self._clock()
            charges: dict[Kind, float] = {}
            for kind, bucket in self._buckets.items():
                bucket.take(costs[kind], now)
                charges[kind] = costs[kind]
            self._in_flight += 1
            self._requests += 1
            self._waited += now - asked
            self._evidence.spent += tokens
            self._tokens_admitted += tokens
            self._note_costs(costs)
            permit = Permit(self, tokens, now, output=output, charges=charges)
            permit.number = self._requests
            permit.charged_before = dict(self._charged)
            for kind, charge in charges.items():
                self._charged[kind] = self._charged.get(kind, 0.0) + charge
            return permit

    async def _until_admissible(self, costs: Mapping[Kind, float]) -> None:
        # Re-check after every wake: a 429 may have extended the pause meanwhile.
        while True:
            self._check_fits(costs)
            if self._in_flight >= self._concurrency_cap():
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._wait_seconds(costs, self._clock())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _check_fits(self, costs: Mapping[Kind, float]) -> None:
        """A call above the provider's whole limit a minute can never be sent (the limit
        given, or learned from the first try's 429): an error, not an endless wait."""
        for kind in ("tokens", *_APART):
            known = [v for v in (self._given.of(kind), self._learned.get(kind)) if v is not None]
            if known and costs[kind] > min(known):
                what = kind.replace("_", " ")
                raise ConfigError(
                    f"a request to {self.name} needs {costs[kind]:,.0f} {what}, more than its "
                    f"whole limit of {min(known):,.0f} {what} a minute: it can never be sent",
                    hint="lower --max-tokens or --batch-size, or raise the limit",
                )

    def _wait_seconds(self, costs: Mapping[Kind, float], now: float) -> float:
        waits = [self._pause_until - now]
        for kind, bucket in self._buckets.items():
            waits.append(bucket.wait(costs[kind], now))
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

    def _note_costs(self, costs: Mapping[Kind, float]) -> None:
        for kind in ("tokens", *_APART):
            cost = costs[kind]
            typical = self._typical.get(kind, 0.0)
            self._typical[kind] = (
                cost if typical <= 0 else typical * _COST_DECAY + cost * (1 - _COST_DECAY)
            )

    # -- limits and buckets --

    def _limit(self, kind: Kind) -> float | None:
        """The tightest of the given and the learned limit, times the share: the one
        place the share divides a rate."""
        given = self._given.of(kind)
        known = [value for value in (given, self._learned.get(kind)) if value is not None]
        return min(known) * self._share if known else None

    def _learned_in_force(self) -> bool:
        """Whether a limit in force came from headers (below the given one, or none given)."""
        for kind, learned in self._learned.items():
            given = self._given.of(kind)
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
                burst = self._burst_s if kind == "requests" else self._token_burst_s
                self._buckets[kind] = _Bucket(rate, burst, now, level)
            else:
                bucket.set_rate(rate, now)

    # -- reports --

    def _settled(self, permit: Permit, usage: _Usage, headers: Mapping[str, str] | None) -> None:
        now = self._clock()
        self._observed = True
        final = self._final_costs(permit, usage)
        for kind, taken in permit.charges.items():
            bucket = self._buckets.get(kind)
            if bucket is not None:
                bucket.give(taken - final[kind], now)
        permit.cost = final["tokens"]
        self._note_costs(final)
        if usage.prompt is not None and usage.completion is not None:
            cached = usage.cached if self.accounting == "usage" else 0
            self._tokens_used += max(0, usage.prompt - cached) + max(0, usage.completion)
            self._calls_used += 1
        if usage.prompt is not None:
            self._evidence.spent += usage.prompt - permit.prompt_estimate
        if usage.completion is not None:
            self._evidence.unused += max(0, permit.output - usage.completion)
        self._recover(now)
        if headers:
            quotas = self._readable(parse_quotas(headers))
            if self._learn:
                self._learn_limits(quotas, now)
            self._bound_levels(permit, quotas, now)
            self._pause_for(quotas, now)
            if self.accounting == "learn":
                self._learn_rule(quotas, now)
        self._wake.set()

    def _final_costs(self, permit: Permit, usage: _Usage) -> dict[Kind, float]:
        """What the call costs each bucket under the rule in force (module docstring)."""
        prompt = permit.prompt_estimate if usage.prompt is None else max(0, usage.prompt)
        output = float(permit.output)
        if self._rule == "usage":
            if self.accounting == "usage":  # Anthropic: cache reads are not input
                prompt = max(0, prompt - usage.cached)
            if usage.completion is not None:
                output = float(max(0, usage.completion))
        return _costs(prompt + output, output)

    def _rate_limited(
        self, permit: Permit, retry_after: float | None, headers: Mapping[str, str] | None
    ) -> None:
        now = self._clock()
        self._observed = True
        self._limited += 1
        if headers:
            quotas = self._readable(parse_quotas(headers))
            if self._learn:
                self._learn_limits(quotas, now)
            self._pause_for(quotas, now)
        wait = bounded_wait(retry_after)
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

    # -- headers --

    def _readable(self, quotas: Sequence[Quota]) -> list[Quota]:
        """The quotas as this resource's buckets read them. Under the "usage" rule
        Anthropic's input and output limits are buckets of their own, and its combined
        tokens headers (the tighter of the two, not a limit of their sum) are left out;
        otherwise the tightest of the three stands for tokens."""
        apart = any(quota.kind in _APART for quota in quotas)
        if self.accounting == "usage" and apart:
            return [quota for quota in quotas if quota.kind != "tokens"]
        return [
            dataclasses.replace(quota, kind="tokens") if quota.kind in _APART else quota
            for quota in quotas
        ]

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

    def _bound_levels(self, permit: Permit, quotas: Sequence[Quota], now: float) -> None:
        """The provider's remaining bounds each bucket both ways (module docstring)."""
        for kind, bucket in self._buckets.items():
            remaining = [q.remaining for q in quotas if q.kind == kind and q.remaining is not None]
            if not remaining:
                continue
            mine = min(remaining) * self._share
            # Admitted after this call, ended or not: not in a count read at its admission.
            before = permit.charged_before.get(kind, 0.0) + permit.charges.get(kind, 0.0)
            later = self._charged.get(kind, 0.0) - before
            raised = self._share >= 1 and kind != "requests"
            low = mine * self._headroom - later if raised else -math.inf
            bucket.bound(low, mine, now)

    def _pause_for(self, quotas: Iterable[Quota], now: float) -> None:
        """Pause until the provider has room again when it says it has none: with a
        share, until this run's part of what is left (and of the refill) pays a call."""
        for quota in quotas:
            if quota.remaining is None or quota.reset_s is None:
                continue
            need = 1.0 if quota.kind == "requests" else self._typical.get(quota.kind, 0.0)
            mine = quota.remaining * self._share
            if mine >= need:
                continue
            wait = quota.reset_s
            if quota.limit is not None:
                # The reset is when it is full; it has room for one call sooner.
                wait = min(wait, (need - mine) * 60.0 / (quota.limit * self._share))
            self._pause(now, wait)

    def _learn_rule(self, quotas: Sequence[Quota], now: float) -> None:
        """Under "learn", weigh what the provider's remaining tokens say of its rule."""
        told = [
            quota
            for quota in quotas
            if quota.kind == "tokens" and quota.remaining is not None and quota.limit is not None
        ]
        if not told or told[0].remaining is None or told[0].limit is None:
            return
        typical = self._typical.get("tokens", 0.0)
        verdict = self._evidence.observe(told[0].remaining, told[0].limit, now, typical)
        if verdict is None:
            return
        self._verdicts = [*self._verdicts[-(VERDICTS_TO_SWITCH - 1) :], verdict]
        agreed = {seen.rule for seen in self._verdicts}
        if len(self._verdicts) < VERDICTS_TO_SWITCH or agreed != {verdict.rule}:
            return
        if verdict.rule != self._rule:
            before, self._rule = self._rule, verdict.rule
            if self._listener is not None:
                self._listener(
                    "limits.accounting_changed",
                    {
                        "resource": self.name,
                        "from": before,
                        "to": verdict.rule,
                        "evidence": verdict.evidence(),
                    },
                )


def _costs(tokens: float, output: float) -> dict[Kind, float]:
    """What a call of ``tokens`` (of which ``output`` for its answer) takes of each kind."""
    return {
        "requests": 1.0,
        "tokens": float(tokens),
        "input_tokens": float(tokens - output),
        "output_tokens": float(output),
    }
