"""Executors (issue 12): `--executor local`, `process` and `ray`, side by side.

Run: .venv/bin/python bench/bench_executors.py [--quick] [--repeat N] [--only NAMES]
     [--cpu-rows N]

Every run is a child process (the `rowpilot` CLI, or this script in --child mode where a
figure needs to look inside the driver), with PYTHONPATH set to this checkout's src, so the
CLI, its worker processes and the Ray actors all load this checkout (the `where` task
checks it). The candidates of a figure run alternately, round after round, and each keeps
its best of --repeat rounds: the machine may be shared.

1. cpu: a CPU-bound sync task, about 10 ms of pure Python per row (a loop count calibrated
   once at the start, the same for every executor), through `rowpilot run --task`:
   `--executor local --workers 2` (the baseline), `--executor process --workers 2`,
   `--executor ray --ray-workers 2`: wall time of the CLI process, ratio to local, the
   speed-up the summary printed, and the start-up cost (the wall time of a 1-row run; a
   0-row file is refused).
2. embed: the local model's embed job, `executor = "process"` against `"local"` in the
   same job file (`rowpilot embed` has no --executor), 2 workers each.
3. dispatch: a sync no-op task through 2 worker processes and 2 Ray actors (and local, 8
   threads), run by `rowpilot.run` in a child that counts the driver's messages: items/s
   over the run and in its steady middle, and the batch size the executor chose. Then
   permits: a task making `calls` `ctx.call("noop", ...)` per row, [limits.noop] rpm 1e9,
   every call journaled: ctx.call/s through each executor.
4. llm: against `rowpilot simulate --rpm 6000` (300 ms latency): a prompt job asked for
   `--executor ray` (it stays on the driver: the run log says why), and a Python task
   doing one `ctx.llm` per row on Ray (2 actors; --workers default and 64) and local
   (--workers 64): share of the 100 requests/s ceiling and 429s.
5. driver: a prompt job (and a ctx.llm task) against a simulator with no limit and no
   latency: requests/s, and the driver's CPU seconds per request from the difference of
   two run sizes (start-up cancels out): the requests/s one driver core can sustain.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import ROWPILOT, machine, make_csv
from bench_llm import SimProcess, _spawn, _stop, children_stopped, short_csv

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
TASKS = HERE / "tasks.py"
MODEL = "gpt-4o-mini"
RPM = 6_000
TPM = 2_000_000
LATENCY_MS = 300
CEILING = RPM / 60.0  # requests/s
TARGET_SPEEDUP = 1.7
TARGET_SHARE = 0.95
ROW_MS = 10.0
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def child_env() -> dict[str, str]:
    """This checkout's src first, for the CLI, its worker processes and Ray's actors."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "RAY_USAGE_STATS_ENABLED": "0"}
    # The cluster started beforehand (running_ray) and its drivers: no token to hand over.
    env["RAY_AUTH_MODE"] = "disabled"
    # A Ray of its own, even while someone else's `ray start` cluster runs on the machine:
    # without an address ray.init joins that one (/tmp/ray/ray_current_cluster), and
    # rowpilot's ray.init(num_cpus=...) then fails.
    env.setdefault("RAY_ADDRESS", "local")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# -- one measured child ---------------------------------------------------------------------


@dataclass
class Out:
    wall: float  # the whole child process
    cpu: float  # its user + system CPU seconds (and those of children it reaped)
    code: int
    stdout: str
    stderr: str
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        """rowpilot's own elapsed (its summary), else the process's wall time."""
        return self.numbers.get("elapsed", self.wall)

    @property
    def speedup_line(self) -> str:
        match = re.search(
            r"(parallel speed-up [\d.]+x on [^\n,]+|CPU-bound \([^)]*\))", self.stdout
        )
        return match[1] if match else "(no speed-up printed)"


RAY_RETRIES = 2


def measured(args: list[str], cwd: Path) -> Out:
    """Run a child; a Ray run whose cluster died under it (someone's `ray stop` on a shared
    machine kills every Ray of the user) is run again, up to RAY_RETRIES times, and says so."""
    retries = RAY_RETRIES if any("ray" in arg for arg in args) else 0
    for attempt in range(retries + 1):
        out = _measured_once(args, cwd)
        if out.code == 0:
            return out
        ray_died = re.search(r"Raylet is terminated|GCS|RayActorError|ActorDiedError", out.stderr)
        if attempt < retries and ray_died:
            print(f"    (a Ray run failed, {ray_died[0]}: run again)", flush=True)
            continue
        break
    raise RuntimeError(f"{' '.join(args)} exited {out.code}:\n{out.stdout}\n{out.stderr}")


def _measured_once(args: list[str], cwd: Path) -> Out:
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = _spawn(args, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=errors)
        try:
            assert process.stdout is not None
            output = process.stdout.read().decode("utf-8", "replace")
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            _stop(process)
        wall = time.perf_counter() - started
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    out = Out(wall, usage.ru_utime + usage.ru_stime, process.returncode, output, stderr)
    out.numbers = summary_numbers(output)
    return out


def summary_numbers(summary: str) -> dict[str, float]:
    patterns = {
        "done": r"([\d,]+) done",
        "failed": r"([\d,]+) failed",
        "elapsed": r"elapsed ([\d.]+)s",
        "task_s": r"task time ([\d.]+)s",
    }
    found = {}
    for name, pattern in patterns.items():
        if match := re.search(pattern, summary):
            found[name] = float(match[1].replace(",", ""))
    return found


def run_cli(data: Path, work: Path, *flags: str, task: str | None = None) -> Out:
    state = tempfile.mkdtemp(prefix="state-", dir=work)
    args = [ROWPILOT, "run", str(data), "--key", "id", "--state", state, "--no-progress"]
    if task is not None:
        args += ["--task", f"{TASKS}:{task}"]
    return measured([*args, *flags], work)


def run_child(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """This script in --child mode: `rowpilot.run` with the driver's messages counted."""
    out = measured([sys.executable, __file__, "--child", json.dumps(spec)], work)
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["wall"] = out.wall
    return result


EXECUTORS: dict[str, tuple[str, ...]] = {
    "local": ("--executor", "local", "--workers", "2"),
    "process": ("--executor", "process", "--workers", "2"),
    "ray": ("--executor", "ray", "--ray-workers", "2"),
}


def rounds(names: list[str], repeat: int) -> list[list[str]]:
    """The candidates in alternating order: ABC, CBA, ABC, ..."""
    return [names if r % 2 == 0 else names[::-1] for r in range(repeat)]


def best(values: list[float]) -> float:
    return min(values)


# -- 0. which rowpilot the workers load -----------------------------------------------------


def check_checkout(work: Path) -> None:
    data = work / "one.csv"
    write_csv(data, ["id"], [["id-0"]])
    for name in ("process", "ray"):
        output = work / f"where-{name}.csv"
        run_cli(data, work, *EXECUTORS[name], "--output", str(output), task="where")
        with output.open(newline="") as handle:
            loaded = next(csv.DictReader(handle))["rowpilot"]
        if not Path(loaded).resolve().is_relative_to(SRC.resolve()):
            raise RuntimeError(f"a {name} worker loaded {loaded}, not this checkout's {SRC}")
    print(f"workers load this checkout: {SRC} (checked in a process worker and a Ray actor)")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- 1. CPU-bound ---------------------------------------------------------------------------


def spin(loops: int) -> int:
    """The loop of tasks.spin, for calibration."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def calibrate(ms: float) -> int:
    """Loops for ``ms`` of pure Python on one core: best of 7 timings of 200,000."""
    probe = 200_000
    timings = []
    for _ in range(7):
        started = time.perf_counter()
        spin(probe)
        timings.append(time.perf_counter() - started)
    return round(probe * ms / 1000 / min(timings))


def cpu_bound(rows: int, repeat: int, work: Path) -> list[tuple[str, str, str, str]]:
    loops = calibrate(ROW_MS)
    data = write_csv(
        work / "spin.csv", ["id", "loops"], [[f"id-{i:06d}", loops] for i in range(rows)]
    )
    one = write_csv(work / "spin-1.csv", ["id", "loops"], [["id-0", loops]])
    print(
        f"\n1. CPU-bound: {rows:,} rows of {loops:,} loops (~{ROW_MS:.0f} ms of pure Python, "
        f"calibrated once), `rowpilot run --task tasks.py:spin`, best of {repeat}"
    )
    with running_ray(work) as address:
        candidates = {
            **EXECUTORS,
            "ray-up": ("--executor", "ray", "--ray-address", address, "--ray-workers", "2"),
        }
        return _cpu_bound(rows, repeat, work, data, one, candidates)


@contextlib.contextmanager
def running_ray(work: Path) -> Iterator[str]:
    """A Ray head of 2 CPUs started beforehand (`ray start --head`), as a cluster is up
    before the jobs that use it: the address, then its processes killed (only its own:
    `ray stop` would stop every Ray of the machine)."""
    import psutil

    folder = Path("/tmp") / f"rp-bench-ray-{os.getpid()}"
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--num-cpus", "2",
        "--include-dashboard", "false", "--port", str(port), "--temp-dir", str(folder),
        "--disable-usage-stats",
    ]  # fmt: skip
    env = {k: v for k, v in child_env().items() if k != "RAY_ADDRESS"}
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if any(str(folder) in part for part in process.info["cmdline"] or ()):
                with contextlib.suppress(psutil.Error):
                    process.kill()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _cpu_bound(
    rows: int,
    repeat: int,
    work: Path,
    data: Path,
    one: Path,
    candidates: dict[str, tuple[str, ...]],
) -> list[tuple[str, str, str, str]]:
    walls: dict[str, list[float]] = {name: [] for name in candidates}
    starts: dict[str, list[float]] = {name: [] for name in candidates}
    start_elapsed: dict[str, list[float]] = {name: [] for name in candidates}
    outs: dict[str, list[Out]] = {name: [] for name in candidates}
    for order in rounds(list(candidates), repeat):
        for name in order:
            first = run_cli(one, work, *candidates[name], task="spin")
            starts[name].append(first.wall)
            start_elapsed[name].append(first.elapsed)
            out = run_cli(data, work, *candidates[name], task="spin")
            assert out.numbers.get("done") == rows, out.stdout
            walls[name].append(out.wall)
            outs[name].append(out)
            print(
                f"  {name:<8} wall {out.wall:6.2f}s (run {out.elapsed:6.2f}s, CPU of the CLI "
                f"{out.cpu:5.1f}s); 1-row run {first.wall:5.2f}s; summary: {out.speedup_line}"
            )
    base = best(walls["local"])
    base_net = base - best(starts["local"])
    rows_out = []
    for name, flags in candidates.items():
        wall, start = best(walls[name]), best(starts[name])
        top = min(outs[name], key=lambda o: o.wall)
        speed, net = base / wall, base_net / (wall - start)
        print(
            f"  {name}: best wall {wall:.2f}s, {speed:.2f}x local "
            f"(net of start-up {net:.2f}x; start-up {start:.2f}s, rowpilot's elapsed "
            f"{best(start_elapsed[name]):.2f}s); best run's summary: {top.speedup_line}"
        )
        if name != "local":
            verdict = "met" if speed >= TARGET_SPEEDUP else "MISSED"
            print(f"    target >= {TARGET_SPEEDUP}x local: {verdict}")
        rows_out.append(
            (
                f"{rows:,} CPU-bound rows, `{' '.join(flags)}`",
                f"{wall:.2f} s (start-up {start:.2f} s)",
                f"{speed:.2f}x (net of start-up {net:.2f}x)",
                top.speedup_line,
            )
        )
    return rows_out


# -- 2. embed -------------------------------------------------------------------------------


def embed(rows: int, repeat: int, work: Path) -> list[tuple[str, str, str, str]]:
    data = make_csv(rows)
    one = make_csv(1)
    print(
        f"\n2. embed: {rows:,} texts, local/wordllama, `rowpilot run job.toml` with [task] "
        f"embed = true, [run] workers = 2 and executor = local | process, best of {repeat}"
    )

    def job(source: Path, executor: str) -> Path:
        state = tempfile.mkdtemp(prefix="state-", dir=work)
        path = Path(tempfile.mkstemp(prefix="embed-", suffix=".toml", dir=work)[1])
        path.write_text(
            f'[source]\npath = "{source}"\nkey = "id"\n\n'
            '[task]\nmodel = "local/wordllama"\nembed = true\ntext_column = "text"\n\n'
            f'[run]\nexecutor = "{executor}"\nworkers = 2\nstate = "{state}"\n'
        )
        return path

    walls: dict[str, list[float]] = {"local": [], "process": []}
    starts: dict[str, list[float]] = {"local": [], "process": []}
    for order in rounds(list(walls), repeat):
        for name in order:
            first = measured([ROWPILOT, "run", str(job(one, name)), "--no-progress"], work)
            out = measured([ROWPILOT, "run", str(job(data, name)), "--no-progress"], work)
            assert out.numbers.get("done") == rows, out.stdout
            walls[name].append(out.wall)
            starts[name].append(first.wall)
            print(
                f"  {name:<8} wall {out.wall:5.2f}s (run {out.elapsed:5.2f}s, "
                f"{rows / out.elapsed:,.0f} rows/s); 1-row run {first.wall:.2f}s"
            )
    base = best(walls["local"])
    result = []
    for name, times in walls.items():
        wall, start = best(times), best(starts[name])
        print(f"  {name}: best wall {wall:.2f}s, {base / wall:.2f}x local; 1-row run {start:.2f}s")
        result.append(
            (
                f'embed {rows:,} texts, `executor = "{name}"`, 2 workers',
                f"{wall:.2f} s (1-row run {start:.2f} s)",
                f"{base / wall:.2f}x",
                "",
            )
        )
    return result


# -- 3. dispatch and permits ----------------------------------------------------------------


CHILD_EXECUTORS: dict[str, dict[str, Any]] = {
    "local": {"executor": "local", "workers": 8},
    "process": {"executor": "process", "workers": 2},
    "ray": {"executor": "ray", "ray_workers": 2},
}


def dispatch(rows: int, calls: int, call_rows: int, repeat: int, work: Path) -> list[Any]:
    data = make_csv(rows)
    permits = write_csv(
        work / "calls.csv", ["id", "calls"], [[f"id-{i:06d}", calls] for i in range(call_rows)]
    )
    print(
        f"\n3. dispatch: {rows:,} sync no-op rows (tasks.noop_sync) through `rowpilot.run`; "
        f"local 8 threads, 2 processes, 2 Ray actors; best of {repeat}"
    )
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in CHILD_EXECUTORS}
    for order in rounds(list(CHILD_EXECUTORS), repeat):
        for name in order:
            spec = {"task": "noop_sync", "source": str(data), **CHILD_EXECUTORS[name]}
            result = run_child(spec, work)
            found[name].append(result)
            print(f"  {name:<8} {describe_child(result, rows, 'items')}")
    table = []
    base = max(r["steady"] for r in found["local"])
    for name, results in found.items():
        top = max(results, key=lambda r: r["steady"])
        print(f"  {name}: best {describe_child(top, rows, 'items')}")
        table.append(
            (
                f"no-op items/s, {name} ({describe_workers(name)})",
                f"{top['steady']:,.0f}/s steady ({rows / top['elapsed']:,.0f}/s over the run)",
                f"{top['steady'] / base:.2f}x",
                batch_note(top),
            )
        )
    total = calls * call_rows
    print(
        f"\n   permits: {call_rows:,} rows x {calls} `ctx.call('noop', ...)` (async no-op, "
        f"journaled; [limits.noop] rpm 1e9) = {total:,} calls; local 32 workers"
    )
    found = {name: [] for name in CHILD_EXECUTORS}
    for order in rounds(list(CHILD_EXECUTORS), repeat):
        for name in order:
            spec = {
                "task": "calls",
                "source": str(permits),
                "limits": {"noop": {"rpm": 1e9}},
                **CHILD_EXECUTORS[name],
            }
            if name == "local":
                spec["workers"] = 32
            result = run_child(spec, work)
            found[name].append(result)
            print(f"  {name:<8} {describe_child(result, total, 'ctx.call', per_item=calls)}")
    base = max(r["steady"] for r in found["local"]) * calls
    for name, results in found.items():
        top = max(results, key=lambda r: r["steady"])
        rate = top["steady"] * calls
        print(f"  {name}: best {describe_child(top, total, 'ctx.call', per_item=calls)}")
        table.append(
            (
                f"ctx.call/s, {name}",
                f"{rate:,.0f}/s steady ({total / top['elapsed']:,.0f}/s over the run)",
                f"{rate / base:.2f}x",
                round_trips_note(top, total),
            )
        )
    return table


def describe_workers(name: str) -> str:
    return {"local": "8 threads", "process": "2 processes", "ray": "2 Ray actors"}[name]


def describe_child(result: dict[str, Any], total: int, unit: str, per_item: int = 1) -> str:
    steady = result["steady"] * per_item
    text = (
        f"{total / result['elapsed']:,.0f} {unit}/s over the run ({result['elapsed']:.2f}s, "
        f"start-up {result['first']:.2f}s to the first outcome), {steady:,.0f}/s steady"
    )
    if result["runs"]:
        text += f"; {batch_note(result)}"
    if result["invokes"]:
        text += f"; {round_trips_note(result, total)}"
    return text


def batch_note(result: dict[str, Any]) -> str:
    if not result["runs"]:
        return "no batches (this process)"
    sizes = result["batch_sizes"]
    return (
        f"{result['runs']:,} run messages, {result['items_sent'] / result['runs']:.1f} items each; "
        f"batch size chosen: {sizes['mode']} most often (min {sizes['min']}, max {sizes['max']})"
    )


def round_trips_note(result: dict[str, Any], total: int) -> str:
    if not result["invokes"]:
        return "on the driver"
    return (
        f"{result['invokes'] / total:.2f} invoke + {result['replies'] / total:.2f} reply "
        f"messages to the workers per call, {result['received'] / total:.2f} messages back"
    )


def child_main(spec: dict[str, Any]) -> None:
    """In the child: rowpilot.run with the driver's side counted (src/ is not changed:
    its functions are wrapped from here)."""
    import rowpilot
    from rowpilot.executors import local, remote

    sys.path.insert(0, str(HERE))
    done: list[float] = []
    sizes: list[int] = []
    counts = {"runs": 0, "items_sent": 0, "invokes": 0, "replies": 0, "received": 0}

    def timed(cls: Any) -> None:
        submit = cls.submit

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            ran = await submit(self, *args, **kwargs)
            done.append(time.perf_counter())
            return ran

        cls.submit = wrapper

    timed(local.LocalExecutor)
    timed(remote.RemoteExecutor)
    pack, batch_size, received = remote.pack, remote.RemoteExecutor._batch_size, None

    def counting_pack(messages: list[Any]) -> bytes:
        for message in messages:
            if message[0] == "run":
                counts["runs"] += 1
                counts["items_sent"] += len(message[1])
            elif message[0] == "invoke":
                counts["invokes"] += 1
            elif message[0] == "reply":
                counts["replies"] += 1
        return pack(messages)

    def counting_batch_size(self: Any) -> int:
        size: int = batch_size(self)
        sizes.append(size)
        return size

    received = remote.RemoteExecutor.received

    def counting_received(self: Any, link: Any, blob: bytes) -> None:
        counts["received"] += 1
        received(self, link, blob)

    remote.pack = counting_pack
    remote.RemoteExecutor._batch_size = counting_batch_size
    remote.RemoteExecutor.received = counting_received
    task = f"{TASKS}:{spec.pop('task')}"
    source = spec.pop("source")
    state = tempfile.mkdtemp(prefix="state-", dir=".")
    started = time.perf_counter()
    result = rowpilot.run(task, source, key="id", state=state, **spec)
    elapsed = time.perf_counter() - started
    n = len(done)
    assert result.summary.done == n, (result.summary.done, n)
    low, high = n // 10, n - 1 - n // 10
    steady = (high - low) / (done[high] - done[low]) if done[high] > done[low] else 0.0
    mode = statistics.mode(sizes) if sizes else 0
    report = {
        "elapsed": elapsed,
        "first": done[0] - started,
        "steady": steady,
        "batch_sizes": {"mode": mode, "min": min(sizes, default=0), "max": max(sizes, default=0)},
        **counts,
    }
    print("RESULT " + json.dumps(report))


# -- 4. at the rate-limit ceiling -----------------------------------------------------------


def admissions(sim: SimProcess) -> dict[str, Any]:
    with _LOCAL.open(f"{sim.url}/stats/admissions?window_s=1&times=1", timeout=10) as response:
        view: dict[str, Any] = json.load(response)
    return view.get(MODEL, {"admitted": 0, "max_admitted": 0, "times": []})


def steady_rate(times: list[float]) -> float:
    """Requests/s over the middle 80% of the admissions (the bucket's first burst and the
    start-up left out)."""
    n = len(times)
    low, high = n // 10, n - 1 - n // 10
    return (high - low) / (times[high] - times[low]) if n > 10 and times[high] > times[low] else 0.0


def ceiling(rows: int, work: Path) -> list[tuple[str, str, str, str]]:
    data = short_csv(rows)
    few = short_csv(rows // 4)
    prompt = ("--prompt", "Classify: {text}", "--max-tokens", "64")
    limits = ("--rpm", str(RPM), "--tpm", str(TPM))
    print(
        f"\n4. at the ceiling: `rowpilot simulate --rpm {RPM} --tpm {TPM} --latency-ms "
        f"{LATENCY_MS}` (fresh per run), the job told --rpm {RPM}; ceiling {CEILING:.0f} "
        "requests/s; share = answered requests / rowpilot's elapsed / ceiling, and steady = "
        "the middle 80% of the admissions"
    )
    cases = [
        (
            "prompt job, --executor ray (stays on the driver)",
            data,
            (*prompt, "--executor", "ray", "--workers", "64"),
            None,
        ),
        (
            "ctx.llm task, --executor local --workers 64",
            data,
            ("--executor", "local", "--workers", "64"),
            "ask",
        ),
        (
            "ctx.llm task, --executor ray --ray-workers 2 --workers 64",
            data,
            ("--executor", "ray", "--ray-workers", "2", "--workers", "64"),
            "ask",
        ),
        (
            "ctx.llm task, --executor ray --ray-workers 2 (--workers default 8)",
            few,
            ("--executor", "ray", "--ray-workers", "2"),
            "ask",
        ),
    ]
    table = []
    for label, source, flags, task in cases:
        with SimProcess(work, RPM, TPM, LATENCY_MS) as sim:
            model = ("--model", f"openai/{MODEL}", "--base-url", sim.base_url)
            out = run_cli(source, work, *model, *limits, *flags, task=task)
            stats = sim.stats()
            admitted = admissions(sim)
        ok = stats["requests"].get("chat.completions", {}).get("200", 0)
        share = ok / out.elapsed / CEILING
        steady = steady_rate(admitted.get("times", [])) / CEILING
        limited = stats["rate_limited"]
        notice = executor_notice(out)
        print(
            f"  {label}: {int(out.numbers.get('done', 0)):,} rows in {out.elapsed:.2f}s "
            f"(process {out.wall:.2f}s); {share:.1%} of the ceiling, steady {steady:.1%}; "
            f"busiest second {admitted.get('max_admitted', 0)} admitted; at most "
            f"{stats['in_flight_max']} in flight; 429s {limited}"
        )
        if notice:
            print(f"    the run log: {notice}")
        table.append(
            (
                f"{label}, {len(read_keys(source)):,} rows",
                f"{share:.1%} of the ceiling (steady {steady:.1%})",
                f"{limited} 429s",
                f"at most {stats['in_flight_max']} requests in flight. {notice}".strip(),
            )
        )
    return table


def read_keys(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def executor_notice(out: Out) -> str:
    """The executor.chosen line of the run's log (the CLI does not print it)."""
    match = re.search(r"^state: (.+)$", out.stdout, re.MULTILINE)
    if not match:
        return ""
    for log in sorted(Path(match[1]).glob("logs/*.log")):
        for line in log.read_text().splitlines():
            if "executor.chosen" in line:
                return line.split("executor.chosen", 1)[1].strip()
    return ""


# -- 5. the driver's CPU --------------------------------------------------------------------


class FreeSim(SimProcess):
    """The simulator with no rate limit and no latency."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, RPM, TPM, 0)
        self.args = [ROWPILOT, "simulate", "--port", "0", "--latency-ms", "0"]


def driver_cpu(small: int, large: int, repeat: int, work: Path) -> list[tuple[str, str, str, str]]:
    import psutil

    print(
        f"\n5. the driver's CPU: `rowpilot simulate` with no limit and no latency, --workers 64, "
        f"openai SDK; CPU seconds per request = (CPU({large:,} rows) - CPU({small:,} rows)) / "
        f"{large - small:,}; best of {repeat}"
    )
    kinds: dict[str, tuple[tuple[str, ...], str | None]] = {
        "prompt job": (("--prompt", "Classify: {text}", "--max-tokens", "64"), None),
        "ctx.llm task (local)": ((), "ask"),
    }
    table = []
    for label, (flags, task) in kinds.items():
        per_request, rates, sim_share = [], [], []
        for _ in range(repeat):
            cpu = {}
            for rows in (small, large):
                with FreeSim(work) as sim:
                    before = psutil.Process(sim.process.pid).cpu_times()
                    model = ("--model", f"openai/{MODEL}", "--base-url", sim.base_url)
                    out = run_cli(
                        short_csv(rows), work, *model, *flags, "--workers", "64", task=task
                    )
                    after = psutil.Process(sim.process.pid).cpu_times()
                    ok = sim.stats()["requests"].get("chat.completions", {}).get("200", 0)
                assert ok == rows, (ok, rows)
                cpu[rows] = out.cpu
                if rows == large:
                    rates.append(ok / out.elapsed)
                    sim_cpu = (after.user + after.system) - (before.user + before.system)
                    sim_share.append(sim_cpu / out.elapsed)
                    print(
                        f"  {label}: {rows:,} requests in {out.elapsed:.2f}s = "
                        f"{ok / out.elapsed:,.0f}/s; driver CPU {out.cpu:.2f}s "
                        f"({out.cpu / out.wall:.0%} of a core over the process), "
                        f"simulator CPU {sim_cpu:.2f}s"
                    )
            per_request.append((cpu[large] - cpu[small]) / (large - small))
        cost = min(per_request)
        rate = max(rates)
        print(
            f"  {label}: {cost * 1000:.2f} ms of driver CPU per request -> one driver core "
            f"sustains {1 / cost:,.0f} requests/s ({60 / cost:,.0f} rpm); measured {rate:,.0f}/s "
            f"with the simulator on the other core (it used {max(sim_share):.0%} of one)"
        )
        table.append(
            (
                f"{label}: requests/s, driver CPU per request",
                f"{rate:,.0f}/s; {cost * 1000:.2f} ms CPU",
                f"{1 / cost:,.0f} requests/s per driver core",
                f"at {RPM:,} rpm the driver uses {CEILING * cost:.0%} of a core",
            )
        )
    return table


# -- main -----------------------------------------------------------------------------------


FIGURES = ("cpu", "embed", "dispatch", "llm", "driver")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    parser.add_argument("--repeat", type=int, help="rounds per candidate (default 2; quick 1)")
    parser.add_argument(
        "--cpu-rows", type=int, help="rows of the CPU-bound figure (default 2,000; quick 400)"
    )
    parser.add_argument(
        "--only", default=",".join(FIGURES), help="comma-separated: " + ", ".join(FIGURES)
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child_main(json.loads(options.child))
        return
    quick = options.quick
    repeat = options.repeat or (1 if quick else 2)
    only = set(options.only.split(","))
    if unknown := only - set(FIGURES):
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    import ray

    import rowpilot

    print(
        f"bench_executors {'--quick ' if quick else ''}"
        f"{datetime.now().isoformat(timespec='seconds')}"
    )
    print(f"machine: {machine()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"rowpilot {rowpilot.__version__} from {SRC}, ray {ray.__version__}")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rowpilot-bench-executors-"))
    table: list[tuple[str, str, str, str]] = []
    steps: list[tuple[str, Callable[[], list[Any]]]] = [
        ("cpu", lambda: cpu_bound(options.cpu_rows or (400 if quick else 2_000), repeat, work)),
        ("embed", lambda: embed(5_000 if quick else 20_000, repeat, work)),
        (
            "dispatch",
            lambda: dispatch(5_000 if quick else 10_000, 10, 200 if quick else 500, repeat, work),
        ),
        ("llm", lambda: ceiling(400 if quick else 2_000, work)),
        (
            "driver",
            lambda: driver_cpu(100 if quick else 300, 1_000 if quick else 3_000, repeat, work),
        ),
    ]
    try:
        with children_stopped():
            check_checkout(work)
            for name, step in steps:
                if name in only:
                    table += step()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| measure | figure | ratio to its baseline | note |\n|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"bench_executors took {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: the simulators and runs started were stopped")
