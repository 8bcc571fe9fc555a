"""The LanceDB vector sink: real LanceDB tables on tmp_path, crashes by SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import unmeasured
from rowpilot.errors import ConfigError, OutputPathError
from rowpilot.sinks.vectors import (
    COMPACT_ABOVE_SMALL_FRAGMENTS,
    SinkReport,
    VectorRow,
    VectorTarget,
    check_vector_target,
    nearest,
    parse_vector_target,
    write_vectors,
)

lancedb = pytest.importorskip("lancedb")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_rows(
    vectors: np.ndarray, fingerprint: str = "v1", start: int = 0, **fields: Any
) -> Iterator[VectorRow]:
    for offset, vector in enumerate(vectors):
        index = start + offset
        values = {name: value(index) for name, value in fields.items()}
        yield VectorRow(f"key-{index:05d}", fingerprint, vector, values)


def open_table(target: VectorTarget) -> Any:
    return lancedb.connect(str(target.path)).open_table(target.table)


def keys_of(target: VectorTarget) -> list[str]:
    keys: list[str] = open_table(target).to_arrow().column("key").to_pylist()
    return keys


def stored_vectors(target: VectorTarget) -> dict[str, np.ndarray]:
    table = open_table(target).to_arrow()
    vectors = table.column("vector").to_pylist()
    return {
        key: np.asarray(vector, dtype=np.float32)
        for key, vector in zip(table.column("key").to_pylist(), vectors, strict=True)
    }


@pytest.fixture
def target(tmp_path: Path) -> VectorTarget:
    return VectorTarget(tmp_path / "vectors", "docs")


# --- the target ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "path", "table"),
    [
        ("lancedb://./vectors/docs", Path("vectors"), "docs"),
        ("lancedb://vectors/docs", Path("vectors"), "docs"),
        ("lancedb:///abs/dir/docs", Path("/abs/dir"), "docs"),
        ("lancedb://./docs", Path("."), "docs"),
        ("lancedb://a b/my_table-2.v1", Path("a b"), "my_table-2.v1"),
        ("LanceDB://./v/docs", Path("v"), "docs"),
    ],
)
def test_parse_vector_target_good(uri: str, path: Path, table: str) -> None:
    assert parse_vector_target(uri) == VectorTarget(path, table)


def test_parse_vector_target_expands_the_home_folder() -> None:
    assert parse_vector_target("lancedb://~/v/docs").path == Path.home() / "v"


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("./vectors/docs", "not a LanceDB target"),
        ("lance://./vectors/docs", "not a LanceDB target"),
        ("lancedb://docs", "no database folder"),
        ("lancedb:///docs/", "not a usable table name"),
        ("lancedb://./v/", "not a usable table name"),
        ("lancedb://./v/..", "not a usable table name"),
        ("lancedb://./v/.hidden", "not a usable table name"),
        ("lancedb://./v/a b", "not a usable table name"),
        ("lancedb://./v/docs?x=1", "not a usable table name"),
        ("lancedb://./v/" + "t" * 129, "not a usable table name"),
        ("lancedb://s3://bucket/docs", "not a local folder"),
        ("lancedb://./v\x00/docs", "not a local folder"),
        ("lancedb://~no-such-user-rowpilot/v/docs", "no-such-user"),
    ],
)
def test_parse_vector_target_bad(uri: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_vector_target(uri)
    assert words in caught.value.message
    assert caught.value.hint


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text().map(lambda rest: "lancedb://" + rest),
        st.lists(st.text(min_size=0, max_size=8), max_size=4).map(
            lambda parts: "lancedb://" + "/".join(parts)
        ),
    )
)
def test_parse_vector_target_raises_only_config_errors(uri: str) -> None:
    try:
        parsed = parse_vector_target(uri)
    except ConfigError:
        return
    assert uri.lower().startswith("lancedb://")
    assert uri.endswith("/" + parsed.table)


def test_check_vector_target_creates_nothing(tmp_path: Path) -> None:
    uri = f"lancedb://{tmp_path}/new/deeper/docs"
    assert check_vector_target(uri) == VectorTarget(tmp_path / "new" / "deeper", "docs")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="not a LanceDB target"):
        check_vector_target("vectors/docs")


def test_check_vector_target_refuses_files_and_foreign_tables(tmp_path: Path) -> None:
    import pyarrow as pa

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="which is not a folder"):
        check_vector_target(f"lancedb://{tmp_path}/file/inner/docs")
    lancedb.connect(str(tmp_path / "v")).create_table("other", pa.table({"id": [1]}))
    with pytest.raises(ConfigError, match="not a rowpilot vector table"):
        check_vector_target(f"lancedb://{tmp_path}/v/other")
    target = VectorTarget(tmp_path / "v", "docs")
    write_vectors(target, make_rows(unit_vectors(3, 4)))
    before = sorted(path.name for path in (tmp_path / "v" / "docs.lance").rglob("*"))
    assert check_vector_target(f"lancedb://{tmp_path}/v/docs") == target
    after = sorted(path.name for path in (tmp_path / "v" / "docs.lance").rglob("*"))
    assert after == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_vector_target_refuses_a_read_only_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(OutputPathError, match="no permission"):
        check_vector_target(f"lancedb://{locked}/v/docs")


# --- writing --------------------------------------------------------------------------


def test_first_write_inserts_and_second_changes_nothing(target: VectorTarget) -> None:
    vectors = unit_vectors(250, 8)

    first = write_vectors(target, make_rows(vectors, text=str), insert_batch=100)
    assert (first.inserted, first.updated, first.unchanged, first.batches) == (250, 0, 0, 3)
    again = write_vectors(target, make_rows(vectors, text=str), insert_batch=100)
    assert (again.inserted, again.updated, again.unchanged, again.batches) == (0, 0, 250, 3)

    assert open_table(target).count_rows() == 250
    stored = stored_vectors(target)
    assert np.array_equal(stored["key-00007"], vectors[7])
    row = open_table(target).search().where("key = 'key-00007'").to_list()[0]
    assert (row["fingerprint"], row["text"]) == ("v1", "7")


def test_changed_fingerprints_replace_and_new_keys_are_added(target: VectorTarget) -> None:
    old, new = unit_vectors(100, 8, seed=1), unit_vectors(150, 8, seed=2)
    write_vectors(target, make_rows(old), insert_batch=30)

    changed = [*make_rows(new[:50], "v2"), *make_rows(old[50:100], start=50)]
    changed += make_rows(new[100:], "v1", start=100)
    report = write_vectors(target, changed, insert_batch=30)

    assert (report.inserted, report.updated, report.unchanged) == (50, 50, 50)
    assert open_table(target).count_rows() == 150
    stored = stored_vectors(target)
    assert np.array_equal(stored["key-00010"], new[10])
    assert np.array_equal(stored["key-00060"], old[60])
    assert np.array_equal(stored["key-00120"], new[120])
    assert sorted(keys_of(target)) == [f"key-{i:05d}" for i in range(150)]


def test_a_key_repeated_in_a_batch_keeps_its_last_row(target: VectorTarget) -> None:
    vectors = unit_vectors(3, 4)
    rows = [
        VectorRow("a", "1", vectors[0], {}),
        VectorRow("b", "1", vectors[1], {}),
        VectorRow("a", "2", vectors[2], {}),
    ]
    report = write_vectors(target, rows)
    assert report.inserted == 2
    assert sorted(keys_of(target)) == ["a", "b"]
    assert np.array_equal(stored_vectors(target)["a"], vectors[2])


def test_no_rows_writes_nothing(target: VectorTarget) -> None:
    report = write_vectors(target, iter([]))
    assert (report.inserted, report.batches) == (0, 0)
    assert not target.path.exists()


def test_rows_are_streamed_one_batch_at_a_time(target: VectorTarget) -> None:
    committed: list[int] = []

    def watched() -> Iterator[VectorRow]:
        for index, row in enumerate(make_rows(unit_vectors(500, 4))):
            if index % 100 == 0:
                committed.append(count_rows_or_zero(target))
            yield row

    write_vectors(target, watched(), insert_batch=100)
    # Each batch is in the table before the first row of the next one is pulled.
    assert committed == [0, 100, 200, 300, 400]


def test_many_small_batches_end_compacted(target: VectorTarget) -> None:
    batches = COMPACT_ABOVE_SMALL_FRAGMENTS + 5
    report = write_vectors(target, make_rows(unit_vectors(batches * 20, 4)), insert_batch=20)
    assert report.batches == batches
    stats = open_table(target).stats()
    assert stats["fragment_stats"]["num_fragments"] == 1
    assert stats["num_rows"] == batches * 20


def test_a_few_batches_are_not_compacted(target: VectorTarget) -> None:
    write_vectors(target, make_rows(unit_vectors(100, 4)), insert_batch=20)
    assert open_table(target).stats()["fragment_stats"]["num_fragments"] == 5


def test_a_table_folder_left_before_its_first_version_is_reused(target: VectorTarget) -> None:
    import pyarrow as pa

    database = lancedb.connect(str(target.path))
    database.create_table("docs", schema=pa.schema([("key", pa.string())]))
    shutil.rmtree(target.path / "docs.lance" / "_versions")  # as if killed while creating
    report = write_vectors(target, make_rows(unit_vectors(10, 4)))
    assert report.inserted == 10
    assert open_table(target).count_rows() == 10


def test_fields_keep_their_types(target: VectorTarget) -> None:
    rows = [
        VectorRow("a", "1", unit_vectors(1, 4)[0], {"text": "x", "n": 1, "p": 0.5, "ok": True}),
        VectorRow("b", "1", unit_vectors(1, 4)[0], {"text": None, "n": 2, "p": 1, "ok": None}),
    ]
    write_vectors(target, rows)
    schema = open_table(target).schema
    assert [str(schema.field(name).type) for name in ("text", "n", "p", "ok")] == [
        "string",
        "int64",
        "double",
        "bool",
    ]


# --- nearest neighbours ---------------------------------------------------------------


@pytest.mark.slow
def test_each_vector_is_its_own_nearest_neighbour(target: VectorTarget) -> None:
    vectors = unit_vectors(500, 32, seed=7)
    write_vectors(target, make_rows(vectors), insert_batch=64)
    for index in range(500):
        found = nearest(target, vectors[index], k=3)
        assert found[0][0] == f"key-{index:05d}"
        assert found[0][1] == pytest.approx(0.0, abs=1e-5)
        assert len(found) == 3
        assert found[1][1] >= found[0][1]


def test_nearest_needs_a_table_and_a_fitting_query(target: VectorTarget) -> None:
    with pytest.raises(ConfigError, match="no vector table"):
        nearest(target, unit_vectors(1, 4)[0])
    write_vectors(target, make_rows(unit_vectors(10, 4)))
    with pytest.raises(ConfigError, match="no vector table"):
        nearest(VectorTarget(target.path, "other"), unit_vectors(1, 4)[0])
    with pytest.raises(ConfigError, match="8 dimensions where the table's have 4"):
        nearest(target, unit_vectors(1, 8)[0])
    with pytest.raises(ConfigError, match="NaN"):
        nearest(target, np.full(4, np.nan, dtype=np.float32))
    with pytest.raises(ConfigError, match="k must be"):
        nearest(target, unit_vectors(1, 4)[0], k=0)
    assert len(nearest(target, unit_vectors(1, 4)[0], k=50)) == 10


# --- errors ---------------------------------------------------------------------------


def test_another_dimension_is_a_config_error(target: VectorTarget) -> None:
    write_vectors(target, make_rows(unit_vectors(10, 8)))
    with pytest.raises(ConfigError, match=r"16 dimensions but .* holds 8") as caught:
        write_vectors(target, make_rows(unit_vectors(10, 16)))
    assert "another table" in (caught.value.hint or "")
    assert open_table(target).count_rows() == 10


def test_another_dimension_within_a_write_is_a_config_error(target: VectorTarget) -> None:
    rows = [*make_rows(unit_vectors(10, 8)), *make_rows(unit_vectors(10, 6), start=10)]
    with pytest.raises(ConfigError, match="6 dimensions where the table's have 8") as caught:
        write_vectors(target, rows, insert_batch=10)
    assert caught.value.key == "key-00010"
    assert open_table(target).count_rows() == 10


def test_a_field_of_another_type_is_a_config_error(target: VectorTarget) -> None:
    write_vectors(target, make_rows(unit_vectors(10, 4), n=int))
    with pytest.raises(ConfigError, match="field 'n' is a int64 column"):
        write_vectors(target, make_rows(unit_vectors(10, 4), n=lambda i: f"#{i}"))
    rows = [*make_rows(unit_vectors(5, 4), n=int), *make_rows(unit_vectors(5, 4), n=str)]
    with pytest.raises(ConfigError, match="field 'n'"):
        write_vectors(target, rows, insert_batch=5)


def test_another_set_of_fields_is_a_config_error(target: VectorTarget) -> None:
    write_vectors(target, make_rows(unit_vectors(10, 4), n=int))
    with pytest.raises(ConfigError, match="fields"):
        write_vectors(target, make_rows(unit_vectors(10, 4), m=int))
    rows = [VectorRow("a", "1", unit_vectors(1, 4)[0], {"n": 1, "m": 2})]
    with pytest.raises(ConfigError, match="fields"):
        write_vectors(target, rows)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        (VectorRow("a", "1", np.zeros((2, 2), np.float32), {}), "one-dimensional"),
        (VectorRow("a", "1", np.zeros(0, np.float32), {}), "one-dimensional"),
        (VectorRow("a", "1", np.array([1.0, np.nan], np.float32), {}), "NaN"),
        (VectorRow("a", "1", np.array([1.0, np.inf]), {}), "infinite"),
        (VectorRow("a", "1", np.array(["x", "y"]), {}), "not an array of numbers"),
        (VectorRow("", "1", np.ones(2, np.float32), {}), "key of a vector row must be a non-empty"),
        (
            VectorRow("a", None, np.ones(2, np.float32), {}),
            "fingerprint of a vector row must be a string",
        ),  # type: ignore[arg-type]
        (VectorRow("a", "1", np.ones(2, np.float32), {"key": 1}), "reserved"),
        (VectorRow("a", "1", np.ones(2, np.float32), {"_distance": 1}), "reserved"),
        (VectorRow("a", "1", np.ones(2, np.float32), {"tags": ["x"]}), "scalar columns"),
        (VectorRow("a", "1", np.ones(2, np.float32), {"n": 2**70}), "one scalar type"),
    ],
)
def test_bad_rows_are_config_errors(target: VectorTarget, row: VectorRow, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        write_vectors(target, [row])
    assert words in str(caught.value)


def test_mixed_values_in_a_field_are_a_config_error(target: VectorTarget) -> None:
    rows = [
        VectorRow("a", "1", np.ones(2, np.float32), {"n": 1}),
        VectorRow("b", "1", np.ones(2, np.float32), {"n": "x"}),
    ]
    with pytest.raises(ConfigError, match="one scalar type"):
        write_vectors(target, rows)


def test_a_table_of_another_shape_is_a_config_error(target: VectorTarget) -> None:
    import pyarrow as pa

    lancedb.connect(str(target.path)).create_table("docs", pa.table({"id": [1], "x": ["a"]}))
    with pytest.raises(ConfigError, match="not a rowpilot vector table"):
        write_vectors(target, make_rows(unit_vectors(2, 4)))
    with pytest.raises(ConfigError, match="not a rowpilot vector table"):
        nearest(target, unit_vectors(1, 4)[0])


def test_bad_insert_batch_and_unwritable_folder(tmp_path: Path) -> None:
    target = VectorTarget(tmp_path / "v", "docs")
    with pytest.raises(ConfigError, match="insert_batch"):
        write_vectors(target, make_rows(unit_vectors(2, 4)), insert_batch=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="cannot create the LanceDB folder"):
        write_vectors(VectorTarget(tmp_path / "file", "docs"), make_rows(unit_vectors(2, 4)))


def test_without_lancedb_the_module_imports_and_names_the_extra(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["lancedb"] = None
        import numpy as np
        from rowpilot.sinks.vectors import (
            VectorRow, check_vector_target, nearest, parse_vector_target, write_vectors
        )
        from rowpilot.errors import ConfigError, OutputPathError

        target = parse_vector_target("lancedb://./v/docs")
        calls = [
            lambda: write_vectors(target, [VectorRow("a", "1", np.ones(2, np.float32), {})]),
            lambda: nearest(target, np.ones(2, np.float32)),
            lambda: check_vector_target("lancedb://./v/docs"),
        ]
        for call in calls:
            try:
                call()
            except ConfigError as error:
                print(error.message, "|", error.hint)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert "needs the vectors extra" in line
        assert line.endswith("| pip install 'rowpilot[vectors]'")
    assert not (tmp_path / "v").exists()


# --- crashes and concurrent writers ---------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {src!r})
from rowpilot.sinks.vectors import VectorRow, VectorTarget, write_vectors

def rows(count, dim, pause):
    for index in range(count):
        vector = np.random.default_rng(index).standard_normal(dim).astype(np.float32)
        yield VectorRow(f"key-{{index:05d}}", "v1", vector, {{"n": index}})
        if pause and index % 200 == 199:
            time.sleep(pause)

count, dim = int(sys.argv[1]), int(sys.argv[2])
pause, start = float(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    time.sleep(0.001)
target = VectorTarget(Path({path!r}), "docs")
report = write_vectors(target, rows(count, dim, pause), insert_batch=200)
print(report.inserted, report.updated, report.unchanged)
"""


def writer_script(tmp_path: Path, target: VectorTarget) -> Path:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(src=SRC, path=str(target.path)))
    return script


def all_rows(count: int, dim: int) -> Iterator[VectorRow]:
    for index in range(count):
        vector = np.random.default_rng(index).standard_normal(dim).astype(np.float32)
        yield VectorRow(f"key-{index:05d}", "v1", vector, {"n": index})


def count_rows_or_zero(target: VectorTarget) -> int:
    try:
        count: int = open_table(target).count_rows()
    except (ValueError, OSError, RuntimeError):
        return 0
    return count


@pytest.mark.slow
def test_a_killed_write_is_completed_by_the_next(tmp_path: Path, target: VectorTarget) -> None:
    total, dim = 20_000, 16
    script = writer_script(tmp_path, target)
    # A pause every batch keeps the writer busy long enough to be killed in the middle.
    command = [sys.executable, str(script), str(total), str(dim), "0.01", "0"]
    child = subprocess.Popen(command, env=unmeasured())  # SIGKILLed: unmeasured
    deadline = time.monotonic() + 60
    while count_rows_or_zero(target) < 1_000 and time.monotonic() < deadline:
        assert child.poll() is None, "the writer ended before it was killed"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    before = count_rows_or_zero(target)
    assert 1_000 <= before < total
    report = write_vectors(target, all_rows(total, dim), insert_batch=1000)

    assert (report.inserted, report.updated, report.unchanged) == (total - before, 0, before)
    assert open_table(target).count_rows() == total
    keys = keys_of(target)
    assert len(keys) == len(set(keys)) == total
    assert nearest(target, next(all_rows(total, dim)).vector, k=1)[0][0] == "key-00000"


@pytest.mark.slow
def test_concurrent_writers_leave_one_row_per_key(tmp_path: Path, target: VectorTarget) -> None:
    # Without the commit lock (and the key's primary-key mark) LanceDB 0.40 leaves duplicates
    # here: both writers insert the same new keys at the same moment.
    total = 3_000
    script = writer_script(tmp_path, target)
    write_vectors(target, all_rows(1, 4))  # the table exists before the race begins
    start = str(time.time() + 2)
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), str(total), "4", "0", start],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    assert all(writer.returncode == 0 for writer in writers)

    inserted = sum(int(output.split()[0]) for output in outputs)
    assert inserted == total - 1
    keys = keys_of(target)
    assert len(keys) == len(set(keys)) == total


def test_report_is_a_plain_record() -> None:
    report = SinkReport(inserted=1, updated=2, unchanged=3, batches=1, seconds=0.5)
    assert report.inserted + report.updated + report.unchanged == 6
