"""The built-in local tasks end to end: embed, label and dedupe on the bundled model.

Real parts only: the wordllama weights in the installed wheel, real registries, the real
CLI (in-process through its entry point; a real subprocess where it is SIGKILLed) and a
real LanceDB table.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import rowpilot
from conftest import invoke_cli, unmeasured, wait_until
from rowpilot.errors import ConfigError
from rowpilot.state.registry import REGISTRY_FILE, Registry

ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
TOPICS = {
    "sport": ["the team won the football match", "a great goal in the second half"],
    "cooking": ["bake the bread for forty minutes", "add garlic and simmer the tomato sauce"],
    "money": ["the bank raised interest rates", "stock prices fell on the market today"],
}


def write_texts(path: Path, n: int) -> list[dict[str, str]]:
    rows = []
    topics = list(TOPICS)
    for i in range(n):
        topic = topics[i % len(topics)]
        sentence = TOPICS[topic][(i // len(topics)) % 2]
        rows.append({"id": f"d{i:05d}", "text": f"{sentence} (note {i})"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return rows


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``rowpilot ARGS`` through the CLI's entry point in this process, with no provider key
    in the environment but ``env``'s (put back whole afterwards). A killed run needs a
    process; these do not, and a process cost an interpreter start and the imports."""
    before = dict(os.environ)
    try:
        for name in [k for k in os.environ if k.endswith("_API_KEY")]:
            del os.environ[name]
        os.environ.update(env or {})
        return invoke_cli(*args, cwd=cwd)
    finally:
        os.environ.clear()
        os.environ.update(before)


def vectors_by_key(result: rowpilot.Result) -> dict[str, np.ndarray]:
    return {record.key: (record.output or {})["embedding"] for record in result}


# -- embed ----------------------------------------------------------------------------


def test_embeddings_are_the_same_whatever_the_workers_and_batches(tmp_path: Path) -> None:
    write_texts(tmp_path / "data.csv", 300)
    one = rowpilot.embed(
        tmp_path / "data.csv",
        key="id",
        text_column="text",
        workers=1,
        embed_batch=512,
        state=tmp_path / "one",
    )
    four = rowpilot.embed(
        tmp_path / "data.csv",
        key="id",
        text_column="text",
        workers=4,
        embed_batch=7,
        state=tmp_path / "four",
    )
    first, second = vectors_by_key(one), vectors_by_key(four)
    assert first.keys() == second.keys() and len(first) == 300
    for key, vector in first.items():
        assert vector.dtype == np.float32 and vector.shape == (256,)
        assert np.array_equal(vector, second[key]), key


def test_embed_writes_a_vector_column_and_resumes_with_nothing_to_do(tmp_path: Path) -> None:
    write_texts(tmp_path / "data.csv", 50)
    done = cli(
        "embed",
        "data.csv",
        "--key",
        "id",
        "--text-column",
        "text",
        "-o",
        "vectors.parquet",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "completed: 50 done" in done.stdout
    table = pq.read_table(tmp_path / "vectors.parquet")
    assert table.column_names == ["id", "text", "embedding"]
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (50, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = cli("embed", "data.csv", "--key", "id", "--text-column", "text", cwd=tmp_path)
    assert "nothing to do" in again.stdout


def test_vectors_reach_lancedb_on_their_own_keys(tmp_path: Path) -> None:
    from rowpilot.sinks.vectors import nearest, parse_vector_target

    rows = write_texts(tmp_path / "data.csv", 120)
    result = rowpilot.embed(
        tmp_path / "data.csv",
        key="id",
        text_column="text",
        to=f"lancedb://{tmp_path / 'store'}/docs",
        state=tmp_path / "state",
    )
    target = parse_vector_target(f"lancedb://{tmp_path / 'store'}/docs")
    by_key = vectors_by_key(result)
    for row in rows[:20]:
        found = nearest(target, by_key[row["id"]], k=1)
        assert found[0][0] == row["id"]


@pytest.mark.slow
def test_a_killed_embed_into_lancedb_resumes_to_one_vector_per_key(tmp_path: Path) -> None:
    import lancedb

    write_texts(tmp_path / "data.csv", 6000)
    command = [
        ROWPILOT,
        "embed",
        "data.csv",
        "--key",
        "id",
        "--text-column",
        "text",
        "--to",
        "lancedb://store/docs",
        "--embed-batch",
        "64",
        "--insert-batch",
        "100",
        "--state",
        "state",
        "--no-progress",
    ]
    process = subprocess.Popen(  # SIGKILLed: unmeasured
        command, cwd=tmp_path, env=unmeasured(), stdout=subprocess.PIPE, text=True
    )
    wait_until((tmp_path / "store" / "docs.lance").exists, "the LanceDB table")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)
    assert process.stdout is not None
    process.stdout.close()
    resumed = cli(*command[1:], cwd=tmp_path)  # not killed: in-process
    assert resumed.returncode == 0, resumed.stderr
    table = lancedb.connect(tmp_path / "store").open_table("docs")
    keys = table.to_arrow().column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 6000
    again = cli(*command[1:], cwd=tmp_path)
    assert "6,000 unchanged" in again.stdout
    assert table.count_rows() == 6000


def committed(state: Path) -> dict[str, str]:
    """The keys the registry holds and the run that committed each (read-only; {} while
    the registry does not exist yet or is being created)."""
    path = state / REGISTRY_FILE
    if not path.exists():
        return {}
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return dict(db.execute("SELECT key, run_id FROM items").fetchall())
    except sqlite3.Error:
        return {}


def test_an_embed_killed_mid_run_resumes_to_every_row_once_with_its_vector(
    tmp_path: Path,
) -> None:
    from rowpilot.local_model.model import embed_texts

    rows = write_texts(tmp_path / "data.csv", 20_000)
    command = [ROWPILOT, "embed", "data.csv", "--key", "id", "--text-column", "text"]
    command += ["--embed-batch", "32", "--workers", "1", "--state", "state", "--no-progress"]
    process = subprocess.Popen(  # SIGKILLed: unmeasured
        command, cwd=tmp_path, env=unmeasured(), stdout=subprocess.DEVNULL
    )
    wait_until(lambda: len(committed(tmp_path / "state")) >= 4_000, "4,000 rows committed")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    before = committed(tmp_path / "state")
    assert 4_000 <= len(before) < len(rows), "the kill did not land mid-run"

    resumed = cli(*command[1:], cwd=tmp_path)  # not killed: in-process

    assert resumed.returncode == 0, resumed.stderr
    after = committed(tmp_path / "state")
    assert sorted(after) == [row["id"] for row in rows]  # every row once (the key is unique)
    assert all(after[key] == run for key, run in before.items())  # none committed redone
    expected = embed_texts([row["text"] for row in rows])
    registry = Registry(tmp_path / "state")
    try:
        records = list(registry.records())
    finally:
        registry.close()
    assert [record.key for record in records] == [row["id"] for row in rows]
    for record, vector in zip(records, expected, strict=True):
        assert record.output is not None
        assert record.output["embedding"].tobytes() == vector.astype("<f4").tobytes()


def test_changed_rows_replace_their_vectors(tmp_path: Path) -> None:
    import lancedb

    rows = write_texts(tmp_path / "data.csv", 30)
    rowpilot.embed(
        tmp_path / "data.csv",
        key="id",
        text_column="text",
        to=f"lancedb://{tmp_path / 'store'}/docs",
        state=tmp_path / "s",
    )
    rows[3]["text"] = "a completely different sentence about gardening"
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    result = rowpilot.embed(
        tmp_path / "data.csv",
        key="id",
        text_column="text",
        to=f"lancedb://{tmp_path / 'store'}/docs",
        state=tmp_path / "s",
    )
    assert result.summary.done == 1 and result.summary.skipped == 29
    assert any("1 replaced" in line for line in result.written)
    table = lancedb.connect(tmp_path / "store").open_table("docs").to_arrow()
    assert table.num_rows == 30
    stored = dict(
        zip(table.column("key").to_pylist(), table.column("text").to_pylist(), strict=True)
    )
    assert stored["d00003"] == "a completely different sentence about gardening"


# -- labels ---------------------------------------------------------------------------


LABELS = [
    "sport: football, match, team, goal",
    "cooking: recipe, bake, sauce, kitchen",
    "money: bank, stock market, interest rates",
]


def test_local_labels_are_deterministic_and_mostly_right(tmp_path: Path) -> None:
    rows = write_texts(tmp_path / "data.csv", 90)
    frames = [
        rowpilot.label(
            tmp_path / "data.csv",
            key="id",
            text_column="text",
            labels=LABELS,
            model="local/wordllama",
            workers=workers,
            state=tmp_path / f"w{workers}",
            summary=False,
        )
        for workers in (1, 4)
    ]
    assert frames[0].equals(frames[1])
    frame = frames[0]
    assert list(frame.columns) == [
        "id",
        "text",
        "sport",
        "cooking",
        "money",
        "sport_score",
        "cooking_score",
        "money_score",
    ]
    topics = list(TOPICS)
    right = 0
    for index, row in enumerate(rows):
        got = frame.loc[frame["id"] == row["id"]].iloc[0]
        best = max(topics, key=lambda topic: got[f"{topic}_score"])
        right += best == topics[index % len(topics)]
    assert right >= 0.9 * len(rows)


def test_label_without_model_or_key_uses_the_local_model_and_says_so(tmp_path: Path) -> None:
    write_texts(tmp_path / "data.csv", 12)
    done = cli(
        "label",
        "data.csv",
        "--key",
        "id",
        "--text-column",
        "text",
        "--labels",
        *LABELS,
        "-o",
        "out.csv",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "local model" in line]
    assert len(notices) == 1 and "local/wordllama" in notices[0]
    assert "labels over 12 labelled rows" in done.stdout
    assert list(pd.read_csv(tmp_path / "out.csv").columns)[:5] == [
        "id",
        "text",
        "sport",
        "cooking",
        "money",
    ]


def test_label_with_a_key_uses_the_llm(tmp_path: Path) -> None:
    from rowpilot.simulator.server import Simulator, SimulatorConfig

    write_texts(tmp_path / "data.csv", 6)
    with Simulator(SimulatorConfig(api_key="sk-local-test")) as sim:
        done = cli(
            "label",
            "data.csv",
            "--key",
            "id",
            "--text-column",
            "text",
            "--labels",
            "sport",
            "money",
            "--base-url",
            sim.openai_base_url,
            cwd=tmp_path,
            env={"OPENAI_API_KEY": "sk-local-test"},
        )
        answered = sim.stats()["requests"]["chat.completions"]["200"]
    assert done.returncode == 0, done.stderr
    assert "local model" not in done.stderr
    assert answered == 1  # six rows in one request of the default batch of 10


# -- dedupe ---------------------------------------------------------------------------


NAMES = [
    ("n1", "ACME Corporation"),
    ("n2", "acme corporation"),
    ("n3", "Acme, Corporation."),
    ("n4", "Apex Logistics"),
    ("n5", "John Smith"),
    ("n6", "Smith John"),
    ("n7", "Jane Doe"),
    ("n8", "apex logistics!"),
    ("n9", "Blue River Bakery"),
]


def test_dedupe_groups_near_duplicates_and_keeps_distinct_names_apart(tmp_path: Path) -> None:
    pd.DataFrame(NAMES, columns=["id", "name"]).to_csv(tmp_path / "names.csv", index=False)
    done = cli(
        "dedupe",
        "names.csv",
        "--key",
        "id",
        "--text-column",
        "name",
        "-o",
        "clusters.csv",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "9 rows in 5 clusters" in done.stdout
    table = pd.read_csv(tmp_path / "clusters.csv")
    canonical = dict(zip(table["id"], table["canonical_key"], strict=True))
    assert canonical == {
        "n1": "n1",
        "n2": "n1",
        "n3": "n1",
        "n4": "n4",
        "n5": "n5",
        "n6": "n5",
        "n7": "n7",
        "n8": "n4",
        "n9": "n9",
    }
    assert list(table["cluster"]) == [0, 0, 0, 1, 2, 2, 3, 1, 4]


# -- bad input ------------------------------------------------------------------------


def test_bad_input_to_local_tasks(tmp_path: Path) -> None:
    write_texts(tmp_path / "data.csv", 3)
    cases = [
        (["embed", "data.csv", "--text-column", "body"], "column 'body'"),
        (
            [
                "label",
                "data.csv",
                "--text-column",
                "txt",
                "--labels",
                "a",
                "--model",
                "local/wordllama",
            ],
            "column 'txt'",
        ),
        (
            [
                "label",
                "data.csv",
                "--text-column",
                "text",
                "--labels",
                "a",
                "a",
                "--model",
                "local/wordllama",
            ],
            "'a'",
        ),
        (
            ["embed", "data.csv", "--text-column", "text", "--model", "local/other"],
            "unknown local model",
        ),
        (
            [
                "run",
                "data.csv",
                "--prompt",
                "{text}",
                "--model",
                "local/wordllama",
                "--text-column",
                "text",
                "--labels",
                "x",
            ],
            "cannot answer a prompt",
        ),
        (["embed", "data.csv", "--text-column", "text", "--vectors", "lance://x"], "lancedb://"),
    ]
    for args, message in cases:
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_empty_and_non_text_cells_are_handled_as_documented(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": ["", 12345, "bake the bread"]})
    result = rowpilot.embed(frame, key="id", text_column="text", state=tmp_path / "s")
    vectors = vectors_by_key(result)
    assert not vectors["a"].any()  # an empty text is a zero vector
    assert vectors["b"].any()  # a number is embedded as its text
    labelled = rowpilot.label(
        frame,
        key="id",
        text_column="text",
        labels=["cooking"],
        model="local/wordllama",
        state=tmp_path / "l",
        summary=False,
    )
    assert labelled.loc[labelled["id"] == "a", "cooking"].item() is False


def test_registry_keeps_vectors_as_raw_float32_in_the_runs_vector_file(tmp_path: Path) -> None:
    from rowpilot.local_model.model import embed_texts

    rows = write_texts(tmp_path / "data.csv", 10)
    rowpilot.embed(tmp_path / "data.csv", key="id", text_column="text", state=tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / REGISTRY_FILE) as db:
        stored = db.execute(
            "SELECT key, output, vectors, run_id, vector_at, vector_len FROM items ORDER BY seq"
        ).fetchall()
    expected = embed_texts([row["text"] for row in rows])
    (run_id,) = {row[3] for row in stored}
    file = (tmp_path / "s" / "vectors" / f"{run_id}.f32").read_bytes()
    assert len(file) == 10 * 1024  # nothing else in it
    for (key, output, blob, _, at, length), row, vector in zip(stored, rows, expected, strict=True):
        assert key == row["id"]
        assert output == '{"embedding":{"$vector":[0,256]}}'  # the place, not the numbers
        assert blob is None  # not in SQLite's pages
        assert file[at : at + length] == vector.astype("<f4").tobytes()  # 1 KB of float32


def test_a_state_copied_without_its_vectors_is_caught_by_verify_and_export(
    tmp_path: Path,
) -> None:
    write_texts(tmp_path / "data.csv", 40)
    embed = ["embed", "data.csv", "--key", "id", "--text-column", "text", "--state", "state"]
    assert cli(*embed, "--no-progress", cwd=tmp_path).returncode == 0
    verify = ["verify", "state", "--source", "data.csv", "--key", "id"]
    assert cli(*verify, cwd=tmp_path).stdout.rstrip().endswith("complete")
    (file,) = (tmp_path / "state" / "vectors").glob("*.f32")
    size = file.stat().st_size
    assert size == 40 * 1024

    os.truncate(file, size - 4)  # cut short: the last row's vector is not whole
    cut = cli(*verify, cwd=tmp_path)
    assert cut.returncode == 1
    assert f"holds {size - 4:,} bytes, rows name {size:,}" in cut.stdout
    assert cut.stdout.rstrip().endswith("INCOMPLETE")

    file.unlink()  # copied without its vectors/ folder
    missing = cli(*verify, cwd=tmp_path)
    assert missing.returncode == 1 and f"{file.name} is missing" in missing.stdout
    exported = cli("export", "state", "-o", "out.parquet", cwd=tmp_path)
    assert exported.returncode == 2
    assert f"{file.name} is missing" in exported.stderr
    assert "Traceback" not in exported.stderr and len(exported.stderr.strip().splitlines()) == 1


def test_a_runs_vector_file_is_removed_once_no_row_points_into_it(tmp_path: Path) -> None:
    from rowpilot.local_model.model import embed_texts

    data, state = tmp_path / "data.csv", tmp_path / "state"
    rows = write_texts(data, 20)

    def embed(**options: Any) -> list[str]:
        rowpilot.embed(data, key="id", text_column="text", state=state, **options)
        return sorted(path.name for path in (state / "vectors").iterdir())

    (first,) = embed()
    assert embed() == [first]  # nothing redone: nothing written, nothing removed
    changed = [{**row, "text": row["text"] + " again"} if i < 5 else row for i, row in
               enumerate(rows)]  # fmt: skip
    pd.DataFrame(changed).to_csv(data, index=False)
    files = embed()  # five rows redone in a file of their own; the first still holds 15
    assert len(files) == 2 and first in files
    (last,) = embed(force=True)  # every row redone: the two older files are gone
    assert last not in files
    vectors = {r.key: (r.output or {})["embedding"] for r in Registry(state).records()}
    expected = embed_texts([row["text"] for row in changed])
    for row, vector in zip(changed, expected, strict=True):
        assert vectors[row["id"]].tobytes() == vector.tobytes()


def test_the_demo_jobs_run(tmp_path: Path) -> None:
    demo = Path(__file__).parents[2] / "examples" / "demo"
    for job, output in (("label.toml", "labelled.csv"), ("embed.toml", "vectors.parquet")):
        done = cli(
            "run",
            str(demo / job),
            "--limit",
            "300",
            "--state",
            f"state-{job}",
            "-o",
            output,
            "--no-progress",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert "completed: 300 done" in done.stdout
        assert (tmp_path / output).exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--max-tokens", "40"], "--max-tokens would do nothing"),
        (["--rpm", "10", "--budget", "1"], "--budget, --rpm would do nothing"),
        (["--system", "be brief"], "--system"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url"),
    ],
)
def test_settings_the_local_model_cannot_use_are_refused_not_ignored(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    write_texts(tmp_path / "data.csv", 3)
    label = ["label", "data.csv", "--text-column", "text", "--labels", "a", "b"]
    done = cli(*label, "--model", "local/wordllama", *flags, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert named in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / ".rowpilot").exists()  # refused before any state was made


def test_the_python_api_refuses_them_too(tmp_path: Path) -> None:
    write_texts(tmp_path / "data.csv", 3)
    with pytest.raises(ConfigError, match="--max-tokens would do nothing"):
        rowpilot.label(
            tmp_path / "data.csv",
            text_column="text",
            labels=["a", "b"],
            model="local/wordllama",
            max_tokens=40,
            state=tmp_path / "state",
        )
