"""Read-only queries of a job's registry, for ``rowpilot report`` and the dashboard.

The file is opened read-only (``mode=ro``; ``immutable=1`` on a read-only filesystem):
no migration, no write, no lock, so a report can read a job while its run commits
(SQLite's write-ahead log lets a reader see the last commit).
A registry an older rowpilot wrote and no run has brought up to date since is
refused with a hint (any run or ``rowpilot status`` updates it).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any

from rowpilot.errors import StateError
from rowpilot.state.registry import read_only_folder


class RegistryReader:
    """``with RegistryReader(path) as reader:`` the report's questions, read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> RegistryReader:
        try:
            self._db = sqlite3.connect(self._uri(), uri=True)
            self._db.execute("SELECT cost_usd, calls FROM items LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            if self._db is not None:
                self._db.close()
            raise StateError(
                f"cannot read the registry {self.path}: {exc}",
                hint="a run or `rowpilot status` brings a registry of an older rowpilot up to date",
            ) from exc
        return self

    def _uri(self) -> str:
        """``mode=ro``; on a read-only filesystem, where SQLite cannot make the write-ahead
        log's index, ``immutable=1``, as ``status`` and ``export`` read it (refused while the
        log holds writes not folded in: read immutable, they would be silently missing)."""
        if not read_only_folder(self.path.parent):
            return f"file:{self.path}?mode=ro"
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StateError(
                f"{self.path} is on a read-only filesystem and has writes not yet folded in "
                f"({wal.name})",
                hint="copy the state folder somewhere writable and point at the copy",
            )
        return f"file:{self.path}?immutable=1"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._db is not None:
            self._db.close()

    def _rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None, "use RegistryReader in a with block"
        try:
            return self._db.execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the registry {self.path}: {exc}") from exc

    def runs(self) -> list[tuple[Any, ...]]:
        """(run_id, started_at, ended_at, status, command, settings, summary), oldest first."""
        return self._rows(
            "SELECT run_id, started_at, ended_at, status, command, settings, summary"
            " FROM runs ORDER BY started_at"
        )

    def finishes(
        self, run_id: str, start: float, length: float, offset: float, width: float
    ) -> list[tuple[int, int, float]]:
        """The run's items by bucket of run time: (bucket, items finished, their cost). An
        item's moment is its finish, clamped into the run (``start``, ``length``), placed
        at the run's ``offset`` in run time, in buckets ``width`` seconds wide."""
        return self._rows(
            "SELECT CAST((min(max(finished_at - ?, 0), ?) + ?) / ? AS INTEGER) AS bucket,"
            " count(*), coalesce(sum(cost_usd), 0) FROM items WHERE run_id = ? GROUP BY bucket",
            (start, length, offset, width, run_id),
        )

    def last_finish(self, run_id: str) -> float | None:
        row = self._rows("SELECT max(finished_at) FROM items WHERE run_id = ?", (run_id,))
        return None if row[0][0] is None else float(row[0][0])

    def totals(self) -> tuple[int, int, float]:
        """Items done, failed, and what the items cost, every run together."""
        done, failed, cost = self._rows(
            "SELECT sum(status = 'done'), sum(status = 'failed'), sum(cost_usd) FROM items"
        )[0]
        return int(done or 0), int(failed or 0), float(cost or 0.0)

    def failure_causes(self) -> list[tuple[str | None, str | None, int]]:
        """(cause, error type, failed items)."""
        return self._rows(
            "SELECT cause, error_type, count(*) FROM items WHERE status = 'failed' GROUP BY 1, 2"
        )

    def failures(self, limit: int) -> list[tuple[Any, ...]]:
        """(key, cause, error type, error, attempts) of the first ``limit`` failed items."""
        return self._rows(
            "SELECT key, cause, error_type, error, attempts FROM items WHERE status = 'failed'"
            " ORDER BY seq, key LIMIT ?",
            (limit,),
        )

    def calls_by_model(self) -> list[tuple[str, str, int, float, str | None]]:
        """(provider, model, paid calls, USD, the calls' seconds comma-separated)."""
        return self._rows(
            "SELECT provider, model, count(*), coalesce(sum(cost_usd), 0), group_concat(seconds)"
            " FROM calls GROUP BY 1, 2"
        )

    def meta(self, name: str) -> str | None:
        row = self._rows("SELECT value FROM meta WHERE name = ?", (name,))
        return None if not row else str(row[0][0])
