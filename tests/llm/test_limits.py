"""Tests for rowpilot.llm.limits: pacing, FIFO admission, 429 adaptation and learning from headers.

No test here reads the wall clock or sleeps to wait for another task. The timing tests run
on ``VirtualTime``, an event loop whose clock jumps to the next timer whenever every task
waits: a resource on that clock waits exactly what it computed, in no real time, however
loaded the machine. The adaptation rules use a clock the test moves by hand. Against a
provider's limits, ``Provider`` plays the simulator's buckets in-process on the same clock.
The last group drives the real simulator through ChatClient: what it asserts (counts,
learned limits) does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import math
import selectors
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowpilot.errors import ConfigError
from rowpilot.llm.limits import (
    Accounting,
    Limits,
    Permit,
    Quota,
    Resource,
    parse_duration,
    parse_quotas,
    parse_reset_time,
    parse_retry_after,
)
from rowpilot.llm.providers import ChatClient, ProviderSpec, RateLimitError
from rowpilot.llm.tokens import TokenEstimator
from rowpilot.simulator.server import Simulator, SimulatorConfig

T = TypeVar("T")

KEY = "sk-" + "limits-test"
GPT = "gpt-4o-mini"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
NO_LIMITS = Limits()
FAST = Limits(rpm=60_000)


class VirtualTime(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: when every task waits, the clock jumps to the next
    timer. Sleeps and a resource's waits take no real time and never depend on the load."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.idle_waiters: list[asyncio.Future[None]] = []
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks: where a real loop would wait for its next timer, the clock moves there."""

    def __init__(self, loop: VirtualTime) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events  # something can run now: the clock stands still
        loop = self._loop
        if loop.idle_waiters:  # every task waits: ``idle()`` returns before time moves
            for waiter in loop.idle_waiters:
                waiter.set_result(None)
            loop.idle_waiters.clear()
            return []
        if timeout is None:
            raise RuntimeError("every task waits and no timer is set: a deadlock")
        loop.now += timeout
        return []


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on virtual time."""
    with asyncio.Runner(loop_factory=VirtualTime) as runner:
        return runner.run(coro)


def run_real(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the real clock: for the simulator, whose sockets are real."""
    return asyncio.run(coro)


async def idle() -> None:
    """Let every other task run until it waits (for a lock, an event or a timer)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTime)
    waiter = loop.create_future()
    loop.idle_waiters.append(waiter)
    await waiter


def loop_clock() -> Callable[[], float]:
    """The running loop's (virtual) clock, for a resource that sleeps on that loop."""
    return asyncio.get_running_loop().time


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_resource(limits: Limits = NO_LIMITS, **options: Any) -> tuple[Resource, FakeClock]:
    clock = FakeClock()
    return Resource("test", limits, clock=clock, **options), clock


async def report(resource: Resource, tokens: int, how: Callable[[Permit], None]) -> None:
    async with resource.slot(tokens) as permit:
        how(permit)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "options",
    [{"rpm": 0}, {"tpm": -1.0}, {"rpm": math.inf}, {"tpm": math.nan}, {"max_concurrent": 0}],
)
def test_limits_must_be_positive(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Limits(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"headroom": 0.0},
        {"headroom": 1.5},
        {"burst_seconds": 0},
        {"token_burst_seconds": float("inf")},
        {"share": 0.0},
        {"share": 1.5},
    ],
)
def test_resource_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Resource("x", **options)


# --------------------------------------------------------------------------- header parsers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("350ms", 0.35),
        ("1.2s", 1.2),
        ("1m30.5s", 90.5),
        ("2h", 7200.0),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        ("1.5", 1.5),
        (" 20ms ", 0.02),
        ("250us", 0.00025),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "s", "abc", "-1s", "1x", "nan", "inf", "1e5s", "1..2s", "1 s", "s1", "25h0m0s", None],
)
def test_malformed_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


@given(st.text(max_size=80))
def test_parse_duration_never_raises(text: str) -> None:
    seconds = parse_duration(text)
    assert seconds is None or 0 <= seconds <= 86_400


@given(
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59_999), st.integers(0, 999), st.data()
)
def test_durations_round_trip(hours: int, minutes: int, millis: int, ms: int, data: Any) -> None:
    parts = [(hours, "h"), (minutes, "m"), (millis / 1000, "s"), (ms, "ms")]
    kept = [part for part in parts if data.draw(st.booleans())] or [(ms, "ms")]
    text = "".join(f"{value:g}{unit}" for value, unit in kept)
    expected = sum(value * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit] for value, unit in kept)
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2030-01-01T00:00:01Z", 1.0),
        ("2030-01-01T00:00:00.500Z", 0.5),
        ("2030-01-01T01:00:02+01:00", 2.0),
        ("2030-01-01T00:00:03", 3.0),  # no zone: UTC
        ("2029-12-31T23:59:00Z", 0.0),  # past: now
        ("1.5s", 1.5),
    ],
)
def test_reset_times_parse(text: str, seconds: float) -> None:
    assert parse_reset_time(text, NOW) == pytest.approx(seconds)


@given(st.text(max_size=80))
def test_parse_reset_time_never_raises(text: str) -> None:
    seconds = parse_reset_time(text, NOW)
    assert seconds is None or 0 <= seconds <= 86_400


@given(st.datetimes(timezones=st.timezones()))
def test_parse_reset_time_reads_any_rfc3339_moment(moment: datetime) -> None:
    seconds = parse_reset_time(moment.isoformat(), NOW)
    assert seconds is None or 0 <= seconds <= 86_400


_NOW_UNIX = 1_750_000_000.0  # a fixed "now" for HTTP dates: whole seconds, as they are
_DAY = 86_400


def _any_case(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )


@given(st.integers(0, _DAY * 1000).map(lambda ms: ms / 1000), _any_case("retry-after"))
def test_retry_after_reads_seconds_under_any_name_case(seconds: float, name: str) -> None:
    assert parse_retry_after({name: f"{seconds:.3f}"}) == pytest.approx(seconds)


@given(st.integers(0, _DAY), _any_case("retry-after"))
def test_retry_after_reads_an_http_date(offset: int, name: str) -> None:
    date = email.utils.formatdate(_NOW_UNIX + offset, usegmt=True)
    assert parse_retry_after({name: date}, now=_NOW_UNIX) == offset


def test_retry_after_of_a_date_already_past_is_zero() -> None:
    date = email.utils.formatdate(_NOW_UNIX - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=_NOW_UNIX) == 0.0


@given(st.integers(0, _DAY * 1000), st.integers(0, _DAY), _any_case("retry-after-ms"))
def test_retry_after_ms_wins_over_retry_after(ms: int, seconds: int, name: str) -> None:
    headers = {name: str(ms), "Retry-After": str(seconds)}
    assert parse_retry_after(headers) == pytest.approx(ms / 1000)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # unreadable ms: the other one
        ({"retry-after": "-1"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": str(_DAY + 1)}, None),  # over a day: malformed, not a limit
        ({"retry-after": "soon"}, None),
        ({"x-other": "1"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_that_does_not_say(
    headers: dict[str, str] | None, expected: float | None
) -> None:
    assert parse_retry_after(headers) == expected


@given(st.dictionaries(st.sampled_from(["retry-after", "Retry-After-Ms", "x"]), st.text()))
def test_retry_after_never_raises_and_stays_in_range(headers: dict[str, str]) -> None:
    seconds = parse_retry_after(headers, now=_NOW_UNIX)
    assert seconds is None or 0 <= seconds <= _DAY


def test_openai_headers_make_quotas() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "2s",
    }
    assert parse_quotas(headers) == [
        Quota("requests", 500.0, 499.0, 0.12),
        Quota("tokens", 30000.0, 29000.0, 2.0),
    ]


def test_anthropic_headers_make_quotas() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:01Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
    }
    assert parse_quotas(headers, NOW) == [
        Quota("requests", 50.0, 49.0, 1.0),
        Quota("input_tokens", 40000.0, None, None),
        Quota("output_tokens", 8000.0, 7000.0, None),
    ]


def test_malformed_header_values_are_left_out() -> None:
    headers = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-3",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-limit-tokens": "0",
        "x-ratelimit-remaining-tokens": "nan",
    }
    assert parse_quotas(headers) == []


HEADER_NAMES = (
    [
        f"x-ratelimit-{field}-{kind}"
        for field in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    ]
    + [
        f"anthropic-ratelimit-{kind}-{field}"
        for kind in ("requests", "tokens", "input-tokens", "output-tokens")
        for field in ("limit", "remaining", "reset")
    ]
    + ["retry-after", "retry-after-ms"]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\d{1,6}(\.\d{1,3})?(ms|s|m|h)?", fullmatch=True),
    st.sampled_from(["0", "1", "2030-01-01T00:00:01Z", "1e9", "-1", "inf", "99999999999999999"]),
)
HEADERS = st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUES, max_size=12)


@settings(max_examples=200)
@given(HEADERS, HEADERS, st.none() | st.floats(allow_nan=True, allow_infinity=True))
def test_arbitrary_headers_never_break_a_resource(
    first: dict[str, str], second: dict[str, str], retry_after: float | None
) -> None:
    resource, clock = fake_resource(Limits(rpm=600))
    Permit(resource, 10, clock.now, charges={"requests": 1}).settle(25, headers=first)
    Permit(resource, 10, clock.now, charges={"requests": 1}).rate_limited(retry_after, second)
    for value in (resource.limits.rpm, resource.limits.tpm):
        assert value is None or (math.isfinite(value) and value > 0)
    stats = resource.stats()
    assert 0 <= stats["paused_seconds"] <= 86_400
    assert 0.1 <= stats["factor"] <= 1


# --------------------------------------------------------------------------- pacing


@dataclass
class Admissions:
    times: list[float] = field(default_factory=list)
    costs: list[int] = field(default_factory=list)
    created: float = 0.0
    end: float = 0.0


def admit_for(
    limits: Limits, seconds: float, costs: Iterator[int], workers: int = 8, share: float = 1.0
) -> Admissions:
    """Workers taking slots back to back for ``seconds``; what was admitted, and when."""

    async def go() -> Admissions:
        # Half a second's bucket for either kind: the pace arithmetic below counts on it.
        resource = Resource("x", limits, share=share, token_burst_seconds=0.5, clock=loop_clock())
        record = Admissions(created=loop_clock()())
        record.end = record.created + seconds

        async def worker() -> None:
            while True:
                cost = next(costs)
                async with resource.slot(cost) as permit:
                    if permit.admitted_at > record.end:
                        return
                    record.times.append(permit.admitted_at)
                    record.costs.append(cost)
                    permit.settle(cost)

        await asyncio.gather(*(worker() for _ in range(workers)))
        return record

    return run(go())


def assert_never_above(record: Admissions, rate: float, capacity: float) -> None:
    """In every window, what was admitted fits a full bucket plus the window's refill."""
    times, costs = record.times, record.costs
    for i in range(len(times)):
        total = 0
        for j in range(i, len(times)):
            total += costs[j]
            assert total <= capacity + rate * (times[j] - times[i]) + max(costs) * 1e-6


def test_rpm_paces_admissions() -> None:
    rate, capacity = 6000 * 0.98 / 60, 6000 * 0.98 / 60 * 0.5
    record = admit_for(Limits(rpm=6000), 1.0, itertools.repeat(1))
    expected = capacity + rate * 1.0  # the full bucket, then its refill: 49 + 98
    assert expected - 1 <= len(record.times) <= expected + 1
    assert_never_above(record, rate, capacity)


def test_tpm_paces_admissions() -> None:
    rate, capacity = 600_000 * 0.98 / 60, 600_000 * 0.98 / 60 * 0.5
    costs = itertools.cycle([50, 150, 100, 300])
    record = admit_for(Limits(tpm=600_000), 1.0, costs)
    expected = capacity + rate * 1.0
    assert expected - 300 <= sum(record.costs) <= expected + 300  # to within one call
    assert_never_above(record, rate, capacity)


def test_max_concurrent_is_never_exceeded() -> None:
    async def go() -> int:
        resource = Resource("x", Limits(max_concurrent=5), learn=False, clock=loop_clock())
        in_flight = peak = 0

        async def one(i: int) -> None:
            nonlocal in_flight, peak
            async with resource.slot(1) as permit:
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.001 * (i % 4))
                in_flight -= 1
                permit.settle()

        await asyncio.gather(*(one(i) for i in range(60)))
        assert resource.stats()["in_flight"] == 0
        return peak

    assert run(go()) == 5


def test_a_big_request_is_not_starved_by_small_ones() -> None:
    async def go() -> tuple[list[int], float]:
        # 3920 tokens/s into a bucket of 980: the big request needs it full, then owes.
        clock = loop_clock()
        resource = Resource("x", Limits(tpm=240_000), token_burst_seconds=0.25, clock=clock)
        numbers = itertools.count()
        admitted: list[int] = []
        end = clock() + 1.2

        async def small() -> None:
            while clock() < end:
                number = next(numbers)
                async with resource.slot(100) as permit:
                    admitted.append(number)
                    permit.settle()

        async def big() -> float:
            await asyncio.sleep(0.2)  # it comes in while the small ones drain the bucket
            asked, number = clock(), next(numbers)
            async with resource.slot(3000):
                admitted.append(number)
                return clock() - asked

        waiting = asyncio.create_task(big())
        await asyncio.gather(*(small() for _ in range(5)))
        return admitted, await waiting

    admitted, waited = run(go())
    assert admitted == sorted(admitted)  # first come, first served
    # At most the 5 small ones queued ahead of it (500 tokens), then a full bucket (980):
    # smallest-first would have kept it waiting until the small ones stopped, at 1.2 s.
    assert waited <= (5 * 100 + 980) / 3920 + 1e-9


def test_cancelled_waiters_take_nothing() -> None:
    async def go() -> None:
        resource = Resource("x", Limits(rpm=60, max_concurrent=1), learn=False, clock=loop_clock())
        async with resource.slot(1):
            waiter = asyncio.create_task(resource.slot(1).__aenter__())
            await idle()  # it waits for the one slot
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert resource.stats()["requests"] == 1
        assert resource.stats()["in_flight"] == 0

    run(go())


def test_tokens_per_call_is_the_settled_cost_else_the_admission_estimate() -> None:
    """What --workers auto divides the tpm by: the calls' final cost in the token bucket."""

    async def go() -> None:
        resource = Resource(
            "x", Limits(tpm=600_000), learn=False, accounting="usage", clock=loop_clock()
        )
        assert resource.stats()["tokens_per_call"] is None  # no call yet: nothing known
        async with resource.slot(300, output=200) as first:
            async with resource.slot(500, output=200):
                # Admitted, none ended: the estimates' mean stands in.
                assert resource.stats()["tokens_per_call"] == 400
            first.settle(90, 10)  # settled at real usage: 100
        # The unsettled one (it raised) keeps its reservation: the bucket paid 500 for it.
        assert resource.stats()["tokens_per_call"] == 300
        async with resource.slot(300, output=200) as third:
            third.settle(100, 100)
        assert resource.stats()["tokens_per_call"] == 800 / 3
        assert resource.stats()["least_tokens_per_call"] == 150  # what the answers used

    run(go())


def test_the_least_tokens_a_call_costs_is_its_usage_whatever_the_rule() -> None:
    """--workers auto sizes by what a provider settling at usage would count: under the
    OpenAI rule the bucket keeps max_tokens, and the limiter holds the extra workers back."""

    async def go() -> tuple[Any, Any]:
        resource = Resource("x", Limits(tpm=600_000), learn=False, clock=loop_clock())
        assert resource.stats()["least_tokens_per_call"] is None
        async with resource.slot(300, output=200) as call:
            assert resource.stats()["least_tokens_per_call"] == 300  # the estimate, so far
            call.settle(90, 10)
        stats = resource.stats()
        return stats["tokens_per_call"], stats["least_tokens_per_call"]

    assert run(go()) == (290, 100)  # prompt + max_tokens kept; prompt + completion used


# --------------------------------------------------------------------------- 429s


def test_a_429_pauses_the_waiters_until_retry_after() -> None:
    async def go() -> list[float]:
        clock = loop_clock()
        resource = Resource("x", Limits(rpm=60_000, max_concurrent=1), clock=clock)
        waits: list[float] = []

        async def waiter() -> None:
            async with resource.slot(1):
                waits.append(clock() - limited_at)

        async with resource.slot(1) as permit:
            tasks = [asyncio.create_task(waiter()) for _ in range(5)]
            await idle()  # they queue behind the concurrency limit
            limited_at = clock()
            permit.rate_limited(0.3)
        await asyncio.gather(*tasks)
        return waits

    waits = run(go())
    assert len(waits) == 5
    assert min(waits) == pytest.approx(0.3)  # the pause, to the end
    # Then one request each from the drained bucket, at the cut rate (735/s).
    assert max(waits) <= 0.3 + 5 / (60_000 * 0.98 * 0.75 / 60) + 1e-9


def test_a_burst_of_429s_cuts_the_rate_once_and_it_recovers() -> None:
    async def go() -> None:
        resource, clock = fake_resource(Limits(rpm=6000))
        full = 6000 * 0.98
        async with AsyncExitStack() as stack:
            permits = [await stack.enter_async_context(resource.slot(1)) for _ in range(10)]
            for permit in permits:
                permit.rate_limited(0.5)
        stats = resource.stats()
        assert (stats["rate_limited"], stats["factor"]) == (10, 0.75)
        assert stats["effective_rpm"] == pytest.approx(full * 0.75)
        assert stats["paused_seconds"] == pytest.approx(0.5)

        clock.now += 1.0  # after the pause: a call sent at the new rate is a new signal
        async with resource.slot(1) as late:
            await report(resource, 1, lambda permit: permit.rate_limited(None))
            assert resource.stats()["factor"] == pytest.approx(0.75**2)
            assert resource.stats()["paused_seconds"] == pytest.approx(1.0)  # the default
            clock.now += 5.0
            late.rate_limited(0.1)  # sent before that cut: the same burst
            assert resource.stats()["factor"] == pytest.approx(0.75**2)

        clock.now += 3.0
        await report(resource, 1, lambda permit: permit.settle(1))
        assert resource.stats()["factor"] == pytest.approx(0.75**2 + 3 / 15)
        clock.now += 20.0
        await report(resource, 1, lambda permit: permit.settle(1))
        assert resource.stats()["factor"] == 1.0
        assert resource.stats()["effective_rpm"] == pytest.approx(full)

    run(go())


def test_the_factor_has_a_floor() -> None:
    async def go() -> None:
        resource, clock = fake_resource(Limits(tpm=60_000))
        for _ in range(30):
            clock.now += 2.0
            await report(resource, 1, lambda permit: permit.rate_limited(0.0))
        assert resource.stats()["factor"] == 0.1
        assert resource.stats()["effective_tpm"] == pytest.approx(60_000 * 0.98 * 0.1)

    run(go())


def test_without_rates_a_429_cuts_a_concurrency_cap() -> None:
    async def go() -> None:
        resource, clock = fake_resource(learn=False)
        slots = [resource.slot(1) for _ in range(8)]
        permits = [await slot.__aenter__() for slot in slots]
        for permit in permits[:3]:
            permit.rate_limited(0.0)
        assert resource.stats()["concurrency_cap"] == 6  # 8 in flight * 0.75, once

        admitted = asyncio.Event()

        async def waiter() -> None:
            async with resource.slot(1):
                admitted.set()

        task = asyncio.create_task(waiter())
        for in_flight in (7, 6, 5):
            await slots.pop().__aexit__(None, None, None)
            await idle()
            assert admitted.is_set() is (in_flight < 6)
        await task
        for slot in slots:
            await slot.__aexit__(None, None, None)

        for _ in range(20):
            clock.now += 0.1
            await report(resource, 1, lambda permit: permit.settle())
        assert resource.stats()["concurrency_cap"] >= 8

    run(go())


def test_the_first_call_goes_alone_until_limits_are_known() -> None:
    async def go() -> None:
        resource = Resource("x", clock=loop_clock())
        admitted: list[int] = []

        async def waiter(number: int) -> None:
            async with resource.slot(10):
                admitted.append(number)
                await asyncio.sleep(0.01)  # the call

        async with resource.slot(10) as probe:
            tasks = [asyncio.create_task(waiter(n)) for n in range(4)]
            await idle()
            assert admitted == []
            probe.settle(10, headers={"x-ratelimit-limit-requests": "60000"})
        await asyncio.gather(*tasks)
        assert admitted == [0, 1, 2, 3]
        assert resource.limits.rpm == 60000
        assert resource.stats()["concurrency_cap"] is None

    run(go())


# --------------------------------------------------------------------------- learning


def test_headers_set_the_limits_when_none_were_given() -> None:
    async def go() -> None:
        resource, _ = fake_resource()
        headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"}
        await report(resource, 10, lambda permit: permit.settle(10, headers=headers))
        assert resource.limits == Limits(rpm=600, tpm=90000)
        assert resource.stats()["learned"] is True
        assert resource.stats()["effective_rpm"] == pytest.approx(600 * 0.98)

    run(go())


def test_the_tightest_anthropic_token_limit_stands_for_tokens() -> None:
    async def go() -> None:
        resource, _ = fake_resource()
        headers = {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-tokens-limit": "48000",
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-output-tokens-limit": "8000",
        }
        await report(resource, 10, lambda permit: permit.settle(10, headers=headers))
        assert resource.limits == Limits(rpm=50, tpm=8000)

    run(go())


@pytest.mark.parametrize(("header", "rpm", "learned"), [("500", 500, True), ("2000", 1000, False)])
def test_a_lower_header_limit_wins(header: str, rpm: float, learned: bool) -> None:
    async def go() -> None:
        resource, _ = fake_resource(Limits(rpm=1000, max_concurrent=3))
        headers = {"x-ratelimit-limit-requests": header}
        await report(resource, 10, lambda permit: permit.settle(10, headers=headers))
        assert resource.limits == Limits(rpm=rpm, max_concurrent=3)
        assert resource.stats()["learned"] is learned

    run(go())


def test_learn_false_keeps_the_given_limits() -> None:
    async def go() -> None:
        resource, _ = fake_resource(Limits(rpm=1000), learn=False)
        headers = {"x-ratelimit-limit-requests": "10", "x-ratelimit-limit-tokens": "100"}
        await report(resource, 10, lambda permit: permit.settle(10, headers=headers))
        assert resource.limits == Limits(rpm=1000)

    run(go())


def test_settle_reconciles_the_token_reservation() -> None:
    async def go() -> None:
        # 980 tokens/s into a bucket of 490, on a clock that stands still.
        resource, clock = fake_resource(Limits(tpm=60_000))
        await report(resource, 400, lambda permit: permit.settle(100))  # 300 back: 390 left
        admitted = asyncio.Event()

        async def take(tokens: int) -> None:
            async with resource.slot(tokens):
                admitted.set()

        await asyncio.wait_for(take(390), 1.0)  # fits only if the 300 came back: 0 left
        await report(resource, 0, lambda permit: permit.settle(490))  # 490 more: -490
        admitted.clear()
        task = asyncio.create_task(take(10))
        await idle()
        assert not admitted.is_set()  # in debt, and the clock stands still
        clock.now += 0.52
        await asyncio.wait_for(task, 2.0)

    run(go())


def pause_after(headers: dict[str, str], limits: Limits = FAST, share: float = 1.0) -> float:
    """How long the next admission waits after a call settled with ``headers``."""

    async def go() -> float:
        clock = loop_clock()
        resource = Resource("x", limits, share=share, clock=clock)
        await report(resource, 100, lambda permit: permit.settle(100, headers=headers))
        asked = clock()
        async with resource.slot(100):
            return clock() - asked

    return run(go())


def test_no_remaining_requests_pauses_until_the_reset() -> None:
    waited = pause_after(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"}
    )
    assert waited == pytest.approx(0.3)


def test_a_known_limit_shortens_the_pause_to_one_request() -> None:
    waited = pause_after(
        {
            "x-ratelimit-limit-requests": "600",  # one request per 0.1 s
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        }
    )
    # The bucket, never above the provider's remaining (none), refills at 600 less headroom.
    assert waited == pytest.approx(0.1 / 0.98)


class FrozenWallClock(datetime):
    """``datetime`` whose ``now`` is NOW: the Anthropic reset times are read against it."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> FrozenWallClock:
        return cls.fromtimestamp(NOW.timestamp(), tz)


def test_anthropic_tokens_below_a_call_pause_until_the_reset_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rowpilot.llm.quotas.datetime", FrozenWallClock)
    headers = {
        "anthropic-ratelimit-tokens-remaining": "50",  # a call costs 100
        "anthropic-ratelimit-tokens-reset": "2030-01-01T00:00:00.300Z",  # NOW + 0.3 s
    }
    assert pause_after(headers) == pytest.approx(0.3)


def test_enough_remaining_does_not_pause() -> None:
    headers = {"x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "5s"}
    assert pause_after(headers) == 0.0


# --------------------------------------------------------------------------- a share (shards)


@pytest.mark.parametrize(
    ("given", "share", "expected"),
    [
        (Limits(rpm=6000, tpm=800_000, max_concurrent=10), 1 / 4, Limits(1500, 200_000, 2)),
        (Limits(rpm=90, max_concurrent=3), 1 / 4, Limits(rpm=22.5, max_concurrent=1)),
        (Limits(max_concurrent=98), 1 / 49, Limits(max_concurrent=2)),
        (Limits(max_concurrent=3), 1 / 3, Limits(max_concurrent=1)),
        (Limits(rpm=500), 1.0, Limits(rpm=500)),
    ],
)
def test_a_share_of_given_limits_divides_rates_and_rounds_concurrency_down(
    given: Limits, share: float, expected: Limits
) -> None:
    resource, _ = fake_resource(given, share=share)
    assert resource.limits == given.shared(share)
    assert resource.limits.rpm == pytest.approx(expected.rpm)
    assert resource.limits.tpm == pytest.approx(expected.tpm)
    assert resource.limits.max_concurrent == expected.max_concurrent
    assert resource.stats()["share"] == share


def test_a_share_paces_at_its_part_of_the_given_rpm() -> None:
    rate = 6000 * 0.98 / 60 / 4
    record = admit_for(Limits(rpm=6000), 1.0, itertools.repeat(1), share=1 / 4)
    expected = rate * 0.5 + rate * 1.0  # its own full bucket, then its refill: 12 + 24
    assert expected - 1 <= len(record.times) <= expected + 1
    assert_never_above(record, rate, rate * 0.5)


def test_a_share_holds_its_part_of_max_concurrent() -> None:
    async def go() -> int:
        resource = Resource(
            "x", Limits(max_concurrent=10), learn=False, share=1 / 4, clock=loop_clock()
        )
        in_flight = peak = 0

        async def one() -> None:
            nonlocal in_flight, peak
            async with resource.slot(1) as permit:
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.001)
                in_flight -= 1
                permit.settle()

        await asyncio.gather(*(one() for _ in range(40)))
        return peak

    assert run(go()) == 2


def test_a_share_divides_the_learned_limits() -> None:
    """The headers report the account's limits: a shard learns its part of them."""

    async def go() -> None:
        resource, _ = fake_resource(share=1 / 4)
        headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"}
        await report(resource, 10, lambda permit: permit.settle(10, headers=headers))
        assert resource.limits == Limits(rpm=150, tpm=22500)
        assert resource.stats()["learned"] is True
        assert resource.stats()["effective_rpm"] == pytest.approx(150 * 0.98)

    run(go())


def test_a_share_of_given_and_learned_limits_takes_the_tightest() -> None:
    async def go() -> None:
        resource, _ = fake_resource(Limits(rpm=1000, tpm=40_000), share=1 / 2)
        headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000"}
        await report(resource, 10, lambda permit: permit.settle(10, headers=headers))
        assert resource.limits == Limits(rpm=300, tpm=20_000)

    run(go())


def test_a_share_pauses_until_its_part_of_the_remaining_pays_a_call() -> None:
    """2 requests left of the account's 600/min: enough for one process, not for its part
    as one of 4 (half a request). It waits for its part of the refill (150/min, less
    headroom: its bucket holds no more than its part of the remaining) to make up the other
    half: 0.2 s / 0.98."""
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1s",
    }
    assert pause_after(headers) == 0.0
    assert pause_after(headers, share=1 / 4) == pytest.approx(0.2 / 0.98)


def test_a_learned_bucket_starts_with_its_part_of_the_remaining() -> None:
    """2,000 tokens left: a share of 1/4 may take 500 of them, not the full bucket (1,225)."""

    async def go() -> float:
        clock = loop_clock()
        resource = Resource("x", share=1 / 4, clock=clock)
        headers = {"x-ratelimit-limit-tokens": "600000", "x-ratelimit-remaining-tokens": "2000"}
        await report(resource, 100, lambda permit: permit.settle(100, headers=headers))
        asked = clock()
        async with resource.slot(600):
            return clock() - asked

    rate = 600_000 / 4 * 0.98 / 60  # 2,450 tokens/s
    assert run(go()) == pytest.approx((600 - 500) / rate)


# --------------------------------------------------------------------------- a provider's limits


@dataclass
class Outcome:
    times: list[float] = field(default_factory=list)  # admissions of the calls that succeeded
    costs: list[int] = field(default_factory=list)  # their tokens as the provider counts them
    attempts: int = 0
    limited: int = 0
    limited_times: list[float] = field(default_factory=list)  # admissions of the 429s


@dataclass
class ProviderBucket:
    rate: float  # per second; the bucket holds a second's worth
    level: float
    updated: float

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits; 0 when it does now."""
        self.level = min(self.rate, self.level + (now - self.updated) * self.rate)
        self.updated = now
        return max(0.0, (cost - self.level) / self.rate)


class Provider:
    """A provider's limits, in-process on the loop's clock, as the simulator keeps them: per
    limit a bucket that refills continuously at limit/60 per second, holds a second's worth
    and starts full. A call it has no room for gets a 429 at once, with the wait until it
    has; one it admits answers ``latency`` seconds later."""

    def __init__(self, limits: Limits, latency: float = 0.02) -> None:
        self._clock = loop_clock()
        now = self._clock()
        per_minute = {"requests": limits.rpm, "tokens": limits.tpm}
        self._buckets = {
            kind: ProviderBucket(limit / 60, limit / 60, now)
            for kind, limit in per_minute.items()
            if limit is not None
        }
        self._latency = latency
        self.refused = 0

    async def call(self, tokens: int) -> float | None:
        """One call costing ``tokens``: None once it succeeded, else the 429's retry-after."""
        now = self._clock()
        costs = {"requests": 1.0, "tokens": float(tokens)}
        wait = max(bucket.wait(costs[kind], now) for kind, bucket in self._buckets.items())
        if wait > 0:
            self.refused += 1
            return wait
        for kind, bucket in self._buckets.items():
            bucket.level -= costs[kind]
        await asyncio.sleep(self._latency)
        return None

    def headers(self) -> dict[str, str]:
        """What its answers say of its limits, as OpenAI's headers do: the limit per minute,
        what the bucket holds now, and the time until it is full."""
        now = self._clock()
        headers = {}
        for kind, bucket in self._buckets.items():
            bucket.wait(0.0, now)  # refilled to now
            headers[f"x-ratelimit-limit-{kind}"] = f"{bucket.rate * 60:g}"
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            reset = max(0.0, (bucket.rate - bucket.level) / bucket.rate)
            headers[f"x-ratelimit-reset-{kind}"] = f"{reset:.3f}s"
        return headers


async def call_through(
    resource: Resource, provider: Provider, count: int, tokens: int = 66, *, headers: bool = False
) -> Outcome:
    """``count`` calls through ``resource`` to ``provider``; a 429 is reported and tried again.
    With ``headers``, each report carries the provider's rate-limit headers.

    66 tokens: what ``call_all`` sends the simulator, 200 characters and max_tokens 16."""
    outcome = Outcome()

    async def one() -> None:
        for _ in range(100):
            async with resource.slot(tokens) as permit:
                outcome.attempts += 1
                retry_after = await provider.call(tokens)
                said = provider.headers() if headers else None
                if retry_after is None:
                    permit.settle(tokens, headers=said)
                    outcome.times.append(permit.admitted_at)
                    outcome.costs.append(tokens)
                    return
                outcome.limited += 1
                outcome.limited_times.append(permit.admitted_at)
                permit.rate_limited(retry_after, said)
        raise AssertionError("a call was rate-limited 100 times")

    await asyncio.gather(*(one() for _ in range(count)))
    return outcome


def steady_rate(outcome: Outcome, burst: float, weights: list[int] | None = None) -> float:
    """Per minute, after the opening burst: what passed over how long."""
    times = sorted(outcome.times)
    total = sum(weights) if weights else len(times)
    return (total - burst) / (times[-1] - times[0]) * 60


@pytest.mark.parametrize(
    ("limits", "tokens", "by_tokens"),
    [(Limits(rpm=4800), 66, False), (Limits(rpm=10_000, tpm=600_000), 150, True)],
    ids=["rpm", "tpm"],
)
def test_paced_calls_get_no_429s_at_the_providers_limit(
    limits: Limits, tokens: int, by_tokens: bool
) -> None:
    async def go() -> tuple[Outcome, int]:
        provider = Provider(limits)
        resource = Resource("p", limits, learn=False, token_burst_seconds=0.5, clock=loop_clock())
        return await call_through(resource, provider, 400, tokens), provider.refused

    outcome, refused = run(go())
    assert refused == outcome.limited == 0
    assert len(outcome.times) == 400
    # Not too cautious either: after the opening burst, the pace is the limit less headroom.
    limit = (limits.tpm if by_tokens else limits.rpm) or 0
    weights = outcome.costs if by_tokens else None
    rate = steady_rate(outcome, burst=limit * 0.98 / 120, weights=weights)
    assert rate == pytest.approx(limit * 0.98, rel=0.01)


@pytest.mark.parametrize("given", [True, False], ids=["given", "learned"])
def test_four_shares_of_one_account_get_no_429s(given: bool) -> None:
    """Four shards side by side, each a quarter of the account's limit, given or learned
    from the headers (which report the whole account's limit and remaining): no 429s, and
    together they still reach the limit less headroom."""

    async def go() -> tuple[list[Outcome], int]:
        provider = Provider(Limits(rpm=4800))
        limits = Limits(rpm=4800) if given else NO_LIMITS
        shards = [
            Resource(f"shard {k}", limits, learn=not given, share=1 / 4, clock=loop_clock())
            for k in range(4)
        ]
        outcomes = await asyncio.gather(
            *(call_through(shard, provider, 200, headers=True) for shard in shards)
        )
        return list(outcomes), provider.refused

    outcomes, refused = run(go())
    assert refused == sum(outcome.limited for outcome in outcomes) == 0
    together = Outcome(times=[at for outcome in outcomes for at in outcome.times])
    assert len(together.times) == 800
    # The opening takes what the shards' own buckets hold (half a second's worth: a shard
    # is not raised to the account's remaining), then the pace is the limit less headroom.
    assert steady_rate(together, burst=4800 * 0.98 / 120) == pytest.approx(4800 * 0.98, rel=0.03)


def test_four_full_shares_of_one_account_storm_it() -> None:
    """The same four at the account's full limit each: the storm the share prevents."""

    async def go() -> int:
        provider = Provider(Limits(rpm=4800))
        shards = [Resource(f"shard {k}", Limits(rpm=4800), clock=loop_clock()) for k in range(4)]
        await asyncio.gather(*(call_through(shard, provider, 200) for shard in shards))
        return provider.refused

    assert run(go()) > 20


def test_429s_slow_a_resource_whose_limit_is_too_high() -> None:
    """Told 9,600 rpm when the provider allows 4,800: the opening overflows the provider's
    bucket; the cuts bring the pace under its rate, and from then on 429s are rare."""

    async def go() -> tuple[Outcome, int, dict[str, Any]]:
        provider = Provider(Limits(rpm=4800))
        resource = Resource("p", Limits(rpm=9600), learn=False, clock=loop_clock())
        outcome = await call_through(resource, provider, 800)
        return outcome, provider.refused, resource.stats()

    outcome, refused, stats = run(go())
    assert len(outcome.times) == 800  # every call got through in the end
    assert stats["rate_limited"] == outcome.limited == refused >= 1
    assert stats["factor"] < 1
    # Counted per admitted call, in the order of admission: the first 200 (the provider's
    # bucket 2.5 times over) are the opening, when calls go out at twice its rate until the
    # 429s come back and the cuts land. After it, the recovery probes above the provider's
    # rate now and then, and is cut back at once: at most 1 call in 100 gets a 429.
    attempts = sorted(
        [(at, False) for at in outcome.times] + [(at, True) for at in outcome.limited_times]
    )
    opening, after = attempts[:200], attempts[200:]
    assert sum(limited for _, limited in opening) <= 20
    assert sum(limited for _, limited in after) <= len(after) / 100


# --------------------------------------------------------------------------- the simulator
#
# Real HTTP on the real clock, so nothing below asserts a pace: the pacing promises are
# proven above on virtual time (their speed on a real machine is bench/bench_llm.py's).


def prompt_of(number: int, chars: int) -> str:
    words = itertools.cycle(["lorem", "ipsum", "dolor", "sit", "amet", str(number)])
    text = f"row {number}:"
    while len(text) < chars:
        text += " " + next(words)
    return text[:chars]


async def call_all(
    sim: Simulator, resource: Resource, count: int, *, chars: int = 200, max_tokens: int = 16
) -> Outcome:
    """``count`` calls through ``resource``; a 429 is reported and the call tried again."""
    client = ChatClient(ProviderSpec("sim", "openai", sim.openai_base_url, None), GPT, api_key=KEY)
    estimator = TokenEstimator()
    outcome = Outcome()

    async def one(number: int) -> None:
        prompt = prompt_of(number, chars)
        for _ in range(100):
            reserve = estimator.estimate(len(prompt)) + max_tokens
            async with resource.slot(reserve) as permit:
                outcome.attempts += 1
                try:
                    completion = await client.complete(
                        [{"role": "user", "content": prompt}], max_tokens=max_tokens
                    )
                except RateLimitError as exc:
                    outcome.limited += 1
                    outcome.limited_times.append(permit.admitted_at)
                    permit.rate_limited(exc.retry_after)
                    continue
                cost = completion.input_tokens + max_tokens
                permit.settle(cost, headers=completion.headers)
                estimator.observe(len(prompt), 1, completion.input_tokens)
                outcome.times.append(permit.admitted_at)
                outcome.costs.append(cost)
                return
        raise AssertionError(f"call {number} was rate-limited 100 times")

    try:
        await asyncio.gather(*(one(number) for number in range(count)))
    finally:
        await client.aclose()
    return outcome


@pytest.mark.slow
def test_limits_are_learned_from_the_simulator_headers() -> None:
    config = SimulatorConfig(api_key=KEY, rpm=4800, tpm=1_000_000, latency_ms=20)
    with Simulator(config) as sim:
        resource = Resource("sim")
        outcome = run_real(call_all(sim, resource, 160))
        stats = sim.stats()
    assert resource.limits == Limits(rpm=4800, tpm=1_000_000)
    assert resource.stats()["learned"] is True
    assert stats["rate_limited"] <= 1
    assert len(outcome.times) == 160


def test_max_concurrent_keeps_the_simulator_from_refusing() -> None:
    with Simulator(SimulatorConfig(api_key=KEY, max_concurrent=4, latency_ms=10)) as sim:
        resource = Resource("sim", Limits(max_concurrent=4))
        outcome = run_real(call_all(sim, resource, 40))
        stats = sim.stats()
    assert stats["concurrency_rejected"] == 0
    assert stats["in_flight_max"] <= 4
    assert len(outcome.times) == 40


# --------------------------------------------------------------------------- token accounting


def test_admission_corrects_the_prompt_estimate_and_never_gives_back_unused_output() -> None:
    async def go() -> None:
        resource, _ = fake_resource(
            Limits(tpm=60_000), accounting="admission", token_burst_seconds=0.5
        )  # holds 490
        async with resource.slot(300, output=200) as permit:  # estimate 100 + max_tokens 200
            permit.settle(120, 9)  # the prompt was 120: 20 more, and the 191 unused stay
        assert permit.cost == 120 + 200
        assert resource._buckets["tokens"].level == pytest.approx(490 - 320)
        assert resource.stats()["tokens_per_call"] == 320

    run(go())


def test_usage_gives_back_the_unused_output_and_leaves_cache_reads_out() -> None:
    async def go() -> None:
        resource, _ = fake_resource(
            Limits(tpm=60_000), accounting="usage", token_burst_seconds=0.5
        )  # holds 490
        async with resource.slot(300, output=200) as permit:
            permit.settle(120, 9, cached=100)  # 20 uncached input + 9 output
        assert permit.cost == 20 + 9
        assert resource._buckets["tokens"].level == pytest.approx(490 - 29)
        async with resource.slot(300, output=200) as unsettled:
            pass  # the call raised: its reservation stands
        assert unsettled.cost == 300
        assert resource.stats()["tokens_per_call"] == pytest.approx((29 + 300) / 2)

    run(go())


def test_usage_keeps_anthropic_input_and_output_limits_apart() -> None:
    anthropic_headers = {
        "anthropic-ratelimit-tokens-limit": "8000",  # the tighter of the two: not a sum's limit
        "anthropic-ratelimit-tokens-remaining": "7000",
        "anthropic-ratelimit-input-tokens-limit": "60000",
        "anthropic-ratelimit-input-tokens-remaining": "59000",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
    }

    async def go() -> None:
        resource, _ = fake_resource(accounting="usage")
        await report(resource, 10, lambda permit: permit.settle(10, headers=anthropic_headers))
        assert resource.limits == Limits(input_tpm=60_000, output_tpm=8000)
        buckets = resource._buckets
        output_before = buckets["output_tokens"].level
        input_before = buckets["input_tokens"].level
        async with resource.slot(300, output=200) as permit:  # 100 in, 200 out reserved
            assert buckets["output_tokens"].level == pytest.approx(output_before - 200)
            permit.settle(100, 30)
        assert buckets["output_tokens"].level == pytest.approx(output_before - 30)
        assert buckets["input_tokens"].level == pytest.approx(input_before - 100)
        # Under admission the tightest of the three stands for tokens, as before.
        folded, _ = fake_resource(accounting="admission")
        await report(folded, 10, lambda permit: permit.settle(10, headers=anthropic_headers))
        assert folded.limits == Limits(tpm=8000)

    run(go())


def test_given_input_and_output_limits_are_shared_and_checked() -> None:
    assert Limits(input_tpm=400, output_tpm=80).shared(1 / 4) == Limits(
        input_tpm=100, output_tpm=20
    )
    with pytest.raises(ConfigError, match="output_tpm"):
        Limits(output_tpm=0)


def test_the_providers_remaining_bounds_the_bucket_both_ways() -> None:
    """Above: never more than the provider has left. Below: never less than what it has
    left (less headroom) minus what was admitted after this call and is still in flight
    (the provider has not counted that yet)."""

    async def go() -> None:
        resource, _ = fake_resource(Limits(tpm=60_000), token_burst_seconds=0.5)  # holds 490
        bucket = resource._buckets["tokens"]
        async with resource.slot(100) as low:
            low.settle(100, headers={"x-ratelimit-remaining-tokens": "50"})
        assert bucket.level == pytest.approx(50)  # down to the provider's remaining
        async with resource.slot(10) as first, resource.slot(20):  # 50 - 10 - 20 = 20 left
            first.settle(10, headers={"x-ratelimit-remaining-tokens": "400"})
            # Up to 400 * 0.98 less the 20 admitted after it, still in flight.
            assert bucket.level == pytest.approx(400 * 0.98 - 20)
        async with resource.slot(10) as full:
            full.settle(10, headers={"x-ratelimit-remaining-tokens": "100000"})
        assert bucket.level == pytest.approx(490)  # never above its own capacity

    run(go())


def test_a_call_above_the_whole_limit_is_a_one_line_error_not_a_wait() -> None:
    async def go(limits: Limits) -> None:
        resource, _ = fake_resource(limits)
        async with resource.slot(400, output=300):
            pass  # pragma: no cover: it never gets a slot

    with pytest.raises(ConfigError, match=r"needs 400 tokens, more than its whole limit of 300"):
        run(go(Limits(tpm=300)))
    with pytest.raises(ConfigError, match=r"needs 300 output tokens, .* of 200 output tokens"):
        run(go(Limits(tpm=10_000, output_tpm=200)))


def test_a_share_is_bounded_by_its_part_of_the_remaining() -> None:
    async def go() -> None:
        resource, _ = fake_resource(Limits(tpm=240_000), share=1 / 4)  # 980/s, holds 490
        bucket = resource._buckets["tokens"]
        async with resource.slot(100) as permit:
            permit.settle(100, headers={"x-ratelimit-remaining-tokens": "1000"})
        assert bucket.level == pytest.approx(250)  # its part of 1,000, not all of it

    run(go())


class SettlingProvider:
    """A provider's token bucket, in-process on the loop's clock, as the simulator keeps it
    in either accounting mode: ``limit``/60 a second, holding a second's worth, charged
    prompt + max_tokens at admission; with "usage" the unused max_tokens come back when
    the answer is done, and the remaining reported is the bucket after that (else the
    bucket just after the admission)."""

    def __init__(self, limit: float, accounting: str, latency: float = 0.3) -> None:
        self._clock = loop_clock()
        self.limit = limit
        self._bucket = ProviderBucket(limit / 60, limit / 60, self._clock())
        self._usage = accounting == "usage"
        self._latency = latency
        self.refused = 0
        self.used = 0.0  # tokens finally charged, as the provider counts them

    async def call(self, prompt: int, max_tokens: int, completion: int) -> dict[str, str] | None:
        """One call: its answer's headers, or None for a 429."""
        bucket, cost = self._bucket, prompt + max_tokens
        if bucket.wait(cost, self._clock()) > 0:
            self.refused += 1
            return None
        bucket.level -= cost
        said = self.headers()
        await asyncio.sleep(self._latency)
        charged = prompt + (completion if self._usage else max_tokens)
        self.used += charged
        if self._usage:
            bucket.wait(0.0, self._clock())  # refilled to now
            bucket.level = min(bucket.rate, bucket.level + cost - charged)
            said = self.headers()
        return said

    def headers(self) -> dict[str, str]:
        self._bucket.wait(0.0, self._clock())
        return {
            "x-ratelimit-limit-tokens": f"{self.limit:g}",
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(self._bucket.level))),
        }


@dataclass
class Learning:
    calls: int = 0
    limited: int = 0
    switched_after: int | None = None  # answers before the rule changed
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0
    used: float = 0.0


def learn_against(
    accounting: str,
    *,
    calls: int = 600,
    headers: bool = True,
    limits: Limits = NO_LIMITS,
    rule: Accounting = "learn",
) -> tuple[Learning, Resource]:
    """``calls`` TPM-bound calls (prompt 200, max_tokens 50, answers of 9) through a
    resource that learns the rule, against a provider of 300,000 tpm in ``accounting``."""

    async def go() -> tuple[Learning, Resource]:
        clock = loop_clock()
        provider = SettlingProvider(300_000, accounting)
        resource = Resource("p", limits, accounting=rule, clock=clock)
        learning = Learning()
        resource.listen(lambda event, fields: learning.events.append((event, fields)))
        started = clock()

        async def one() -> None:
            for _ in range(100):
                async with resource.slot(250, output=50) as permit:
                    said = await provider.call(200, 50, 9)
                    if said is None:
                        learning.limited += 1
                        permit.rate_limited(None)
                        continue
                    learning.calls += 1
                    permit.settle(200, 9, headers=said if headers else None)
                    if resource.rule == "usage" and learning.switched_after is None:
                        learning.switched_after = learning.calls
                    return
            raise AssertionError("a call was rate-limited 100 times")

        await asyncio.gather(*(one() for _ in range(calls)))
        learning.seconds = clock() - started
        learning.used = provider.used
        return learning, resource

    return run(go())


def test_learn_switches_to_usage_when_the_provider_gives_unused_output_back() -> None:
    """The TPM-bound load of the issue (~200 prompt + 9 completion tokens, max_tokens 50)
    against a provider that settles at real usage: the rule switches within a few hundred
    answers, and the calls use at least 95% of the ceiling with at most 0.5% 429s."""
    learning, resource = learn_against("usage")
    assert resource.rule == "usage"
    assert learning.switched_after is not None and learning.switched_after < 300
    assert learning.limited <= 0.005 * learning.calls
    [(event, fields)] = learning.events
    assert event == "limits.accounting_changed"
    assert (fields["from"], fields["to"], fields["resource"]) == ("admission", "usage", "p")
    assert "remaining tokens were on average" in fields["evidence"]
    assert ceiling_share(learning) >= 0.95


def ceiling_share(learning: Learning) -> float:
    """The part of the provider's 300,000 tpm the calls used as it counts them, after its
    opening second's worth (the full bucket it starts with)."""
    return (learning.used - 5000) / learning.seconds * 60 / 300_000


def test_requests_of_most_of_a_seconds_tokens_run_at_a_usage_providers_ceiling() -> None:
    """label's default 10-row requests (3,200 tokens: prompt 2,200 + max_tokens 1,000,
    answers of 120) at 300,000 tpm, one at a time as --workers auto sizes it, against a
    provider that settles at usage: 60 requests, too few for the rule to be learned. Each
    answer's remaining shows the room its unused output left; the token bucket must hold
    more than one request for that to admit the next (half a second's worth, 2,450 tokens,
    admitted one only when full: 0.93 of the ceiling)."""

    async def go() -> tuple[float, float, int]:
        clock = loop_clock()
        provider = SettlingProvider(300_000, "usage")
        resource = Resource("p", accounting="learn", clock=clock)
        started = clock()
        for _ in range(60):
            async with resource.slot(3_200, output=1_000) as permit:
                said = await provider.call(2_200, 1_000, 120)
                assert said is not None, "a 429"
                permit.settle(2_200, 120, headers=said)
        return provider.used, clock() - started, provider.refused

    used, seconds, refused = run(go())
    assert refused == 0
    assert (used - 5000) / seconds * 60 / 300_000 >= 0.95  # after the opening full bucket


def test_learn_stays_at_admission_when_the_provider_keeps_max_tokens() -> None:
    learning, resource = learn_against("admission")
    assert resource.rule == "admission"
    assert learning.events == []
    assert learning.limited <= 0.005 * learning.calls
    assert ceiling_share(learning) >= 0.95


def test_a_wrong_usage_rule_is_held_back_by_the_providers_remaining() -> None:
    """Told "usage" against a provider that keeps max_tokens charged: the bucket gives back
    what the provider does not, but every answer's remaining bounds it from above, so the
    calls stay within the provider's ceiling: no 429 storm."""
    learning, resource = learn_against("admission", rule="usage")
    assert resource.rule == "usage"
    assert learning.calls == 600
    assert learning.limited <= 0.005 * learning.calls
    assert ceiling_share(learning) <= 1.0


def test_learn_without_headers_stays_at_admission() -> None:
    learning, resource = learn_against(
        "usage", calls=200, headers=False, limits=Limits(tpm=300_000)
    )
    assert resource.rule == "admission"
    assert learning.events == []


@settings(max_examples=100)
@given(
    st.integers(0, 2_000_000),
    st.integers(0, 600),
    st.lists(st.integers(0, 400), max_size=5),
    st.sampled_from([1.0, 1 / 2, 1 / 7]),
)
def test_the_bounds_hold_whatever_the_remaining(
    remaining: int, cost: int, later: list[int], share: float
) -> None:
    """After an answer, the bucket is within its part of the provider's remaining (less
    headroom, less what was admitted after it and is in flight) and never above that part
    nor its own capacity."""

    async def go() -> None:
        # The loop's virtual clock: a slot that must wait for its tokens gets them in time.
        resource = Resource("x", Limits(tpm=60_000), share=share, clock=loop_clock())
        bucket = resource._buckets["tokens"]
        async with AsyncExitStack() as stack:
            permit = await stack.enter_async_context(resource.slot(cost))
            for tokens in later:
                await stack.enter_async_context(resource.slot(tokens))
            permit.settle(cost, headers={"x-ratelimit-remaining-tokens": str(remaining)})
            mine = remaining * share
            high = min(bucket.capacity, mine)
            # A shard is only bounded above: the other shards' calls are not in the figure.
            low = min(high, mine * 0.98 - sum(later)) if share >= 1 else -math.inf
            assert low - 1e-6 <= bucket.level <= high + 1e-6

    run(go())
