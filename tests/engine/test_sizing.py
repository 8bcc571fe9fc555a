"""Sizing: the start of --workers auto, its controller, the memory gate, and real runs."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rowpilot
from conftest import invoke_cli
from rowpilot.engine.sizing import (
    ASYNC_START,
    ITEM_MEMORY_MB,
    Admit,
    MemoryGate,
    Rates,
    Reading,
    WorkerSizer,
    choose_workers,
    littles_law_bound,
    requests_per_minute,
)
from rowpilot.engine.slots import Slots
from rowpilot.llm.limits import Limits

SRC = str(Path(rowpilot.__file__).resolve().parents[1])


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


# -- Slots: a capacity that changes while items hold and wait for it -----------------------


def test_slots_grow_releases_waiters_and_shrink_waits_for_returns() -> None:
    async def scenario() -> None:
        slots = Slots(2)
        await slots.acquire()
        await slots.acquire()
        waiters = [asyncio.create_task(slots.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        slots.resize(4)  # two more: two waiters go at once
        await asyncio.sleep(0)
        assert sum(w.done() for w in waiters) == 2
        slots.resize(1)  # four held, one allowed: the next three returns wake nobody
        for _ in range(3):
            slots.release()
            await asyncio.sleep(0)
            assert sum(w.done() for w in waiters) == 2
        slots.release()  # the fourth return: one held, under the capacity again
        await asyncio.sleep(0)
        assert sum(w.done() for w in waiters) == 3
        assert slots.capacity == 1

    asyncio.run(scenario())


@given(
    st.integers(0, 6),
    st.integers(0, 4),
    st.lists(st.tuples(st.sampled_from(["take", "release", "resize"]), st.integers(0, 5))),
)
def test_slots_in_bulk_do_what_one_at_a_time_does(
    capacity: int, waiting: int, steps: list[tuple[str, int]]
) -> None:
    """take_up_to(n) takes what take() would, one by one while ready; release_many(n) is
    n releases: the same slots free and the same waiters woken, shrunk or not."""

    async def scenario() -> None:
        bulk, single = Slots(capacity), Slots(capacity)
        for slots in (bulk, single):
            for _ in range(capacity):
                slots.take()
        waiters = {
            id(slots): [asyncio.create_task(slots.acquire()) for _ in range(waiting)]
            for slots in (bulk, single)
        }
        await asyncio.sleep(0)
        held = {id(bulk): capacity, id(single): capacity}
        for step, count in steps:
            if step == "take":
                held[id(bulk)] += bulk.take_up_to(count)
                taken = 0
                while taken < count and single.ready:
                    single.take()
                    taken += 1
                held[id(single)] += taken
            elif step == "release":
                returned = min(count, held[id(bulk)], held[id(single)])
                bulk.release_many(returned)
                for _ in range(returned):
                    single.release()
                held[id(bulk)] -= returned
                held[id(single)] -= returned
            else:
                bulk.resize(count)
                single.resize(count)
            await asyncio.sleep(0)
            assert held[id(bulk)] == held[id(single)]
            assert bulk.ready == single.ready
            woken = [sum(task.done() for task in waiters[id(s)]) for s in (bulk, single)]
            assert woken[0] == woken[1]
        for tasks in waiters.values():
            for task in tasks:
                task.cancel()
        await asyncio.gather(
            *(t for tasks in waiters.values() for t in tasks), return_exceptions=True
        )

    asyncio.run(scenario())


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


def test_requests_per_minute_is_the_tighter_of_rpm_and_tpm() -> None:
    assert requests_per_minute(6000, 2_000_000, 300) == 6000  # tpm allows 6,667
    assert requests_per_minute(60_000, 300_000, 300) == 1000  # rpm allows 60,000
    assert requests_per_minute(None, 300_000, 300) == 1000
    assert requests_per_minute(600, 300_000, None) == 600  # a call's cost unknown: rpm
    assert requests_per_minute(None, 300_000, None) is None


@given(
    st.one_of(st.none(), st.floats(1, 1e6)),
    st.one_of(st.none(), st.floats(1, 1e8)),
    st.one_of(st.none(), st.floats(1, 1e5)),
)
def test_property_the_pace_never_passes_either_limit(
    rpm: float | None, tpm: float | None, tokens: float | None
) -> None:
    pace = requests_per_minute(rpm, tpm, tokens)
    by_tokens = tpm / tokens if tpm is not None and tokens is not None else None
    known = [value for value in (rpm, by_tokens) if value is not None]
    assert pace == (min(known) if known else None)


def test_a_prompt_task_starts_at_its_tpm_bound() -> None:
    free = {"cpus": 4, "available_mb": 100_000.0}
    limits = Limits(rpm=60_000, tpm=300_000)
    # 300,000 tpm / 300 tokens a call = 1,000 requests/min: 16.7/s x 2 s x 1.2 = 40.
    start = choose_workers(
        "prompt", **free, limits=limits, rates=Rates(rpm=None, tokens_per_call=300)
    )
    assert start.workers == 40
    assert "tpm 300000 / 300 tokens a call" in start.why
    assert choose_workers("prompt", **free, limits=limits).workers == 256  # cost unknown: rpm


def test_a_python_task_with_known_limits_starts_at_their_bound() -> None:
    free = {"cpus": 4, "available_mb": 100_000.0}
    start = choose_workers("async", **free, rates=Rates(rpm=3000, source="search at rpm 3000"))
    assert start.workers == 120  # 50/s x 2 s x 1.2
    assert "search at rpm 3000" in start.why
    slow = choose_workers("async", **free, rates=Rates(rpm=60))
    assert slow.workers == ASYNC_START  # never below the kind's own start


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


def test_a_slow_task_growth_is_judged_only_once_its_items_finish() -> None:
    run = sizer(start=8)
    run.window(throughput=6, latency=1.3)
    assert run.sizer.workers == 12
    # One second later the new workers' items are still running: not judged yet.
    assert run.window(throughput=6, latency=1.3) is None
    assert run.sizer.workers == 12
    decision = run.window(throughput=9, latency=1.3, seconds=3.0)  # settled: 1.5x, kept
    assert decision is not None and decision.new == 18


def test_a_known_rate_bound_is_reached_in_one_step() -> None:
    run = sizer(start=8)
    rates = Rates(rpm=3000, calls=100, call_seconds=130.0)  # 50/s x 1.3 s x 1.2 = 78
    decision = run.window(throughput=6, latency=1.3, rates=rates)
    assert decision is not None and decision.new == 78
    assert "the rate's bound" in decision.why


def test_a_tpm_bound_caps_the_workers() -> None:
    run = sizer(start=256)
    # 300,000 tpm at 300 tokens a call: 16.7 requests/s x 0.3 s x 1.2 = 6 in flight.
    rates = Rates(rpm=60_000, tpm=300_000, tokens_per_call=300, calls=17, call_seconds=5.1)
    decision = run.window(throughput=17, latency=0.3, rates=rates)
    assert decision is not None and decision.new == 6
    assert "tpm 300000 / 300 tokens a call" in decision.why


def test_a_known_rate_bound_is_kept_while_its_items_are_still_running() -> None:
    """The step to a rate's bound is not judged by finished items, which lag it by a
    latency: the old count's throughput for a few looks is no reason to step back."""
    run = sizer(start=8)
    rates = Rates(rpm=3000, service_seconds=1.3)  # 50/s x 1.3 s x 1.2 = 78
    decision = run.window(throughput=6, latency=1.3, rates=rates)
    assert decision is not None and decision.new == 78
    for _ in range(5):  # what finishes is still the 8 workers' items
        assert run.window(throughput=6, latency=1.3, rates=rates) is None
    assert run.sizer.workers == 78


def test_a_tasks_own_service_time_is_the_latency_of_its_bound() -> None:
    run = sizer(start=200)
    # Items take 3 s, of which 1.7 s waiting at the limits: Little's law wants 1.3 s.
    rates = Rates(rpm=3000, service_seconds=1.3, source="search at 3000 rpm / 1.00 calls")
    decision = run.window(throughput=50, latency=3.0, rates=rates)
    assert decision is not None and decision.new == 78
    assert "search at 3000 rpm / 1.00 calls x 1.30 s latency" in decision.why


def test_idle_workers_are_not_grown() -> None:
    run = sizer(start=8)
    assert run.window(throughput=50, latency=0.05, busy=0.3) is None
    assert run.sizer.workers == 8


def test_no_growth_without_a_finished_item() -> None:
    run = sizer(start=8)
    assert run.window(throughput=0, latency=1.0, seconds=5.0) is None  # 5 s, all busy
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


def test_a_settling_growth_takes_its_ceiling_from_the_last_look() -> None:
    run = sizer(start=4, min_items=1)
    grown = run.window(throughput=4, latency=1.0)  # a growth step, settling for 2.5 s
    assert grown is not None and grown.new == 6
    assert run.window(throughput=4, latency=1.0, rates=Rates(rpm=600)) is None  # 12 needed
    # The calls got fast: 10/s x 0.25 s x 1.2 = 3 in flight. Over the whole window (0.625 s
    # a call) it would be 8, and the 6 workers would stay.
    decision = run.window(throughput=4, latency=0.25, rates=Rates(rpm=600))
    assert decision is not None and decision.new == 3
    assert "Little's law" in decision.why


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
@example(  # a growth step still settling must not wait out a rate's bound below it
    start=1,
    ceiling=2,
    steps=[
        (0.0, 1.0, 1.0, 0, None, None),
        (1.0, 1.0, 1.0, 0, None, None),
        (1.0, 1.0, 0.0, 0, None, 1.0),
    ],
)
@example(  # the window spans the looks of a settling growth step: the bound is the last look's
    start=1,
    ceiling=2,
    steps=[
        (1.0, 1.0, 1.0, 0, None, None),
        (0.0, 1.0, 0.0, 0, None, None),
        (1.0, 1.0, 0.0, 0, None, None),
        (1.0, 0.5, 0.0, 0, None, 67.0),  # 0.5 s: 1 in flight; the window's 0.75 s said 2
    ],
)
@example(  # float noise of the run's totals must not round a whole need up (1.0000000000000004)
    start=2,
    ceiling=2,
    steps=[(3.0, 1.1, 0.0, 0, None, None), (1.0, 1.0, 0.0, 0, None, 50.0)],
)
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


paced_windows = st.lists(
    st.tuples(
        st.floats(1, 2000),  # throughput: at least an item a window, so each is judged
        st.floats(0.01, 5.0),  # latency, all of it service
        st.floats(1, 100_000),  # rpm
        st.floats(1, 10_000_000),  # tpm
        st.floats(1, 10_000),  # tokens a call
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 256), paced_windows)
def test_property_the_tighter_of_rpm_and_tpm_is_never_passed(
    start: int, steps: list[tuple[float, float, float, float, float]]
) -> None:
    run = sizer(start=start, min_items=1)
    for throughput, latency, rpm, tpm, tokens in steps:
        rates = Rates(rpm=rpm, tpm=tpm, tokens_per_call=tokens, service_seconds=latency)
        run.window(throughput, latency, rates=rates)
        pace = requests_per_minute(rpm, tpm, tokens)
        assert pace is not None
        assert run.sizer.workers <= littles_law_bound(pace, latency)


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


# -- real runs ------------------------------------------------------------------------------


async def sleep_50ms(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"twice": int(row["n"]) * 2}


def log_events(state: Path, name: str) -> list[dict[str, Any]]:
    events = []
    for path in sorted((state / "logs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["event"] == name:
                events.append(event)
    return events


@pytest.mark.slow
def test_auto_grows_past_its_start_and_finishes_every_item(tmp_path: Path) -> None:
    rows = [{"id": f"k{i:03d}", "n": i} for i in range(400)]
    result = rowpilot.run(sleep_50ms, rows, key="id", workers="auto", state=tmp_path / "s")
    assert result.summary.status == "completed"
    assert {r.key: r.output for r in result} == {row["id"]: {"twice": row["n"] * 2} for row in rows}
    (chosen,) = log_events(tmp_path / "s", "workers.chosen")
    assert chosen["workers"] == ASYNC_START
    adjusted = log_events(tmp_path / "s", "workers.adjusted")
    assert adjusted and max(e["new"] for e in adjusted) > chosen["workers"]
    assert all(e["why"] for e in adjusted)


def test_a_job_file_and_the_cli_take_auto(tmp_path: Path) -> None:
    with (tmp_path / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "n"], *[[f"k{i}", i] for i in range(30)]])
    (tmp_path / "tasks.py").write_text(
        "def twice(row):\n    return {'twice': int(row['n']) * 2}\n", encoding="utf-8"
    )
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "data.csv"\nkey = "id"\n[task]\nfunction = "tasks.py:twice"\n'
        '[run]\nworkers = "auto"\nmax_workers = 4\nmax_memory = 100000\nstate = "s"\n',
        encoding="utf-8",
    )
    done = cli(tmp_path, "run", "job.toml", "--no-progress")
    assert done.returncode == 0, done.stderr
    (chosen,) = log_events(tmp_path / "s", "workers.chosen")
    assert chosen["ceiling"] == 4 and 1 <= chosen["workers"] <= 4
    bad = cli(tmp_path, "run", "job.toml", "--workers", "many")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "rowpilot: error: --workers 'many' is not a number (hint: give task calls at once, or auto)"
    ]


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI through its entry point, in this process: a start-up saved a command."""
    return invoke_cli(*args, cwd=cwd)


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: it imports the rowpilot this test imported."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": SRC + (os.pathsep + path if path else "")}


# -- --max-memory -----------------------------------------------------------------------------

ITEM_BYTES = 40 * 1024 * 1024
HOLDS = f"""\
import time

def holds(row):
    block = b"\\x01" * {ITEM_BYTES}  # written, so resident at once
    time.sleep(0.15)
    return {{"size": len(block)}}

def light(row):
    return {{"size": 0}}
"""


# The CLI with its own high-water mark printed at exit. Not ru_maxrss from wait4: a child
# forked from this (large) test process starts out counted at this process's size.
MEASURED_CLI = """\
import atexit, sys

def peak():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                print("peak-kb", line.split()[1], file=sys.stderr)

atexit.register(peak)
from rowpilot.cli import main
main()
"""


def peak_rss_mb(cwd: Path, *args: str) -> float:
    """Run the CLI and return its peak resident memory in MB (the kernel's VmHWM)."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED_CLI, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("peak-kb ")]
    return int(line.split()[1]) / 1024.0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_max_memory_holds_the_peak_to_the_cap_plus_one_item(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(HOLDS, encoding="utf-8")
    with (tmp_path / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id"], *[[f"k{i}"] for i in range(16)]])
    run = ["run", "data.csv", "--key", "id", "--workers", "8", "--no-progress"]
    baseline = peak_rss_mb(tmp_path, *run, "--task", "tasks.py:light", "--state", "light")
    item_mb = ITEM_BYTES / 1024 / 1024
    cap = baseline + 1.5 * item_mb
    free = peak_rss_mb(tmp_path, *run, "--task", "tasks.py:holds", "--state", "free")
    assert free > cap + 3 * item_mb  # the control: without a cap, the 8 workers go far past it
    capped = peak_rss_mb(
        tmp_path, *run, "--task", "tasks.py:holds", "--state", "capped", "--max-memory", f"{cap}"
    )
    assert capped <= cap + item_mb, (baseline, cap, capped, free)
    paused = log_events(tmp_path / "capped", "admission.paused")
    assert paused and all(e["max_memory_mb"] == pytest.approx(cap) for e in paused)
    assert len(log_events(tmp_path / "capped", "admission.resumed")) == len(paused)


def test_a_cap_below_the_baseline_runs_one_item_at_a_time(tmp_path: Path) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def counted(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return {"seen": row["n"]}

    rows = [{"n": i} for i in range(20)]
    result = rowpilot.run(counted, rows, workers=8, max_memory=1, state=tmp_path / "s")
    assert result.summary.status == "completed"
    assert result.summary.done == 20
    assert most == 1  # never deadlocked, never more than one
    assert log_events(tmp_path / "s", "admission.paused")


# -- a prompt task: the model's rate is the ceiling -------------------------------------------

# A fake key, assembled so that secret scanners do not take this file for a leak.
CANARY = "sk-" + "canary-5e2b90aa17c3d4e8"


@pytest.mark.slow
def test_auto_follows_a_models_rate_by_littles_law(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,200 rpm at 200 ms a call keeps 4 calls busy (5 with the margin), not the 48 the
    start assumed from a 2 s latency: the first look at the measured calls cuts to that."""
    from rowpilot.simulator.server import Simulator, SimulatorConfig

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    rows = [{"id": f"k{i:02d}", "text": f"row {i}"} for i in range(80)]
    config = SimulatorConfig(api_key=CANARY, latency_ms=200, rpm=1200)
    with Simulator(config) as simulator:
        result = rowpilot.run(
            source=rows,
            key="id",
            model="openai/gpt-4o-mini",
            base_url=simulator.openai_base_url,
            prompt="Repeat: {text}",
            rpm=1200,
            workers="auto",
            state=tmp_path / "s",
            env_file=None,
        )
    assert result.summary.status == "completed"
    assert result.summary.done == 80
    # Real time against the real simulator: a stalled machine can bunch the paced calls
    # into a 429 or two (test_limits proves zero exactly, on a virtual clock); a storm
    # (the 48 workers the start assumed, unsized) would be dozens.
    assert result.summary.rate_limited <= 2
    (chosen,) = log_events(tmp_path / "s", "workers.chosen")
    assert chosen["workers"] == littles_law_bound(1200, 2.0) == 48
    adjusted = log_events(tmp_path / "s", "workers.adjusted")
    # The first look cuts: by Little's law, or (a 429 of the opening burst on a busy
    # machine) for the 429, with Little's law bounding what follows.
    assert adjusted and adjusted[0]["new"] < 48
    assert any("Little's law" in event["why"] for event in adjusted)
    # 20 calls/s x 0.2 s (plus the loopback's time) x 1.2 is about 5; on a loaded machine
    # the measured latency is longer and so is the bound. Each cut obeys its own measure.
    for event in adjusted:
        found = re.search(r"rpm 1200 x ([0-9.]+) s latency", event["why"])
        if found is not None:
            assert event["new"] <= littles_law_bound(1200, float(found.group(1)) + 0.005)
