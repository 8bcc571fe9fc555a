"""``--ray-address ray://host:port``: a driver outside the cluster, through Ray Client.

A real head node started with ``ray start --head`` (its own temp folder and free ports),
a real ``rowpilot run`` joining it from outside, and ``ray stop`` at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import WriteCsv

BIN = Path(sys.executable).parent
HANG = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    # Token authentication is the cluster owner's to set up; this throwaway one has none.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    client_port = free_port()
    folder = Path("/tmp") / f"rp-ray-{os.getpid()}-{client_port}"  # socket paths stay short
    command = [
        str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
        "--port", str(free_port()), "--ray-client-server-port", str(client_port),
        "--temp-dir", str(folder), "--disable-usage-stats",
    ]  # fmt: skip
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG)
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"ray://127.0.0.1:{client_port}", env
    subprocess.run(
        [str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=HANG
    )


def test_a_driver_outside_the_cluster_runs_through_ray_client(
    head: tuple[str, dict[str, str]], tmp_path: Path, write_csv: WriteCsv
) -> None:
    address, env = head
    (tmp_path / "tasks.py").write_text(
        "import os\n\n"
        "def where(row):\n    return {'pid': os.getpid(), 'twice': int(row['n']) * 2}\n"
    )
    write_csv(tmp_path / "rows.csv", ["id", "n"], [(f"k{i}", i) for i in range(30)])
    run = subprocess.run(
        [
            str(BIN / "rowpilot"), "run", "rows.csv", "--task", "tasks.py:where", "--key", "id",
            "--executor", "ray", "--ray-address", address, "--ray-workers", "2",
            "--no-progress", "-o", "out.jsonl",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed: 30 done, 0 failed" in run.stdout
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(row["twice"] for row in rows) == [2 * i for i in range(30)]
    assert os.getpid() not in {row["pid"] for row in rows}
