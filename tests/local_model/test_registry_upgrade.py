"""A registry written before the raw-vector format (migration 0004) resumes with today's code.

The fixture is the SQL dump of an embed run by the code of migrations 0001-0003 (vectors in
base64 inside each output's JSON): the old schema and its rows exactly as written then.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

import rowpilot
from rowpilot.local_model.model import embed_texts
from rowpilot.state.registry import REGISTRY_FILE, Registry

OLD_REGISTRY = Path(__file__).parent / "data" / "registry-0003-embed.sql"
OLD_TEXTS = [
    "the team won the football match",
    "bake the bread for forty minutes",
    "the bank raised interest rates",
    "a great goal in the second half",
    "",
    "add garlic and simmer the tomato sauce",
]
NEW_TEXTS = ["stock prices fell on the market today", "a late penalty decided it"]


def old_state(tmp_path: Path) -> Path:
    """The state folder of the old run, its registry built by the old code's own SQL."""
    state = tmp_path / "s"
    state.mkdir()
    with sqlite3.connect(state / REGISTRY_FILE) as db:
        db.executescript(OLD_REGISTRY.read_text())
    return state


def test_an_old_registry_resumes_without_redoing_and_reads_its_vectors(tmp_path: Path) -> None:
    texts = OLD_TEXTS + NEW_TEXTS
    frame = pd.DataFrame({"id": [f"d{i:05d}" for i in range(len(texts))], "text": texts})
    frame.to_csv(tmp_path / "data.csv", index=False)
    state = old_state(tmp_path)
    with sqlite3.connect(state / REGISTRY_FILE) as db:
        before = dict(db.execute("SELECT key, run_id FROM items").fetchall())
    assert len(before) == len(OLD_TEXTS)

    result = rowpilot.embed(
        tmp_path / "data.csv", key="id", text_column="text", state=state, embed_batch=4
    )

    assert result.summary.skipped == len(OLD_TEXTS)  # nothing done before is redone
    assert result.summary.done == len(NEW_TEXTS)
    expected = embed_texts(texts)
    vectors = {record.key: (record.output or {})["embedding"] for record in result}
    assert len(vectors) == len(texts)
    for key, vector in zip(frame["id"], expected, strict=True):
        assert vectors[key].dtype == np.dtype("<f4")
        assert vectors[key].tobytes() == vector.astype("<f4").tobytes(), key
    with sqlite3.connect(state / REGISTRY_FILE) as db:
        rows = db.execute(
            "SELECT key, run_id, output, vectors, vector_at, vector_len FROM items"
        ).fetchall()
        migrations = [name for (name,) in db.execute("SELECT name FROM migrations")]
    assert {"0004_vector_blobs", "0005_vector_files"} <= set(migrations)
    for key, run_id, output, raw, at, length in rows:
        if key in before:  # untouched: the old run's row, its vector still in base64
            assert run_id == before[key] and raw is None and '"$vector":"' in output
            assert at is None and length is None
        else:  # new rows in the new format: raw float32 bytes in the run's vector file
            assert raw is None and at is not None and length == 256 * 4
            assert '"$vector":[' in output


def test_rows_of_every_vector_format_read_back_alike(tmp_path: Path) -> None:
    # Base64 in the JSON (before migration 0004), raw bytes in the row (0004), raw bytes in
    # the run's vector file (0005): one registry may hold all three after upgrades.
    texts = OLD_TEXTS + NEW_TEXTS
    frame = pd.DataFrame({"id": [f"d{i:05d}" for i in range(len(texts))], "text": texts})
    frame.to_csv(tmp_path / "data.csv", index=False)
    state = old_state(tmp_path)
    rowpilot.embed(tmp_path / "data.csv", key="id", text_column="text", state=state)
    with sqlite3.connect(state / REGISTRY_FILE) as db:
        key, run_id, at, length = db.execute(
            "SELECT key, run_id, vector_at, vector_len FROM items WHERE vector_at IS NOT NULL"
        ).fetchone()
        raw = (state / "vectors" / f"{run_id}.f32").read_bytes()[at : at + length]
        db.execute(  # as migration 0004's code wrote it
            "UPDATE items SET vectors = ?, vector_at = NULL, vector_len = NULL WHERE key = ?",
            (raw, key),
        )
    records = {record.key: record for record in Registry(state).records()}
    expected = dict(zip(frame["id"], embed_texts(texts), strict=True))
    assert set(records) == set(expected)
    for name, vector in expected.items():
        assert (records[name].output or {})["embedding"].tobytes() == vector.tobytes(), name


def test_an_old_registry_exports_its_vectors_as_the_same_floats(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    frame = pd.DataFrame({"id": [f"d{i:05d}" for i in range(6)], "text": OLD_TEXTS})
    frame.to_csv(tmp_path / "data.csv", index=False)
    state = old_state(tmp_path)
    done = rowpilot.embed(
        tmp_path / "data.csv",
        key="id",
        text_column="text",
        state=state,
        output=tmp_path / "vectors.parquet",
    )
    assert done.summary.skipped == 6
    table = pq.read_table(tmp_path / "vectors.parquet")
    exported = np.array(table.column("embedding").to_pylist(), dtype="<f4")
    assert exported.tobytes() == embed_texts(OLD_TEXTS).astype("<f4").tobytes()


def test_a_merge_of_an_old_and_a_new_registry_keeps_the_newest_vectors(tmp_path: Path) -> None:
    from rowpilot.state.operations import merge
    from rowpilot.state.registry import Registry

    old = old_state(tmp_path)
    texts = [*OLD_TEXTS[:1], "a different text now", *OLD_TEXTS[2:]]
    frame = pd.DataFrame({"id": [f"d{i:05d}" for i in range(6)], "text": texts})
    frame.to_csv(tmp_path / "data.csv", index=False)
    new = tmp_path / "new"
    rowpilot.embed(tmp_path / "data.csv", key="id", text_column="text", state=new, force=True)

    merge([old, new], into=tmp_path / "merged")  # every key in both: the newer row stays

    registry = Registry(tmp_path / "merged")
    try:
        vectors = {r.key: (r.output or {})["embedding"] for r in registry.records()}
    finally:
        registry.close()
    for key, vector in zip(frame["id"], embed_texts(texts), strict=True):
        assert vectors[key].tobytes() == vector.astype("<f4").tobytes(), key
