"""examples/label-reviews end to end: its run.py, the real CLI, and rowpilot.label().

Expected labels come from the simulator's own rule for each review's text, so the tests
prove that every row got its own answer; requests are counted at the simulator.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import Simulators
from rowpilot.simulator.server import Simulator, SimulatorConfig, _row_object

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "label-reviews"
RUN = EXAMPLE / "run.py"
CANARY = "sk-" + "canary-0c7f3e9a51d24b68"  # assembled: not a secret to scanners


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE_MODULE = load("label_reviews_example", EXAMPLE / "label_reviews.py")
NAMES: list[str] = EXAMPLE_MODULE.LABEL_NAMES


def reviews() -> dict[str, str]:
    with (EXAMPLE / "reviews.csv").open(newline="", encoding="utf-8") as handle:
        return {row["id"]: row["text"] for row in csv.DictReader(handle)}


def expected(text: str) -> dict[str, Any]:
    return _row_object(text, {name: {"type": "boolean"} for name in NAMES})


def chat_answered(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    """The session's simulator for this file's key, reset as if new."""
    return simulator_for(SimulatorConfig(api_key=CANARY, latency_ms=5))


def run_example(
    *args: str, cwd: Path, key: str | None = CANARY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    if key is not None:
        env["OPENAI_API_KEY"] = key
    command = [sys.executable, str(RUN), "--no-progress", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def labelled(out: Path) -> dict[str, dict[str, Any]]:
    with (out / "reviews-labelled.csv").open(newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_cli_labels_every_row_several_rows_per_request(sim: Simulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_example("--base-url", sim.openai_base_url, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    texts = reviews()
    assert chat_answered(sim) == math.ceil(len(texts) / 10)  # 10 rows a request
    table = labelled(out)
    assert sorted(table) == sorted(texts)
    counts = dict.fromkeys(NAMES, 0)
    for key, text in texts.items():
        want = expected(text)
        assert {name: table[key][name] == "true" for name in NAMES} == want, key
        for name in NAMES:
            counts[name] += want[name]
    # The label summary, as the CLI prints it at the end.
    assert f"labels over {len(texts)} labelled rows:" in done.stdout
    for name, count in counts.items():
        line = f"  {name:<9}  {count:>8,}  {count / len(texts):6.1%}"
        assert line in done.stdout.splitlines(), line
    # The key reached the simulator (it requires it) and nothing else.
    files = [path for path in out.rglob("*") if path.is_file()]
    assert all(CANARY.encode() not in path.read_bytes() for path in files)
    assert CANARY not in done.stdout + done.stderr


@pytest.mark.slow
def test_simulate_is_one_command_and_a_rerun_resumes(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first = run_example("--simulate", "--out", out, "--limit", "15", cwd=tmp_path, key=None)
    assert first.returncode == 0, first.stderr
    assert "completed: 15 done, 0 failed, 0 skipped (done before) of 15" in first.stdout
    assert "simulator: 2 chat requests answered" in first.stdout  # 10 + 5 rows
    rest = run_example("--simulate", "--out", out, cwd=tmp_path, key=None)
    assert rest.returncode == 0, rest.stderr
    assert "completed: 25 done, 0 failed, 15 skipped (done before) of 40" in rest.stdout
    assert "simulator: 3 chat requests answered" in rest.stdout  # the 25 rows left
    table = labelled(Path(out))
    assert all(
        {name: table[key][name] == "true" for name in NAMES} == expected(text)
        for key, text in reviews().items()
    )


@pytest.mark.slow
def test_python_function_returns_the_labelled_dataframe(
    sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's is read
    frame = EXAMPLE_MODULE.label_reviews(tmp_path / "out", base_url=sim.openai_base_url)
    texts = reviews()
    assert chat_answered(sim) == math.ceil(len(texts) / 10)
    assert sorted(frame["id"]) == sorted(texts)
    for record in frame.to_dict("records"):
        assert {name: bool(record[name]) for name in NAMES} == expected(record["text"])
    summary = frame.attrs["label_summary"]
    assert summary["rows"] == len(texts)
    assert summary["counts"] == {
        name: sum(expected(text)[name] for text in texts.values()) for name in NAMES
    }
    assert f"labels over {len(texts)} labelled rows:" in capsys.readouterr().out
    # The same state: the CLI now has nothing to do, and asks nothing.
    again = run_example(
        "--base-url", sim.openai_base_url, "--out", str(tmp_path / "out"), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 40 items were done before" in again.stdout
    assert chat_answered(sim) == math.ceil(len(texts) / 10)
