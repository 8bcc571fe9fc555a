"""``--executor local|process|ray`` on the command line and in a job file: the choice
reaches the run, the summary names where the calls ran, and bad combinations are one-line
errors (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, WriteCsv, read_calls

CPU_TASK = """
def spin(row):
    total = 0
    for i in range(20_000):  # pure Python: threads would take turns on one core
        total += i * i
    return {"total": total, "row_n": int(row["n"])}
"""


@pytest.fixture
def data(tmp_path: Path, write_csv: WriteCsv) -> Path:
    (tmp_path / "cpu.py").write_text(CPU_TASK)
    return write_csv(
        tmp_path / "data.csv", ["id", "n", "text"], [(f"k{i}", i, f"t{i}") for i in range(40)]
    )


def test_process_runs_the_task_in_worker_processes(cli: Cli, data: Path, tasks_file: Path) -> None:
    result = cli(
        "run",
        data,
        "--task",
        "tasks.py:count_calls",
        "--key",
        "id",
        "--executor",
        "process",
        "--workers",
        "2",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "completed: 40 done" in result.stdout
    assert sorted(read_calls(data.parent)) == sorted(f"k{i}" for i in range(40))
    assert "on 2 processes" in result.stdout or "parallel speed-up" not in result.stdout


def test_the_summary_names_the_executor_only_where_a_speed_up_means_something(
    cli: Cli, data: Path
) -> None:
    common = ["--task", "cpu.py:spin", "--key", "id", "--workers", "2", "--no-progress"]
    on_processes = cli("run", data, *common, "--executor", "process", "--state", "p")
    assert on_processes.returncode == 0, on_processes.stderr
    line = on_processes.stdout.splitlines()[1]
    assert "CPU-bound" not in line  # each process had a core: no turns to take
    assert "parallel speed-up" not in line or line.endswith("on 2 processes")
    on_threads = cli("run", data, *common, "--state", "t")
    assert on_threads.returncode == 0, on_threads.stderr
    line = on_threads.stdout.splitlines()[1]
    assert "parallel speed-up" not in line or line.endswith("on threads")


def test_a_job_file_chooses_the_executor(cli: Cli, data: Path, tasks_file: Path) -> None:
    (data.parent / "job.toml").write_text(
        '[source]\npath = "data.csv"\nkey = "id"\n[task]\nfunction = "tasks.py:count_calls"\n'
        '[run]\nexecutor = "process"\nworkers = 2\n'
    )
    result = cli("run", "job.toml", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert sorted(read_calls(data.parent)) == sorted(f"k{i}" for i in range(40))
    events = (data.parent / ".rowpilot" / "job" / "logs").glob("*.jsonl")
    chosen = [
        line for log in events for line in log.read_text().splitlines() if "executor.chosen" in line
    ]
    assert len(chosen) == 1 and "2 worker processes (--workers)" in chosen[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "threads"], "executor"),
        (["--ray-workers", "2"], "--ray-workers is for --executor ray"),
        (["--ray-address", "auto"], "--ray-address is for --executor ray"),
        (["--executor", "ray", "--ray-workers", "0"], "ray_workers"),
    ],
)
def test_bad_executor_settings_are_one_line_errors(
    cli: Cli, data: Path, tasks_file: Path, flags: list[str], message: str
) -> None:
    result = cli("run", data, "--task", "tasks.py:upper", "--key", "id", *flags)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_ray_not_installed_says_how_to_install_it(
    cli: Cli, data: Path, tasks_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra has
    result = cli("run", data, "--task", "tasks.py:upper", "--key", "id", "--executor", "ray")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'rowpilot[ray]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_prompt_job_asked_for_processes_says_why_it_runs_here(
    cli: Cli, data: Path, simulator_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rowpilot.simulator.server import SimulatorConfig

    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "test-not-checked")
    sim = simulator_for(SimulatorConfig(latency_ms=1))
    result = cli(
        "run", data, "--key", "id", "--model", "openai/gpt-4o-mini", "--prompt", "Say {text}",
        "--base-url", sim.openai_base_url, "--executor", "process", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--executor process was asked, but" in result.stderr
    assert "I/O-bound" in result.stderr
    assert "completed: 40 done" in result.stdout
