"""The engine: from a job's settings to a finished run.

Order matters for the promise that bad input leaves the state untouched: the task is
loaded, the outputs checked and the whole selection read once (the validation pass)
before the state directory is locked; the registry file itself appears only with the
first committed outcome. A file source that the last complete run validated, unchanged
since (size, mtime in ns, inode, the same read and selection settings: recorded in the
registry's meta), is not validated again: the run's own read is then its only one. For a
grouped task, a selection whose items fit ``KEEP_BYTES`` is read once the other way round:
the run takes the items the validation pass read.

A task may answer the run's pending rows ahead of the scheduler (``Task.answer_ahead``: a
prompt task through a Batch API): the selection is then read once more, the rows it
leaves waiting (in open batches) are kept out of the scheduler, and the run ends
``waiting`` (or ``budget_reached``) with them pending. Items that park at steps that can
wait (``Task.answer_parked``) get their answers after the pass, and the selection is read
again for a pass over them, until none parks or they wait (detached).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from rowpilot._config import JobConfig
from rowpilot._result import Result, Summary
from rowpilot._targets import scheme_of
from rowpilot.engine._collector import collections_spaced
from rowpilot.engine.crashes import CrashPolicy, InFlightLog, recover
from rowpilot.engine.events import EventLog, warn
from rowpilot.engine.items import (
    FirstOccurrence,
    Item,
    Keyer,
    OnlineDuplicateCheck,
    PeekedSource,
    ScanReport,
    Selection,
    count_repeats,
    duplicate_key_error,
    encode_items,
    parse_rows,
    parse_shard,
    scan,
    selected_items,
    source_identity,
)
from rowpilot.engine.machine import read_machine, rss_mb
from rowpilot.engine.progress import Counters, ProgressView, default_view, refreshing
from rowpilot.engine.retry import DEFAULT_RETRY_ON, RetryPolicy, exception_types
from rowpilot.engine.samples import Sampler
from rowpilot.engine.scheduler import Scheduler
from rowpilot.engine.settings import RunEnd, RunSettings
from rowpilot.engine.sizing import AutoWorkers, choose_workers
from rowpilot.engine.slots import Slots
from rowpilot.errors import OutputCollisionError, StateError, UserError
from rowpilot.executors.choice import ExecutorChoice, choose_executor, open_executor
from rowpilot.sinks import LiveSink, Sink, sinks_for
from rowpilot.sinks.exports import KEY_FIELD
from rowpilot.sinks.gsheet import leave_out_written_columns
from rowpilot.sources import Source, open_source
from rowpilot.sources.gsheet import GsheetSource
from rowpilot.state.lock import LOCK_FILE, StateLock
from rowpilot.state.operations import check_key_definition, key_definition
from rowpilot.state.registry import VALIDATED_META, Registry, peek_meta, read_only_folder
from rowpilot.tasks.base import RunScope, Task
from rowpilot.tasks.factory import build_task
from rowpilot.tasks.values import Ahead

STATE_ROOT = Path(".rowpilot")
KEEP_BYTES = 128 * 2**20
"""The memory the validation pass of a grouped task (the local model, whose run is bound by
the model and the rows' reading) may keep its items in for the run, so that it reads the
source once; a larger selection is read again by the run. Other tasks keep nothing: their
memory stays flat in the row count (bench_engine's peak RSS ratio)."""


@dataclass
class PreparedJob:
    """A job whose task, source, selection and outputs have all been checked."""

    config: JobConfig
    task: Task
    source: Source
    keyer: Keyer
    selection: Selection
    state: Path
    settings: RunSettings
    scan: ScanReport | None
    sinks: list[Sink]
    executor: ExecutorChoice
    validation: dict[str, Any] | None = None  # what the validation pass vouched for


def prepare(config: JobConfig) -> PreparedJob:
    """Everything that can be checked before touching state, checked."""
    task = build_task(config)
    selection = Selection(
        rows=parse_rows(config.rows) if config.rows else None,
        shard=parse_shard(config.shard) if config.shard else None,
        limit=config.limit,
    )
    sinks = sinks_for(config, vector_field=task.vector_field)
    _check_outputs(sinks)
    source = open_source(
        config.source,
        format=config.format,
        encoding=config.encoding,
        trust_quotes=config.trust_quotes,
        follow_symlinks=config.follow_symlinks,
        credentials=config.credentials,
        sheet=config.sheet,
        header_row=config.header_row,
    )
    _leave_out_written_columns(config, task, source)
    if not source.reiterable:
        source = PeekedSource(source)  # its first chunk names its state
    keyer = Keyer(source, config.key)
    columns = source.columns()
    if columns is not None:
        task.check_columns(columns)
    validation = _validation_record(config, keyer)
    report = None
    if source.reiterable:
        report = _validated_before(config, task, source, validation)
        if report is None:
            keep = KEEP_BYTES if task.groups_rows else 0
            report = _validate(source, keyer, selection, config, keep)
    inputs = report.columns if report is not None else (columns or [])
    reserved = _reserved_names(config, inputs)
    _check_output_fields(task, reserved, config.output_prefix)
    state = _state_of(config, task, source, keyer, inputs)
    check_state_folder(state)
    _announce(source)
    executor = choose_executor(config, task)
    auto = None if executor.remote else auto_workers(config, task)
    settings = _settings(config, task.rows_per_worker, auto)
    settings = dataclasses.replace(settings, reserved=reserved)
    return PreparedJob(
        config,
        task,
        source,
        keyer,
        selection,
        state,
        settings,
        report,
        sinks,
        executor,
        validation if report is not None and not report.duplicate_hashes else None,
    )


def _leave_out_written_columns(config: JobConfig, task: Task, source: Source) -> None:
    """A sheet written back to holds the outputs beside the inputs: the columns an earlier
    write-back of this state wrote, and with ``--write-back`` the task's own output
    fields, are not inputs (the rule in ``sinks/gsheet.py``), so every run reads the same
    inputs as the first, with or without ``--write-back``."""
    if not isinstance(source, GsheetSource):
        return
    fields = [config.output_prefix + name for name in task.output_fields or []]
    state = state_directory(config, job_name(config, task, source))
    leave_out_written_columns(source, state, fields if config.write_back else [])


def _validation_record(config: JobConfig, keyer: Keyer) -> dict[str, Any] | None:
    """What a validation pass of a file source vouches for: the file as it was before the
    pass read it (size, mtime in ns, inode) and every setting that decides what is read.
    None for sources that are not one file (folders, frames, URLs)."""
    if not isinstance(config.source, str | os.PathLike):
        return None
    path = Path(config.source)
    try:
        found = path.stat()
    except OSError:
        return None  # open_source said what is wrong already, or will
    if not path.is_file():
        return None
    return {
        "file": str(path.resolve()),
        "size": found.st_size,
        "mtime_ns": found.st_mtime_ns,
        "inode": found.st_ino,
        "key": keyer.key_column,
        "read": [config.format, config.encoding, config.trust_quotes, *_sheet_choice(config)],
        "selection": [config.rows, config.shard, config.limit, config.duplicates],
    }


def _sheet_choice(config: JobConfig) -> list[Any]:
    """A workbook's sheet and header row, where given: a record without them stays the one
    that runs before these settings wrote (so their next run is not validated again)."""
    if config.sheet is None and config.header_row is None:
        return []
    return [config.sheet, config.header_row]


def _validated_before(
    config: JobConfig, task: Task, source: Source, record: dict[str, Any] | None
) -> ScanReport | None:
    """The last complete run's report, if it validated this very file the same way (the
    source is then read once, by the run): its record is in the registry's meta."""
    if record is None:
        return None
    state = state_directory(config, job_name(config, task, source))
    stored = peek_meta(state, VALIDATED_META)
    if stored is None:
        return None
    try:
        before = json.loads(stored)
        if before.get("record") != record:
            return None
        columns = [str(name) for name in before["columns"]]
        return ScanReport(int(before["total"]), columns, reused=True)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a record this code cannot read: validate


def _reserved_names(config: JobConfig, inputs: list[str]) -> dict[str, str]:
    """Names an output field may not take, and what holds each."""
    reserved = dict.fromkeys(inputs, "an input column")
    if config.json_dir is not None:
        reserved[KEY_FIELD] = "the key's field in each --json-dir file"
    return reserved


def _announce(source: Source) -> None:
    """What the source skipped or doubts, as warnings (symlinks out of a folder)."""
    notices = getattr(source, "notices", None)
    for notice in notices() if callable(notices) else []:
        warn(notice)


def _check_output_fields(task: Task, reserved: dict[str, str], prefix: str) -> None:
    """A built-in task knows its output fields: a clash with an input column fails now,
    before anything is paid, not at the first answer."""
    fields = task.output_fields
    if fields is None:
        return
    clash = next((prefix + name for name in fields if prefix + name in reserved), None)
    if clash is not None:
        raise OutputCollisionError(
            f"the output field {clash!r} is {reserved[clash]}: the output would overwrite it",
            column=clash,
        )


def auto_workers(config: JobConfig, task: Task) -> AutoWorkers | None:
    """``--workers auto``: where this machine, task and limits say to start; None if fixed."""
    if config.workers != "auto":
        return None
    machine = read_machine()
    limits = task.limits()
    before = task.rates()  # what the task knows of its calls' cost before the run
    choice = choose_workers(
        task.sizing,
        cpus=machine.cpus,
        available_mb=machine.available_mb,
        max_workers=config.max_workers,
        max_memory_mb=config.max_memory,
        rss_mb=rss_mb(),
        # A shard's resources pace at its share: its workers are sized for that pace.
        limits=limits.shared(config.limits_share) if limits is not None else None,
        rates=before,
    )
    # The task's pace is known only once the run is under way: read when the sizer asks.
    return AutoWorkers.of(choice, task.rates)


def _check_outputs(sinks: list[Sink]) -> None:
    """Every output is checked before the first item: its folder, its format."""
    for sink in sinks:
        sink.check()


def _validate(
    source: Source, keyer: Keyer, selection: Selection, config: JobConfig, keep_bytes: int
) -> ScanReport:
    size = _file_size(config)
    report = scan(source, keyer, selection, keep_bytes, size if size is not None else 0)
    if report.duplicate_hashes and config.duplicates is None:
        error = duplicate_key_error(source, keyer, selection, report.duplicate_hashes)
        if error is not None:
            raise error
    if report.duplicate_hashes:
        report.dropped = count_repeats(source, keyer, selection, report.duplicate_hashes)
    return report


def _file_size(config: JobConfig) -> int | None:
    if not isinstance(config.source, str | os.PathLike):
        return None
    try:
        return Path(config.source).stat().st_size
    except OSError:
        return None


def _settings(
    config: JobConfig, batch_size: int = 1, auto: AutoWorkers | None = None
) -> RunSettings:
    retry_on = exception_types(config.retry_on) if config.retry_on is not None else DEFAULT_RETRY_ON
    policy = RetryPolicy(
        max_attempts=config.max_attempts,
        base_delay=config.retry_delay,
        max_delay=config.max_retry_delay,
        retry_on=retry_on,
    )
    force_before = config.force_before
    if config.force and force_before is None:
        force_before = time.time()
    workers = config.workers_at_most if auto is None else auto.workers
    return RunSettings(
        # With batching, --workers counts requests at once; each request carries a batch.
        workers=workers * batch_size,
        group=batch_size,
        auto=auto,
        max_memory=config.max_memory,
        timeout=config.timeout,
        retry=policy,
        force_before=force_before,
        retry_failed=config.retry_failed,
        grace=config.grace,
        output_prefix=config.output_prefix,
        keep_going=config.keep_going,
    )


def job_name(config: JobConfig, task: Task, source: Source) -> str:
    if config.name:
        return config.name
    if isinstance(config.source, str) and scheme_of(config.source) is not None:
        stem = _url_stem(config.source)
    elif isinstance(config.source, str | os.PathLike):
        stem = Path(source.name).stem
    else:
        stem = "data"
    if config.sheet is not None:  # each sheet of a workbook is a job of its own
        stem = f"{stem}-{config.sheet}"
    return f"{stem}-{task.name.rsplit('.', 1)[-1]}"


def _url_stem(url: str) -> str:
    """A URL source's name for its state: its last parts, so that two worksheets of one
    spreadsheet, or two spreadsheets' "Sheet1", never share a state."""
    parts = [part for part in url.split("://", 1)[-1].split("/") if part]
    return "-".join(parts[-2:])[:80] or "url"


def _state_of(
    config: JobConfig, task: Task, source: Source, keyer: Keyer, columns: list[str]
) -> Path:
    # An in-memory source has no name of its own: its content names its state.
    in_memory = not isinstance(config.source, str | os.PathLike)
    identity = source_identity(source, keyer, columns) if in_memory else None
    return state_directory(config, job_name(config, task, source), identity)


def state_directory(config: JobConfig, name: str, identity: str | None = None) -> Path:
    """The one place that names a job's state: ``--state``, else ``.rowpilot/<name>``
    (``<name>-<identity>`` for an in-memory source; ``shard-K-of-N`` below it for a
    shard). Every command that finds a state from a job file comes here."""
    if config.state is not None:
        return config.state
    directory = STATE_ROOT / _safe_dir_name(f"{name}-{identity}" if identity else name)
    if config.shard:
        k, n = parse_shard(config.shard)
        directory = directory / f"shard-{k}-of-{n}"
    return directory


def _safe_dir_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return cleaned or "job"


def check_state_folder(state: Path) -> None:
    """Refuse a state path that can never work, before any work: a file, a read-only or
    unwritable folder (or the nearest existing folder above a new one)."""
    if state.exists() and not state.is_dir():
        raise StateError(
            f"the state path {state} is a file, not a folder",
            hint="pass --state with a folder (it is created if new)",
        )
    lock = state / LOCK_FILE
    if lock.exists() and not lock.is_file():
        raise StateError(
            f"{lock} is not a file: it is where rowpilot keeps its lock",
            hint=f"move {lock} away, or pass --state with another folder",
        )
    existing = next((p for p in (state, *state.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise StateError(
            f"the state path {state} runs through {existing}, which is a file",
            hint="pass --state with a folder",
        )
    if read_only_folder(existing):
        raise StateError(
            f"the state folder {existing} is read-only",
            hint="make it writable, or pass --state with a writable folder "
            "(status, export and verify can still read it)",
        )


async def execute(job: PreparedJob, progress: ProgressView | None = None) -> Result:
    """Run a prepared job to its end (or until stopped) and write its outputs.

    The task checks its keys and models before the state is touched, and is closed at the
    end; what its sessions learned (limits) stays readable on ``job.task`` afterwards.
    """
    try:
        await job.task.preflight()
        return await _execute(job, progress)
    finally:
        await job.task.close()


async def _execute(job: PreparedJob, progress: ProgressView | None) -> Result:
    created = _first_missing(job.state)
    lock = StateLock(job.state, job.config.command or "")
    lock.acquire()
    registry = Registry(job.state)
    remove_state = False
    live = _live_sinks(job.sinks)
    try:
        check_key_definition(registry, job.keyer.key_column)
        view = progress or default_view(job.config.progress)
        for sink in live:
            sink.start(job.state, job.task.version)
        from rowpilot.report.dashboard import serving  # here: 20 ms of imports a start

        with serving(job.state, job.config.dashboard):  # --dashboard: the live report
            summary = await _run_locked(job, registry, view)
        written = _write_outputs(job.sinks, registry) if registry.exists else []
        if registry.exists:  # runs whose every row was redone leave their vector files
            registry.prune_vector_files(summary.run_id)
    except UserError:
        # A user error before the first commit leaves no state behind, as it found it.
        remove_state = created is not None and not registry.exists
        raise
    finally:
        for sink in live:
            sink.stop()
        registry.close()
        lock.release()
        if remove_state and created is not None:
            shutil.rmtree(created, ignore_errors=True)
    return Result(summary, job.state, written)


def _live_sinks(sinks: list[Sink]) -> list[LiveSink]:
    """The sinks that write while the run goes (``LiveSink``), in the job's order."""
    return [cast("LiveSink", sink) for sink in sinks if callable(getattr(sink, "start", None))]


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run creates)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


async def _run_locked(job: PreparedJob, registry: Registry, progress: ProgressView) -> Summary:
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    total = job.scan.to_run if job.scan else None
    counters = Counters(total=total, started_at=time.monotonic())
    events = EventLog(job.state / "logs", run_id)
    progress = sampler = Sampler(progress, job.task, events)  # a refresh may also sample
    try:
        executor = open_executor(
            job.executor, job.config, job.task, threads=job.settings.most_workers
        )
    except BaseException:
        events.close()
        raise
    if job.executor.remote:  # the workers' capacity: each busy, with a batch waiting
        job.settings = dataclasses.replace(job.settings, workers=executor.capacity)
    workers = Slots(job.settings.workers)  # the scheduler's, shared with ctx.map sub-items
    scope = RunScope(registry, counters, events, run_id, workers)
    try:
        steps = await job.task.open(scope)
    except BaseException:
        executor.close()
        events.close()
        raise
    run_row = _run_row(job, run_id)
    crashes = _crash_policy(job, registry, run_id, events)
    inflight = InFlightLog(job.state, run_row)
    scheduler = Scheduler(
        task=job.task,
        executor=executor,
        registry=registry,
        run_id=run_id,
        settings=job.settings,
        events=events,
        progress=progress,
        counters=counters,
        first_commit=lambda: (_meta(job), run_row),
        crashes=crashes,
        inflight=inflight,
        steps=steps,
        workers=workers,
    )
    events.emit(
        "run.started",
        task=job.task.name,
        version=job.task.version,
        total=counters.total,
        state=str(job.state),
        workers=job.settings.workers,
        executor=executor.name,
        validation=_validation_said(job.scan),
    )
    progress.start(counters)
    _announce_executor(job, executor.name, events, progress)
    _announce_share(job.config, events, progress)
    try:
        inflight.open()  # in the try: a full disk here closes the run like any other error
        ahead = await refreshing(
            job.task.answer_ahead(_pending_rows(job, registry), scope), progress, counters
        )
        with _signals_to(scheduler):
            ahead, end = await _passes(job, scheduler, scope, (inflight, progress), ahead)
        end, stop = _after_ahead(job, (registry, run_row), ahead, end, scheduler.stop_message)
        summary = _summary(job, run_id, counters, end, stop, job.task.waited_seconds())
        summary = dataclasses.replace(summary, executor=executor.name, workers=executor.parallel)
        run_row.update(
            ended_at=time.time(), status=summary.status, summary=json.dumps(summary.as_dict())
        )
        registry.update_run(run_row, meta=_validated_meta(job, end))
        _log_end(sampler, counters, events, summary)
    except BaseException as exc:
        progress.stop(counters, final=False)
        events.emit("run.error", error=f"{type(exc).__name__}: {exc}")
        _close_run_on_error(registry, run_row)
        raise
    finally:
        executor.close()
        inflight.close()  # any end that reaches here is orderly: nothing is in flight
        events.close()
    progress.stop(counters)
    return summary


def shard_pacing(config: JobConfig) -> str | None:
    """What a shard's pace is, in a line that names the other choice; None if no shard."""
    if config.shard is None:
        return None
    k, n = parse_shard(config.shard)
    if config.limits_share == 1.0:
        return (
            f"shard {k}/{n}: pacing at the whole of each provider limit "
            "(--shard-limits split when the shards share one account)"
        )
    return (
        f"shard {k}/{n}: pacing at 1/{n} of each provider limit "
        "(--shard-limits full to use the whole limit)"
    )


def _announce_executor(job: PreparedJob, name: str, events: EventLog, view: ProgressView) -> None:
    """Workers elsewhere are said above the progress; a fallback to this process (a prompt
    task asked for workers) is a notice even without progress: the user must hear why."""
    choice = job.executor
    if choice.remote:
        events.emit("executor.chosen", executor=name, why=choice.why, message=choice.why)
        view.note(f"executor: {choice.why}")
    elif job.config.executor != choice.kind:
        events.emit("executor.chosen", executor=name, why=choice.why, message=choice.why)
        warn(choice.why)


def _announce_share(config: JobConfig, events: EventLog, progress: ProgressView) -> None:
    """A shard run by hand paces at its share of each provider limit: said once, in the
    log and above the progress, with the way to the whole limit."""
    message = shard_pacing(config)
    if message is None or config.limits_share == 1.0:
        return  # the whole limit: as any run that is not a shard
    events.emit("limits.shared", shard=config.shard, share=config.limits_share, message=message)
    progress.note(message)


def _log_end(sampler: Sampler, counters: Counters, events: EventLog, summary: Summary) -> None:
    """The run's last sample, the limits each rate-limited resource ended it with (learned
    ones included, times a shard's share: what the run paced at, and ``estimate``
    projects from), and its summary."""
    sampler.sample(counters, final=True)
    resources = {
        name: dataclasses.asdict(limits) for name, limits in sampler.task.resource_limits().items()
    }
    if resources:
        events.emit("run.limits", resources=resources)
    events.emit("run.finished", **summary.as_dict())


def _crash_policy(
    job: PreparedJob, registry: Registry, run_id: str, events: EventLog
) -> CrashPolicy | None:
    """Runs that died before this one: their in-flight keys become suspects."""
    recovery = recover(registry, job.state, run_id)
    notice = recovery.notice()
    if notice is not None:
        warn(notice)
        events.emit("run.recovered", runs=recovery.runs, keys=recovery.keys, message=notice)
    counts = registry.crash_counts()
    return CrashPolicy(job.config.max_attempts, counts) if counts else None


def _close_run_on_error(registry: Registry, run_row: dict[str, Any]) -> None:
    """A run that ends in an error is not left "running" (if it got as far as a row)."""
    if registry.exists and any(run["run_id"] == run_row["run_id"] for run in _runs(registry)):
        with contextlib.suppress(UserError):
            registry.update_run({**run_row, "ended_at": time.time(), "status": "error"})


def _runs(registry: Registry) -> list[dict[str, Any]]:
    try:
        return registry.runs()
    except UserError:
        return []


def _chunks(job: PreparedJob) -> Iterator[list[Item]]:
    if job.scan is None:
        check = OnlineDuplicateCheck(job.source, job.keyer, job.config.duplicates == "first")
        admits = check.admits
    else:
        admits = FirstOccurrence(job.scan.duplicate_hashes).admits
    kept = job.scan.kept if job.scan is not None else None
    if job.scan is not None:
        job.scan.kept = None  # each chunk is let go once the run has it
    if kept is not None:
        chunks = _handed_over(kept)
    else:
        chunks = selected_items(job.source, job.keyer, job.selection)
    for items in chunks:
        yield [item for item in items if admits(item)]


def _pending_rows(job: PreparedJob, registry: Registry) -> Iterator[tuple[str, dict[str, Any]]]:
    """The selected rows this run is to do (key, row), for ``Task.answer_ahead``."""
    for items in _chunks(job):
        encode_items(items, job.task.version)
        prior = registry.lookup([item.key for item in items])
        for item in items:
            if job.settings.runs_again(item.fingerprint, prior.get(item.key)):
                yield item.key, item.fields


async def _passes(
    job: PreparedJob,
    scheduler: Scheduler,
    scope: RunScope,
    views: tuple[InFlightLog, ProgressView],
    ahead: Ahead | None,
) -> tuple[Ahead | None, RunEnd]:
    """The pass over the rows not waiting ahead; then, while items park at steps that can
    wait, their answers waited for (detached: submitted) and a pass over those answered."""
    inflight, progress = views
    end = await scheduler.run(_leaving_out(ahead, _chunks(job)))
    while end is RunEnd.COMPLETED and not scheduler.stopping:
        if scope.counters.parked:  # parked items are not in flight: a kill now blames none
            inflight.clear()
        parked = await refreshing(job.task.answer_parked(scope), progress, scope.counters)
        if parked is None:
            break
        ahead = parked
        if not parked.ready or parked.stop is not None:  # a budget stop: the rest pending
            break
        ready = parked.ready  # a pass over the parked items whose answers are in
        end = await scheduler.run([i for i in items if i.key in ready] for items in _chunks(job))
    return ahead, end


def _leaving_out(ahead: Ahead | None, chunks: Iterator[list[Item]]) -> Iterator[list[Item]]:
    """The run's chunks without the rows still waiting for answers ahead (open batches)."""
    if ahead is None or not ahead.waiting:
        yield from chunks
        return
    for items in chunks:
        yield [item for item in items if item.key not in ahead.waiting]


def _after_ahead(
    job: PreparedJob,
    run: tuple[Registry, dict[str, Any]],
    ahead: Ahead | None,
    end: RunEnd,
    message: str | None,
) -> tuple[RunEnd, str | None]:
    """How the run ended and why it stopped: rows still waiting for answers ahead make it
    ``waiting`` (or ``budget_reached`` when the budget kept them back)."""
    if ahead is None or not ahead.waiting or end is not RunEnd.COMPLETED:
        return end, _stop_line(job, end, message)
    registry, run_row = run
    if not registry.exists:  # it only submitted batches: still a run of the job, recorded
        registry.commit([], meta=_meta(job), run=run_row)
    if ahead.stop is not None:
        return RunEnd.BUDGET, ahead.stop
    return RunEnd.WAITING, (
        f"{len(ahead.waiting):,} rows wait in {ahead.open_batches:,} open batch(es): run the "
        "same command again to collect them (rowpilot status lists them)"
    )


def _handed_over(kept: list[list[Item]]) -> Iterator[list[Item]]:
    """The validation pass's chunks, in order, each dropped from the list as it goes."""
    kept.reverse()
    while kept:
        yield kept.pop()


@contextlib.contextmanager
def _signals_to(scheduler: Scheduler) -> Iterator[None]:
    """SIGINT/SIGTERM stop the run gracefully; a second one cancels in-flight items."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal() -> None:
        if scheduler.stopping:
            print("\nrowpilot: cancelling in-flight items", file=sys.stderr, flush=True)
        else:
            print(
                f"\nrowpilot: stopping; waiting up to {scheduler.settings.grace:g}s for "
                f"{scheduler.in_flight} in-flight item(s) (Ctrl-C again to cancel them)",
                file=sys.stderr,
                flush=True,
            )
        scheduler.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread: the caller keeps its own signal handling
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _meta(job: PreparedJob) -> dict[str, str]:
    columns = job.scan.columns if job.scan else (job.source.columns() or [])
    return {
        "job_name": job.state.name,
        "source": job.source.name,
        "key_column": job.config.key or "",
        "key_definition": key_definition(job.keyer.key_column),
        "output_prefix": job.config.output_prefix,
        "input_columns": json.dumps(columns),
        "task": job.task.name,
        "task_version": job.task.version,
    }


def _validation_said(report: ScanReport | None) -> str:
    if report is None:
        return "as rows are read (a one-shot source)"
    return "skipped: the file is as the last complete run read it" if report.reused else "read"


def _validated_meta(job: PreparedJob, end: RunEnd) -> dict[str, str] | None:
    """A complete run records the file its validation pass read, so that the next run of
    the unchanged file skips the pass (``_validated_before``)."""
    if end is not RunEnd.COMPLETED or job.validation is None or job.scan is None:
        return None
    record = {"record": job.validation, "total": job.scan.total, "columns": job.scan.columns}
    return {VALIDATED_META: json.dumps(record)}


def _run_row(job: PreparedJob, run_id: str) -> dict[str, Any]:
    settings = {
        "workers": job.settings.workers,
        "workers_auto": job.settings.auto.why if job.settings.auto is not None else None,
        "max_memory": job.config.max_memory,
        "rows": job.config.rows,
        "shard": job.config.shard,
        "limit": job.config.limit,
        "total": job.scan.to_run if job.scan else None,
        "dropped_duplicates": job.scan.dropped if job.scan else 0,
        "source": job.source.name,
        "key": job.config.key,
    }
    return {
        "run_id": run_id,
        "started_at": time.time(),
        "status": "running",
        "command": job.config.command,
        "pid": os.getpid(),
        "task": job.task.name,
        "task_version": job.task.version,
        "settings": json.dumps(settings),
    }


def _stop_line(job: PreparedJob, end: RunEnd, message: str | None) -> str | None:
    """Why the run stopped; a budget stop in the figures of the end, since the calls in
    flight at the stop were paid after it."""
    if end is RunEnd.BUDGET:
        return job.task.budget_stop() or message
    return message


def _summary(
    job: PreparedJob,
    run_id: str,
    c: Counters,
    end: RunEnd,
    stop_reason: str | None,
    waited: float = 0.0,
) -> Summary:
    elapsed = time.monotonic() - c.started_at
    pending = None if c.total is None else max(0, c.total - c.finished)
    if end is not RunEnd.COMPLETED:
        status = end.value
    elif c.failed and not c.done:
        status = "failed"
    elif c.failed or c.skipped_failed:
        status = "completed_with_failures"
    else:
        status = "completed"
    return Summary(
        run_id=run_id,
        state=str(job.state),
        status=status,
        total=c.total,
        done=c.done,
        failed=c.failed,
        skipped=c.skipped,
        skipped_failed=c.skipped_failed,
        pending=pending,
        retries=c.retries,
        elapsed=elapsed,
        items_per_second=(c.done + c.failed) / elapsed if elapsed > 0 else 0.0,
        task_seconds=c.task_seconds,
        speedup=max(0.0, c.task_seconds - waited) / elapsed if elapsed > 0 else 0.0,
        waited_seconds=waited,
        cpu_seconds=c.cpu_seconds,
        workers=job.settings.most_workers,
        dropped=job.scan.dropped if job.scan else 0,
        stop_reason=stop_reason,
        causes={cause: n for cause, n in c.causes.items() if n > 0},
        calls=c.calls,
        cached=c.cached,
        batch_calls=c.batch_calls,
        batch_answers=c.batch_answers,
        cost_usd=c.cost_usd,
        budget_usd=c.budget_usd,
        rate_limited=c.rate_limited,
        splits=c.splits,
        batched=job.task.rows_per_worker > 1,
    )


def _write_outputs(sinks: list[Sink], registry: Registry) -> list[str]:
    """Write the outputs the job asked for; say what was written where."""
    return [sink.write(registry) for sink in sinks]


def run_sync(config: JobConfig, progress: ProgressView | None = None) -> Result:
    """The sync face: run the async engine, in a helper thread if a loop already runs here."""
    with collections_spaced():
        job = prepare(config)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(execute(job, progress))
        return _run_in_thread(job, progress)


def _run_in_thread(job: PreparedJob, progress: ProgressView | None) -> Result:
    # Inside a running loop (Jupyter), asyncio.run cannot nest: use a fresh loop elsewhere.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, execute(job, progress)).result()
