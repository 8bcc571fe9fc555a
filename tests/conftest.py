"""Shared fixtures: CSV writing, the ``rowpilot`` command (in-process through its entry
point, or as a real process), one simulator for the session, and a tasks module on disk."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

import rowpilot
from fake_sheets import FakeSheets, serve, service_account_file
from reported_job import CONFIG as REPORT_CONFIG
from reported_job import KEY as REPORT_KEY
from reported_job import Job, cli_args, run_job, write_rows
from rowpilot.engine.events import NOTICES
from rowpilot.simulator.server import Simulator, SimulatorConfig

ROWPILOT = str(Path(sys.executable).parent / "rowpilot")

# Subprocesses must run the rowpilot these tests import: a relative PYTHONPATH (``src``)
# does not reach a CLI started in a temporary folder, which would then import whatever
# rowpilot is installed (another checkout's editable install) instead.
_SRC = str(Path(rowpilot.__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SRC, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
)

TASKS = '''\
"""Tasks for the rowpilot tests. Files they use live next to this module."""

import asyncio
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALLS = HERE / "calls.txt"
FAIL_KEYS = HERE / "fail_keys.txt"

NOT_CALLABLE = 42


def upper(row):
    return {"upper": row["text"].upper()}


async def async_upper(row):
    await asyncio.sleep(0.001)
    return {"upper": row["text"].upper()}


def count_calls(row, ctx):
    """Records every call (one key per line) so tests can prove nothing runs twice."""
    with open(CALLS, "a", encoding="utf-8") as calls:
        calls.write(ctx.key + "\\n")
        calls.flush()
    return {"upper": str(row.get("text", "")).upper()}


def fail_listed(row, ctx):
    """Like count_calls, but raises ValueError for the keys listed in fail_keys.txt."""
    count_calls(row, ctx)
    listed = FAIL_KEYS.read_text(encoding="utf-8").splitlines() if FAIL_KEYS.exists() else []
    if ctx.key in listed:
        raise ValueError(f"listed key {ctx.key}")
    return {"upper": str(row.get("text", "")).upper()}


def returns_str(row):
    return "not a dict"


def sleepy(row):
    seconds = float(row.get("sleep") or 0.05)
    time.sleep(seconds)
    return {"slept": seconds}


async def async_sleepy(row):
    seconds = float(row.get("sleep") or 0.05)
    await asyncio.sleep(seconds)
    return {"slept": seconds}
'''


class WriteCsv(Protocol):
    def __call__(
        self,
        path: Path,
        header: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        encoding: str = "utf-8",
    ) -> Path: ...


class Cli(Protocol):
    def __call__(
        self, *args: str | os.PathLike[str], cwd: Path | None = None, debug: bool = False
    ) -> subprocess.CompletedProcess[str]: ...


def wait_until(condition: Callable[[], bool], what: str = "it", timeout: float = 60) -> None:
    """Poll ``condition`` until it holds: a test waits on a state, never on a guessed delay.
    The timeout only turns a hang into a failure; nothing is asserted about time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what} in vain")
        time.sleep(0.005)


@pytest.fixture
def write_csv() -> WriteCsv:
    """``write_csv(path, header, rows)``: a real CSV file (csv module quoting), returns path."""

    def write(
        path: Path,
        header: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        encoding: str = "utf-8",
    ) -> Path:
        with path.open("w", newline="", encoding=encoding) as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    return write


def _cli_command(
    args: Sequence[str | os.PathLike[str]], debug: bool
) -> tuple[list[str], dict[str, str]]:
    """The real ``rowpilot`` console script's command line and environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ROWPILOT_DEBUG", None)
    command = [ROWPILOT, *(os.fspath(arg) for arg in args)]
    if debug:
        command.append("--debug")
    return command, env


def run_cli(
    *args: str | os.PathLike[str], cwd: Path, debug: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real ``rowpilot`` console script in ``cwd`` (no shell, 60 s at most)."""
    command, env = _cli_command(args, debug)
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def start_cli(
    *args: str | os.PathLike[str], cwd: Path, to_kill: bool = False
) -> subprocess.Popen[str]:
    """Start the real ``rowpilot`` console script in ``cwd`` and return at once: for
    processes side by side. Read its end with ``communicate(timeout=...)``. ``to_kill``:
    the test SIGKILLs it, so it runs unmeasured (see ``unmeasured``)."""
    command, env = _cli_command(args, debug=False)
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=unmeasured(env) if to_kill else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# What starts coverage.py's measurement in a child process (make test's subprocess patch).
_COVERAGE_STARTERS = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def unmeasured(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (this process's by default) without what starts coverage.py in a child: for
    a process the test SIGKILLs. Its coverage data would die with it (SIGKILL leaves it no
    moment to write the data), so measuring it only slowed the run the test waits on. A
    process that ends by itself, by SIGINT or by ``os._exit`` stays measured."""
    source = os.environ if env is None else env
    return {name: value for name, value in source.items() if name not in _COVERAGE_STARTERS}


# Modules a run may import that a fresh process would import again: a task file or module
# from the test's folder. Everything under these roots (the interpreter, rowpilot) stays.
_KEPT_ROOTS = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, _SRC})


def invoke_cli(
    *args: str | os.PathLike[str], cwd: Path, debug: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``rowpilot.cli.main`` in this process as the console script would run in ``cwd``:
    stdout and stderr captured, the exit code from ``SystemExit``, an uncaught exception a
    traceback and exit 1. What a run leaves behind in the process (cwd, sys.path, the task
    modules it imported, the warnings handler) is put back, so each call starts fresh."""
    from rowpilot.cli import main

    argv = [os.fspath(arg) for arg in args] + (["--debug"] if debug else [])
    out, err = io.StringIO(), io.StringIO()
    restored = _process_state_restored(cwd, argv)
    with restored, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _exit_code_of(main, argv)
    return subprocess.CompletedProcess(["rowpilot", *argv], code, out.getvalue(), err.getvalue())


def _exit_code_of(main: Callable[[list[str]], None], argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # what the interpreter does with a message
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


@contextlib.contextmanager
def _process_state_restored(cwd: Path, argv: list[str]) -> Iterator[None]:
    before_cwd, before_path, before_modules = os.getcwd(), list(sys.path), set(sys.modules)
    before_argv, sys.argv = sys.argv, [ROWPILOT, *argv]  # the resume command is read from it
    handlers, propagate = list(NOTICES.handlers), NOTICES.propagate
    debug = os.environ.pop("ROWPILOT_DEBUG", None)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before_cwd)
        sys.argv = before_argv
        sys.path[:] = before_path
        for name in set(sys.modules) - before_modules:
            if _loaded_from_outside(sys.modules[name]):
                del sys.modules[name]
        NOTICES.handlers[:] = handlers
        NOTICES.propagate = propagate
        if debug is not None:
            os.environ["ROWPILOT_DEBUG"] = debug


def _loaded_from_outside(module: object) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and not str(Path(file).resolve()).startswith(_KEPT_ROOTS)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run the ``rowpilot`` command in-process in ``tmp_path``; returns a CompletedProcess."""

    def run(
        *args: str | os.PathLike[str], cwd: Path | None = None, debug: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return invoke_cli(*args, cwd=cwd or tmp_path, debug=debug)

    return run


@pytest.fixture
def cli_process(tmp_path: Path) -> Cli:
    """Run the real ``rowpilot`` console script in ``tmp_path``: for what only a process
    shows (signals, the exit code the shell sees, ``os._exit``, interpreter start-up)."""

    def run(
        *args: str | os.PathLike[str], cwd: Path | None = None, debug: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=cwd or tmp_path, debug=debug)

    return run


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    """``tmp_path/tasks.py`` with upper, async_upper, count_calls, fail_listed, returns_str,
    sleepy, async_sleepy and NOT_CALLABLE."""
    path = tmp_path / "tasks.py"
    path.write_text(TASKS, encoding="utf-8")
    return path


def read_calls(folder: Path) -> list[str]:
    """The keys count_calls/fail_listed were called with, one entry per call."""
    path = folder / "calls.txt"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


CallsReader = Callable[[Path], list[str]]


@pytest.fixture
def calls() -> CallsReader:
    """``calls(folder)``: the keys the counting tasks were called with, one per call."""
    return read_calls


GOOD_ROWS = [[f"k{i:02d}", f"text {i}"] for i in range(6)]


@pytest.fixture(scope="session", autouse=True)
def no_state_left_in_the_checkout() -> Iterator[None]:
    """A test that runs a job without a state folder of its own would leave
    ``.rowpilot/<job>`` in the checkout (the default state root is the working folder)."""
    root = Path(__file__).resolve().parents[1] / ".rowpilot"
    before = set(root.iterdir()) if root.is_dir() else set()
    yield
    after = set(root.iterdir()) if root.is_dir() else set()
    assert after <= before, f"tests left state in the checkout: {sorted(map(str, after - before))}"


@pytest.fixture(scope="session")
def good_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory from one good CLI run (tasks.py:upper over data.csv, keys k00-k05).

    Session-wide and read-only: copy it (shutil.copytree) before pointing a run at it.
    """
    folder = tmp_path_factory.mktemp("good")
    (folder / "tasks.py").write_text(TASKS, encoding="utf-8")
    with (folder / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "text"], *GOOD_ROWS])
    run = ["run", "data.csv", "--task", "tasks.py:upper", "--key", "id", "--workers", "4"]
    result = invoke_cli(*run, "--state", "state", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "state"


class BatchClock:
    """A Batch API run's waits between looks (``rowpilot.llm.batch.poll_sleep``), as moves
    of the simulator's batch clock: a batch test never waits for time to pass."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.sim.advance_batches(seconds)

    @classmethod
    def installed(cls, sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> BatchClock:
        """A clock for ``sim``, in place of the Batch API pass's wait for the test."""
        from rowpilot.llm import batch

        clock = cls(sim)
        monkeypatch.setattr(batch, "poll_sleep", clock)
        return clock


class Simulators(Protocol):
    def __call__(self, config: SimulatorConfig) -> Simulator: ...


@pytest.fixture(scope="session")
def _running_simulators() -> Iterator[dict[SimulatorConfig, Simulator]]:
    running: dict[SimulatorConfig, Simulator] = {}
    try:
        yield running
    finally:
        for simulator in running.values():
            simulator.stop_in_thread()


@pytest.fixture
def simulator_for(_running_simulators: dict[SimulatorConfig, Simulator]) -> Simulators:
    """``simulator_for(config)``: a running simulator, reset so that it is as fresh as a new
    one, started once per session for each config (a server start per test added up)."""

    return functools.partial(_fresh_simulator, _running_simulators)


def _fresh_simulator(
    running: dict[SimulatorConfig, Simulator], config: SimulatorConfig
) -> Simulator:
    """The session's simulator for ``config``: started the first time, reset after."""
    simulator = running.get(config)
    if simulator is None:
        simulator = running[config] = Simulator(config)
        simulator.start_in_thread()
    else:
        simulator.reset()
    return simulator


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray for a test module (2 CPUs, no dashboard, no usage stats), shared by its
    Ray tests; the executors see it running and neither start nor stop it. Per module, not
    per session: Ray's daemons left idle would take CPU from the rest of the suite."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(
        address="local",  # a new one: never a cluster another test or `ray start` left running
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def fake_sheets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSheets]:
    """The fake Sheets API (tests/fake_sheets.py) on 127.0.0.1, and this process's (and its
    subprocesses') environment pointed at it: the API root, a service account's key file
    whose token endpoint is the fake's, and a HOME without gspread's own files."""
    fake = FakeSheets()
    server = serve(fake)
    next(server)
    home = tmp_path / "home"
    home.mkdir()
    key_file = service_account_file(fake, tmp_path / "service-account.json")
    monkeypatch.setenv("ROWPILOT_SHEETS_API_URL", fake.url)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("HOME", str(home))
    try:
        yield fake
    finally:
        server.close()


@pytest.fixture(scope="session")
def report_job(
    _running_simulators: dict[SimulatorConfig, Simulator],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Job]:
    """The report tests' job (tests/reported_job.py), run once for the session: a budget
    stop, then a run to the end."""
    simulator = _fresh_simulator(_running_simulators, REPORT_CONFIG)
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = REPORT_KEY
    try:
        folder = tmp_path_factory.mktemp("report")
        source, state = write_rows(folder / "reviews.csv"), folder / "state"
        first = invoke_cli(*cli_args(source, simulator, state, budget=0.0009), cwd=folder)
        assert first.returncode == 3, first.stderr  # the budget stopped it
        second = run_job(simulator, source, state)
        yield Job(state, simulator, first.stdout, second)
    finally:
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before
