"""What a report shows, read from a state directory: the registry (runs, items, calls, the
last estimate) and the runs' JSONL event logs (samples, retries, pauses, stops).

Reading never writes: the registry is opened read-only, so a report or the dashboard can
read a job while it runs. The logs are read incrementally (``LogReader`` keeps each file's
offset), so a dashboard refreshing every second reads only what was appended since.

Time in the charts is **run time**: the runs of a job laid end to end (``Timeline``), so
a job resumed a week later shows no week-long gap; each run's start is marked.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rowpilot._latency import merged, quantile
from rowpilot._secrets import redact_args, redact_urls
from rowpilot.errors import StateError
from rowpilot.state.lock import is_locked
from rowpilot.state.reading import RegistryReader
from rowpilot.state.registry import REGISTRY_FILE

ESTIMATE_FILE = "estimate.json"  # in the state: the job's last `rowpilot estimate`
MAX_POINTS = 300  # buckets a time series is summed into, whatever the job's length
MAX_FAILURE_ROWS = 50  # failed items listed by key in the page
MAX_RETRIES_KEPT = 200_000  # retry events remembered for the charts (a storm's tail dropped)
_KEPT_EVENTS = frozenset(
    {
        "run.sample",
        "run.started",
        "run.stopping",
        "run.finished",
        "admission.paused",
        "admission.resumed",
        "workers.adjusted",
        "workers.chosen",
    }
)


# -- the event logs ----------------------------------------------------------------------


class LogReader:
    """The events of every run's JSONL log in ``logs``, read from where it stopped last."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._offsets: dict[Path, int] = {}
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)  # run_id -> kept
        self.retries: list[tuple[str, float, str | None]] = []  # (run_id, ts, resource)

    def read(self) -> None:
        if not self.logs.is_dir():
            return
        for path in sorted(self.logs.glob("*.jsonl")):
            self._read_file(path)

    def _read_file(self, path: Path) -> None:
        offset = self._offsets.get(path, 0)
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except OSError:
            return
        complete = chunk.rfind(b"\n") + 1  # a line being written is read next time
        self._offsets[path] = offset + complete
        for line in chunk[:complete].splitlines():
            self._keep(line)

    def _keep(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # a torn line of a killed run
        if not isinstance(event, dict):
            return
        name, run_id = event.get("event"), str(event.get("run_id", ""))
        if name == "item.retry" and len(self.retries) < MAX_RETRIES_KEPT:
            self.retries.append((run_id, float(event.get("ts", 0.0)), event.get("resource")))
        elif name in _KEPT_EVENTS:
            self.events[run_id].append(event)


# -- the runs and their time line -----------------------------------------------------------


@dataclass
class RunLine:
    run_id: str
    command: str
    started_at: float
    ended_at: float | None
    status: str
    executor: str
    workers: str
    done: int
    failed: int
    cost_usd: float
    budget_usd: float | None
    shard: str | None
    stop_reason: str | None
    retries: int = 0
    rate_limited: int = 0  # 429s

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass
class Timeline:
    """Runs laid end to end: ``at(run_id, ts)`` is a moment's place in run time."""

    starts: dict[str, float] = field(default_factory=dict)  # run_id -> its wall start
    offsets: dict[str, float] = field(default_factory=dict)  # run_id -> its run-time start
    lengths: dict[str, float] = field(default_factory=dict)

    def add(self, run_id: str, started_at: float, length: float) -> None:
        self.offsets[run_id] = self.span
        self.starts[run_id] = started_at
        self.lengths[run_id] = max(length, 0.0)

    @property
    def span(self) -> float:
        return sum(self.lengths.values())

    def at(self, run_id: str, ts: float) -> float | None:
        if run_id not in self.starts:
            return None
        within = min(max(ts - self.starts[run_id], 0.0), self.lengths[run_id])
        return self.offsets[run_id] + within


# -- what the page shows ---------------------------------------------------------------


@dataclass
class ResourceView:
    name: str
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    rpm: float | None = None
    tpm: float | None = None
    max_concurrent: int | None = None
    learned: bool = False
    active_seconds: float = 0.0
    cost_usd: float = 0.0
    paid_calls: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    # per bucket of run time: requests, 429s, retries
    requests_series: list[float] = field(default_factory=list)
    limited_series: list[float] = field(default_factory=list)
    retries_series: list[float] = field(default_factory=list)
    rpm_series: list[float | None] = field(default_factory=list)

    @property
    def rpm_used(self) -> float | None:
        """Requests a minute over the resource's active run time, as a share of its rpm."""
        if not self.rpm or self.active_seconds <= 0:
            return None
        return self.requests / (self.active_seconds / 60.0) / self.rpm

    def latency_at(self, q: float) -> float | None:
        return quantile(self.latency, q)


@dataclass
class Failure:
    key: str
    cause: str
    error_type: str
    error: str
    attempts: int


@dataclass
class ShardLine:
    shard: str
    runs: int
    done: int
    failed: int
    cost_usd: float
    seconds: float


@dataclass
class Estimate:
    made_at: float
    sample: int
    total: int
    cost_usd: float  # the whole job: spent when it was made + the projection of the rest
    batch_cost_usd: float | None
    seconds: float  # the rest's projected time


@dataclass
class Pause:
    start: float  # run time
    end: float
    kind: str  # "429", "memory"


@dataclass
class Mark:
    at: float  # run time
    label: str


@dataclass
class ReportData:
    state: str
    job: str
    made_at: float
    runs: list[RunLine]
    timeline: Timeline
    bucket_seconds: float
    items_total: int | None
    done: int
    failed: int
    cost_usd: float
    items_series: list[float]  # items finished per bucket
    cost_series: list[float]  # cumulative cost at each bucket's end
    budget_series: list[float | None]  # the run's budget line (cost before it + budget)
    workers_series: list[float | None]
    resources: dict[str, ResourceView]
    pauses: list[Pause]
    marks: list[Mark]
    causes: dict[str, int]
    failures: list[Failure]
    retry_command: str | None
    shards: list[ShardLine]
    estimate: Estimate | None

    @property
    def buckets(self) -> int:
        return len(self.items_series)

    def bucket_times(self) -> list[float]:
        """Each bucket's middle, in run time."""
        return [(i + 0.5) * self.bucket_seconds for i in range(self.buckets)]

    @property
    def running(self) -> bool:
        return any(run.running for run in self.runs)

    @property
    def cost_per_item(self) -> float | None:
        return self.cost_usd / self.done if self.done else None


def read_report(state: Path, logs: LogReader | None = None) -> ReportData:
    """Everything the page shows about the job in ``state`` (``logs``: a reader kept
    between calls, so a dashboard reads only what the logs gained)."""
    if not (state / REGISTRY_FILE).is_file():
        raise StateError(
            f"no registry in {state}",
            hint="give a job's state directory (rowpilot status lists them)",
        )
    reader = logs if logs is not None else LogReader(state / "logs")
    reader.read()
    with RegistryReader(state / REGISTRY_FILE) as db:
        return _Builder(state, db, reader).build()


class _Builder:
    def __init__(self, state: Path, db: RegistryReader, logs: LogReader) -> None:
        self.state = state
        self.db = db
        self.logs = logs
        self.now = time.time()

    def build(self) -> ReportData:
        self.live = is_locked(self.state)  # a run holds the state now
        runs = self._runs()
        timeline = self._timeline(runs)
        # Short jobs get finer buckets (30 at least), long ones MAX_POINTS at most.
        width = max(timeline.span / MAX_POINTS, min(1.0, timeline.span / 30), 1e-3)
        buckets = max(1, int(timeline.span // width) + 1)
        items, costs, budgets = self._item_series(runs, timeline, width, buckets)
        done, failed, cost = self.db.totals()
        causes, failures = self._failures()
        return ReportData(
            state=str(self.state),
            job=self.db.meta("job_name") or self.state.name,
            made_at=self.now,
            runs=runs,
            timeline=timeline,
            bucket_seconds=width,
            items_total=self._items_total(runs),
            done=done,
            failed=failed,
            cost_usd=cost,
            items_series=items,
            cost_series=costs,
            budget_series=budgets,
            workers_series=self._workers(timeline, width, buckets),
            resources=self._resources(runs, timeline, width, buckets),
            pauses=self._pauses(timeline),
            marks=self._marks(runs, timeline),
            causes=causes,
            failures=failures,
            retry_command=_retry_command(runs) if failed else None,
            shards=_shards(runs),
            estimate=self._estimate(),
        )

    # -- runs --

    def _runs(self) -> list[RunLine]:
        return [self._run_line(*row) for row in self.db.runs()]

    def _run_line(
        self,
        run_id: str,
        started_at: float,
        ended_at: float | None,
        status: str,
        command: str | None,
        settings_text: str | None,
        summary_text: str | None,
    ) -> RunLine:
        settings = _json_object(settings_text)
        summary = _json_object(summary_text)
        started = self._started_event(run_id)
        done, failed, cost = self._run_counts(run_id, summary)
        if status == "running" and not self.live:
            status = "crashed"  # as `rowpilot status` says: nothing holds the lock
        workers = settings.get("workers")
        if settings.get("workers_auto"):
            workers = f"auto (from {workers})"
        return RunLine(
            run_id=run_id,
            command=_redacted(command or ""),
            started_at=started_at,
            ended_at=ended_at,
            status=status,
            executor=str(summary.get("executor") or started.get("executor") or ""),
            workers="" if workers is None else str(workers),
            done=done,
            failed=failed,
            cost_usd=cost,
            budget_usd=summary.get("budget_usd", self._last_sample(run_id).get("budget_usd")),
            shard=settings.get("shard"),
            stop_reason=summary.get("stop_reason"),
            retries=int(summary.get("retries", self._last_sample(run_id).get("retries", 0))),
            rate_limited=int(
                summary.get("rate_limited", self._last_sample(run_id).get("rate_limited", 0))
            ),
        )

    def _run_counts(self, run_id: str, summary: Mapping[str, Any]) -> tuple[int, int, float]:
        if summary:
            return int(summary["done"]), int(summary["failed"]), float(summary["cost_usd"])
        sample = self._last_sample(run_id)  # a run going on, or killed: its last sample
        if sample:
            return int(sample["done"]), int(sample["failed"]), float(sample["cost_usd"])
        return 0, 0, 0.0

    def _started_event(self, run_id: str) -> dict[str, Any]:
        for event in self.logs.events.get(run_id, []):
            if event["event"] == "run.started":
                return event
        return {}

    def _samples(self, run_id: str) -> list[dict[str, Any]]:
        return [e for e in self.logs.events.get(run_id, []) if e["event"] == "run.sample"]

    def _last_sample(self, run_id: str) -> dict[str, Any]:
        samples = self._samples(run_id)
        return samples[-1] if samples else {}

    def _timeline(self, runs: list[RunLine]) -> Timeline:
        timeline = Timeline()
        for run in runs:
            end = run.ended_at
            if end is None:  # going on, or killed: as far as its last trace
                traces = [float(e["ts"]) for e in self.logs.events.get(run.run_id, [])]
                last = self.db.last_finish(run.run_id)
                end = max([*traces, last or run.started_at, run.started_at])
                if run.status == "running":  # going on: as far as now
                    end = max(end, self.now)
            timeline.add(run.run_id, run.started_at, end - run.started_at)
        return timeline

    # -- items, cost --

    def _item_series(
        self, runs: list[RunLine], timeline: Timeline, width: float, buckets: int
    ) -> tuple[list[float], list[float], list[float | None]]:
        items = [0.0] * buckets
        spent = [0.0] * buckets
        for run_id, start in timeline.starts.items():
            length, offset = timeline.lengths[run_id], timeline.offsets[run_id]
            for bucket, count, cost in self.db.finishes(run_id, start, length, offset, width):
                index = min(buckets - 1, max(0, int(bucket)))
                items[index] += count
                spent[index] += cost
        cumulative, total = [], 0.0
        for value in spent:
            total += value
            cumulative.append(total)
        return items, cumulative, _budget_line(runs, timeline, cumulative, width)

    def _items_total(self, runs: list[RunLine]) -> int | None:
        totals = [  # the selection's size as the last run started (or ended) it
            int(e["total"])
            for run in runs
            for e in self.logs.events.get(run.run_id, [])
            if e["event"] in ("run.started", "run.finished") and e.get("total") is not None
        ]
        return totals[-1] if totals else None

    # -- workers, resources --

    def _workers(self, timeline: Timeline, width: float, buckets: int) -> list[float | None]:
        series: list[float | None] = [None] * buckets
        for run_id, events in self.logs.events.items():
            for sample in (e for e in events if e["event"] == "run.sample"):
                at = timeline.at(run_id, float(sample["ts"]))
                if at is not None and sample.get("workers") is not None:
                    series[min(buckets - 1, int(at // width))] = float(sample["workers"])
        return _carried(series)

    def _resources(
        self, runs: list[RunLine], timeline: Timeline, width: float, buckets: int
    ) -> dict[str, ResourceView]:
        views: dict[str, ResourceView] = {}

        def view(name: str) -> ResourceView:
            if name not in views:
                views[name] = ResourceView(
                    name,
                    requests_series=[0.0] * buckets,
                    limited_series=[0.0] * buckets,
                    retries_series=[0.0] * buckets,
                    rpm_series=[None] * buckets,
                )
            return views[name]

        for run in runs:
            self._resource_samples(run.run_id, timeline, width, buckets, view)
        for run_id, ts, resource in self.logs.retries:
            at = timeline.at(run_id, ts)
            if resource and at is not None:
                target = view(resource)
                target.retries += 1
                target.retries_series[min(buckets - 1, int(at // width))] += 1
        for provider, model, calls, cost, seconds in self.db.calls_by_model():
            target = view(f"{provider}/{model}")
            target.paid_calls, target.cost_usd = int(calls), float(cost or 0.0)
            if not target.latency and seconds:  # runs before samples: the journal's
                target.latency = _histogram(float(s) for s in str(seconds).split(","))
        for target in views.values():
            target.rpm_series = _carried(target.rpm_series)
        return views

    def _resource_samples(
        self, run_id: str, timeline: Timeline, width: float, buckets: int, view: Any
    ) -> None:
        before: dict[str, dict[str, Any]] = {}
        previous = timeline.offsets.get(run_id, 0.0)
        for sample in self._samples(run_id):
            at = timeline.at(run_id, float(sample["ts"]))
            if at is None:
                continue
            for name, figures in (sample.get("resources") or {}).items():
                target = view(name)
                last = before.get(name, {})
                # What grew between two samples is spread over the time between them.
                _spread(
                    target.requests_series, previous, at, _grown(figures, last, "requests"), width
                )
                _spread(
                    target.limited_series,
                    previous,
                    at,
                    _grown(figures, last, "rate_limited"),
                    width,
                )
                target.rpm_series[min(buckets - 1, int(at // width))] = figures.get("rpm")
                before[name] = figures
            previous = at
        for name, figures in before.items():
            target = view(name)
            target.requests += int(figures.get("requests") or 0)
            target.rate_limited += int(figures.get("rate_limited") or 0)
            target.rpm, target.tpm = figures.get("rpm"), figures.get("tpm")
            target.max_concurrent = figures.get("max_concurrent")
            target.learned = bool(figures.get("learned"))
            target.latency = merged([target.latency, figures.get("latency_counts") or {}])
            target.active_seconds += float(self._last_sample(run_id).get("elapsed", 0.0))

    # -- pauses and marks --

    def _pauses(self, timeline: Timeline) -> list[Pause]:
        pauses: list[Pause] = []
        for run_id, events in self.logs.events.items():
            memory_from: float | None = None
            before: Mapping[str, Any] = {}  # the last sample
            for event in events:
                at = timeline.at(run_id, float(event["ts"]))
                if at is None:
                    continue
                if event["event"] == "admission.paused":
                    memory_from = at
                elif event["event"] == "admission.resumed" and memory_from is not None:
                    pauses.append(Pause(memory_from, at, "memory"))
                    memory_from = None
                elif event["event"] == "run.sample":
                    pauses += _rate_pauses(event, before, at)
                    before = event
            if memory_from is not None:
                end = timeline.offsets[run_id] + timeline.lengths[run_id]
                pauses.append(Pause(memory_from, end, "memory"))
        return _joined(pauses)

    def _marks(self, runs: list[RunLine], timeline: Timeline) -> list[Mark]:
        marks = [Mark(timeline.offsets[run.run_id], f"run {n}") for n, run in enumerate(runs, 1)]
        for run_id, events in self.logs.events.items():
            for event in events:
                if event["event"] == "run.stopping":
                    at = timeline.at(run_id, float(event["ts"]))
                    if at is not None:
                        marks.append(Mark(at, str(event.get("reason", "stop"))))
        return sorted(marks, key=lambda mark: mark.at)

    # -- failures, estimate, meta --

    def _failures(self) -> tuple[dict[str, int], list[Failure]]:
        causes = Counter(
            {
                str(cause or error_type or "error"): int(count)
                for cause, error_type, count in self.db.failure_causes()
            }
        )
        failures = [
            Failure(str(key), str(cause or ""), str(kind or ""), str(error or ""), int(tries))
            for key, cause, kind, error, tries in self.db.failures(MAX_FAILURE_ROWS)
        ]
        return dict(causes.most_common()), failures

    def _estimate(self) -> Estimate | None:
        try:
            data = _json_object((self.state / ESTIMATE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        try:
            return Estimate(
                made_at=float(data["made_at"]),
                sample=int(data["sample"]),
                total=int(data["total"]),
                cost_usd=float(data["cost_usd"]),
                batch_cost_usd=data.get("batch_cost_usd"),
                seconds=float(data["seconds"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


# -- helpers ------------------------------------------------------------------------------


def _json_object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _redacted(command: str) -> str:
    """Commands are stored redacted; a report redacts again, in case an older rowpilot
    stored one that was not."""
    try:
        return shlex.join(redact_args(shlex.split(redact_urls(command))))
    except ValueError:
        return redact_urls(command)


def _retry_command(runs: list[RunLine]) -> str | None:
    for run in reversed(runs):
        if run.command.startswith("rowpilot run") or run.command.startswith("rowpilot label"):
            parts = [p for p in shlex.split(run.command) if p != "--retry-failed"]
            return shlex.join([*parts, "--retry-failed"])
    return None


def _shards(runs: list[RunLine]) -> list[ShardLine]:
    grouped: dict[str, list[RunLine]] = defaultdict(list)
    for run in runs:
        if run.shard:
            grouped[run.shard].append(run)
    if len(grouped) < 2:
        return []
    return [
        ShardLine(
            shard=shard,
            runs=len(lines),
            done=sum(run.done for run in lines),
            failed=sum(run.failed for run in lines),
            cost_usd=sum(run.cost_usd for run in lines),
            seconds=sum((run.ended_at or run.started_at) - run.started_at for run in lines),
        )
        for shard, lines in sorted(grouped.items(), key=lambda pair: _shard_order(pair[0]))
    ]


def _shard_order(shard: str) -> tuple[int, str]:
    head = shard.partition("/")[0]
    return (int(head), shard) if head.isdigit() else (0, shard)


def _grown(figures: Mapping[str, Any], before: Mapping[str, Any], name: str) -> float:
    return max(0.0, float(figures.get(name) or 0) - float(before.get(name) or 0))


def _spread(series: list[float], start: float, end: float, amount: float, width: float) -> None:
    """Add ``amount`` to ``series`` spread evenly over run time ``start``..``end``."""
    if amount == 0:
        return
    last = len(series) - 1
    first_bucket, last_bucket = min(last, int(start // width)), min(last, int(end // width))
    if end <= start or first_bucket == last_bucket:
        series[last_bucket] += amount
        return
    for index in range(first_bucket, last_bucket + 1):
        low, high = max(start, index * width), min(end, (index + 1) * width)
        if index == last:
            high = end
        series[index] += amount * max(0.0, high - low) / (end - start)


def _carried(series: list[float | None]) -> list[float | None]:
    """Each empty bucket takes the value before it (a count in force until it changes)."""
    out: list[float | None] = []
    last: float | None = None
    for value in series:
        last = value if value is not None else last
        out.append(last)
    return out


def _rate_pauses(
    sample: Mapping[str, Any], before: Mapping[str, Any], at: float
) -> Iterator[Pause]:
    """A resource's 429s since the last sample (admission paused after each), and a pause
    still to run at this one."""
    since = float(before.get("elapsed", sample.get("elapsed", 0.0)))
    start = at - (float(sample.get("elapsed", 0.0)) - since)
    previous = before.get("resources") or {}
    for name, figures in (sample.get("resources") or {}).items():
        if _grown(figures, previous.get(name, {}), "rate_limited") > 0:
            yield Pause(start, at, "429")
        paused = float(figures.get("paused_seconds") or 0.0)
        if paused > 0:
            yield Pause(at, at + paused, "429")


def _joined(pauses: list[Pause]) -> list[Pause]:
    """Overlapping pauses of one kind as one."""
    out: list[Pause] = []
    for pause in sorted(pauses, key=lambda p: (p.kind, p.start)):
        if out and out[-1].kind == pause.kind and pause.start <= out[-1].end:
            out[-1].end = max(out[-1].end, pause.end)
        else:
            out.append(Pause(pause.start, pause.end, pause.kind))
    return sorted(out, key=lambda p: p.start)


def _budget_line(
    runs: list[RunLine], timeline: Timeline, cumulative: list[float], width: float
) -> list[float | None]:
    """Per bucket, the cost the run then going on may reach: what the job had spent
    before it, plus its budget (a budget is per run)."""
    line: list[float | None] = [None] * len(cumulative)
    for run in runs:
        if run.budget_usd is None:
            continue
        start = timeline.offsets[run.run_id]
        first = min(len(cumulative) - 1, int(start // width))
        last = min(len(cumulative) - 1, int((start + timeline.lengths[run.run_id]) // width))
        before = cumulative[first - 1] if first > 0 else 0.0
        for index in range(first, last + 1):
            line[index] = before + float(run.budget_usd)
    return line


def _histogram(seconds: Iterator[float] | Any) -> dict[int, int]:
    from rowpilot._latency import LatencyHistogram

    histogram = LatencyHistogram()
    for value in seconds:
        histogram.add(value)
    return histogram.counts
