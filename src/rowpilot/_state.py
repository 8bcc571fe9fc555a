"""Operations on state directories: status, merge of shards, verify against the source."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rowpilot._items import (
    Item,
    Keyer,
    Selection,
    duplicate_key_error,
    encode_json,
    fingerprint,
    scan,
    selected_items,
)
from rowpilot._lock import StateLock, is_locked
from rowpilot._registry import Registry, atomic
from rowpilot._sources import Source
from rowpilot.errors import StateError

_SHOWN = 10


@dataclass(frozen=True)
class StateStatus:
    """One state directory at a glance."""

    state: str
    running: bool
    done: int
    failed: int
    total: int | None
    runs: int
    last_run: dict[str, Any] | None
    spending: dict[str, float] = field(default_factory=dict)

    @property
    def pending(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.done - self.failed)


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
    return StateStatus(
        state=str(directory),
        running=running,
        done=counts["done"],
        failed=counts["failed"],
        total=_total(runs),
        runs=len(runs),
        last_run=_run_view(last) if last else None,
        spending=spending,
    )


def _total(runs: list[dict[str, Any]]) -> int | None:
    """The job's size: the last run's selection, or in a merged state of shards the sum of
    each shard's last run."""
    totals: list[tuple[str | None, int | None]] = []
    for run in runs:
        settings = json.loads(run["settings"]) if run.get("settings") else {}
        total = settings.get("total")
        totals.append((settings.get("shard"), int(total) if total is not None else None))
    if not totals:
        return None
    per_shard = {shard: total for shard, total in totals if total is not None}  # newest wins
    if len(per_shard) > 1 and None not in per_shard:
        return sum(total for total in per_shard.values() if total is not None)
    return totals[-1][1]


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
    """Combine shard registries into one; a key in several keeps its done, newest outcome."""
    destination = into.resolve()
    for source in sources:
        _check_mergeable(source, destination)
    with StateLock(into, "rowpilot merge"):
        target = Registry(into)
        target.commit([])  # creates the registry if it is new
        db = target.db()
        conflicts = 0
        per_source: dict[str, int] = {}
        try:
            for source in sources:
                Registry(source).db().close()  # brings an older registry up to date first
                db.execute("ATTACH DATABASE ? AS shard", (str(Registry(source).path),))
                try:
                    conflicts, per_source[str(source)] = _merge_one(db, conflicts)
                finally:
                    db.execute("DETACH DATABASE shard")
            items = db.execute("SELECT count(*) FROM items").fetchone()[0]
        finally:
            target.close()
    return MergeReport(str(into), items, conflicts, per_source)


def _check_mergeable(source: Path, destination: Path) -> None:
    if source.resolve() == destination:
        raise StateError(f"cannot merge {source} into itself", hint="name another --into directory")
    if not Registry(source).path.exists():
        raise StateError(f"no registry in {source}", hint="check the shard directories")
    if is_locked(source):
        raise StateError(f"{source} is still running", hint="wait for the run to finish first")


def _merge_one(db: Any, conflicts: int) -> tuple[int, int]:
    with atomic(db):
        conflicts += db.execute(
            "SELECT count(*) FROM shard.items s JOIN main.items m ON m.key = s.key"
        ).fetchone()[0]
        count = db.execute("SELECT count(*) FROM shard.items").fetchone()[0]
        db.execute(
            """
            INSERT INTO main.items SELECT * FROM shard.items WHERE true
            ON CONFLICT (key) DO UPDATE SET
                seq = excluded.seq, fingerprint = excluded.fingerprint, status = excluded.status,
                attempts = excluded.attempts, input = excluded.input, output = excluded.output,
                error = excluded.error, error_type = excluded.error_type,
                traceback = excluded.traceback, started_at = excluded.started_at,
                finished_at = excluded.finished_at, task_seconds = excluded.task_seconds,
                run_id = excluded.run_id, cause = excluded.cause,
                cost_usd = excluded.cost_usd, input_tokens = excluded.input_tokens,
                output_tokens = excluded.output_tokens, calls = excluded.calls
            WHERE (excluded.status = 'done' AND items.status != 'done')
               OR (excluded.status = items.status AND excluded.finished_at > items.finished_at)
            """
        )
        db.execute("INSERT OR IGNORE INTO main.runs SELECT * FROM shard.runs")
        db.execute("INSERT OR IGNORE INTO main.meta SELECT * FROM shard.meta")
        # Paid calls stay journaled in the merged registry: re-running there never pays again.
        db.execute("INSERT OR IGNORE INTO main.calls SELECT * FROM shard.calls")
        db.execute("INSERT OR IGNORE INTO main.answers SELECT * FROM shard.answers")
    return conflicts, count


@dataclass
class VerifyReport:
    """A state directory checked against its source: counts, and the first keys of each."""

    expected: int
    done: int = 0
    failed: int = 0
    missing: int = 0
    stale: int = 0
    extra: int = 0
    duplicates: str | None = None
    examples: dict[str, list[str]] = field(
        default_factory=lambda: {"failed": [], "missing": [], "stale": []}
    )

    @property
    def complete(self) -> bool:
        return self.done == self.expected and self.duplicates is None

    def note(self, kind: str, key: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples[kind]) < _SHOWN:
            self.examples[kind].append(key)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def verify(directory: Path, source: Source, keyer: Keyer, selection: Selection) -> VerifyReport:
    """Every selected source row must be done, once, and current."""
    checked = scan(source, keyer, selection)
    report = VerifyReport(expected=checked.total)
    if checked.duplicate_hashes:
        error = duplicate_key_error(source, keyer, selection, checked.duplicate_hashes)
        report.duplicates = error.message if error else None
    registry = Registry(directory)
    if not registry.exists:
        raise StateError(f"no registry in {directory}", hint="run the job first, or check --state")
    try:
        version = registry.meta().get("task_version", "")
        matched = sum(
            _check_chunk(registry, items, version, report)
            for items in selected_items(source, keyer, selection)
        )
        in_registry = sum(registry.counts().values())
    finally:
        registry.close()
    report.extra = max(0, in_registry - matched)
    return report


def _check_chunk(registry: Registry, items: list[Item], version: str, report: VerifyReport) -> int:
    prior = registry.lookup([item.key for item in items])
    for item in items:
        state = prior.get(item.key)
        if state is None:
            report.note("missing", item.key)
        elif state.status == "failed":
            report.note("failed", item.key)
        elif state.fingerprint != fingerprint(version, encode_json(item.fields)):
            report.note("stale", item.key)
        else:
            report.done += 1
    return len(prior)
