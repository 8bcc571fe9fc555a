"""Operations on state directories: status, merge of shards, verify against the source."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rowpilot.engine.items import (
    FirstOccurrence,
    Item,
    Keyer,
    Selection,
    count_repeats,
    duplicate_key_error,
    encode_json,
    fingerprint,
    scan,
    selected_items,
)
from rowpilot.errors import StateError
from rowpilot.sources import Source
from rowpilot.state.batches import BatchLedger
from rowpilot.state.lock import StateLock, is_locked
from rowpilot.state.registry import REGISTRY_FILE, Registry
from rowpilot.state.vector_files import VectorFiles

_SHOWN = 10


def key_definition(key_column: str | None) -> str:
    """How a job keys its rows, as recorded in its registry's meta."""
    return f"column:{key_column}" if key_column is not None else "row-number"


def check_key_definition(registry: Registry, key_column: str | None) -> None:
    """A state keyed one way is never read or resumed keyed another: every done row would
    look new (run again, and paid again) and exports would hold each row twice."""
    if not registry.exists:
        return
    meta = registry.meta()
    recorded = meta.get("key_definition")
    if recorded is None:  # written before the key definition was recorded
        legacy = meta.get("key_column")
        if not legacy:  # the row number, or a folder's path: what no --key gives
            return
        recorded = key_definition(legacy)
    current = key_definition(key_column)
    if recorded != current:
        raise StateError(
            f"{registry.directory} keys its rows by {_described(recorded)}, but this keys "
            f"them by {_described(current)}",
            hint=f"pass {_flag(recorded)} to use that state, or --state NEW_FOLDER to start "
            "a new one",
        )


def _described(definition: str) -> str:
    kind, _, column = definition.partition(":")
    return f"the column {column!r}" if kind == "column" else "row number"


def _flag(definition: str) -> str:
    kind, _, column = definition.partition(":")
    return f"--key {column}" if kind == "column" else "no --key"


@dataclass(frozen=True)
class StateStatus:
    """One state directory at a glance. ``stale`` items were done (or failed) by an older
    version of the task: they count as pending until the current version redoes them."""

    state: str
    running: bool
    done: int
    failed: int
    total: int | None
    runs: int
    last_run: dict[str, Any] | None
    spending: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    open_batches: list[dict[str, Any]] = field(default_factory=list)  # --batch-api

    @property
    def pending(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.done - self.failed)


def find_states(root: Path) -> list[Path]:
    """Every state directory under ``root`` (shards included), in name order."""
    if not root.is_dir():
        return []
    found = (path.parent for path in root.rglob(REGISTRY_FILE) if path.is_file())
    # Hidden folders are rowpilot's own work in progress (an unfinished merge).
    return sorted(
        p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def status(directory: Path) -> StateStatus:
    registry = Registry(directory)
    running = is_locked(directory)
    if not registry.exists:
        if not running:
            raise StateError(
                f"no registry in {directory}", hint="run a job there first, or check --state"
            )
        return StateStatus(str(directory), True, 0, 0, None, 0, None)
    try:
        counts = registry.counts()
        runs = registry.runs()
        spending = registry.spending()
    finally:
        registry.close()
    last = runs[-1] if runs else None
    if last is not None and last["status"] == "running" and not running:
        last = {**last, "status": "crashed"}  # nothing holds the lock: its process is gone
    return StateStatus(
        state=str(directory),
        running=running,
        done=counts["done"],
        failed=counts["failed"],
        total=_total(runs),
        runs=len(runs),
        last_run=_run_view(last) if last else None,
        spending=spending,
        stale=counts["stale"],
        open_batches=_open_batches(directory),
    )


def _open_batches(directory: Path) -> list[dict[str, Any]]:
    """The job's batches still open at a provider (or intended, their ids not yet heard),
    as the batch ledger last saw them."""
    ledger = BatchLedger.existing(directory)
    if ledger is None:
        return []
    try:
        unfinished = ledger.unfinished()
        requests = {record.intent: len(ledger.rows_of(record.intent)) for record in unfinished}
    finally:
        ledger.close()
    now = time.time()
    return [
        {"provider": record.provider, "model": record.model,
         "batch_id": record.batch_id or f"(not yet known: intent {record.intent})",
         "rows": record.rows, "requests": requests[record.intent], "done": record.done,
         "age_seconds": now - record.intended_at}
        for record in unfinished
    ]  # fmt: skip


def _total(runs: list[dict[str, Any]]) -> int | None:
    """The job's size: per shard (a merged state holds several), the largest selection of
    the runs that covered the same rows as its newest run (a --limit run covers fewer)."""
    newest: dict[Any, Any] = {}
    sizes: dict[tuple[Any, Any], int] = {}
    for run in runs:
        settings = json.loads(run["settings"]) if run.get("settings") else {}
        if settings.get("total") is None:
            continue
        shard, rows = settings.get("shard"), settings.get("rows")
        newest[shard] = rows
        sizes[shard, rows] = max(sizes.get((shard, rows), 0), int(settings["total"]))
    if not newest:
        return None
    if None in newest:  # the whole job ran here too: its own selection is the size
        return sizes[None, newest[None]]
    return sum(sizes[shard, rows] for shard, rows in newest.items())


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    view = {name: run[name] for name in ("run_id", "status", "started_at", "ended_at", "command")}
    view["summary"] = json.loads(run["summary"]) if run.get("summary") else None
    return view


@dataclass(frozen=True)
class MergeReport:
    into: str
    items: int
    conflicts: int
    per_source: dict[str, int]


def merge(sources: list[Path], into: Path) -> MergeReport:
    """Combine shard registries into one; a key in several keeps its done, newest outcome.

    The merged registry is built in a hidden folder beside the destination's registry and
    renamed over it only when whole, so a merge killed at any moment leaves the
    destination as it was (or, if it was new, with no registry at all)."""
    destination = into.resolve()
    for source in sources:
        _check_mergeable(source, destination)
    with StateLock(into, "rowpilot merge"):
        _remove_unfinished_merges(into)
        building = into / f"{_MERGING}{os.getpid()}"
        target = _start_from(Registry(into), building)
        try:
            for source in sources:  # before the registry that names them is in place
                VectorFiles(source).copy_missing_to(into)
            conflicts, per_source = _merge_all(target, sources)
            items = target.item_count()
            target.checkpoint()  # all in the one file
        finally:
            target.close()
        _move_into_place(target, Registry(into))
        shutil.rmtree(building, ignore_errors=True)
        _copy_logs(sources, into)
    return MergeReport(str(into), items, conflicts, per_source)


def _copy_logs(sources: list[Path], into: Path) -> None:
    """The shards' run logs beside the merged registry (each named by its run), so a
    report of the merged state draws every shard's runs; one already there is kept."""
    for source in sources:
        for log in sorted((source / "logs").glob("*.jsonl")):
            copy = into / "logs" / log.name
            if not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, copy)


_MERGING = ".merging-"


def _remove_unfinished_merges(into: Path) -> None:
    """What a killed merge left (we hold the lock: no merge is running)."""
    for leftover in into.glob(f"{_MERGING}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _start_from(existing: Registry, building: Path) -> Registry:
    """A registry in ``building``: a copy of the destination's, or a new one."""
    target = Registry(building)
    if not existing.exists:
        target.commit([])  # creates it, every migration applied
        return target
    building.mkdir(parents=True)
    try:
        existing.copy_to(target.path)
    finally:
        existing.close()
    return target


def _merge_all(target: Registry, sources: list[Path]) -> tuple[int, dict[str, int]]:
    conflicts = 0
    per_source: dict[str, int] = {}
    for source in sources:
        shard = Registry(source)
        shard.db().close()  # brings an older registry up to date first
        clashed, per_source[str(source)] = target.merge_from(shard.path)
        conflicts += clashed
    return conflicts, per_source


def _move_into_place(built: Registry, destination: Registry) -> None:
    """Rename the whole new registry over the destination's. Its old write-ahead log is
    folded in and removed first: a log left beside the new file would be replayed into
    it."""
    if destination.exists:
        destination.checkpoint()
        destination.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{destination.path}{suffix}").unlink(missing_ok=True)
    with open(built.path, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(built.path, destination.path)


def _check_mergeable(source: Path, destination: Path) -> None:
    if source.resolve() == destination:
        raise StateError(f"cannot merge {source} into itself", hint="name another --into directory")
    if not Registry(source).path.exists():
        raise StateError(f"no registry in {source}", hint="check the shard directories")
    if is_locked(source):
        raise StateError(f"{source} is still running", hint="wait for the run to finish first")


@dataclass
class VerifyReport:
    """A state directory checked against its source: counts, and the first keys of each.

    ``dropped`` rows repeat an earlier row's key and were left out on purpose
    (``--duplicates first``): they are neither expected nor missing."""

    expected: int
    done: int = 0
    failed: int = 0
    missing: int = 0
    stale: int = 0
    extra: int = 0
    dropped: int = 0
    duplicates: str | None = None
    vectors: list[str] = field(default_factory=list)  # vector files missing or cut short
    examples: dict[str, list[str]] = field(
        default_factory=lambda: {"failed": [], "missing": [], "stale": []}
    )

    @property
    def complete(self) -> bool:
        return self.done == self.expected and self.duplicates is None and not self.vectors

    def note(self, kind: str, key: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples[kind]) < _SHOWN:
            self.examples[kind].append(key)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def verify(
    directory: Path, source: Source, keyer: Keyer, selection: Selection, *, dedupe: bool = False
) -> VerifyReport:
    """Every selected source row must be done, once, and current (with ``dedupe``, every
    key's first row)."""
    registry = Registry(directory)
    if not registry.exists:  # said before the source is read, however large it is
        raise StateError(f"no registry in {directory}", hint="run the job first, or check --state")
    checked = scan(source, keyer, selection)
    report = VerifyReport(expected=checked.total)
    if checked.duplicate_hashes and dedupe:
        report.dropped = count_repeats(source, keyer, selection, checked.duplicate_hashes)
        report.expected -= report.dropped
    elif checked.duplicate_hashes:
        error = duplicate_key_error(source, keyer, selection, checked.duplicate_hashes)
        report.duplicates = error.message if error else None
    try:
        check_key_definition(registry, keyer.key_column)
        versions = registry.current_versions()
        admits = FirstOccurrence(checked.duplicate_hashes if dedupe else frozenset()).admits
        matched = sum(
            _check_chunk(registry, [item for item in items if admits(item)], versions, report)
            for items in selected_items(source, keyer, selection)
        )
        counts = registry.counts()
        in_registry = counts["done"] + counts["failed"] + counts["stale"]
        report.vectors = registry.vector_files.shortfalls(registry.vector_ends())
    finally:
        registry.close()
    report.extra = max(0, in_registry - matched)
    return report


def _check_chunk(
    registry: Registry, items: list[Item], versions: frozenset[str], report: VerifyReport
) -> int:
    prior = registry.lookup([item.key for item in items])
    for item in items:
        state = prior.get(item.key)
        if state is None:
            report.note("missing", item.key)
        elif not _current(state.fingerprint, encode_json(item.fields), versions):
            report.note("stale", item.key)
        elif state.status == "failed":
            report.note("failed", item.key)
        else:
            report.done += 1
    return len(prior)


def _current(item_fingerprint: str, input_json: str, versions: frozenset[str]) -> bool:
    """Done by a current task version, on the row as the source holds it now."""
    return any(fingerprint(version, input_json) == item_fingerprint for version in versions)
