"""Workers killed mid-run, for real: SIGKILL to worker processes and Ray actors while a
``rowpilot run`` (a real process) pays for LLM steps at a real simulator, and SIGKILL to
the driver itself. Every key ends done once with its own output, and the simulator was
paid exactly once per journaled step: a killed worker's items waited for their steps in
flight on the driver, then ran again elsewhere and replayed them."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import Simulators, wait_until
from rowpilot.simulator.server import Simulator, SimulatorConfig
from rowpilot.state.registry import REGISTRY_FILE

ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
CANARY = "sk-" + "canary-7f1e2d3c4b5a6978"
ROWS = 160
HANG = 120.0  # bounds only a hang, never a pace

TASK = textwrap.dedent(
    """
    import os

    def write_up(row, ctx):
        answer = ctx.llm_sync(f"Write about {row['name']}")
        with open(row["log"], "a") as out:
            out.write(f"{os.getpid()} {row['id']}\\n")
        return {"answer": answer, "pid": os.getpid()}
    """
)


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    return simulator_for(SimulatorConfig(api_key=CANARY, latency_ms=15, seed=11))


def job(tmp_path: Path, sim: Simulator, *executor: str) -> list[str]:
    (tmp_path / "tasks.py").write_text(TASK)
    log = tmp_path / "ran.log"
    with (tmp_path / "rows.csv").open("w") as out:
        out.write("id,name,log\n")
        for i in range(ROWS):
            out.write(f"r{i:03d},brand {i},{log}\n")
    return [
        ROWPILOT,
        "run",
        "rows.csv",
        "--task",
        "tasks.py:write_up",
        "--key",
        "id",
        "--model",
        "openai/gpt-4o-mini",
        "--base-url",
        sim.openai_base_url,
        "--state",
        "state",
        "--no-progress",
        *executor,
    ]


def start(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OPENAI_API_KEY": CANARY, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def ran(tmp_path: Path) -> list[tuple[int, str]]:
    path = tmp_path / "ran.log"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(pid), key) for pid, key in (line for line in lines if len(line) == 2)]


def kill_a_worker(tmp_path: Path, driver: subprocess.Popen[str], after: int) -> int:
    """Once ``after`` rows have run, SIGKILL the worker that ran the latest one."""
    wait_until(lambda: len(ran(tmp_path)) >= after, f"{after} rows run", timeout=HANG)
    victim = ran(tmp_path)[-1][0]
    assert victim != driver.pid
    os.kill(victim, signal.SIGKILL)
    return victim


def registry(state: Path, query: str) -> list[Any]:
    with sqlite3.connect(f"file:{state / REGISTRY_FILE}?mode=ro", uri=True) as db:
        return db.execute(query).fetchall()


def check_every_key_done_once(tmp_path: Path, sim: Simulator) -> None:
    state = tmp_path / "state"
    items = registry(state, "SELECT key, status, output FROM items")
    assert len(items) == ROWS
    assert {status for _, status, _ in items} == {"done"}
    for key, _, output in items:
        name = f"brand {int(key[1:])}"
        assert json.loads(output)["answer"].endswith(f"WRITE ABOUT {name.upper()}"), key
    journaled = registry(state, "SELECT count(*) FROM calls")[0][0]
    answered = sim.stats()["requests"]["chat.completions"].get("200", 0)
    # Every paid request is in the journal, once: none was repeated behind its back.
    assert answered == journaled == ROWS


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_killed_workers_lose_nothing_and_repeat_no_paid_call(
    executor: str, sim: Simulator, tmp_path: Path
) -> None:
    flags = ["--executor", executor]
    flags += ["--workers", "2"] if executor == "process" else ["--ray-workers", "2"]
    driver = start(job(tmp_path, sim, *flags), tmp_path)
    try:
        victims = {kill_a_worker(tmp_path, driver, after) for after in (20, 60, 100)}
        output, _ = driver.communicate(timeout=HANG)
    finally:
        driver.kill()
    assert driver.returncode == 0, output
    assert len(victims) == 3  # three different workers died, each replaced
    assert "completed: 160 done, 0 failed" in output
    check_every_key_done_once(tmp_path, sim)
    ran_by = {pid for pid, _ in ran(tmp_path)}
    assert victims < ran_by and len(ran_by) >= 4


def test_a_killed_driver_takes_its_workers_and_resumes_like_any_run(
    sim: Simulator, tmp_path: Path
) -> None:
    command = job(tmp_path, sim, "--executor", "process", "--workers", "2")
    driver = start(command, tmp_path)
    try:
        wait_until(lambda: len(ran(tmp_path)) >= 40, "40 rows run", timeout=HANG)
        os.kill(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=HANG)  # reaped, its pipe read and closed
    finally:
        driver.kill()
    workers = {pid for pid, _ in ran(tmp_path)}
    wait_until(lambda: not any(_alive(pid) for pid in workers), "the workers to exit", HANG)
    again = start(command, tmp_path)
    output, _ = again.communicate(timeout=HANG)
    assert again.returncode == 0, output
    state = tmp_path / "state"
    items = registry(state, "SELECT key, status FROM items")
    assert len(items) == ROWS
    assert {status for _, status in items} == {"done"}
    journaled = registry(state, "SELECT count(*) FROM calls")[0][0]
    answered = sim.stats()["requests"]["chat.completions"].get("200", 0)
    # At most the steps in flight when the driver died were paid and not journaled.
    assert journaled == ROWS
    assert ROWS <= answered <= ROWS + 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: only its parent (killed) could have reaped it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


CLUSTER = textwrap.dedent(
    """
    import os, sys
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    for line in sys.stdin:
        if line.strip() == "kill":
            cluster.remove_node(doomed)  # its raylet and the actor on it, gone at once
            print("killed", flush=True)
        else:
            break
    cluster.shutdown()
    """
)


def test_a_lost_node_loses_nothing_and_repeats_no_paid_call(tmp_path: Path) -> None:
    """Two 1-CPU nodes, an actor on each; one node is taken away mid-run. Rows of 60 ms
    keep the job going for seconds, so that the second actor (slow to start on a busy
    machine) has worked before its node goes; from then on the simulator answers in 5 ms,
    since nothing is left to wait for: the rest runs on the one actor left."""
    config = SimulatorConfig(api_key=CANARY, latency_ms=60, seed=11)
    sim = Simulator(config)  # its own: its latency changes mid-run
    sim.start_in_thread()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert cluster.stdin is not None and cluster.stdout is not None
    try:
        address = cluster.stdout.readline().strip()
        assert address, "the cluster did not start"
        flags = ["--executor", "ray", "--ray-address", address, "--ray-workers", "2"]
        driver = start(job(tmp_path, sim, *flags), tmp_path)
        try:
            both = lambda: len(ran(tmp_path)) >= 10 and len({p for p, _ in ran(tmp_path)}) == 2  # noqa: E731
            wait_until(both, "rows run by both actors", timeout=HANG)
            cluster.stdin.write("kill\n")
            cluster.stdin.flush()
            assert cluster.stdout.readline().strip() == "killed"
            before = len(ran(tmp_path))
            sim.config = dataclasses.replace(config, latency_ms=5)  # read per request
            output, _ = driver.communicate(timeout=HANG)
        finally:
            driver.kill()
        assert driver.returncode == 0, output
        assert "completed: 160 done, 0 failed" in output
        check_every_key_done_once(tmp_path, sim)
        pids = [pid for pid, _ in ran(tmp_path)]
        assert len(set(pids[:before])) == 2  # both actors worked before the node went
        assert len(set(pids[before + 2 :])) == 1  # then one: the new actor found no CPU
    finally:
        cluster.communicate("stop\n", timeout=HANG)
        cluster.kill()
        sim.stop_in_thread()
