"""state/vector_files.py: a run's raw vectors beside the registry, found again by place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowpilot.errors import StateError
from rowpilot.state.vector_files import VectorFiles

RUN = "20261206T211500-abcdef"

blobs = st.lists(st.one_of(st.none(), st.binary(max_size=64)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(blobs, max_size=6))
def test_every_blob_reads_back_from_its_place(
    tmp_path_factory: pytest.TempPathFactory, groups: list[list[bytes | None]]
) -> None:
    files = VectorFiles(tmp_path_factory.mktemp("state"))
    try:
        for group in groups:
            places = files.append(RUN, group)
            assert len(places) == len(group)
            for blob, place in zip(group, places, strict=True):
                if not blob:
                    assert place is None  # nothing written for a row without vectors
                else:
                    assert place is not None
                    assert files.read(RUN, *place) == blob
    finally:
        files.close()


def test_two_writers_of_one_run_get_places_apart(tmp_path: Path) -> None:
    # The run's connection and its commit thread's each have their own VectorFiles: every
    # append lands at the end, whichever wrote last.
    first, second = VectorFiles(tmp_path), VectorFiles(tmp_path)
    try:
        written: list[tuple[bytes, tuple[int, int] | None]] = []
        for i in range(20):
            writer = first if i % 3 else second
            blob = bytes([i]) * (i + 1)
            written.append((blob, writer.append(RUN, [blob])[0]))
        reader = VectorFiles(tmp_path)
        for blob, place in written:
            assert place is not None and reader.read(RUN, *place) == blob
        reader.close()
        size = (tmp_path / "vectors" / f"{RUN}.f32").stat().st_size
        assert size == sum(len(blob) for blob, _ in written)
    finally:
        first.close()
        second.close()


def test_a_missing_or_cut_file_is_a_one_line_state_error(tmp_path: Path) -> None:
    files = VectorFiles(tmp_path)
    place = files.append(RUN, [b"\x01" * 1024])[0]
    files.close()
    assert place is not None
    path = tmp_path / "vectors" / f"{RUN}.f32"
    os.truncate(path, 1000)
    with pytest.raises(StateError, match="shorter than the registry says") as cut:
        VectorFiles(tmp_path).read(RUN, *place)
    assert str(path) in cut.value.message and cut.value.hint
    path.unlink()
    with pytest.raises(StateError, match="is missing") as missing:
        VectorFiles(tmp_path).read(RUN, *place)
    assert "vectors/" in (missing.value.hint or "")


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_a_run_id_that_cannot_be_a_file_name_is_refused(tmp_path: Path, run_id: str) -> None:
    files = VectorFiles(tmp_path)
    with pytest.raises(StateError, match="cannot be a file name"):
        files.append(run_id, [b"\x00" * 4])
    with pytest.raises(StateError, match="cannot be a file name"):
        files.read(run_id, 0, 4)
    assert not (tmp_path / "vectors").exists() or not any((tmp_path / "vectors").iterdir())


def test_copy_missing_to_copies_whole_files_and_keeps_those_there(tmp_path: Path) -> None:
    shard, merged = tmp_path / "shard", tmp_path / "merged"
    files = VectorFiles(shard)
    files.append("run-a", [b"a" * 8])
    files.append("run-b", [b"b" * 8])
    files.append("run-c", [b"c" * 8])
    files.close()
    (merged / "vectors").mkdir(parents=True)
    (merged / "vectors" / "run-a.f32").write_bytes(b"a" * 8)  # merged before: the same
    (merged / "vectors" / "run-c.f32").write_bytes(b"c" * 3)  # copied while it still wrote
    (merged / "vectors" / "run-d.f32").write_bytes(b"d" * 16)  # this shard's is older
    files = VectorFiles(shard)
    files.append("run-d", [b"d" * 8])
    files.close()
    VectorFiles(shard).copy_missing_to(merged)
    for run in "abc":
        assert (merged / "vectors" / f"run-{run}.f32").read_bytes() == run.encode() * 8
    assert (merged / "vectors" / "run-d.f32").read_bytes() == b"d" * 16
    assert sorted(p.name for p in (merged / "vectors").iterdir()) == [
        "run-a.f32",
        "run-b.f32",
        "run-c.f32",
        "run-d.f32",
    ]


def test_one_run_id_with_other_bytes_is_refused_not_kept(tmp_path: Path) -> None:
    # Two states whose runs share an id: keeping either file would give the other's rows
    # the wrong vectors.
    shard, merged = tmp_path / "shard", tmp_path / "merged"
    files = VectorFiles(shard)
    files.append("run-a", [b"a" * 8])
    files.close()
    (merged / "vectors").mkdir(parents=True)
    (merged / "vectors" / "run-a.f32").write_bytes(b"z" * 8)
    with pytest.raises(StateError, match="different vectors for one run id"):
        VectorFiles(shard).copy_missing_to(merged)
    assert (merged / "vectors" / "run-a.f32").read_bytes() == b"z" * 8


def test_remove_all_but_keeps_the_runs_named_and_nothing_else_of_ours(tmp_path: Path) -> None:
    files = VectorFiles(tmp_path)
    for run in ("run-a", "run-b", "run-c"):
        files.append(run, [b"\x00" * 4])
    files.close()
    (tmp_path / "vectors" / ".run-d.f32.123.part").write_bytes(b"half")  # a killed merge's
    removed = VectorFiles(tmp_path).remove_all_but({"run-b"})
    assert removed == [".run-d.f32.123.part", "run-a.f32", "run-c.f32"]
    assert [p.name for p in (tmp_path / "vectors").iterdir()] == ["run-b.f32"]
    assert VectorFiles(tmp_path / "elsewhere").remove_all_but(set()) == []
