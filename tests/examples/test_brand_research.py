"""The brand-research example (examples/brand-research, seed 004) end to end.

The real ``rowpilot`` CLI runs the example's own job file and task against a real
``Simulator`` on 127.0.0.1 that serves both the model (OpenAI's API) and the search API
(``POST /search``), each with its own rate limit. Only the limits, the state and the output
paths of the job file are changed, so that a full run of the 40 brands is bound by the
limits and still takes a few seconds. Every expected answer comes from the simulator's
own rules applied to the brand's search results and prompt, so a test proves that every
brand got its own analysis; the requests are counted at the simulator.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import invoke_cli, unmeasured, wait_until
from fake_sheets import FakeSheets
from rowpilot.simulator.server import (
    Simulator,
    SimulatorConfig,
    _row_object,
    _schema_fields,
    _untagged_text,
    search_answer,
)
from rowpilot.state.registry import REGISTRY_FILE

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "brand-research"
ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
KEY = "sk-" + "sim-brand-research-0c4e"  # assembled, so no scanner takes it for a leak
MODEL = "openai/gpt-4o-mini"
# Equal, so both buckets run full: 40 brands take about 3.5 s at 10 searches and 10 model
# requests a second, where 8 workers unlimited would take under 1 s.
SEARCH_RPM = 600
MODEL_RPM = 600
PRICE_IN, PRICE_OUT = 0.15e-6, 0.60e-6  # gpt-4o-mini, USD per token (genai-prices)


@cache
def example_tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("brand_research_tasks", EXAMPLE / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the schema's annotations through it
    spec.loader.exec_module(module)
    return module


@cache
def brands() -> list[dict[str, str]]:
    with (EXAMPLE / "brands.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def expected_output(row: dict[str, str]) -> dict[str, Any]:
    """What the task must return for ``row``, by the simulator's rules."""
    tasks = example_tasks()
    found = search_answer(tasks.search_query(row), tasks.MAX_RESULTS)["results"]
    results = [{name: r[name] for name in ("title", "url", "snippet")} for r in found]
    prompt = tasks.build_prompt(row, results)
    fields, _ = _schema_fields(tasks.BrandAnalysis.model_json_schema(), batch=False)
    analysis = _row_object(_untagged_text(prompt), fields)
    output: dict[str, Any] = tasks.brand_output(
        tasks.BrandAnalysis.model_validate(analysis), results
    )
    return output


def write_job(folder: Path, search_rpm: float = SEARCH_RPM, model_rpm: float = MODEL_RPM) -> Path:
    """The example's job.toml with its limits, state and outputs moved; nothing else."""
    text = (EXAMPLE / "job.toml").read_text(encoding="utf-8")
    changes = [
        (r'path = "brands\.csv"', f'path = "{EXAMPLE / "brands.csv"}"'),
        (r'function = "tasks\.py:', f'function = "{EXAMPLE / "tasks.py"}:'),
        (r"(\[limits\.search\]\nrpm = )\d+", rf"\g<1>{search_rpm:g}"),
        (r'(\[limits\."openai/gpt-4o-mini"\]\nrpm = )\d+', rf"\g<1>{model_rpm:g}"),
        (r'state = "[^"]*"', 'state = "state"'),
        (r'"\.\./\.\./demo-output/brand-research/', '"out/'),
    ]
    for pattern, replacement in changes:
        text, count = re.subn(pattern, replacement, text)
        assert count >= 1, f"job.toml no longer has {pattern}"
    (folder / "out").mkdir()
    job = folder / "job.toml"
    job.write_text(text, encoding="utf-8")
    return job


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimulatorConfig(
        api_key=KEY,
        rpm=MODEL_RPM,
        search_rpm=SEARCH_RPM,
        latency_ms=120,
        search_latency_ms=40,
        latency_jitter=0.2,
    )
    with Simulator(config) as simulator:
        yield simulator


def cli_env(sim: Simulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return {**env, "OPENAI_API_KEY": KEY, "SEARCH_API_KEY": KEY, "SEARCH_API_URL": sim.search_url}


def rowpilot(folder: Path, sim: Simulator, *args: str) -> subprocess.CompletedProcess[str]:
    """``rowpilot ARGS`` through the CLI's entry point in this process, in the environment
    a subprocess would get (cli_env), put back whole afterwards. Only a run that is killed
    needs a process; an interpreter start with the SDKs' import costs ~2 s a command."""
    before = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(cli_env(sim))
        return invoke_cli(*args, "--base-url", sim.openai_base_url, cwd=folder)
    finally:
        os.environ.clear()
        os.environ.update(before)


def answered(sim: Simulator) -> dict[str, int]:
    """Requests the simulator answered (200): searches and model requests."""
    requests = sim.stats()["requests"]
    return {
        "search": requests.get("search", {}).get("200", 0),
        "llm": requests.get("chat.completions", {}).get("200", 0),
    }


def registry_rows(state: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{state / REGISTRY_FILE}?mode=ro", uri=True) as db:
        return db.execute(query).fetchall()


def journaled(state: Path) -> int:
    """Steps journaled by a run another process is making (0 until its tables exist)."""
    try:
        return int(registry_rows(state, "SELECT count(*) FROM calls")[0][0])
    except sqlite3.OperationalError:
        return 0


def outputs(state: Path) -> dict[str, Any]:
    rows = registry_rows(state, "SELECT key, output FROM items WHERE status = 'done'")
    return {key: json.loads(output) for key, output in rows}


def check_every_brand(state: Path, count: int | None = None) -> None:
    expected = brands()[:count] if count is not None else brands()
    done = outputs(state)
    assert sorted(done) == sorted(row["brand_id"] for row in expected)
    for row in expected:
        assert done[row["brand_id"]] == expected_output(row), row["brand_id"]


def check_limit_held(sim: Simulator, resource: str, rpm: float) -> None:
    """No window held more requests than the provider's bucket lets through: a refill of
    rpm/60 a second plus the one second's worth it holds; and the client sent no more
    than that either (its arrivals), so it kept to the limit by itself."""
    for window in (1.0, 2.0):
        view = sim.admissions(window)[resource]
        allowed = rpm / 60 * (window + 1.0)
        assert view["max_admitted"] <= allowed, (resource, window, view)
        assert view["max_arrived"] <= allowed, (resource, window, view)


# -- the tests --------------------------------------------------------------------------


@pytest.mark.slow
def test_every_brand_gets_its_own_analysis_within_both_limits(
    sim: Simulator, tmp_path: Path
) -> None:
    write_job(tmp_path)
    first = rowpilot(tmp_path, sim, "run", "job.toml", "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "completed: 40 done, 0 failed, 0 skipped (done before) of 40" in first.stdout
    check_every_brand(tmp_path / "state")
    assert answered(sim) == {"search": 40, "llm": 40}
    check_limit_held(sim, "search", SEARCH_RPM)
    check_limit_held(sim, "gpt-4o-mini", MODEL_RPM)
    assert sim.stats()["rate_limited"] <= 2  # the client paced itself: next to no 429s
    # Bound by the limits: at 10 a second after the 1 s burst, not the 8 workers' pace.
    times = sim.admissions(times=True)["search"]["times"]
    assert times[-1] - times[0] >= (40 - SEARCH_RPM / 60) / (SEARCH_RPM / 60) * 0.9
    with (tmp_path / "out" / "brands-analysed.csv").open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [row["brand_id"] for row in table] == [row["brand_id"] for row in brands()]
    assert {row["sentiment"] for row in table} <= {"positive", "mixed", "negative"}

    # Unchanged rows are skipped: the second run asks nothing.
    again = rowpilot(tmp_path, sim, "run", "job.toml", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 40 items were done before" in again.stdout
    assert answered(sim) == {"search": 40, "llm": 40}

    # --force redoes every brand, replaying each step from the journal: nothing paid twice.
    forced = rowpilot(tmp_path, sim, "run", "job.toml", "--force", "--no-progress")
    assert forced.returncode == 0, forced.stderr
    assert "completed: 40 done, 0 failed, 0 skipped (done before) of 40" in forced.stdout
    assert "80 answers from the call cache" in forced.stdout
    assert answered(sim) == {"search": 40, "llm": 40}
    check_every_brand(tmp_path / "state")


@pytest.mark.slow
def test_limit_and_workers_run_the_first_brands_only(sim: Simulator, tmp_path: Path) -> None:
    write_job(tmp_path)
    done = rowpilot(
        tmp_path, sim, "run", "job.toml", "--limit", "6", "--workers", "2", "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert "completed: 6 done, 0 failed, 0 skipped (done before) of 6" in done.stdout
    check_every_brand(tmp_path / "state", count=6)
    assert answered(sim) == {"search": 6, "llm": 6}
    assert sim.stats()["in_flight_max"] <= 2  # model requests at once, within --workers


@pytest.mark.slow
def test_the_budget_stops_the_run_before_it_is_passed(sim: Simulator, tmp_path: Path) -> None:
    write_job(tmp_path)
    # About four brands: a search costs $0.005 and an analysis reserves ~$0.0015 (every
    # prompt byte a token, at the output price). Two workers, so that searches reserved
    # ahead do not take the whole budget before any analysis (which would leave every
    # brand pending, its search journaled for the next run).
    budget = 0.03
    stopped = rowpilot(
        tmp_path, sim, "run", "job.toml", "--budget", str(budget), "--workers", "2", "--no-progress"
    )
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped: budget reached" in stopped.stdout
    assert "items not processed yet" in stopped.stdout
    seen = answered(sim)
    tokens = sim.stats()["tokens"]
    llm_cost = tokens["input"] * PRICE_IN + tokens["output"] * PRICE_OUT
    assert seen["search"] >= 2
    assert seen["search"] * 0.005 + llm_cost <= budget + 1e-12  # what the APIs would bill
    spent = registry_rows(tmp_path / "state", "SELECT sum(cost_usd) FROM calls")[0][0]
    assert spent <= budget + 1e-12  # exact picodollars, summed here as floats
    done_before = len(outputs(tmp_path / "state"))
    assert 2 <= done_before <= 5
    # The rest was left pending: the next run (the job's own $1 budget) does only the rest.
    rest = rowpilot(tmp_path, sim, "run", "job.toml", "--no-progress")
    assert rest.returncode == 0, rest.stderr
    assert f"{done_before} skipped (done before)" in rest.stdout
    check_every_brand(tmp_path / "state")
    assert answered(sim) == {"search": 40, "llm": 40}  # a search made before is replayed


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_repeats_no_journaled_step(
    sim: Simulator, tmp_path: Path
) -> None:
    write_job(tmp_path)
    state = tmp_path / "state"
    command = [ROWPILOT, "run", "job.toml", "--workers", "4", "--no-progress"]
    command += ["--base-url", sim.openai_base_url]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=unmeasured(cli_env(sim)),  # SIGKILLed
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and journaled(state) < 12:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)
    assert process.stderr is not None
    process.stderr.close()
    wait_until(lambda: sim.handling == 0, "the requests in flight at the kill")
    steps_at_kill = journaled(state)
    requests_at_kill = sum(answered(sim).values())
    assert 12 <= steps_at_kill < 80
    # Answered but not journaled before the kill: at most the in-flight window's steps.
    assert requests_at_kill - steps_at_kill <= 2 * 4 * 2
    resumed = rowpilot(tmp_path, sim, *command[1:-2])  # the same command, not killed
    assert resumed.returncode == 0, resumed.stderr
    check_every_brand(state)
    steps_after = journaled(state)
    requests_after = sum(answered(sim).values())
    # Every request the resume made is a new journal entry: no journaled step was asked
    # again; over both runs, requests = unique steps + the ones lost in flight at the kill.
    assert requests_after - requests_at_kill == steps_after - steps_at_kill
    assert steps_after == 80  # one search and one analysis per brand, each once
    assert requests_after == steps_after + (requests_at_kill - steps_at_kill)


@pytest.mark.slow
def test_estimate_samples_for_real_then_projects_the_rest(sim: Simulator, tmp_path: Path) -> None:
    write_job(tmp_path)
    estimate = rowpilot(tmp_path, sim, "estimate", "job.toml", "--sample", "5")
    assert estimate.returncode == 0, estimate.stderr
    out = estimate.stdout
    assert "sample: 5 done, 0 failed" in out
    assert "calls per item: openai/gpt-4o-mini 1.0, search 1.0" in out
    assert "still to do: 35 items, about 70 calls" in out
    priced = re.search(r"cost: \$([\d.]+) more \(\$([\d.]+) per item\)", out)
    assert priced is not None, out
    cost = float(priced[2])
    assert 0.005 < cost < 0.0055  # a search, and a little for the analysis
    # 35 brands at 10 requests a second: the limits bind, not the 8 workers.
    # Which bound binds follows the latency measured in the sample: the rates when the
    # calls are quick, the workers when a busy machine makes them slow.
    assert re.search(r"with 8 workers \(bound by (workers|[^ ]+ requests/min)", out), out
    assert "search rpm 600" in out and "openai/gpt-4o-mini rpm 600" in out
    assert answered(sim) == {"search": 5, "llm": 5}
    run = rowpilot(tmp_path, sim, "run", "job.toml", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "35 done, 0 failed, 5 skipped (done before)" in run.stdout  # not paid again
    assert answered(sim) == {"search": 40, "llm": 40}


@pytest.mark.slow
def test_run_py_simulate_is_one_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    command = [
        sys.executable, str(EXAMPLE / "run.py"), "--simulate",
        "--llm-latency-ms", "30", "--search-latency-ms", "10", "--limit", "4", "--no-progress",
        "--state", str(tmp_path / "state"), "--output", str(tmp_path / "out.csv"),
        "--json-dir", str(tmp_path / "json"), "--failures", str(tmp_path / "failures.jsonl"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "search at 100 requests/min" in out  # the simulator takes the job's limits
    assert "completed: 4 done, 0 failed, 0 skipped (done before) of 4" in out
    assert "ok 4 (100.0%), failed 0 (0.0%)" in out
    assert "s per brand on average" in out and "x faster in parallel" in out
    assert re.search(r"search: 4 requests, 0 rate-limited", out), out
    assert re.search(r"gpt-4o-mini: 4 requests, 0 rate-limited", out), out
    check_every_brand(tmp_path / "state", count=4)
    assert len((tmp_path / "json" / "_index.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
@pytest.mark.skipif((EXAMPLE / ".env").exists(), reason="a real .env would run for real")
def test_run_py_without_keys_says_which_are_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--limit", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "set OPENAI_API_KEY and SEARCH_API_KEY" in done.stderr


# -- the estimate of a Python task, in process --------------------------------------------


def test_a_task_projection_is_bound_by_its_tightest_limit() -> None:
    from rowpilot._estimate import ResourceUse, TaskProjection
    from rowpilot.llm.limits import Limits

    model = ResourceUse("openai/gpt-4o-mini", 1.0, 3.0, 1_300.0, Limits(rpm=500, tpm=20_000))
    search = ResourceUse("search", 1.0, 0.8, 0.0, Limits(rpm=100, max_concurrent=2))
    projection = TaskProjection(
        total=40,
        done=5,
        calls=10,
        cost_per_item=0.0051,
        seconds_per_item=3.8,
        workers=8,
        resources=(model, search),
    )
    assert (projection.remaining, projection.calls_left) == (35, 70)
    assert projection.cost == pytest.approx(35 * 0.0051)
    assert projection.bounds() == pytest.approx(
        {
            "workers": 35 * 3.8 / 8,
            "openai/gpt-4o-mini requests/min": 35 / (500 / 60),
            "openai/gpt-4o-mini tokens/min": 35 * 1_300 / (20_000 / 60),
            "search requests/min": 35 / (100 / 60),
            "search max concurrent": 35 * 0.8 / 2,
        }
    )
    assert projection.parallel_seconds == pytest.approx(35 * 1_300 / (20_000 / 60))
    lines = projection.lines()
    assert "calls per item: openai/gpt-4o-mini 1.0, search 1.0; 3.80s per item" in lines[0]
    assert "2.2 min one item at a time, 2.3 min with 8 workers" in lines[3]
    assert "bound by openai/gpt-4o-mini tokens/min" in lines[3]
    assert "limits openai/gpt-4o-mini rpm 500, tpm 20,000; search rpm 100" in lines[3]


def test_a_task_without_steps_is_projected_from_its_own_time(tmp_path: Path) -> None:
    import asyncio

    from rowpilot._config import build_config
    from rowpilot._estimate import sample_and_project

    def count(row: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.01)
        return {"n": len(row["text"])}

    (tmp_path / "rows.csv").write_text(
        "id,text\n" + "".join(f"r{i},text {i}\n" for i in range(10)), encoding="utf-8"
    )
    settings = {"source": tmp_path / "rows.csv", "key": "id", "task": count, "workers": 2}
    config = build_config({**settings, "state": tmp_path / "state", "progress": False})
    result, projection = asyncio.run(sample_and_project(config, 4))
    assert result.summary.done == 4
    assert (projection.remaining, projection.calls, projection.cost) == (6, 0, 0.0)
    assert projection.seconds_per_item >= 0.01
    assert "calls per item: none" in projection.lines()[0]
    assert "bound by workers" in projection.lines()[3]


def test_the_local_model_has_nothing_to_estimate(tmp_path: Path) -> None:
    import asyncio

    from rowpilot._config import build_config
    from rowpilot._estimate import sample_and_project
    from rowpilot.errors import ConfigError

    config = build_config({"source": tmp_path / "x.csv", "embed": True, "text_column": "t"})
    with pytest.raises(ConfigError, match="costs nothing"):
        asyncio.run(sample_and_project(config, 4))


@pytest.mark.slow
def test_brands_read_from_a_google_sheet_get_their_analysis_written_back(
    sim: Simulator, fake_sheets: FakeSheets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "--source gsheet://..." instructions, against the fake Sheets API: the
    job file as it is, the brands read from a worksheet (then re-sorted), each brand's
    analysis written into its own row."""
    header = list(brands()[0])
    rows = [[row[name] for name in header] for row in brands()[:16]]  # 16: a short run
    fake_sheets.add_sheet("brandbook", "Brands", [header, *rows])
    write_job(tmp_path)
    for name, value in cli_env(sim).items():  # the CLI runs in this process: quicker
        monkeypatch.setenv(name, value)
    sheet_args = ["--source", "gsheet://brandbook/Brands", "--write-back", "--base-url"]
    sheet_args += [sim.openai_base_url, "--write-batch", "5", "--sheets-write-rpm", "6000"]
    sheet_args += ["--no-progress"]
    first = invoke_cli("run", "job.toml", *sheet_args, "--limit", "6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "write-back: gsheet://brandbook/Brands (6 rows written)" in first.stdout
    sheet = fake_sheets.sheet("brandbook", "Brands")
    sheet.rows[1:] = sorted(sheet.rows[1:], key=lambda row: str(row[1]))  # sorted by name
    rest = invoke_cli("run", "job.toml", *sheet_args, cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert "10 done, 0 failed, 6 skipped (done before) of 16" in rest.stdout
    by_id = {row["brand_id"]: row for row in brands()}
    written = fake_sheets.table("brandbook", "Brands")
    assert len(written) == 16
    for row in written:
        expected = expected_output(by_id[str(row["brand_id"])])
        cells = {name: "" if row[name] is None else row[name] for name in expected}
        assert cells == {
            name: value if value is not None else "" for name, value in expected.items()
        }, row["brand_id"]
    assert fake_sheets.count("values.batchUpdate") <= math.ceil(6 / 5) + math.ceil(10 / 5)
    assert answered(sim) == {"search": 16, "llm": 16}
