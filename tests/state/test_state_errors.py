"""State problems end in one line, never a traceback: the real CLI on real files and mounts.

Each case runs the ``rowpilot`` console script as a subprocess against a state folder that
is broken for real: a tiny tmpfs that fills up, garbage written over a registry page, a
tmpfs remounted read-only, a file where a folder belongs. Every refusal is one stderr line,
``rowpilot: error: ... (hint: ...)``, exit 2, and leaves the state as it found it; where
the hint names a fix, the test runs the fix.

Mounts need root. A mount is made in a private mount namespace (``unshare -m``), by one
shell script per scenario that also builds the state there and runs the commands, so the
mount vanishes with that script and never touches the machine's own mounts.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import GOOD_ROWS, ROWPILOT

if TYPE_CHECKING:
    from conftest import CallsReader, Cli, WriteCsv

KEYS = [key for key, _ in GOOD_ROWS]
# The command that made the session-wide good_state: run again, it resumes that state.
RESUME = ["run", "data.csv", "--task", "tasks.py:upper", "--key", "id", "--workers", "4"]
MANY = 300  # rows of about 4 KB of output each: far more than a tiny disk holds

MORE_TASKS = '''\
def big(row):
    """About 4 KB of output per row."""
    return {"blob": "x" * 4096}


def chatty(row, ctx):
    """Logs 64 KB per row: its text log fills a tiny disk before the registry does."""
    ctx.logger.info("%s", "y" * 65536)
    return {"upper": row["text"].upper()}
'''


# -- helpers -------------------------------------------------------------------------------


def one_error_line(
    result: subprocess.CompletedProcess[str], *names: str, warnings: bool = False
) -> str:
    """The single ``rowpilot: error: ... (hint: ...)`` line of a failed command (exit 2, no
    traceback); with ``warnings``, ``rowpilot: warning:`` lines may come before it."""
    everything = f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 2, everything
    assert "Traceback" not in result.stdout + result.stderr, everything
    lines = result.stderr.splitlines()
    errors = [line for line in lines if not (warnings and line.startswith("rowpilot: warning: "))]
    assert len(errors) == 1, f"stderr is not one error line:\n{result.stderr}"
    (line,) = errors
    assert line == lines[-1], everything
    assert line.startswith("rowpilot: error: "), line
    assert "(hint: " in line and line.endswith(")"), line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that succeeded (exit 0, no traceback)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def done_count(state: Path) -> int:
    with closing(sqlite3.connect(state / "registry.sqlite")) as db:
        (count,) = db.execute("SELECT count(*) FROM items WHERE status = 'done'").fetchone()
    return int(count)


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def last_event(state: Path) -> dict[str, object]:
    (log,) = (state / "logs").glob("*.jsonl")
    event: dict[str, object] = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
    return event


def checkpointed(registry: Path) -> tuple[int, int, int]:
    """Every page folded into the main file; returns (items root page, page size, pages)."""
    with closing(sqlite3.connect(registry)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'items'").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        (pages,) = db.execute("PRAGMA page_count").fetchone()
    assert not Path(f"{registry}-wal").exists()
    return root, size, pages


def write_garbage(registry: Path, offset: int, length: int) -> None:
    with registry.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xa5" * length)


# -- a private mount namespace ---------------------------------------------------------------


@dataclass
class Namespace:
    """One shell script run under ``unshare -m``: mounts made in it vanish with it.

    Setup steps (mount, cp) must succeed (``set -e``); each ``rowpilot`` step records its
    stdout, stderr and exit code under its name, for the test to read afterwards."""

    cwd: Path
    steps: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def results(self) -> Path:
        return self.cwd / "steps"

    def sh(self, *words: str) -> None:
        self.steps.append(shlex.join(words))

    def mount_tmpfs(self, folder: str, size: str) -> None:
        self.sh("mkdir", "-p", folder)
        self.sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder)

    def remount(self, folder: str, options: str) -> None:
        self.sh("mount", "-o", f"remount,{options}", folder)

    def rowpilot(self, name: str, *args: str) -> None:
        out = shlex.quote(str(self.results / name))
        command = shlex.join([ROWPILOT, *args])
        self.steps.append(f"{command} >{out}.out 2>{out}.err && rc=0 || rc=$?; echo $rc >{out}.rc")
        self.names.append(name)

    def run(self) -> dict[str, subprocess.CompletedProcess[str]]:
        self.results.mkdir(exist_ok=True)
        script = "\n".join(["set -e", *self.steps])
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", script],
            cwd=self.cwd,
            env=_cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"the script failed:\n{script}\n{done.stderr}"
        return {name: self._result(name) for name in self.names}

    def _result(self, name: str) -> subprocess.CompletedProcess[str]:
        def read(suffix: str) -> str:
            return (self.results / f"{name}.{suffix}").read_text(encoding="utf-8")

        return subprocess.CompletedProcess(name, int(read("rc")), read("out"), read("err"))


def _cli_env() -> dict[str, str]:
    # As conftest.run_cli: PYTHONPATH (set by conftest) reaches the CLI, --debug is off.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ROWPILOT_DEBUG", None)
    return env


@pytest.fixture(scope="session")
def mount_refusal(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """Why ``unshare -m`` + ``mount -t tmpfs`` cannot work here (probed once), or None."""
    folder = tmp_path_factory.mktemp("probe")
    command = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(folder))}"
    try:
        trial = subprocess.run(
            ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return "there is no unshare command"
    if trial.returncode != 0:
        return f"unshare -m + mount -t tmpfs failed: {trial.stderr.strip()}"
    return None


@pytest.fixture
def namespace(job: Path, mount_refusal: str | None) -> Namespace:
    if mount_refusal is not None:
        pytest.skip(f"no real mounts for this test: {mount_refusal}")
    return Namespace(job)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def job(tmp_path: Path, write_csv: WriteCsv, tasks_file: Path) -> Path:
    """tmp_path with data.csv and tasks.py as good_state was made from (so a resume of it
    finds every row done), and more_tasks.py with big and chatty."""
    write_csv(tmp_path / "data.csv", ["id", "text"], GOOD_ROWS)
    (tmp_path / "more_tasks.py").write_text(MORE_TASKS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def many(job: Path, write_csv: WriteCsv) -> list[str]:
    """many.csv, 300 rows; returns the command that runs ``big`` over it on disk/state."""
    write_csv(job / "many.csv", ["id", "text"], [[f"m{i:03d}", f"t{i}"] for i in range(MANY)])
    return ["run", "many.csv", "--task", "more_tasks.py:big", "--key", "id", "--workers", "4"]


@pytest.fixture
def state(job: Path, good_state: Path) -> Path:
    """A copy of good_state (six done rows) as job/state."""
    shutil.copytree(good_state, job / "state")
    return job / "state"


# -- 1. a full disk --------------------------------------------------------------------------


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_what_was_committed(
    job: Path, many: list[str], namespace: Namespace
) -> None:
    ns = namespace
    ns.mount_tmpfs("disk", "256k")
    ns.rowpilot("full", *many, "--state", "disk/state", "--no-progress")
    ns.sh("cp", "-a", "disk/state", "copied")
    ns.rowpilot("status_full", "status", "disk/state")
    ns.remount("disk", "size=16m")  # the fix the hint names: free some space, run again
    ns.rowpilot("again", *many, "--state", "disk/state", "--no-progress")
    ns.rowpilot("status_after", "status", "disk/state")
    results = ns.run()

    one_error_line(
        results["full"], "disk/state/registry.sqlite", "the disk is full", "free some space"
    )
    kept = done_count(job / "copied")
    assert 0 < kept < MANY
    assert ok(results["status_full"]).startswith(f"disk/state  done {kept}  failed 0 of {MANY}")
    event = last_event(job / "copied")  # the event log said so too, and did not crash the run
    assert event["event"] == "run.error"
    assert "the disk is full" in str(event["error"])
    again = ok(results["again"])
    assert f"completed: {MANY - kept} done, 0 failed, {kept} skipped (done before)" in again
    assert ok(results["status_after"]).startswith(f"disk/state  done {MANY}  failed 0 of {MANY}")


def test_running_again_on_a_disk_that_is_still_full_is_one_line(
    job: Path, many: list[str], namespace: Namespace
) -> None:
    ns = namespace
    ns.mount_tmpfs("disk", "256k")
    ns.rowpilot("full", *many, "--state", "disk/state", "--no-progress")
    ns.sh("cp", "-a", "disk/state", "copied")
    ns.rowpilot("still_full", *many, "--state", "disk/state", "--no-progress")
    ns.rowpilot("status", "status", "disk/state")
    ns.remount("disk", "size=16m")
    ns.rowpilot("again", *many, "--state", "disk/state", "--no-progress")
    results = ns.run()

    one_error_line(results["full"], "the disk is full")
    kept = done_count(job / "copied")
    one_error_line(results["still_full"], "the disk is full", "free some space", warnings=True)
    assert ok(results["status"]).startswith(f"disk/state  done {kept}  failed 0 of {MANY}")
    # The refused run ended in order: the next one finds no crashed run to recover.
    assert f"completed: {MANY - kept} done" in ok(results["again"])
    assert "ended without closing" not in results["again"].stderr


def test_a_text_log_that_fills_the_disk_does_not_crash_the_run(
    job: Path, namespace: Namespace
) -> None:
    ns = namespace
    ns.mount_tmpfs("disk", "256k")
    chatty = ["run", "data.csv", "--task", "more_tasks.py:chatty", "--key", "id", "--workers", "1"]
    ns.rowpilot("full", *chatty, "--state", "disk/state", "--no-progress")
    results = ns.run()

    one_error_line(results["full"], "disk/state/registry.sqlite", "the disk is full", warnings=True)


# -- 2. a damaged registry ---------------------------------------------------------------------

DAMAGED_COMMANDS = {
    "run": [*RESUME, "--state", "state"],
    "status": ["status", "state"],
    "export": ["export", "state", "-o", "x.csv"],
    "verify": ["verify", "state", "--source", "data.csv", "--key", "id"],
}


@pytest.mark.parametrize("command", DAMAGED_COMMANDS)
def test_a_damaged_items_page_is_one_line_that_says_restore(
    job: Path, state: Path, cli: Cli, command: str
) -> None:
    registry = state / "registry.sqlite"
    root, size, pages = checkpointed(registry)
    assert 1 < root < pages  # a page in the middle of the file
    write_garbage(registry, (root - 1) * size, size)
    before = registry.read_bytes()

    line = one_error_line(cli(*DAMAGED_COMMANDS[command]), "state/registry.sqlite", "damaged")
    assert "restore it" in line and ".recover" in line
    assert registry.read_bytes() == before
    assert not Path(f"{registry}-wal").exists()
    assert not (job / "x.csv").exists()


@pytest.mark.parametrize("command", DAMAGED_COMMANDS)
def test_a_damaged_schema_page_is_one_line_that_says_restore(
    job: Path, state: Path, cli: Cli, command: str
) -> None:
    registry = state / "registry.sqlite"
    _, size, _ = checkpointed(registry)
    write_garbage(registry, 100, size - 100)  # page 1 after the file header: the schema
    before = registry.read_bytes()

    line = one_error_line(cli(*DAMAGED_COMMANDS[command]), "state/registry.sqlite", "damaged")
    assert "restore it" in line and ".recover" in line
    assert registry.read_bytes() == before


# -- 3, 4. a file where a folder belongs, a folder where the lock belongs -------------------------


@pytest.mark.parametrize(
    ("state_arg", "says"),
    [("afile", "is a file, not a folder"), ("afile/sub", "runs through afile, which is a file")],
)
def test_a_state_path_through_a_regular_file_is_one_line(
    job: Path, cli: Cli, calls: CallsReader, state_arg: str, says: str
) -> None:
    (job / "afile").write_text("mine\n", encoding="utf-8")
    run = ["run", "data.csv", "--task", "tasks.py:count_calls", "--key", "id"]
    one_error_line(cli(*run, "--state", state_arg), state_arg, says, "--state")
    assert (job / "afile").read_text(encoding="utf-8") == "mine\n"
    assert calls(job) == []


@pytest.mark.parametrize("command", ["status", "export"])
def test_reading_a_state_that_is_a_regular_file_is_one_line(
    job: Path, cli: Cli, command: str
) -> None:
    (job / "afile").write_text("mine\n", encoding="utf-8")
    args = ["status", "afile"] if command == "status" else ["export", "afile", "-o", "x.csv"]
    one_error_line(cli(*args), "afile")
    assert (job / "afile").read_text(encoding="utf-8") == "mine\n"
    assert not (job / "x.csv").exists()


def test_a_lock_that_is_a_folder_is_one_line_and_moving_it_away_resumes(
    job: Path, state: Path, cli: Cli
) -> None:
    (state / "lock").unlink()
    (state / "lock").mkdir()
    before = (state / "registry.sqlite").read_bytes()

    one_error_line(cli(*RESUME, "--state", "state"), "state/lock", "lock", "move")
    assert (state / "lock").is_dir()
    assert (state / "registry.sqlite").read_bytes() == before
    assert ok(cli("status", "state")).startswith("state  done 6  failed 0 of 6")  # reads on

    (state / "lock").rmdir()  # the fix the hint names
    assert "nothing to do: all 6 items were done before" in ok(cli(*RESUME, "--state", "state"))


# -- 5. a read-only state folder ----------------------------------------------------------------


def test_a_read_only_state_refuses_a_run_but_status_export_and_verify_read_it(
    job: Path, state: Path, namespace: Namespace
) -> None:
    state.rename(job / "intact")
    ns = namespace
    ns.mount_tmpfs("ro", "256k")
    ns.sh("cp", "-a", "intact", "ro/state")
    ns.remount("ro", "ro")
    ns.rowpilot("run", *RESUME, "--state", "ro/state")
    ns.rowpilot("status", "status", "ro/state")
    ns.rowpilot("status_json", "status", "ro/state", "--json")
    ns.rowpilot("export", "export", "ro/state", "-o", str(job / "out.csv"))
    ns.rowpilot("verify", "verify", "ro/state", "--source", "data.csv", "--key", "id")
    ns.rowpilot("report", "report", "ro/state", "-o", str(job / "report.html"))
    results = ns.run()

    one_error_line(results["run"], "ro/state", "read-only", "--state")
    assert ok(results["status"]).startswith("ro/state  done 6  failed 0 of 6  runs 1")
    (view,) = json.loads(ok(results["status_json"]))["states"]
    assert (view["done"], view["failed"], view["total"]) == (6, 0, 6)
    assert ok(results["export"]) == f"wrote 6 rows to {job / 'out.csv'}\n"
    assert csv_rows(job / "out.csv") == [
        ["id", "text", "upper"],
        *[[key, text, text.upper()] for key, text in GOOD_ROWS],
    ]
    verify = ok(results["verify"])
    assert "expected 6  done 6  failed 0  missing 0" in verify
    assert verify.splitlines()[-1] == "complete"
    ok(results["report"])
    page = (job / "report.html").read_text(encoding="utf-8")
    assert '<div class="counter" data-counter="done"><b>6</b>' in page


def test_a_read_only_registry_with_unfolded_writes_is_refused_then_read_from_a_copy(
    job: Path, state: Path, namespace: Namespace
) -> None:
    # A registry whose last writes are still in its -wal (as a killed run leaves it): read
    # immutable, those writes would be silently missing.
    state.rename(job / "intact")
    ns = namespace
    ns.mount_tmpfs("ro", "256k")
    ns.sh("cp", "-a", "intact", "ro/state")
    ns.remount("ro", "ro")
    ns.rowpilot("status", "status", "ro/state")
    ns.sh("cp", "-a", "ro/state", "copied")  # the fix the hint names
    ns.rowpilot("status_copy", "status", "copied")
    with closing(sqlite3.connect(job / "intact" / "registry.sqlite", isolation_level=None)) as db:
        db.execute("DELETE FROM items WHERE key = 'k05'")  # stays in the -wal while open
        assert Path(job / "intact" / "registry.sqlite-wal").stat().st_size > 0
        results = ns.run()

    one_error_line(results["status"], "ro/state/registry.sqlite", "read-only", "copy")
    assert ok(results["status_copy"]).startswith("copied  done 5  failed 0 of 6")


# -- 6. a registry.sqlite that is not rowpilot's (item 7) ----------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_sqlite(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE people (name TEXT)")
        db.execute("INSERT INTO people VALUES ('ada')")
        db.commit()


@pytest.mark.parametrize(
    ("make", "why"),
    [(_empty, "it is empty"), (_foreign_sqlite, "it has no rowpilot tables")],
    ids=["empty", "foreign-sqlite"],
)
def test_a_registry_file_that_is_not_rowpilots_is_refused_unchanged(
    job: Path, cli: Cli, calls: CallsReader, make: Callable[[Path], None], why: str
) -> None:
    (job / "state").mkdir()
    registry = job / "state" / "registry.sqlite"
    make(registry)
    before = registry.read_bytes()
    run = ["run", "data.csv", "--task", "tasks.py:count_calls", "--key", "id", "--state", "state"]

    for args in (run, ["status", "state"], ["export", "state", "-o", "x.csv"]):
        line = one_error_line(cli(*args), "state/registry.sqlite", "is not a rowpilot registry")
        assert why in line and "only a missing registry starts a new job" in line
        assert registry.read_bytes() == before
    assert calls(job) == []
    assert {p.name for p in (job / "state").iterdir()} <= {"lock", "logs", "registry.sqlite"}

    registry.rename(job / "moved.sqlite")  # the fix the hint names: only then a new job
    assert "completed: 6 done, 0 failed" in ok(cli(*run))
    assert sorted(calls(job)) == KEYS
    assert (job / "moved.sqlite").read_bytes() == before


# -- 7. a job file with a name (item 21) --------------------------------------------------------


@pytest.mark.parametrize("where", [".", "jobs"])
def test_a_named_job_files_commands_all_find_its_state(job: Path, cli: Cli, where: str) -> None:
    up = "" if where == "." else "../"
    (job / where).mkdir(exist_ok=True)
    job_file = str(Path(where) / "job.toml")
    (job / job_file).write_text(
        f"""\
name = "my job"

[source]
path = "{up}data.csv"
key = "id"

[task]
function = "{up}tasks.py:upper"
""",
        encoding="utf-8",
    )

    assert "state: .rowpilot/my_job" in ok(cli("run", job_file, "--no-progress"))
    assert done_count(job / ".rowpilot" / "my_job") == 6
    assert ok(cli("status", job_file)).startswith(".rowpilot/my_job  done 6  failed 0 of 6")
    assert ok(cli("export", job_file, "-o", "out.csv")) == "wrote 6 rows to out.csv\n"
    assert [row[0] for row in csv_rows(job / "out.csv")[1:]] == KEYS
    assert ok(cli("verify", job_file)).splitlines()[-1] == "complete"
    assert [p.name for p in (job / ".rowpilot").iterdir()] == ["my_job"]


# -- 8. status of every job (item 22e) ----------------------------------------------------------


def test_status_without_arguments_lists_every_job_and_shard_with_a_total(
    job: Path, cli: Cli
) -> None:
    run = ["run", "data.csv", "--task", "tasks.py:upper", "--key", "id", "--no-progress"]
    ok(cli(*run, "--name", "alpha"))
    ok(cli(*run, "--name", "beta", "--limit", "2"))
    ok(cli(*run, "--name", "sharded", "--shard", "1/2"))
    ok(cli(*run, "--name", "sharded", "--shard", "2/2"))

    lines = ok(cli("status")).splitlines()
    states = [line.split("  ")[0] for line in lines[:-1]]
    assert states == [
        ".rowpilot/alpha",
        ".rowpilot/beta",
        ".rowpilot/sharded/shard-1-of-2",
        ".rowpilot/sharded/shard-2-of-2",
    ]
    assert lines[0].startswith(".rowpilot/alpha  done 6  failed 0 of 6")
    assert lines[1].startswith(".rowpilot/beta  done 2  failed 0 of 2")
    assert lines[-1] == "TOTAL  done 14  failed 0  of 14"

    report = json.loads(ok(cli("status", "--json")))
    shards = [s for s in report["states"] if "shard-" in s["state"]]
    assert all(s["done"] == s["total"] > 0 for s in shards)
    assert sum(s["done"] for s in shards) == 6
    assert report["total"] == {"done": 14, "failed": 0, "total": 14}


@pytest.mark.parametrize("rowpilot_folder", [False, True], ids=["no-folder", "empty-folder"])
def test_status_without_arguments_and_without_jobs_is_one_line(
    job: Path, cli: Cli, rowpilot_folder: bool
) -> None:
    if rowpilot_folder:
        (job / ".rowpilot").mkdir()
    one_error_line(cli("status"), ".rowpilot", "run a job here first")


# -- 9. every output checked before the first item (item 20) -------------------------------------


@pytest.mark.parametrize(
    ("output", "names"),
    [
        (["-o", "out.txt"], ["out.txt", "table format", ".csv"]),
        (["--json-dir", "afile"], ["afile", "JSON folder", "is an existing file"]),
        (["-o", "data.csv/out.csv"], ["data.csv/out.csv", "runs through data.csv"]),
        (["--failures", "data.csv/f.jsonl"], ["data.csv/f.jsonl", "runs through data.csv"]),
    ],
    ids=["unknown-format", "json-dir-is-a-file", "output-through-a-file", "failures-through"],
)
def test_a_bad_output_fails_before_the_first_item(
    job: Path, cli: Cli, calls: CallsReader, output: list[str], names: list[str]
) -> None:
    (job / "afile").write_text("mine\n", encoding="utf-8")
    run = ["run", "data.csv", "--task", "tasks.py:count_calls", "--key", "id", "--state", "state"]
    one_error_line(cli(*run, *output), *names)
    assert calls(job) == []
    assert not (job / "state").exists()
    assert (job / "afile").read_text(encoding="utf-8") == "mine\n"


def test_an_output_on_a_read_only_mount_fails_before_the_first_item(
    job: Path, calls: CallsReader, namespace: Namespace
) -> None:
    ns = namespace
    ns.mount_tmpfs("ro", "64k")
    ns.remount("ro", "ro")
    run = ["run", "data.csv", "--task", "tasks.py:count_calls", "--key", "id", "--state", "state"]
    ns.rowpilot("table", *run, "-o", "ro/out.csv")
    ns.rowpilot("json_dir", *run, "--json-dir", "ro/results")
    results = ns.run()

    one_error_line(results["table"], "ro/out.csv")
    one_error_line(results["json_dir"], "ro/results")
    assert calls(job) == []
    assert not (job / "state").exists()


def test_status_without_arguments_shows_the_readable_states_beside_a_broken_one(
    job: Path, cli: Cli
) -> None:
    ok(cli(*RESUME, "--name", "fine"))
    broken = job / ".rowpilot" / "broken"
    broken.mkdir(parents=True)
    (broken / "registry.sqlite").write_bytes(b"")
    shown = cli("status")
    assert shown.returncode == 2
    assert f".rowpilot/fine  done {len(KEYS)}" in shown.stdout
    (line,) = shown.stderr.splitlines()
    assert line.startswith("rowpilot: error:") and "is not a rowpilot registry" in line
