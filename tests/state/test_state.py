"""rowpilot.state.operations: merge of shard registries, status, verify against the source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import rowpilot
from rowpilot.engine.items import Keyer, Selection
from rowpilot.errors import StateError
from rowpilot.sources import open_source
from rowpilot.state.lock import StateLock
from rowpilot.state.operations import VerifyReport, merge, status, verify
from rowpilot.state.registry import Outcome, Registry

if TYPE_CHECKING:
    from conftest import WriteCsv


# -- helpers -------------------------------------------------------------------------------


def outcome(key: str, status: str, finished_at: float, value: str = "", seq: int = 0) -> Outcome:
    done = status == "done"
    return Outcome(
        key=key,
        seq=seq,
        fingerprint=f"fp-{key}",
        input_json=json.dumps({"id": key}),
        status=status,
        attempts=1,
        output_json=json.dumps({"value": value}) if done else None,
        error=None if done else f"failed at {finished_at}",
        error_type=None if done else "ValueError",
        traceback=None,
        started_at=finished_at - 1,
        finished_at=finished_at,
        task_seconds=1.0,
        run_id="run",
        task_version="v1",
    )


def make_registry(
    directory: Path, outcomes: list[Outcome], run_id: str, started_at: float = 1.0
) -> Path:
    registry = Registry(directory)
    try:
        registry.commit(
            outcomes,
            meta={"task_version": "v1", "input_columns": '["id"]'},
            run={
                "run_id": run_id,
                "started_at": started_at,
                "status": "completed",
                "settings": json.dumps({"total": len(outcomes)}),
            },
        )
    finally:
        registry.close()
    return directory


def items_of(directory: Path) -> dict[str, tuple[Any, ...]]:
    registry = Registry(directory)
    try:
        rows = registry.db().execute("SELECT key, status, output, error, finished_at FROM items")
        return {row[0]: tuple(row[1:]) for row in rows}
    finally:
        registry.close()


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    """Two shard registries that overlap on k1-k4."""
    a = make_registry(
        tmp_path / "a",
        [
            outcome("k1", "done", 100, "a"),  # done beats b's newer failure
            outcome("k2", "failed", 200),  # loses to b's older done
            outcome("k3", "done", 100, "old"),  # two done: b's newer one wins
            outcome("k4", "failed", 100),  # two failed: b's newer one wins
            outcome("ka", "done", 100, "only a"),
        ],
        run_id="run-a",
        started_at=1.0,
    )
    b = make_registry(
        tmp_path / "b",
        [
            outcome("k1", "failed", 300),
            outcome("k2", "done", 50, "b"),
            outcome("k3", "done", 200, "new"),
            outcome("k4", "failed", 150),
            outcome("kb", "done", 100, "only b"),
        ],
        run_id="run-b",
        started_at=2.0,
    )
    return a, b


MERGED = {
    "k1": ("done", '{"value": "a"}', None, 100.0),
    "k2": ("done", '{"value": "b"}', None, 50.0),
    "k3": ("done", '{"value": "new"}', None, 200.0),
    "k4": ("failed", None, "failed at 150", 150.0),
    "ka": ("done", '{"value": "only a"}', None, 100.0),
    "kb": ("done", '{"value": "only b"}', None, 100.0),
}


# -- merge ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["a-then-b", "b-then-a"])
def test_merge_keeps_done_over_failed_and_the_newer_of_two(
    tmp_path: Path, shards: tuple[Path, Path], reverse: bool
) -> None:
    sources = list(reversed(shards)) if reverse else list(shards)
    into = tmp_path / "merged"

    report = merge(sources, into)

    assert items_of(into) == MERGED
    assert report.into == str(into)
    assert report.items == 6
    assert report.conflicts == 4
    assert report.per_source == {str(source): 5 for source in sources}


def test_merge_keeps_the_winning_rows_version_and_vectors(tmp_path: Path) -> None:
    # The newer done row of a key wins whole: its task version (which says whether it is
    # current) and the vector bytes it names in its own run's file, copied beside the merge.
    older = outcome("k", "done", 100, "old")._replace(vectors=b"\x01" * 8, run_id="run-old")
    newer = outcome("k", "done", 200, "new")._replace(
        task_version="v2", vectors=b"\x02" * 8, run_id="run-new"
    )
    a = make_registry(tmp_path / "a", [older], run_id="run-old")
    b = make_registry(tmp_path / "b", [newer], run_id="run-new", started_at=2.0)

    merge([a, b], tmp_path / "merged")

    merged = Registry(tmp_path / "merged")
    try:
        version, run_id, at, length = (
            merged.db()
            .execute(
                "SELECT task_version, run_id, vector_at, vector_len FROM items WHERE key = 'k'"
            )
            .fetchone()
        )
        assert (version, run_id) == ("v2", "run-new")
        assert merged.vector_files.read(run_id, at, length) == b"\x02" * 8
    finally:
        merged.close()
    assert sorted(p.name for p in (tmp_path / "merged" / "vectors").iterdir()) == [
        "run-new.f32",
        "run-old.f32",
    ]


def test_merge_brings_runs_and_meta_and_counts_for_status(
    tmp_path: Path, shards: tuple[Path, Path]
) -> None:
    into = tmp_path / "merged"
    merge(list(shards), into)

    registry = Registry(into)
    try:
        assert [run["run_id"] for run in registry.runs()] == ["run-a", "run-b"]
        assert registry.meta()["task_version"] == "v1"
        assert registry.counts() == {"done": 5, "failed": 1, "stale": 0}
    finally:
        registry.close()
    summary = status(into)
    assert (summary.done, summary.failed, summary.runs, summary.running) == (5, 1, 2, False)


def test_merging_into_an_existing_registry_counts_its_keys_as_conflicts(
    tmp_path: Path, shards: tuple[Path, Path]
) -> None:
    a, b = shards
    into = tmp_path / "merged"
    assert merge([a], into).conflicts == 0
    report = merge([b], into)
    assert report.conflicts == 4
    assert report.items == 6
    assert items_of(into) == MERGED
    assert merge([a], into).conflicts == 5  # merging again changes nothing
    assert items_of(into) == MERGED


def test_merging_a_dir_into_itself_is_refused(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    a, b = shards
    before = items_of(a)
    with pytest.raises(StateError, match="into itself"):
        merge([b, a], a)
    with pytest.raises(StateError, match="into itself"):
        merge([tmp_path / "b" / ".." / "a"], a)
    assert items_of(a) == before


def test_merging_a_missing_dir_is_refused(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    into = tmp_path / "merged"
    with pytest.raises(StateError, match="no registry in") as caught:
        merge([shards[0], tmp_path / "missing"], into)
    assert caught.value.hint == "check the shard directories"
    assert not into.exists()  # nothing merged, nothing created


def test_merging_a_running_shard_is_refused(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    with StateLock(shards[1]), pytest.raises(StateError, match="still running"):
        merge(list(shards), tmp_path / "merged")


# -- status --------------------------------------------------------------------------------


def test_status_of_a_missing_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no registry in") as caught:
        status(tmp_path / "missing")
    assert caught.value.hint is not None
    assert "--state" in caught.value.hint
    assert not (tmp_path / "missing").exists()


def test_status_of_a_run_that_has_not_committed_yet(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state):
        summary = status(state)
    assert (summary.running, summary.done, summary.total, summary.pending) == (True, 0, None, None)


def test_status_counts_and_the_last_run(shards: tuple[Path, Path]) -> None:
    summary = status(shards[0])
    assert (summary.done, summary.failed, summary.total, summary.pending) == (3, 2, 5, 0)
    assert summary.last_run is not None
    assert summary.last_run["run_id"] == "run-a"


# -- verify --------------------------------------------------------------------------------


def upper(row: dict[str, Any]) -> dict[str, Any]:
    return {"upper": row["text"].upper()}


ROWS = [[f"k{i:02d}", f"text {i}"] for i in range(6)]


def verify_csv(state: Path, path: Path) -> VerifyReport:
    source = open_source(path)
    return verify(state, source, Keyer(source, "id"), Selection())


def test_verify_complete_then_a_changed_row_is_stale(tmp_path: Path, write_csv: WriteCsv) -> None:
    data = write_csv(tmp_path / "data.csv", ["id", "text"], ROWS)
    state = tmp_path / "state"
    result = rowpilot.run(upper, data, key="id", workers=2, state=state)
    assert result.summary.status == "completed"

    report = verify_csv(state, data)
    assert report.complete
    assert (report.expected, report.done, report.failed, report.missing) == (6, 6, 0, 0)
    assert (report.stale, report.extra, report.duplicates) == (0, 0, None)

    changed = [row if row[0] != "k02" else ["k02", "text 2, edited"] for row in ROWS]
    write_csv(data, ["id", "text"], changed)
    report = verify_csv(state, data)
    assert not report.complete
    assert (report.expected, report.done, report.stale) == (6, 5, 1)
    assert report.examples["stale"] == ["k02"]
    assert report.as_dict()["complete"] is False


def test_verify_missing_and_extra_rows(tmp_path: Path, write_csv: WriteCsv) -> None:
    data = write_csv(tmp_path / "data.csv", ["id", "text"], ROWS)
    state = tmp_path / "state"
    rowpilot.run(upper, data, key="id", workers=2, state=state)

    write_csv(data, ["id", "text"], [*ROWS[1:], ["k99", "new"]])
    report = verify_csv(state, data)
    assert (report.expected, report.done, report.missing, report.extra) == (6, 5, 1, 1)
    assert report.examples["missing"] == ["k99"]
    assert not report.complete


def test_verify_of_a_missing_dir_raises(tmp_path: Path, write_csv: WriteCsv) -> None:
    data = write_csv(tmp_path / "data.csv", ["id", "text"], ROWS)
    with pytest.raises(StateError, match="no registry in"):
        verify_csv(tmp_path / "missing", data)
    assert not (tmp_path / "missing").exists()


def test_verify_says_there_is_no_registry_before_reading_the_source(tmp_path: Path) -> None:
    # The source is read only once the state is known to hold a registry: a malformed
    # (or huge) file is not read to say "no registry".
    data = tmp_path / "data.csv"
    data.write_text('id,text\nk1,"never closed\n', encoding="utf-8")
    with pytest.raises(StateError, match="no registry in"):
        verify_csv(tmp_path / "missing", data)


def _double(row: dict[str, Any]) -> dict[str, Any]:
    return {"twice": int(row["n"]) * 2}


def test_status_of_merged_shards_counts_every_shard(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "n": i} for i in range(30)]
    states = []
    for k in (1, 2, 3, 2):  # shard 2 runs twice: its last run counts once
        state = tmp_path / f"shard-{k}"
        rowpilot.run(_double, rows, key="id", shard=f"{k}/3", state=state, progress=False)
        states.append(state)
    into = tmp_path / "merged"
    merge(states[:3], into)
    merge([states[3]], into)
    summary = status(into)
    assert (summary.done, summary.total, summary.pending) == (30, 30, 0)
