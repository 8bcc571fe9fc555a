"""examples/disease-incidence end to end: its run.py against the simulator, ten real CLI
shard processes side by side, one failed on purpose and rerun alone, merge and verify.

The example runs in a copy of its folder with 400 diseases instead of 15,000 (process
start-up, not rows, is most of its time). Expected answers come from the simulator's own
rule for each row's prompt, so the tests prove that every JSON file holds its own key's
answer.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import invoke_cli
from rowpilot.simulator.server import _row_object

# A whole example runs in the module fixture: on a busy machine, under coverage, it can
# take longer than the suite's 120 s guard against hangs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "disease-incidence"
COUNT = 400
SHARDS = 10
FAILING = 7
REFUSED = "carcinoma"


def rowpilot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A read of the example's states after its run (verify, status): the CLI's entry point
    in this process, as the command would run; the example's own commands are processes."""
    return invoke_cli(*args, cwd=cwd)


def query(state: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(state / "registry.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the example after `run.py --simulate --count 400`, and what it printed."""
    folder = tmp_path_factory.mktemp("disease") / "disease-incidence"
    shutil.copytree(
        EXAMPLE, folder, ignore=shutil.ignore_patterns("out", "diseases.csv", "__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(
        [sys.executable, "run.py", "--simulate", "--count", str(COUNT), "--latency-ms", "5"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, done.stdout


def diseases(folder: Path) -> dict[str, str]:
    with (folder / "diseases.csv").open(newline="", encoding="utf-8") as handle:
        return {row["cui"]: row["name"] for row in csv.DictReader(handle)}


def shard_state(folder: Path, k: int) -> Path:
    return folder / "out" / "state" / f"shard-{k}-of-{SHARDS}"


def test_the_generated_source_has_unique_keys_and_names(example: tuple[Path, str]) -> None:
    rows = diseases(example[0])
    assert len(rows) == COUNT
    assert min(rows) == "C0000001" and max(rows) == f"C{COUNT:07d}"
    assert len(set(rows.values())) == COUNT


def test_ten_shards_ran_side_by_side_and_split_the_keys(example: tuple[Path, str]) -> None:
    folder, printed = example
    first_runs = []
    keys: list[str] = []
    for k in range(1, SHARDS + 1):
        state = shard_state(folder, k)
        runs = query(state, "SELECT started_at, ended_at, status FROM runs ORDER BY started_at")
        assert len(runs) == (2 if k == FAILING else 1), k
        first_runs.append(runs[0])
        keys += [key for (key,) in query(state, "SELECT key FROM items")]
    # Processes at once, not one after another: runs overlapped in time. (How many is up
    # to the OS: ten processes starting on two cores do not all finish importing at once.)
    together = max(sum(a <= start <= b for a, b, _ in first_runs) for start, _, _ in first_runs)
    assert together >= 2
    assert f"{together} of them were running at the same moment" in printed
    assert len(keys) == len(set(keys)) == COUNT  # each key in exactly one shard
    assert set(keys) == set(diseases(folder))


def test_the_failed_shard_failed_on_its_refused_rows_and_the_rerun_did_only_those(
    example: tuple[Path, str],
) -> None:
    folder, printed = example
    state = shard_state(folder, FAILING)
    (first, _, status_first), (second, _, status_second) = query(
        state, "SELECT run_id, ended_at, status FROM runs ORDER BY started_at"
    )
    assert (status_first, status_second) == ("completed_with_failures", "completed")
    names = diseases(folder)
    refused = {key for (key,) in query(state, "SELECT key FROM items") if REFUSED in names[key]}
    assert refused, "the shard was meant to hold refused rows"
    redone = {key for (key,) in query(state, f"SELECT key FROM items WHERE run_id = '{second}'")}
    assert redone == refused  # the rerun did the failed rows and nothing else
    assert query(state, "SELECT count(*) FROM items WHERE status != 'done'") == [(0,)]
    # The failures were reported between the two verifies, which said so.
    assert printed.count("INCOMPLETE") == 1
    assert f"done {COUNT - len(refused):,}  failed {len(refused)}" in printed
    assert f"expected {COUNT:,}  done {COUNT:,}  failed 0  missing 0" in printed
    assert f"shard  {FAILING}: exit 1" in printed
    assert printed.index("INCOMPLETE") < printed.index("rerun the failed shard alone")
    assert first != second


def test_the_merge_verifies_complete(example: tuple[Path, str]) -> None:
    folder, _ = example
    merged = folder / "out" / "state" / "all"
    verify = rowpilot(
        "verify", str(merged), "--source", "diseases.csv", "--key", "cui", "--json", cwd=folder
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["expected"] == report["done"] == COUNT
    assert report["failed"] == report["missing"] == report["extra"] == 0
    assert report["complete"] is True


def test_one_json_file_per_key_holding_its_own_answer(example: tuple[Path, str]) -> None:
    folder, _ = example
    names = diseases(folder)
    results = folder / "out" / "results"
    index = [json.loads(line) for line in (results / "_index.jsonl").read_text().splitlines()]
    assert sorted(entry["key"] for entry in index) == sorted(names)
    assert len({entry["file"] for entry in index}) == COUNT
    assert len(list(results.glob("*.json"))) == COUNT
    fields = {"incidence_per_100k": {"type": "number"}, "reasoning": {"type": "string"}}
    for entry in index:
        answer = json.loads((results / entry["file"]).read_text(encoding="utf-8"))
        prompt = f"Disease: {names[entry['key']]} (UMLS CUI {entry['key']})"
        expected = _row_object(prompt, fields)  # the simulator's answer for that prompt
        assert {name: answer[name] for name in fields} == expected, entry["key"]
        assert answer["confidence"] in {"low", "medium", "high"}
        assert isinstance(answer["umbrella_term"], bool)
    # The per-shard folders (as the shards wrote them) also hold each key once.
    per_shard = [
        json.loads(line)["key"]
        for k in range(1, SHARDS + 1)
        for line in (folder / "out" / "json" / f"shard-{k}" / "_index.jsonl")
        .read_text()
        .splitlines()
    ]
    assert len(per_shard) == len(set(per_shard)) == COUNT


def test_the_cheaper_model_comparison_prints_costs_and_answers(example: tuple[Path, str]) -> None:
    folder, printed = example
    rows = {}
    for line in printed.splitlines():
        parts = line.split()
        table_row = len(parts) >= 7 and parts[1].replace(",", "").isdigit()
        if table_row and parts[0] in ("gpt-4o", "gpt-4o-mini"):
            rows[parts[0]] = parts
    assert set(rows) == {"gpt-4o", "gpt-4o-mini"}
    for parts in rows.values():
        assert parts[1] == "200"  # the sample: --rows 0:200
    costs = {model: float(parts[5].lstrip("$")) for model, parts in rows.items()}
    # The [prices] of job.toml: the mini model costs 6% of the big one for the same tokens.
    assert costs["gpt-4o-mini"] == pytest.approx(costs["gpt-4o"] * 0.06, rel=0.02)
    assert "agreement of gpt-4o-mini with gpt-4o on 200 rows:" in printed
    for model in ("gpt-4o", "gpt-4o-mini"):
        spent = json.loads(
            rowpilot("status", str(folder / "out" / "sample" / model), "--json", cwd=folder).stdout
        )["states"][0]
        assert spent["done"] == 200
        assert f"${spent['spending']['cost_usd']:.4f}" in printed
