"""examples/opportunity-files end to end: ctx.map fan-out of files inside each opportunity,
entity consolidation with rowpilot dedupe, local embeddings into LanceDB.

run.py runs in copies of the example folder with 1 and with 4 workers against the real
simulator; the outputs must be identical. The simulator answers each file's entities from
the file's own text (its first three words), so the tests prove that every opportunity's
entities come from its own files.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import rowpilot
from conftest import invoke_cli
from rowpilot.simulator.server import Simulator, SimulatorConfig

# A whole example runs in the module fixture: on a busy machine, under coverage, it can
# take longer than the suite's 120 s guard against hangs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "opportunity-files"
ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
MODEL = "openai/gpt-4o-mini"
CANARY = "sk-" + "canary-51e0b7d2c4a98f36"  # assembled: not a secret to scanners
OUTPUTS = ("entities-by-opportunity.jsonl", "entity-clusters.csv", "entities.csv")


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: pydantic resolves the models' annotations there.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def copy_example(destination: Path) -> Path:
    shutil.copytree(EXAMPLE, destination, ignore=shutil.ignore_patterns("out", "__pycache__"))
    return destination


def manifest(folder: Path = EXAMPLE) -> list[dict[str, Any]]:
    lines = (folder / "opportunities.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def env_without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}


def start_example(folder: Path, workers: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "run.py", "--simulate", "--workers", str(workers), "--latency-ms", "5"],
        cwd=folder,
        env=env_without_keys(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    """The example run with 1 worker and with 4 (at the same time, each in its own copy of
    the folder with its own simulator): folder, printed output."""
    started = {}
    for workers in (1, 4):
        folder = copy_example(tmp_path_factory.mktemp(f"workers-{workers}") / "example")
        started[workers] = (folder, start_example(folder, workers))
    found = {}
    for workers, (folder, process) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
        found[workers] = (folder, stdout)
    return found


def table(folder: Path, name: str) -> Any:
    import lancedb

    return lancedb.connect(str(folder / "out" / "vectors")).open_table(name).to_arrow()


def fanout(folder: Path) -> list[dict[str, Any]]:
    logs = (folder / "out" / "state" / "extract" / "logs").glob("*.fanout.jsonl")
    return [json.loads(line) for log in logs for line in log.read_text().splitlines()]


# -- the example's own run ------------------------------------------------------------


def test_one_and_four_workers_give_identical_outputs(runs: dict[int, tuple[Path, str]]) -> None:
    (one, _), (four, _) = runs[1], runs[4]
    for name in OUTPUTS:
        first = (one / "out" / name).read_bytes()
        assert first, name
        assert first == (four / "out" / name).read_bytes(), name
    for name in ("entities", "opportunities"):
        a, b = table(one, name).sort_by("key"), table(four, name).sort_by("key")
        assert a.column("key").to_pylist() == b.column("key").to_pylist()
        vectors_a = np.array(a.column("vector").to_pylist(), dtype=np.float32)
        vectors_b = np.array(b.column("vector").to_pylist(), dtype=np.float32)
        assert np.array_equal(vectors_a, vectors_b), name


def test_fan_out_stays_within_the_run_workers(runs: dict[int, tuple[Path, str]]) -> None:
    files = sum(len(row["files"]) for row in manifest())
    for workers, (folder, printed) in runs.items():
        logged = fanout(folder)
        assert len(logged) == files  # every file extracted once
        peak = max(entry["in_flight"] for entry in logged)
        assert peak <= workers, (workers, peak)
        assert f"at most {peak} at once (--workers {workers})" in printed
    # With 4 workers the files really ran in parallel (the simulator answers in ~30 ms).
    assert max(entry["in_flight"] for entry in fanout(runs[4][0])) >= 2


def first_words(text: str) -> list[str]:
    """The simulator's entity names for a file: its first three words, upper-cased."""
    return [word.upper() for word in text.split()[:3]]


def test_every_opportunity_gets_the_entities_of_its_own_files(
    runs: dict[int, tuple[Path, str]],
) -> None:
    tasks = load("opportunity_files_tasks", EXAMPLE / "tasks.py")
    folder, _ = runs[4]
    lines = (folder / "out" / "entities-by-opportunity.jsonl").read_text().splitlines()
    output = {row["id"]: row for row in map(json.loads, lines)}
    rows = manifest()
    assert sorted(output) == sorted(row["id"] for row in rows)
    for row in rows:
        expected: dict[str, list[str]] = {}  # normalised name -> files, in mention order
        for name in row["files"]:
            text = (EXAMPLE / "data" / name).read_text(encoding="utf-8")
            for word in first_words(text):
                expected.setdefault(tasks.normalised(word), []).append(name)
        got = output[row["id"]]
        assert [tasks.normalised(e["name"]) for e in got["entities"]] == list(expected)
        assert [e["files"] for e in got["entities"]] == list(expected.values())
        assert got["entity_count"] == len(expected)
        assert got["file_count"] == len(row["files"])
        assert all(not e["name"].endswith((",", ":")) for e in got["entities"])


def test_entities_are_consolidated_across_the_run(runs: dict[int, tuple[Path, str]]) -> None:
    folder, _ = runs[4]
    with (folder / "out" / "entity-clusters.csv").open(newline="") as handle:
        clusters = list(csv.DictReader(handle))
    with (folder / "out" / "entities.csv").open(newline="") as handle:
        canonical = list(csv.DictReader(handle))
    # Every mention of one name falls in one cluster, and each cluster is one name.
    by_name: dict[str, set[str]] = {}
    for row in clusters:
        by_name.setdefault(row["name"], set()).add(row["canonical_key"])
    assert all(len(keys) == 1 for keys in by_name.values())
    assert len(canonical) == len(by_name) < len(clusters)
    assert sum(int(row["mentions"]) for row in canonical) == len(clusters)


def test_vectors_in_lancedb_one_per_key_and_neighbours_by_topic(
    runs: dict[int, tuple[Path, str]],
) -> None:
    from rowpilot.sinks.vectors import nearest, parse_vector_target

    folder, printed = runs[4]
    rows = {row["id"]: row for row in manifest()}
    opportunities = table(folder, "opportunities")
    keys = opportunities.column("key").to_pylist()
    assert sorted(keys) == sorted(rows)  # one vector per opportunity, none twice
    with (folder / "out" / "entities.csv").open(newline="") as handle:
        entity_keys = sorted(row["id"] for row in csv.DictReader(handle))
    assert sorted(table(folder, "entities").column("key").to_pylist()) == entity_keys
    target = parse_vector_target(f"lancedb://{folder / 'out' / 'vectors'}/opportunities")
    vectors = dict(zip(keys, opportunities.column("vector").to_pylist(), strict=True))
    for key, vector in vectors.items():
        found = nearest(target, np.array(vector, dtype=np.float32), k=3)
        assert found[0][0] == key and found[0][1] < 1e-5  # itself first
        # The next nearest opportunities are about the same thing (fleet, water, ...).
        assert {rows[k]["theme"] for k, _ in found[1:]} == {rows[key]["theme"]}, key
    assert "nearest to OPP-001 (Electric bus fleet for" in printed


# -- ctx.map inside one process: the counter, and a bad file ------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api_key=CANARY, latency_ms=15, latency_jitter=0.5)) as found:
        yield found


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_in_process_counter_never_exceeds_workers(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    tasks = load(f"opportunity_files_tasks_{workers}", EXAMPLE / "tasks.py")
    result = rowpilot.run(
        tasks.extract_entities,
        EXAMPLE / "opportunities.jsonl",
        key="id",
        workers=workers,
        model=MODEL,
        base_url=sim.openai_base_url,
        env_file=None,
        state=tmp_path / "state",
    )
    assert result.summary.done == len(manifest())
    assert tasks.IN_FLIGHT.now == 0
    assert 1 <= tasks.IN_FLIGHT.peak <= workers
    if workers > 1:
        assert tasks.IN_FLIGHT.peak > 1  # the files of an opportunity ran in parallel


def chat_answered(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


def test_a_bad_file_is_named_in_the_failure_and_only_it_is_asked_again(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = copy_example(tmp_path / "example")
    row = next(row for row in manifest(folder) if len(row["files"]) >= 3)
    bad = row["files"][1]
    good_text = (folder / "data" / bad).read_bytes()
    (folder / "data" / bad).write_bytes(b"\xff\xfe not UTF-8 " + good_text)
    command = [
        ROWPILOT,
        "run",
        "opportunities.jsonl",
        "--task",
        "tasks.py:extract_entities",
        "--key",
        "id",
        "--model",
        MODEL,
        "--base-url",
        sim.openai_base_url,
        "--workers",
        "4",
        "--state",
        "state",
        "--no-progress",
    ]
    env = {**env_without_keys(), "OPENAI_API_KEY": CANARY}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        """The command through the CLI's entry point in this process, in ``env`` (put back
        whole afterwards): nothing here needs a process, which would cost a start-up."""
        before = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(env)
            return invoke_cli(*command[1:], *args, cwd=folder)
        finally:
            os.environ.clear()
            os.environ.update(before)

    failed = cli()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"{len(manifest(folder)) - 1} done, 1 failed" in failed.stdout
    listed = invoke_cli("failures", "state", cwd=folder)
    [failure] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert failure["key"] == row["id"]
    assert failure["error_type"] == "SubItemError"
    named = f"1 of {len(row['files'])} sub-items failed: #1 '{bad}': UnicodeDecodeError"
    assert named in failure["error"]
    # Fixed, the item runs again: its other files come from the journal, not the provider.
    (folder / "data" / bad).write_bytes(good_text)
    before = chat_answered(sim)
    fixed = cli("--retry-failed")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "1 done, 0 failed" in fixed.stdout
    assert chat_answered(sim) - before == 1
