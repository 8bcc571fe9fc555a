"""``rowpilot doctor``: the machine, the keys (names only, never values), a job's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import invoke_cli
from rowpilot._config import build_config, read_job_file
from rowpilot._doctor import diagnose, lines
from rowpilot.engine.job import auto_workers
from rowpilot.engine.machine import cpu_count
from rowpilot.tasks.factory import build_task

# Fake keys, assembled so that secret scanners do not take this file for a leak.
CANARY = "sk-" + "canary-0f4c2d9e8b7a6153"
FILE_CANARY = "sk-ant-" + "canary-93be61d07c5a4f28"
CUSTOM_CANARY = "loc-" + "canary-6a0d5b3f91e2c874"
KEY_NAMES = {
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    "TOGETHER_API_KEY",
    "GROQ_API_KEY",
    "LOCAL_KEY",
}

TASKS = "def twice(row):\n    return {'twice': int(row['n']) * 2}\n"


def doctor(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``rowpilot doctor ARGS`` through the CLI's entry point, in-process (the report needs
    no process of its own), in ``cwd`` with no provider key in the environment but ``env``.
    The environment is put back whole afterwards, whatever the run read into it."""
    return _in_environment(env, lambda: invoke_cli("doctor", *args, cwd=cwd))


def _in_environment(
    env: dict[str, str], call: Callable[[], subprocess.CompletedProcess[str]]
) -> subprocess.CompletedProcess[str]:
    before = dict(os.environ)
    try:
        for name in KEY_NAMES:
            os.environ.pop(name, None)
        os.environ.update(env)
        return call()
    finally:
        os.environ.clear()
        os.environ.update(before)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """jobs/job.toml over data.csv with tasks.py:twice, workers auto, a memory cap."""
    (tmp_path / "data.csv").write_text("id,n\n" + "".join(f"k{i},{i}\n" for i in range(8)))
    (tmp_path / "tasks.py").write_text(TASKS, encoding="utf-8")
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "job.toml"
    path.write_text(
        '[source]\npath = "../data.csv"\nkey = "id"\n[task]\nfunction = "../tasks.py:twice"\n'
        '[run]\nworkers = "auto"\nmax_workers = 40\nmax_memory = 3000\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def prompt_job(tmp_path: Path) -> Path:
    """A prompt job with a .env file of keys, a custom provider, and named limits."""
    (tmp_path / "data.csv").write_text("id,text\nk0,hello\n", encoding="utf-8")
    (tmp_path / ".env").write_text(
        f"ANTHROPIC_API_KEY={FILE_CANARY}\nLOCAL_KEY={CUSTOM_CANARY}\nGROQ_API_KEY=\n",
        encoding="utf-8",
    )
    path = tmp_path / "prompt.toml"
    path.write_text(
        '[source]\npath = "data.csv"\nkey = "id"\n'
        '[task]\nmodel = "openai/gpt-4o-mini"\nprompt = "Say {text}"\nbatch_size = 5\n'
        '[run]\nworkers = "auto"\nrpm = 600\nenv_file = ".env"\n'
        '[limits."openai/gpt-4o-mini"]\nmax_concurrent = 10\ntpm = 90000\n'
        "[limits.anthropic]\nrpm = 50\n"
        '[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "LOCAL_KEY"\n',
        encoding="utf-8",
    )
    return path


def test_keys_are_named_never_shown(tmp_path: Path, prompt_job: Path) -> None:
    text = doctor(tmp_path, "prompt.toml", OPENAI_API_KEY=CANARY)
    as_json = doctor(tmp_path, "prompt.toml", "--json", OPENAI_API_KEY=CANARY)
    for result in (text, as_json):
        ok(result)
        for secret in (CANARY, FILE_CANARY, CUSTOM_CANARY):
            tail = secret.split("canary-")[1]
            for start in range(len(tail) - 5):  # no six characters of a key, anywhere
                assert tail[start : start + 6] not in result.stdout + result.stderr
    shown = dict(
        line.strip().split(maxsplit=1) for line in text.stdout.splitlines() if "_KEY " in line
    )
    assert shown == {
        "OPENAI_API_KEY": "set (from environment)",
        "ANTHROPIC_API_KEY": "set (from env file .env)",
        "OPENROUTER_API_KEY": "not set",
        "TOGETHER_API_KEY": "not set",
        "GROQ_API_KEY": "not set",  # an empty value is not a key
        "LOCAL_KEY": "set (from env file .env)",
    }
    keys = {key["name"]: key for key in json.loads(as_json.stdout)["keys"]}
    assert keys["OPENAI_API_KEY"] == {
        "name": "OPENAI_API_KEY",
        "provider": "openai",
        "set": True,
        "source": "environment",
    }
    assert keys["LOCAL_KEY"]["provider"] == "local"


def test_a_prompt_jobs_workers_and_limits(tmp_path: Path, prompt_job: Path) -> None:
    report = json.loads(ok(doctor(tmp_path, "prompt.toml", "--json")))["job"]
    # rpm 600 allows 10 requests/s, but tpm 90,000 at the least a request costs (its
    # prompt's own text + max_tokens 512, ~550 tokens) about 2.7/s: x 2 s x 1.2 = 7,
    # under the model's max_concurrent of 10, the ceiling.
    assert (report["workers"], report["workers_start"], report["workers_max"]) == ("auto", 7, 10)
    assert "tpm 90000 / " in report["workers_why"]
    assert "up to 5 rows" in report["workers_why"]
    assert report["limits"] == {
        "openai/gpt-4o-mini": {"rpm": 600.0, "tpm": 90000.0, "max_concurrent": 10},
        "anthropic": {"rpm": 50.0},
    }
    assert report["task_kind"] == "prompt"


def test_a_shards_limits_are_shown_as_its_share(
    tmp_path: Path, prompt_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = ok(doctor(tmp_path, "prompt.toml", "--shard", "2/4"))
    assert (
        "  limits       shard 2/4: pacing at 1/4 of each provider limit "
        "(--shard-limits full to use the whole limit)\n"
    ) in text
    assert (
        "  limits       openai/gpt-4o-mini: rpm 150 (1/4 of 600), tpm 22500 (1/4 of 90000), "
        "max_concurrent 2 (1/4 of 10)\n"
    ) in text
    assert "  limits       anthropic: rpm 12.5 (1/4 of 50)\n" in text
    assert "  state        .rowpilot/prompt/shard-2-of-4 (not created yet)" in text

    monkeypatch.chdir(tmp_path)  # the rest in-process: the same report, without a start-up
    report = diagnose(Path("prompt.toml"), overrides={"shard": "2/4"})["job"]
    assert (report["shard"], report["shard_limits"], report["limits_share"]) == (
        "2/4",
        "split",
        0.25,
    )
    assert report["limits"]["openai/gpt-4o-mini"]["rpm"] == 600.0  # as given, the share apart
    assert report["workers_max"] == 2  # auto sizes for the share's max_concurrent
    prompt_job.write_text(prompt_job.read_text().replace("[run]\n", '[run]\nshard = "2/4"\n'))
    whole = "\n".join(lines(diagnose(Path("prompt.toml"), overrides={"shard_limits": "full"})))
    assert "shard 2/4: pacing at the whole of each provider limit" in whole
    assert "openai/gpt-4o-mini: rpm 600, tpm 90000, max_concurrent 10\n" in whole
    assert "of 600" not in whole


def test_a_jobs_settings_without_touching_state(
    tmp_path: Path, job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As where PYTHONDONTWRITEBYTECODE is unset: importing tasks.py must not write its
    # __pycache__ beside it either.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    before = tree(tmp_path)
    text = ok(doctor(tmp_path, "jobs/job.toml"))
    report = json.loads(ok(doctor(tmp_path, "jobs/job.toml", "--json")))
    assert tree(tmp_path) == before  # no state directory, no log, nothing written
    monkeypatch.chdir(tmp_path)  # the job's paths are relative to it; the state to the cwd
    config = build_config(read_job_file(Path("jobs/job.toml")))
    expected = auto_workers(config, build_task(config))
    assert expected is not None
    assert report["job"]["workers_start"] == expected.workers
    assert report["job"]["workers_max"] == 40
    assert report["job"]["task_kind"] == "sync"
    assert report["job"]["state"] == os.path.join(".rowpilot", "job")
    assert report["job"]["state_exists"] is False
    assert report["machine"]["cpus"] == cpu_count()
    assert f"  workers      auto: starts at {expected.workers}, at most 40" in text
    assert "  max memory   3,000 MB resident, then admission pauses" in text
    assert "  state        .rowpilot/job (not created yet)" in text
    assert "python" in text and "rowpilot" in text and "lancedb" in text


def test_the_last_runs_sizing_is_read_from_its_log(tmp_path: Path, job: Path) -> None:
    run = _in_environment(
        {}, lambda: invoke_cli("run", "jobs/job.toml", "--no-progress", cwd=tmp_path)
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(ok(doctor(tmp_path, "jobs/job.toml", "--json")))["job"]
    assert report["state_exists"] is True
    last = report["last_run"]
    assert last["workers_start"] == report["workers_start"]
    assert last["workers_why"]
    assert last["admission_pauses"] == 0


def test_a_task_that_does_not_load_is_reported(tmp_path: Path, job: Path) -> None:
    job.write_text(job.read_text().replace("tasks.py:twice", "tasks.py:missing"))
    text = ok(doctor(tmp_path, "jobs/job.toml"))
    assert "  task error   " in text and "missing" in text


def test_without_a_job_and_with_a_bad_one(tmp_path: Path) -> None:
    report = json.loads(ok(doctor(tmp_path, "--json")))
    assert set(report) == {"machine", "keys", "sheets"}
    assert report["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
    (tmp_path / "bad.toml").write_text('[run]\nwokers = 3\n[source]\npath = "x.csv"\n')
    bad = doctor(tmp_path, "bad.toml")
    assert bad.returncode == 2
    assert bad.stderr.startswith("rowpilot: error: bad.toml: unknown setting run.wokers")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_executor_a_job_would_use_and_why(
    tmp_path: Path, job: Path, prompt_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = ok(doctor(tmp_path, "jobs/job.toml"))
    assert "  executor     local: local (the default)" in text
    monkeypatch.chdir(tmp_path)  # the rest in-process: the same report, without a start-up
    asked = tmp_path / "jobs" / "process.toml"
    asked.write_text(
        job.read_text().replace('workers = "auto"', 'workers = 2\nexecutor = "process"')
    )
    report = diagnose(Path("jobs/process.toml"))["job"]
    assert report["executor"] == "process"
    assert report["executor_why"].startswith("2 worker processes (--workers)")
    assert "killed with its process" in report["executor_why"]
    # A prompt job asked for Ray keeps its HTTP calls here, and says so.
    ray_prompt = tmp_path / "ray-prompt.toml"
    ray_prompt.write_text(prompt_job.read_text().replace("[run]\n", '[run]\nexecutor = "ray"\n'))
    report = diagnose(Path("ray-prompt.toml"))["job"]
    assert report["executor"] == "local"
    assert "--executor ray was asked" in report["executor_why"]
    assert "I/O-bound" in report["executor_why"]
    # A Ray setting without Ray is named as the error it is.
    stray = tmp_path / "jobs" / "stray.toml"
    stray.write_text(job.read_text().replace("[run]\n", "[run]\nray_workers = 4\n"))
    text = "\n".join(lines(diagnose(Path("jobs/stray.toml"))))
    assert "  executor     error: --ray-workers is for --executor ray" in text


@pytest.mark.parametrize(
    ("task", "shown"),
    [
        ('prompt = "Say {text}"', "  max_tokens   512 per row (default 512: free text)\n"),
        (
            'prompt = "Say {text}"\nmax_tokens = 40',
            "  max_tokens   40 per row (given)\n",
        ),
        (
            'text_column = "text"\nlabels = ["spam", "urgent"]',
            "  max_tokens   65 per row (from the schema: 2 labels, bound 39 tokens + margin)\n",
        ),
        (
            'prompt = "Sum {text}"\nfields = {summary = "str", ok = "bool"}',
            "  max_tokens   512 per row (default 512: field 'summary' is free text)\n",
        ),
        (
            'text_column = "text"\nlabels = ["spam"]\nmodel = "openai/o3-mini"',
            "  max_tokens   512 per row (default 512: openai/o3-mini counts hidden reasoning "
            "in its limit)\n",
        ),
    ],
)
def test_doctor_shows_the_max_tokens_chosen_and_why(tmp_path: Path, task: str, shown: str) -> None:
    (tmp_path / "data.csv").write_text("id,text\nk0,hello\n", encoding="utf-8")
    model = "" if "model =" in task else 'model = "openai/gpt-4o-mini"\n'
    (tmp_path / "job.toml").write_text(
        f'[source]\npath = "data.csv"\nkey = "id"\n[task]\n{model}{task}\n', encoding="utf-8"
    )
    report = diagnose(tmp_path / "job.toml", env_file=tmp_path / ".env")
    assert shown in "\n".join(lines(report)) + "\n"
    assert report["job"]["chosen"]["max_tokens"] == shown.split(maxsplit=1)[1].strip()


def test_doctor_shows_where_sheets_credentials_come_from_never_their_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    secret = "-----BEGIN PRIVATE KEY-----" + CANARY
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"type": "service_account", "private_key": secret}))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    report = diagnose()
    text = "\n".join(lines(report)) + json.dumps(report, default=str)  # text and --json
    assert f"google sheets credentials  {key_file} (from GOOGLE_APPLICATION_CREDENTIALS)" in text
    assert report["sheets"]["path"] == str(key_file)
    assert CANARY not in text and "PRIVATE" not in text
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert "google sheets credentials  not found" in "\n".join(lines(diagnose()))
    gspread_file = home / ".config" / "gspread" / "service_account.json"
    gspread_file.parent.mkdir(parents=True)
    gspread_file.write_text("{}")
    found = "\n".join(lines(diagnose()))
    assert f"google sheets credentials  {gspread_file} (from gspread)" in found
