"""The ``rowpilot`` command in a temporary folder: in-process through its entry point
(``cli``), and as a real process (``cli_process``) where only a process can show it: the
exit codes the shell sees, a traceback with --debug, ``simulate`` stopped by SIGTERM, an
export while another process runs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest

from rowpilot.cli import app

if TYPE_CHECKING:
    import subprocess

    from conftest import CallsReader, Cli, WriteCsv

ROWS = [[f"k{i:02d}", f"text {i}"] for i in range(6)]
KEYS = [row[0] for row in ROWS]
# Every registered command, so a new one cannot ship without an example in its help.
COMMANDS = [
    command.name or command.callback.__name__
    for command in app.registered_commands
    if command.callback is not None
]


def run_args(source: str = "data.csv", task: str = "tasks.py:upper", *extra: str) -> list[str]:
    return ["run", source, "--task", task, "--key", "id", "--workers", "4", *extra]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def registry_items(state: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(state / "registry.sqlite")) as db:
        return db.execute("SELECT * FROM items ORDER BY key").fetchall()


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def job(tmp_path: Path, write_csv: WriteCsv, tasks_file: Path) -> Path:
    """tmp_path with data.csv (id, text; keys k00..k05) and tasks.py."""
    write_csv(tmp_path / "data.csv", ["id", "text"], ROWS)
    return tmp_path


# -- run and its outputs -----------------------------------------------------------------------


def test_run_writes_csv_jsonl_parquet_and_json_dir(job: Path, cli: Cli) -> None:
    first = ok(cli(*run_args(), "--state", "state", "-o", "out.csv", "--json-dir", "results"))
    assert "completed: 6 done, 0 failed" in first.stdout
    assert read_csv(job / "out.csv") == [
        ["id", "text", "upper"],
        *[[key, text, text.upper()] for key, text in ROWS],
    ]
    files = sorted(path.name for path in (job / "results").glob("*.json"))
    assert files == [f"{key}.json" for key in KEYS]
    assert json.loads((job / "results" / "k03.json").read_text(encoding="utf-8")) == {
        "_key": "k03",
        "upper": "TEXT 3",
    }

    second = ok(cli(*run_args(), "--state", "state", "-o", "out.jsonl"))
    assert "nothing to do" in second.stdout
    lines = (job / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": key, "text": text, "upper": text.upper()} for key, text in ROWS
    ]

    ok(cli(*run_args(), "--state", "state", "-o", "out.parquet"))
    table = pq.read_table(job / "out.parquet")
    assert table.column_names == ["id", "text", "upper"]
    assert table.to_pylist() == [
        {"id": key, "text": text, "upper": text.upper()} for key, text in ROWS
    ]


def test_no_progress_silences_the_progress_lines(job: Path, cli: Cli) -> None:
    shown = ok(cli(*run_args(), "--state", "shown"))
    assert "progress 6/6" in shown.stderr
    quiet = ok(cli(*run_args(), "--state", "quiet", "--no-progress"))
    assert "progress" not in quiet.stderr
    assert "completed: 6 done" in quiet.stdout


SHARD_NOTE = (
    "shard 2/4: pacing at 1/4 of each provider limit (--shard-limits full to use the whole limit)"
)


def test_a_shard_says_once_that_it_paces_at_its_share(job: Path, cli: Cli) -> None:
    split = ok(cli(*run_args(), "--shard", "2/4", "--state", "split"))
    assert split.stderr.splitlines()[0] == SHARD_NOTE  # above the progress lines
    assert split.stderr.count("shard 2/4") == 1
    [log] = (job / "split" / "logs").glob("*.jsonl")
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    [shared] = [event for event in events if event["event"] == "limits.shared"]
    assert (shared["shard"], shared["share"]) == ("2/4", 0.25)
    assert f"limits.shared {SHARD_NOTE}" in log.with_suffix(".log").read_text(encoding="utf-8")

    full = ok(cli(*run_args(), "--shard", "2/4", "--shard-limits", "full", "--state", "full"))
    assert "shard 2/4" not in full.stderr  # the whole limit, as a run that is not a shard
    assert "progress" in full.stderr


def test_toml_job_file_with_a_flag_overriding_it(job: Path, cli: Cli, calls: CallsReader) -> None:
    (job / "jobs").mkdir()
    (job / "jobs" / "job.toml").write_text(
        """\
name = "upper-job"

[source]
path = "../data.csv"
key = "id"

[task]
function = "../tasks.py:count_calls"

[run]
workers = 4
limit = 2
state = "../state"

[output]
path = "out.csv"
""",
        encoding="utf-8",
    )
    first = ok(cli("run", "jobs/job.toml"))
    assert "2 done" in first.stdout
    assert sorted(calls(job)) == ["k00", "k01"]
    assert len(read_csv(job / "jobs" / "out.csv")) == 1 + 2

    second = ok(cli("run", "jobs/job.toml", "--limit", "4"))
    assert "2 done, 0 failed, 2 skipped" in second.stdout
    assert sorted(calls(job)) == ["k00", "k01", "k02", "k03"]
    assert [row[0] for row in read_csv(job / "jobs" / "out.csv")[1:]] == KEYS[:4]
    assert (job / "state" / "registry.sqlite").is_file()

    status = ok(cli("status", "jobs/job.toml"))
    assert "done 4" in status.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(cli: Cli, command: str) -> None:
    result = ok(cli(command, "--help"))
    assert "Example" in result.stdout
    assert "$ rowpilot " + command in result.stdout


# -- status, export, failures ------------------------------------------------------------------


@pytest.mark.slow
def test_status_text_and_json_for_two_states(job: Path, cli: Cli) -> None:
    ok(cli(*run_args(), "--state", "one"))
    ok(cli(*run_args(), "--state", "two", "--limit", "2"))

    text = ok(cli("status", "one", "two")).stdout.splitlines()
    assert len(text) == 3
    assert text[0].startswith("one  done 6  failed 0 of 6")
    assert text[1].startswith("two  done 2  failed 0 of 2")
    assert text[2] == "TOTAL  done 8  failed 0  of 8"

    report = json.loads(ok(cli("status", "one", "two", "--json")).stdout)
    assert [(s["state"], s["done"], s["failed"], s["total"]) for s in report["states"]] == [
        ("one", 6, 0, 6),
        ("two", 2, 0, 2),
    ]
    assert report["states"][0]["last_run"]["status"] == "completed"
    assert report["total"] == {"done": 8, "failed": 0, "total": 8}

    single = ok(cli("status", "one")).stdout
    assert "TOTAL" not in single


@pytest.mark.slow
def test_export_and_failures(job: Path, cli: Cli) -> None:
    (job / "fail_keys.txt").write_text("k01\nk04\n", encoding="utf-8")
    run = cli(*run_args(task="tasks.py:fail_listed"), "--state", "state")
    assert run.returncode == 1, run.stderr
    assert "4 done, 2 failed" in run.stdout

    ok(cli("export", "state", "-o", "all.csv"))
    rows = read_csv(job / "all.csv")
    assert rows[0] == ["id", "text", "upper"]
    assert rows[1:] == [
        [key, text, "" if key in ("k01", "k04") else text.upper()] for key, text in ROWS
    ]
    ok(cli("export", "state", "-o", "done.jsonl", "--done-only"))
    done = [json.loads(line) for line in (job / "done.jsonl").read_text().splitlines()]
    assert [row["id"] for row in done] == ["k00", "k02", "k03", "k05"]

    listed = ok(cli("failures", "state")).stdout.splitlines()
    entries = [json.loads(line) for line in listed]
    assert [(e["key"], e["row"], e["error_type"], e["attempts"]) for e in entries] == [
        ("k01", 1, "ValueError", 1),
        ("k04", 4, "ValueError", 1),
    ]
    assert "listed key k01" in entries[0]["error"]

    ok(cli("failures", "state", "-o", "failures.jsonl", "--traceback"))
    written = [json.loads(line) for line in (job / "failures.jsonl").read_text().splitlines()]
    assert [e["key"] for e in written] == ["k01", "k04"]
    assert "ValueError" in written[0]["traceback"]


# -- merge, verify -----------------------------------------------------------------------------


@pytest.mark.slow
def test_merge_of_three_shards_equals_one_unsharded_run(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path, cli: Cli
) -> None:
    rows = [[f"id-{i:03d}", f"text {i}"] for i in range(30)]
    write_csv(tmp_path / "data.csv", ["id", "text"], rows)
    for k in (1, 2, 3):
        ok(cli(*run_args(), "--shard", f"{k}/3", "--state", f"shard{k}"))
    ok(cli(*run_args(), "--state", "full", "-o", "full.csv"))

    merged = ok(cli("merge", "shard1", "shard2", "shard3", "--into", "merged"))
    assert "30 items" in merged.stdout
    ok(cli("export", "merged", "-o", "merged.csv"))

    full, combined = read_csv(tmp_path / "full.csv"), read_csv(tmp_path / "merged.csv")
    assert combined[0] == full[0] == ["id", "text", "upper"]
    assert sorted(combined[1:]) == sorted(full[1:])
    assert len(full) == 31

    verified = ok(cli("verify", "merged", "--source", "data.csv", "--key", "id"))
    assert "complete" in verified.stdout
    assert "INCOMPLETE" not in verified.stdout


@pytest.mark.slow
def test_verify_complete_incomplete_and_duplicates(
    job: Path, cli: Cli, write_csv: WriteCsv
) -> None:
    ok(cli(*run_args(), "--state", "state", "--limit", "3"))
    incomplete = cli("verify", "state", "--source", "data.csv", "--key", "id")
    assert incomplete.returncode == 1, incomplete.stderr
    assert "missing 3" in incomplete.stdout
    assert "missing: 'k03', 'k04', 'k05'" in incomplete.stdout
    assert "INCOMPLETE" in incomplete.stdout

    ok(cli(*run_args(), "--state", "state"))
    complete = ok(cli("verify", "state", "--source", "data.csv", "--key", "id"))
    assert "done 6" in complete.stdout
    assert complete.stdout.splitlines()[-1] == "complete"

    write_csv(job / "dup.csv", ["id", "text"], [*ROWS, ["k02", "again"]])
    ok(cli(*run_args("dup.csv"), "--state", "dup-state", "--dedupe", "first"))
    duplicated = cli("verify", "dup-state", "--source", "dup.csv", "--key", "id", "--json")
    assert duplicated.returncode == 1, duplicated.stderr
    report = json.loads(duplicated.stdout)
    assert report["complete"] is False
    assert "'k02'" in report["duplicates"]


# -- bad input ---------------------------------------------------------------------------------


def _write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        (folder / name).write_bytes(data)

    return setup


def _no_setup(folder: Path) -> None:
    pass


@dataclass(frozen=True)
class BadInput:
    id: str
    args: list[str]
    names: list[str]  # what the one error line must say
    setup: Callable[[Path], None] = field(default=_no_setup)


LATIN1 = b"id,text\nk00,plain\nk01,caf\xe9\nk02,more\n"
DUPLICATES = b"id,text\nk00,a\nk01,b\nk00,c\nk02,d\nk01,e\n"

BAD_INPUTS = [
    BadInput("missing-input", run_args("missing.csv"), ["missing.csv", "no such file"]),
    BadInput(
        "latin1-as-utf8",
        run_args("latin.csv"),
        ["latin.csv", "line 3", "--encoding latin-1"],
        _write_bytes("latin.csv", LATIN1),
    ),
    BadInput(
        "ragged-row",
        run_args("ragged.csv"),
        ["ragged.csv", "line 4", "row 2", "3 fields"],
        _write_bytes("ragged.csv", b"id,text\nk00,a\nk01,b\nk02,c,extra\nk03,d\n"),
    ),
    BadInput("empty-file", run_args("empty.csv"), ["empty.csv"], _write_bytes("empty.csv", b"")),
    BadInput(
        "header-only",
        run_args("header.csv"),
        ["header.csv", "no rows"],
        _write_bytes("header.csv", b"id,text\n"),
    ),
    BadInput(
        "unknown-key",
        ["run", "data.csv", "--task", "tasks.py:upper", "--key", "nope", "--workers", "4"],
        ["data.csv", "column 'nope'", "'id', 'text'"],
    ),
    BadInput(
        "duplicate-keys",
        run_args("dup.csv"),
        ["dup.csv", "'k00'", "'k01'", "--duplicates first"],
        _write_bytes("dup.csv", DUPLICATES),
    ),
    BadInput("task-file-missing", run_args(task="nothere.py:upper"), ["nothere.py"]),
    BadInput(
        "task-module-raises",
        run_args(task="broken.py:upper"),
        ["broken.py", "RuntimeError", "broken on import"],
        _write_bytes("broken.py", b"raise RuntimeError('broken on import')\n"),
    ),
    BadInput(
        "task-not-callable",
        run_args(task="tasks.py:NOT_CALLABLE"),
        ["tasks.py:NOT_CALLABLE", "not callable"],
    ),
    BadInput(
        "output-through-a-file",
        [*run_args(), "-o", "data.csv/out.csv"],
        ["data.csv/out.csv", "data.csv"],
    ),
    BadInput(
        "output-format-unknown",
        [*run_args(), "-o", "out.txt"],
        ["out.txt", "cannot tell the table format", ".csv"],
    ),
    BadInput(
        "rows-past-the-end",
        [*run_args(), "--rows", "100:200"],
        ["--rows 100:200", "past the end", "6 rows"],
    ),
    BadInput(
        "shard-limits-unknown",
        [*run_args(), "--shard", "1/2", "--shard-limits", "half"],
        ["shard_limits", "'split'", "'full'"],
    ),
]


def assert_one_error_line(result: subprocess.CompletedProcess[str], names: list[str]) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{result.stderr}"
    (line,) = lines
    assert line.startswith("rowpilot: error:")
    assert "hint" in line, line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.id)
def test_bad_input_without_state(job: Path, cli: Cli, case: BadInput) -> None:
    case.setup(job)
    result = cli(*case.args, "--state", "state")
    assert_one_error_line(result, case.names)
    assert not (job / "state").exists()
    assert not (job / ".rowpilot").exists()


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.id)
def test_bad_input_leaves_an_existing_state_unchanged(
    job: Path, cli: Cli, good_state: Path, case: BadInput
) -> None:
    shutil.copytree(good_state, job / "state")
    before = registry_items(job / "state")
    assert len(before) == 6
    case.setup(job)
    result = cli(*case.args, "--state", "state")
    assert_one_error_line(result, case.names)
    assert registry_items(job / "state") == before


def test_a_task_that_returns_a_str_for_every_row_stops_early_leaving_the_state_unchanged(
    job: Path, cli: Cli, good_state: Path
) -> None:
    shutil.copytree(good_state, job / "state")
    before = registry_items(job / "state")
    result = cli(*run_args(task="tasks.py:returns_str"), "--state", "state", "--force")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "stopped: the first 5 items all failed alike" in result.stdout
    assert "returns_str returned a str" in result.stdout
    assert "--keep-going" in result.stdout
    assert registry_items(job / "state") == before  # the forced redo left nothing behind


@pytest.mark.parametrize(
    "case",
    [case for case in BAD_INPUTS if case.id in ("missing-input", "task-module-raises")],
    ids=lambda case: case.id,
)
def test_debug_prints_the_traceback(job: Path, cli: Cli, case: BadInput) -> None:
    case.setup(job)
    result = cli(*case.args, "--state", "state", debug=True)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("rowpilot: error:")
    assert not (job / "state").exists()


@pytest.mark.parametrize(
    ("case", "debug"),
    [(case, debug) for case in BAD_INPUTS if case.id == "task-module-raises" for debug in (0, 1)],
    ids=["one-line", "debug"],
)
def test_a_real_process_exits_2_with_one_line_or_the_traceback(
    job: Path, cli_process: Cli, case: BadInput, debug: int
) -> None:
    case.setup(job)
    result = cli_process(*case.args, "--state", "state", debug=bool(debug))
    if debug:
        assert result.returncode == 2
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("rowpilot: error:")
    else:
        assert_one_error_line(result, case.names)


def test_a_real_process_exits_0_then_1_when_items_failed(job: Path, cli_process: Cli) -> None:
    ok(cli_process(*run_args(), "--state", "good"))
    (job / "fail_keys.txt").write_text("k02\n", encoding="utf-8")
    failed = cli_process(*run_args(task="tasks.py:fail_listed"), "--state", "bad")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "5 done, 1 failed" in failed.stdout


def test_the_encoding_hint_fixes_a_latin1_file(job: Path, cli: Cli) -> None:
    (job / "latin.csv").write_bytes(LATIN1)
    line = assert_one_error_line(cli(*run_args("latin.csv"), "--state", "state"), ["latin.csv"])
    match = re.search(r"pass (--encoding \S+)", line)
    assert match is not None, line
    flag, value = match.group(1).split()

    fixed = ok(cli(*run_args("latin.csv"), "--state", "state", flag, value, "-o", "out.csv"))
    assert "3 done" in fixed.stdout
    assert read_csv(job / "out.csv")[2] == ["k01", "café", "CAFÉ"]


def test_dedupe_first_fixes_duplicate_keys(job: Path, cli: Cli) -> None:
    (job / "dup.csv").write_bytes(DUPLICATES)
    assert_one_error_line(cli(*run_args("dup.csv"), "--state", "state"), ["dup.csv"])
    assert not (job / "state").exists()

    fixed = ok(cli(*run_args("dup.csv"), "--state", "state", "--dedupe", "first", "-o", "out.csv"))
    assert "3 done" in fixed.stdout
    assert read_csv(job / "out.csv")[1:] == [
        ["k00", "a", "A"],
        ["k01", "b", "B"],
        ["k02", "d", "D"],
    ]


def test_dedupe_first_reports_left_out_rows_and_verify_agrees(job: Path, cli: Cli) -> None:
    (job / "dup.csv").write_bytes(DUPLICATES)
    fixed = ok(cli(*run_args("dup.csv"), "--state", "state", "--dedupe", "first"))
    assert "2 rows repeat an earlier row's key" in fixed.stdout
    assert "not processed yet" not in fixed.stdout
    checked = ok(cli("verify", "state", "--source", "dup.csv", "--key", "id", "--dedupe", "first"))
    assert "expected 3  done 3" in checked.stdout
    assert "stale 0" in checked.stdout
    assert checked.stdout.rstrip().endswith("complete")


# -- the key a state was made with (issue 10, item 3) ----------------------------------------


def test_a_run_export_or_verify_keyed_another_way_is_refused(job: Path, cli: Cli) -> None:
    ok(cli(*run_args(), "--state", "state", "--limit", "3"))
    before = registry_items(job / "state")
    unkeyed = ["run", "data.csv", "--task", "tasks.py:upper", "--state", "state", "-o", "o.csv"]
    line = assert_one_error_line(cli(*unkeyed), ["state", "the column 'id'", "row number"])
    assert "--key id" in line and "--state" in line
    assert registry_items(job / "state") == before
    assert not (job / "o.csv").exists()
    assert_one_error_line(cli("verify", "state", "--source", "data.csv"), ["the column 'id'"])
    assert_one_error_line(
        cli("verify", "state", "--source", "data.csv", "--key", "text"), ["the column 'text'"]
    )
    (job / "job.toml").write_text(
        'name = "j"\n[source]\npath = "data.csv"\nkey = "text"\n'
        '[task]\nfunction = "tasks.py:upper"\n[run]\nstate = "state"\n',
        encoding="utf-8",
    )
    assert_one_error_line(cli("export", "job.toml", "-o", "x.csv"), ["the column 'text'"])
    # The same key goes on where it stopped.
    resumed = ok(cli(*run_args(), "--state", "state", "-o", "out.csv"))
    assert "3 done" in resumed.stdout and "3 skipped" in resumed.stdout
    assert [row[0] for row in read_csv(job / "out.csv")[1:]] == KEYS


# -- export while a run is going (item 8) ----------------------------------------------------


def test_export_of_a_live_run_says_so_and_needs_partial(
    job: Path, cli: Cli, write_csv: WriteCsv
) -> None:
    import subprocess
    import sys

    write_csv(
        job / "slow.csv", ["id", "text", "sleep"], [[f"s{i:02d}", "t", "0.3"] for i in range(60)]
    )
    rowpilot = str(Path(sys.executable).parent / "rowpilot")
    command = [rowpilot, "run", "slow.csv", "--task", "tasks.py:sleepy", "--key", "id"]
    running = subprocess.Popen(
        [*command, "--workers", "2", "--state", "state", "--no-progress"],
        cwd=job,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_rows(job / "state", 2)
        refused = cli("export", "state", "-o", "now.csv")
        assert refused.returncode == 1
        assert "is still going" in refused.stderr and "--partial" in refused.stderr
        assert not (job / "now.csv").exists()
        partial = ok(cli("export", "state", "-o", "now.csv", "--partial"))
        assert "is still going" in partial.stderr
        assert 2 <= len(read_csv(job / "now.csv")) - 1 < 60
    finally:
        running.kill()
        running.wait(timeout=60)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for_rows(state: Path, count: int, timeout: float = 60.0) -> None:
    """Until another process's registry holds ``count`` items (read-only: never creates it)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            uri = f"file:{state / 'registry.sqlite'}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True)) as db:
                if db.execute("SELECT count(*) FROM items").fetchone()[0] >= count:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{state} never held {count} items")


# -- folders: symlinks out of them are not followed by default (item 17) -------------------


def test_a_symlink_out_of_the_folder_is_skipped_with_a_warning(
    tmp_path: Path, cli: Cli, tasks_file: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("inside", encoding="utf-8")
    secret = tmp_path / "outside.txt"
    secret.write_text("a secret outside the folder", encoding="utf-8")
    (folder / "b.txt").symlink_to(secret)
    base = ["run", "docs", "--task", f"{tasks_file}:upper", "--state"]
    skipped = ok(cli(*base, "s1", "-o", "s1.jsonl"))
    assert "b.txt" in skipped.stderr and "--follow-symlinks" in skipped.stderr
    assert [row["path"] for row in jsonl(tmp_path / "s1.jsonl")] == ["a.txt"]
    followed = ok(cli(*base, "s2", "-o", "s2.jsonl", "--follow-symlinks"))
    assert "b.txt" not in followed.stderr
    assert {row["path"]: row["upper"] for row in jsonl(tmp_path / "s2.jsonl")} == {
        "a.txt": "INSIDE",
        "b.txt": "A SECRET OUTSIDE THE FOLDER",
    }


# -- secrets in the command line (item 18) -------------------------------------------------


def test_credentials_in_a_url_are_never_stored_or_printed(job: Path, cli: Cli) -> None:
    secret = "hunter2-very-secret"
    url = f"http://alice:{secret}@127.0.0.1:9/v1"
    # --base-url is kept only by prompt tasks, but the command line is stored whatever it
    # carries: a plain task run with it must not write the password anywhere.
    result = cli(*run_args(), "--state", "state", "--base-url", url)
    everything = result.stdout + result.stderr
    for path in (job / "state").rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("utf-8", "replace")
    with closing(sqlite3.connect(job / "state" / "registry.sqlite")) as db:
        everything += " ".join(row[0] or "" for row in db.execute("SELECT command FROM runs"))
    assert secret not in everything
    assert "alice" not in everything
    assert "[REDACTED]@127.0.0.1:9" in everything


def test_json_dir_creates_its_folders_and_each_file_carries_its_key(job: Path, cli: Cli) -> None:
    ok(cli(*run_args(), "--state", "state", "--json-dir", "out/per/key"))
    files = sorted((job / "out" / "per" / "key").glob("*.json"))
    assert len(files) == len(KEYS)
    assert sorted(json.loads(f.read_text(encoding="utf-8"))["_key"] for f in files) == KEYS


def test_simulate_serves_the_openai_api_on_loopback(tmp_path: Path) -> None:
    import json as json_module
    import signal
    import subprocess
    import sys
    import urllib.request

    command = [
        str(Path(sys.executable).parent / "rowpilot"),
        "simulate",
        "--port",
        "0",
        "--rpm",
        "600",
        "--api-key",
        "sk-sim-cli",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = first.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            f"{url}/v1/models", headers={"Authorization": "Bearer sk-sim-cli"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            assert json_module.load(response)["data"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == -signal.SIGTERM


def test_simulate_takes_the_token_accounting_and_the_separate_limits(tmp_path: Path) -> None:
    import json as json_module
    import signal
    import subprocess
    import sys
    import urllib.request

    command = [str(Path(sys.executable).parent / "rowpilot"), "simulate", "--port", "0"]
    command += ["--tpm", "60000", "--output-tpm", "60000", "--token-accounting", "usage"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        body = {"model": "claude-haiku-4-5", "max_tokens": 500}
        body["messages"] = [{"role": "user", "content": "abcd"}]
        request = urllib.request.Request(
            f"{url}/v1/messages",
            data=json_module.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            used = json_module.load(response)["usage"]["output_tokens"]
            headers = response.headers
        # Settled at the real count: 1,000 held, less 1 prompt token and the answer's.
        assert int(headers["anthropic-ratelimit-tokens-remaining"]) >= 1000 - 1 - used
        assert int(headers["anthropic-ratelimit-output-tokens-remaining"]) >= 1000 - used
        assert used < 500
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == -signal.SIGTERM


def test_a_label_run_with_other_labels_exports_and_counts_only_its_own(
    tmp_path: Path, cli: Cli, write_csv: WriteCsv
) -> None:
    """The issue's case: a full run with some labels, then other labels on 20 rows."""
    rows = [[f"r{i:03d}", f"the parcel came late, item {i}"] for i in range(120)]
    write_csv(tmp_path / "data.csv", ["id", "text"], rows)
    label = ["label", "data.csv", "--key", "id", "--text-column", "text"]
    label += ["--model", "local/wordllama", "--state", "state"]
    ok(cli(*label, "--labels", "shipping", "praise", "-o", "first.csv"))
    second = ok(cli(*label, "--labels", "complaint", "spam", "--limit", "20", "-o", "out.csv"))
    table = read_csv(tmp_path / "out.csv")
    assert table[0] == ["id", "text", "complaint", "spam", "complaint_score", "spam_score"]
    assert len(table) == 1 + 20
    assert "labels over 20 labelled rows" in second.stdout
    shown = ok(cli("status", "state"))
    assert "done 20  failed 0  stale 100 of 120" in shown.stdout
    everything = ok(cli("export", "state", "-o", "all.csv", "--include-stale"))
    assert "wrote 120 rows" in everything.stdout
    assert {"shipping", "praise", "complaint", "spam"} <= set(read_csv(tmp_path / "all.csv")[0])


@pytest.mark.parametrize("value", ["0", "-3", "abc", "2.5"])
@pytest.mark.parametrize(
    "args",
    [
        ["run", "data.csv", "--key", "id", "--model", "openai/gpt-4o-mini", "--prompt", "{text}"],
        ["label", "data.csv", "--key", "id", "--text-column", "text", "--labels", "spam",
         "--model", "openai/gpt-4o-mini"],
        ["estimate", "job.toml"],
    ],
    ids=["run", "label", "estimate"],
)  # fmt: skip
def test_max_tokens_must_be_a_positive_integer_on_every_command(
    job: Path, cli: Cli, args: list[str], value: str
) -> None:
    (job / "job.toml").write_text(
        '[source]\npath = "data.csv"\nkey = "id"\n'
        '[task]\nmodel = "openai/gpt-4o-mini"\nprompt = "{text}"\n',
        encoding="utf-8",
    )
    result = cli(*args, "--max-tokens", value, "--state", "state")
    line = assert_one_error_line(result, ["--max-tokens", repr(value)])
    assert "positive integer" in line
    assert not (job / "state").exists()


def test_label_and_estimate_take_max_tokens(cli: Cli) -> None:
    for command in ("run", "label", "estimate"):
        shown = cli(command, "--help")
        assert "--max-tokens" in shown.stdout, command
