"""Sizing: the start of --workers auto, its controller and the memory gate."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowpilot._limits import Limits
from rowpilot._sizing import (
    ASYNC_START,
    ITEM_MEMORY_MB,
    Admit,
    MemoryGate,
    Rates,
    Reading,
    WorkerSizer,
    choose_workers,
    littles_law_bound,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Run:
    """A run's counters fed to a sizer: items finish at the rate the workers allow."""

    def __init__(self, sizer: WorkerSizer, clock: Clock) -> None:
        self.sizer = sizer
        self.clock = clock
        self.finished = 0
        self.seconds = 0.0
        self.limited = 0
        self.requests = 0
        self.waited = 0.0

    def window(
        self,
        throughput: float,
        latency: float,
        *,
        busy: float = 1.0,
        limited: int = 0,
        rss_mb: float | None = None,
        rates: Rates | None = None,
        seconds: float = 1.0,
    ) -> Any:
        for _ in range(10):
            self.sizer.note(busy * self.sizer.workers)
        self.clock.now += seconds
        done = round(throughput * seconds)
        self.finished += done
        self.seconds += done * latency
        self.limited += limited
        return self.sizer.update(
            Reading(
                now=self.clock.now,
                finished=self.finished,
                task_seconds=self.seconds,
                rate_limited=self.limited,
                rss_mb=rss_mb,
                rates=rates,
            )
        )


def sizer(start: int = 8, ceiling: int = 256, **options: Any) -> Run:
    clock = Clock()
    return Run(WorkerSizer(start, ceiling, clock=clock, **options), clock)


# -- the start ------------------------------------------------------------------------------


def test_the_start_by_kind_and_its_caps() -> None:
    free = {"cpus": 4, "available_mb": 100_000.0}
    assert choose_workers("async", **free).workers == ASYNC_START
    assert choose_workers("sync", **free).workers == 8  # 4 CPUs + 4
    assert choose_workers("sync", cpus=64, available_mb=100_000.0).workers == 32
    assert choose_workers("grouped", **free).workers == 4
    assert choose_workers("prompt", **free).workers == ASYNC_START  # no rate known yet
    prompt = choose_workers("prompt", **free, limits=Limits(rpm=600))
    assert prompt.workers == littles_law_bound(600, 2.0) == 24
    assert "Little's law" in prompt.why
    capped = choose_workers("prompt", **free, limits=Limits(rpm=6000, max_concurrent=10))
    assert (capped.workers, capped.ceiling) == (10, 10)
    assert "max_concurrent" in capped.why
    assert choose_workers("sync", **free, max_workers=3).workers == 3
    tight = choose_workers("async", cpus=4, available_mb=100.0)
    assert tight.workers == 1 and f"{ITEM_MEMORY_MB:g} MB per worker" in tight.why
    capped_memory = choose_workers("async", **free, max_memory_mb=300.0, rss_mb=100.0)
    assert capped_memory.workers == 3  # (300 - 100) / 64
    below = choose_workers("async", **free, max_memory_mb=50.0, rss_mb=100.0)
    assert below.workers == 1  # never below one


def test_littles_law_bound() -> None:
    assert littles_law_bound(600, 1.0) == 12  # 10 requests/s x 1 s x 1.2
    assert littles_law_bound(60, 0.01) == 1
    assert littles_law_bound(6000, 0.5, margin=0.0) == 50


# -- the controller -------------------------------------------------------------------------


def test_grows_while_throughput_follows_the_workers() -> None:
    run = sizer(start=8)
    decision = run.window(throughput=160, latency=0.05)
    assert decision is not None and (decision.old, decision.new) == (8, 12)
    assert "Little's law" in decision.why
    decision = run.window(throughput=240, latency=0.05)  # 12 workers, 1.5x: kept, grown again
    assert decision is not None and decision.new == 18


def test_steps_back_when_more_workers_give_nothing() -> None:
    run = sizer(start=8)
    run.window(throughput=100, latency=0.08)
    assert run.sizer.workers == 12
    decision = run.window(throughput=102, latency=0.12)  # CPU-bound: same items/s
    assert decision is not None and decision.new == 8
    assert "no gain" in decision.why
    assert run.window(throughput=100, latency=0.08) is None  # holds the plateau


def test_idle_workers_are_not_grown() -> None:
    run = sizer(start=8)
    assert run.window(throughput=50, latency=0.05, busy=0.3) is None
    assert run.sizer.workers == 8


def test_waits_for_enough_items_to_judge() -> None:
    run = sizer(start=8, min_items=4)
    assert run.window(throughput=2, latency=4.0) is None  # 2 items: the window grows
    decision = run.window(throughput=2, latency=4.0)  # 4 items over 2 s now
    assert decision is not None and decision.new == 12


def test_429s_cut_and_hold_growth() -> None:
    run = sizer(start=20)
    decision = run.window(throughput=100, latency=0.2, limited=3)
    assert decision is not None and decision.new == 15
    assert "429" in decision.why
    assert run.window(throughput=100, latency=0.2) is None  # cooling down: no growth
    assert run.sizer.workers == 15


def test_memory_pressure_cuts() -> None:
    run = sizer(start=8, max_memory_mb=1000.0)
    decision = run.window(throughput=100, latency=0.08, rss_mb=950.0)
    assert decision is not None and decision.new == 6
    assert "memory pressure" in decision.why


def test_a_known_rate_caps_the_workers_by_littles_law() -> None:
    run = sizer(start=24)
    rates = Rates(rpm=600)  # 10 requests/s at 0.5 s each: 5 in flight, 6 with the margin
    decision = run.window(throughput=10, latency=0.5, rates=rates)
    assert decision is not None and decision.new == 6
    assert "Little's law" in decision.why
    assert run.window(throughput=10, latency=0.5, rates=rates) is None  # at the ceiling


def test_the_rate_limiters_wait_is_not_latency() -> None:
    run = sizer(start=40)
    first = Rates(rpm=600, calls=100, call_seconds=50.0)
    run.window(throughput=10, latency=1.5, rates=first)
    # Items took 1.5 s, of which their calls 0.5 s (the rest was the queue): 6 in flight.
    later = Rates(rpm=600, calls=110, call_seconds=55.0)
    run.window(throughput=10, latency=1.5, rates=later)
    assert run.sizer.workers == 6


def test_max_concurrent_is_a_ceiling() -> None:
    run = sizer(start=30)
    decision = run.window(throughput=100, latency=0.1, rates=Rates(rpm=None, max_concurrent=5))
    assert decision is not None and decision.new == 5


Step = tuple[float, float, float, int, float | None, float | None]
windows = st.lists(
    st.tuples(
        st.floats(0, 2000),  # throughput
        st.floats(0.001, 5.0),  # latency
        st.floats(0, 1),  # busy share
        st.integers(0, 3),  # 429s
        st.one_of(st.none(), st.floats(0, 3000)),  # rss
        st.one_of(st.none(), st.floats(1, 100_000)),  # rpm
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), windows)
def test_property_the_count_stays_in_bounds_and_obeys_the_signals(
    start: int, ceiling: int, steps: list[Step]
) -> None:
    run = sizer(start=start, ceiling=ceiling, max_memory_mb=2000.0, min_items=1)
    assert 1 <= run.sizer.workers <= ceiling
    for throughput, latency, busy, limited, rss, rpm in steps:
        before = run.sizer.workers
        rates = Rates(rpm=rpm) if rpm is not None else None
        run.window(throughput, latency, busy=busy, limited=limited, rss_mb=rss, rates=rates)
        assert 1 <= run.sizer.workers <= ceiling
        if limited and before > 1:
            assert run.sizer.workers < before  # a 429 always cuts
        if rpm is not None and round(throughput) >= 1:
            # A judged window with a known rate: never above its Little's-law bound.
            assert run.sizer.workers <= max(1, littles_law_bound(rpm, latency))


# -- the memory gate ------------------------------------------------------------------------


class Memory:
    def __init__(self, rss: float) -> None:
        self.rss = rss

    def __call__(self) -> float:
        return self.rss


def test_the_gate_starts_slow_then_admits_what_fits() -> None:
    clock, memory = Clock(), Memory(100.0)
    gate = MemoryGate(200.0, memory, clock=clock, settle=0.05)
    assert gate.check(in_flight=0, running=0) is Admit.YES
    gate.admitted()
    assert gate.check(in_flight=1, running=1) is Admit.SETTLE  # its memory is not known yet
    clock.now += 0.06
    memory.rss = 140.0  # the item shows: 40 MB
    assert gate.check(in_flight=1, running=1) is Admit.YES
    assert gate.per_item_mb == pytest.approx(40.0)
    gate.admitted()
    assert gate.check(in_flight=2, running=2) is Admit.SETTLE  # 140 + 40 unseen + 40 > 200
    clock.now += 0.06
    memory.rss = 180.0
    assert gate.check(in_flight=2, running=2) is Admit.FULL  # 180 + 40 > 200: paused
    memory.rss = 140.0  # one finished
    assert gate.check(in_flight=1, running=1) is Admit.YES
    memory.rss = 230.0  # the task grew on its own: above the cap
    assert gate.check(in_flight=1, running=1) is Admit.FULL


def test_the_gate_never_stops_an_empty_run() -> None:
    clock, memory = Clock(), Memory(500.0)
    gate = MemoryGate(100.0, memory, clock=clock)
    assert gate.check(in_flight=1, running=1) is Admit.FULL
    assert gate.check(in_flight=0, running=0) is Admit.YES  # one at a time, never none


@settings(max_examples=300, deadline=None)
@given(st.floats(50, 500), st.floats(1, 100), st.lists(st.booleans(), min_size=1, max_size=300))
def test_property_the_gate_holds_the_cap_plus_one_item(
    cap: float, item: float, finishes: list[bool]
) -> None:
    """Items add ``item`` MB each, visible only 30 ms after admission (the settle is 50)."""
    clock, memory = Clock(), Memory(40.0)
    gate = MemoryGate(cap, memory, clock=clock, settle=0.05)
    admitted: list[float] = []  # admission times of the running items
    for finish in finishes:
        if finish and admitted:
            admitted.pop(0)
        memory.rss = 40.0 + item * sum(1 for t in admitted if clock.now - t >= 0.03)
        if gate.check(in_flight=len(admitted), running=len(admitted)) is Admit.YES:
            gate.admitted()
            admitted.append(clock.now)
        clock.now += 0.01
        eventual = 40.0 + item * len(admitted)
        assert eventual <= max(cap, 40.0) + item + 1e-6
