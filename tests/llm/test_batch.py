"""Prompt tasks through the providers' Batch APIs (``rowpilot.llm.batch``), end to end:
the engine, the real simulator's batch endpoints on 127.0.0.1, the official SDKs.

The simulator's batches run on its batch clock; the run's wait between looks
(``rowpilot.llm.batch.poll_sleep``) is replaced by a move of that clock, so no test
waits for time to pass. Expected answers are the simulator's rules applied to each row.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rowpilot
from conftest import BatchClock, Cli, Simulators
from rowpilot._config import build_config
from rowpilot._estimate import sample_and_project
from rowpilot._projection import Projection
from rowpilot.errors import ConfigError, ProviderError
from rowpilot.llm import batch
from rowpilot.llm.cost import cost_usd, find_price
from rowpilot.simulator.server import Simulator, SimulatorConfig, _row_object
from rowpilot.state.batches import LEDGER_FILE
from rowpilot.state.registry import REGISTRY_FILE

KEY = "sk-" + "batch-test-5be1"
MODEL = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-haiku-4-5"
LABELS = ["racist", "sexist", "homophobic"]
HOUR = 3600.0


def rows(n: int, start: int = 0) -> list[dict[str, str]]:
    words = ["kind", "racist", "plain", "sexist", "quiet", "homophobic", "green", "loud"]
    return [
        {
            "id": f"k{i:05d}",
            "text": f"row {i} is " + " ".join(words[j % 8] for j in range(i % 5 + 1)),
        }
        for i in range(start, start + n)
    ]


def expected(text: str) -> dict[str, Any]:
    return _row_object(text, {label: {"type": "boolean"} for label in LABELS})


@pytest.fixture(autouse=True)
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    return simulator_for(SimulatorConfig(api_key=KEY, completion_delay_s=2 * HOUR))


@pytest.fixture
def clock(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> BatchClock:
    return BatchClock.installed(sim, monkeypatch)


def base_url(sim: Simulator, model: str) -> str:
    return sim.anthropic_base_url if model.startswith("anthropic/") else sim.openai_base_url


def batch_run(
    sim: Simulator, source: Any, state: Path, model: str = MODEL, **settings: Any
) -> rowpilot.Result:
    defaults: dict[str, Any] = {
        "key": "id",
        "model": model,
        "base_url": base_url(sim, model),
        "text_column": "text",
        "labels": LABELS,
        "state": state,
        "env_file": None,
        "batch_api": True,
        "batch_poll": 900.0,
    }
    defaults.update(settings)
    return rowpilot.run(source=source, **defaults)


def batch_stats(sim: Simulator, provider: str = "openai") -> dict[str, Any]:
    stats: dict[str, Any] = sim.stats()["batches"][provider]
    return stats


def online_calls(sim: Simulator) -> int:
    requests = sim.stats()["requests"]
    return sum(sum(requests.get(name, {}).values()) for name in ("chat.completions", "messages"))


def query(state: Path, sql: str, file: str = REGISTRY_FILE) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{state / file}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def check_answers(result: rowpilot.Result, given: list[dict[str, str]]) -> None:
    records = {record.key: record for record in result}
    assert len(records) == len(given)
    for row in given:
        record = records[row["id"]]
        assert record.status == "done", (row, record.error)
        assert {label: record.output[label] for label in LABELS} == expected(row["text"])


def test_a_batch_run_answers_every_row_through_batches_within_the_request_limit(
    sim: Simulator, clock: BatchClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(batch.MAX_REQUESTS_ENV, "50")
    given = rows(120)
    result = batch_run(sim, given, tmp_path / "state")
    check_answers(result, given)
    assert result.summary.status == "completed"
    stats = batch_stats(sim)
    assert stats["created"] == 3  # 120 rows at 50 a batch: as few batches as fit
    # Sorted: a create that failed under load is made again after the next one.
    assert sorted(stats["rows_per_batch"]) == [20, 50, 50]
    assert online_calls(sim) == 0
    assert clock.waits and set(clock.waits) == {900.0}
    # Journaled like online answers: a call and an answer per row, at the batch price.
    calls = query(
        tmp_path / "state", "SELECT rows, cost_usd, input_tokens, output_tokens FROM calls"
    )
    assert len(calls) == 120 and all(row[0] == 1 for row in calls)
    online = find_price("openai", "gpt-4o-mini")
    price = find_price("openai", "gpt-4o-mini", batch=True)
    assert price is not None and online is not None and price.input == online.input / 2
    paid = sum(cost_usd(price, i, o) for _, _, i, o in calls)
    assert sum(row[1] for row in calls) == pytest.approx(paid)
    assert result.summary.cost_usd == pytest.approx(paid)
    statuses = query(tmp_path / "state", "SELECT status FROM batches", LEDGER_FILE)
    assert sorted(statuses) == [("collected",)] * 3

    again = batch_run(sim, given, tmp_path / "state")
    assert again.summary.skipped == 120
    assert batch_stats(sim)["created"] == 3  # nothing asked twice


def test_an_anthropic_batch_run_answers_every_row_through_message_batches(
    sim: Simulator, clock: BatchClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(batch.MAX_REQUESTS_ENV, "40")
    given = rows(100)
    result = batch_run(sim, given, tmp_path / "state", CLAUDE)
    check_answers(result, given)
    stats = batch_stats(sim, "anthropic")
    assert sorted(stats["rows_per_batch"]) == [20, 40, 40]
    assert online_calls(sim) == 0
    price = find_price("anthropic", "claude-haiku-4-5", batch=True)
    online = find_price("anthropic", "claude-haiku-4-5")
    assert price is not None and online is not None and price.output == online.output / 2
    calls = query(tmp_path / "state", "SELECT cost_usd, input_tokens, output_tokens FROM calls")
    assert sum(c for c, _, _ in calls) == pytest.approx(
        sum(cost_usd(price, i, o) for _, i, o in calls)
    )


def test_the_estimate_shows_the_batch_cost_and_window_beside_the_online_cost(
    sim: Simulator, tmp_path: Path
) -> None:
    given = rows(60)
    pd.DataFrame(given).to_csv(tmp_path / "rows.csv", index=False)
    config = build_config(
        {"source": tmp_path / "rows.csv", "key": "id", "model": MODEL,
         "base_url": sim.openai_base_url, "text_column": "text", "labels": LABELS,
         "state": tmp_path / "state", "env_file": None, "batch_api": True}
    )  # fmt: skip
    _, projection = asyncio.run(sample_and_project(config, 10))
    assert online_calls(sim) == 10  # the sample is asked online: a batch may take hours
    assert batch_stats(sim)["created"] == 0
    assert isinstance(projection, Projection) and projection.remaining == 50
    # One row a call online and in the batch: the same tokens at gpt-4o-mini's half price.
    assert projection.batch_cost == pytest.approx(projection.cost / 2, rel=0.02)
    line = next(line for line in projection.lines() if "Batch API" in line)
    assert f"${projection.batch_cost:,.4f} more" in line and "50% of online" in line
    assert "within 24h" in line

    # Ten rows a call: the batch's requests carry the same ten rows, so half again.
    packed = config.model_copy(update={"batch_size": 10, "state": tmp_path / "packed"})
    _, by_ten = asyncio.run(sample_and_project(packed, 20))
    assert isinstance(by_ten, Projection) and by_ten.batch_cost is not None
    assert by_ten.rows_per_call == 10
    assert by_ten.batch_cost == pytest.approx(by_ten.cost / 2, rel=0.05)


def test_a_batch_is_submitted_only_within_the_budget_and_the_rest_waits_for_the_next_run(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    given = rows(100)
    dear = {MODEL: {"input": 1000.0, "output": 1000.0}}  # a row's worst case: about $0.1
    state = tmp_path / "state"
    first = batch_run(sim, given, state, budget=2.0, prices=dear)
    assert first.summary.status == "budget_reached"
    assert first.summary.exit_code == 3
    assert first.summary.stop_reason is not None and "budget" in first.summary.stop_reason
    done = first.summary.done
    assert 0 < done < 100 and first.summary.pending == 100 - done
    reserved = query(state, "SELECT sum(worst_usd), sum(rows) FROM batches", LEDGER_FILE)[0]
    assert reserved[0] <= 2.0 and reserved[1] == done  # whole batches' worst cases fitted
    assert query(state, "SELECT sum(cost_usd) FROM calls")[0][0] <= 2.0
    assert batch_stats(sim)["rows"] == done

    second = batch_run(sim, given, state, budget=100.0, prices=dear)
    check_answers(second, given)
    assert second.summary.skipped == done
    assert batch_stats(sim)["rows"] == 100  # the rows asked once in all


# -- rows packed into requests ---------------------------------------------------------------


def calls_of(state: Path) -> set[tuple[str, int, str]]:
    return set(query(state, "SELECT call_key, rows, response FROM calls"))


def test_a_packed_batch_request_is_the_online_batched_request_journaled_alike(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    """--batch-size 10: the batch's requests are the online run's (the same call keys and
    answers: the same tagged prompt and max_tokens), each journaled as one call of ten
    rows with an answer a row; grouped in order, identical rows asked once."""
    given = [*rows(42), {"id": "twin", "text": rows(1)[0]["text"]}]
    packed = batch_run(sim, given, tmp_path / "batch", batch_size=10)
    check_answers(packed, given)
    assert batch_stats(sim)["rows"] == 5 and online_calls(sim) == 0  # 42 distinct rows
    sizes = query(tmp_path / "batch", "SELECT rows FROM calls ORDER BY rows DESC")
    assert [size for (size,) in sizes] == [10, 10, 10, 10, 2]
    assert query(tmp_path / "batch", "SELECT count(*) FROM answers")[0][0] == 42
    members = query(
        tmp_path / "batch", "SELECT item_key FROM batch_members ORDER BY rowid", LEDGER_FILE
    )
    assert [key for (key,) in members] == [row["id"] for row in given[:42]]  # in order

    online = batch_run(sim, given, tmp_path / "online", batch_api=False, batch_size=10,
                       workers=1)  # fmt: skip
    check_answers(online, given)
    assert calls_of(tmp_path / "online") == calls_of(tmp_path / "batch")

    # The cache and --force see no difference: nothing is asked again.
    again = batch_run(sim, given, tmp_path / "batch", batch_size=10, force=True)
    check_answers(again, given)
    assert again.summary.cost_usd == 0.0 and batch_stats(sim)["created"] == 1


def test_a_packed_batch_reserves_its_requests_worst_case_not_a_row_a_request(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    given = rows(40)
    worst = "SELECT sum(worst_usd) FROM batches"
    for size in (1, 10):
        state = tmp_path / f"by{size}"
        check_answers(batch_run(sim, given, state, batch_size=size, budget=5.0), given)
        spent = query(state, "SELECT sum(cost_usd) FROM calls")[0][0]
        assert 0 < spent <= query(state, worst, LEDGER_FILE)[0][0]
    # Ten rows share one copy of the instructions and the answer's wrapper.
    assert (
        query(tmp_path / "by10", worst, LEDGER_FILE)[0][0]
        < (query(tmp_path / "by1", worst, LEDGER_FILE)[0][0])
    )


def test_status_counts_a_packed_batch_in_requests_and_rows(
    sim: Simulator, clock: BatchClock, tmp_path: Path, cli: Cli
) -> None:
    given, state = rows(30), tmp_path / "state"
    waiting = batch_run(sim, given, state, batch_size=10, detach=True)
    assert waiting.summary.status == "waiting"
    shown = cli("status", str(state)).stdout
    assert "0 of 3 requests (30 rows) done at the last look" in shown, shown


def test_a_mixed_packed_job_groups_only_the_rows_not_answered_online(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    given = rows(60)
    state = tmp_path / "state"
    answered = given[::2]  # every other row, online
    batch_run(sim, answered, state, batch_api=False, batch_size=10)
    paid_online = online_calls(sim)
    mixed = batch_run(sim, given, state, batch_size=10)
    check_answers(mixed, given)
    assert mixed.summary.skipped == 30 and online_calls(sim) == paid_online
    assert batch_stats(sim)["rows"] == 3  # the other 30, ten a request
    members = query(state, "SELECT item_key FROM batch_members ORDER BY rowid", LEDGER_FILE)
    assert [key for (key,) in members] == [row["id"] for row in given[1::2]]


# -- rows a batch did not answer ----------------------------------------------------------


def errors_sim(simulator_for: Simulators, **batch: Any) -> Simulator:
    return simulator_for(SimulatorConfig(api_key=KEY, completion_delay_s=HOUR, **batch))


def test_rows_a_batch_answered_with_an_error_go_into_a_later_batch(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch gives its rows new custom_ids, so the simulator draws each row's error
    again in every batch: a row errs in k batches running with chance 0.2^k."""
    sim = errors_sim(simulator_for, batch_row_errors=0.2)
    BatchClock.installed(sim, monkeypatch)
    given = rows(100)
    result = batch_run(sim, given, tmp_path / "state", max_attempts=8)
    check_answers(result, given)  # failing: a row erred in 8 batches running (0.2^8)
    stats = batch_stats(sim)
    sizes = stats["rows_per_batch"]
    assert sizes[0] == 100 and len(sizes) >= 2  # 20 errors expected in the first
    assert sum(sizes[1:]) == stats["row_errors"]  # only the errored rows asked again
    assert sizes == sorted(sizes, reverse=True)
    assert online_calls(sim) == 0


def test_the_rows_of_a_packed_request_that_erred_go_into_a_later_batch(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = errors_sim(simulator_for, batch_row_errors=0.4)
    BatchClock.installed(sim, monkeypatch)
    given, state = rows(60), tmp_path / "state"
    result = batch_run(sim, given, state, batch_size=5, max_attempts=10)
    check_answers(result, given)
    stats = batch_stats(sim)
    sizes = stats["rows_per_batch"]
    assert sizes[0] == 12 and stats["row_errors"] > 0
    assert sum(sizes[1:]) == stats["row_errors"]  # only the erred requests asked again
    assert online_calls(sim) == 0
    assert query(state, "SELECT count(*), sum(rows) FROM calls")[0] == (12, 60)


def test_rows_a_packed_answer_missed_are_asked_online_and_the_rows_it_held_kept(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch answer loses its last row (the simulator's batch missing_field): the
    rows it held whole are journaled from it, the one it missed is asked online alone,
    as the online bisection ends, at the online price; nothing goes into a later batch."""
    sim = errors_sim(simulator_for, batch_missing_field=1.0)
    BatchClock.installed(sim, monkeypatch)
    given, state = rows(20), tmp_path / "state"
    result = batch_run(sim, given, state, batch_size=5)
    check_answers(result, given)
    assert batch_stats(sim)["created"] == 1 and batch_stats(sim)["rows"] == 4
    assert online_calls(sim) == 4  # the last row of each request, one call each
    kept = query(state, "SELECT c.rows, count(a.row_key) FROM calls c LEFT JOIN answers a"
                        " ON a.call_key = c.call_key GROUP BY c.call_key")  # fmt: skip
    assert sorted(kept) == [(1, 1)] * 4 + [(5, 4)] * 4
    price, cheap = find_price("openai", "gpt-4o-mini"), find_price("openai", "gpt-4o-mini",
                                                                  batch=True)  # fmt: skip
    assert price is not None and cheap is not None
    for rows_asked, tokens_in, tokens_out, cost in query(
        state, "SELECT rows, input_tokens, output_tokens, cost_usd FROM calls"
    ):
        paid = price if rows_asked == 1 else cheap  # the online calls at the online price
        assert cost == pytest.approx(cost_usd(paid, tokens_in, tokens_out))


def test_an_invalid_packed_answer_sends_its_rows_online(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = errors_sim(simulator_for, batch_bad_content=1.0)
    BatchClock.installed(sim, monkeypatch)
    given, state = rows(12), tmp_path / "state"
    result = batch_run(sim, given, state, batch_size=6)
    check_answers(result, given)
    assert batch_stats(sim)["rows"] == 2 and online_calls(sim) == 12
    assert query(state, "SELECT count(*) FROM answers WHERE call_key IN"
                        " (SELECT call_key FROM calls WHERE rows = 6)")[0][0] == 0  # fmt: skip
    # A resumed run finds the rows answered: neither a batch nor a call more.
    again = batch_run(sim, given, state, batch_size=6)
    check_answers(again, given)
    assert batch_stats(sim)["created"] == 1 and online_calls(sim) == 12


def test_an_invalid_one_row_batch_answer_is_repaired_online_from_the_journaled_answer(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row a request: the invalid answer is journaled under the row's online call key,
    so the online path replays it and asks one repair request (carrying the bad answer),
    not the question again."""
    sim = errors_sim(simulator_for, batch_bad_content=1.0)
    BatchClock.installed(sim, monkeypatch)
    given, state = rows(8), tmp_path / "state"
    result = batch_run(sim, given, state)
    check_answers(result, given)
    assert batch_stats(sim)["rows"] == 8 and online_calls(sim) == 8  # one repair a row
    repairs = events(state, "item.repair")
    assert sorted(event["key"] for event in repairs) == [row["id"] for row in given]
    assert all(event["repair"] == 1 for event in repairs)
    assert query(state, "SELECT count(*) FROM calls")[0][0] == 16


def test_rows_a_share_of_faulted_one_row_answers_spoilt_are_each_repaired_online(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch content knobs are shares: 0.5 of the rows faulted, drawn per request."""
    sim = errors_sim(simulator_for, batch_bad_content=0.25, batch_missing_field=0.25)
    BatchClock.installed(sim, monkeypatch)
    given, state = rows(200), tmp_path / "state"
    check_answers(batch_run(sim, given, state), given)
    assert batch_stats(sim)["rows"] == 200
    assert 60 <= online_calls(sim) <= 140  # a repair for each faulted row (binomial, p=0.5)


def test_rows_that_err_in_every_batch_fail_after_max_attempts_batches(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = errors_sim(simulator_for, batch_row_errors=0.5)
    BatchClock.installed(sim, monkeypatch)
    result = batch_run(sim, rows(100), tmp_path / "state", max_attempts=2)
    stats = batch_stats(sim)
    first, second = stats["rows_per_batch"]  # about 50, then about 25 err again
    assert first == 100
    failed = stats["row_errors"] - second
    assert result.summary.failed == failed > 0 and result.summary.done == 100 - failed
    assert result.summary.causes == {"server": failed}
    error = result.failures()[0].error or ""
    assert "no batch answered key" in error and "in 2 batch(es)" in error
    assert online_calls(sim) == 0


def test_with_the_online_fallback_rows_a_batch_did_not_answer_are_asked_online(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = errors_sim(simulator_for, batch_row_errors=0.2)
    BatchClock.installed(sim, monkeypatch)
    given = rows(100)
    result = batch_run(sim, given, tmp_path / "state", batch_fallback="online")
    check_answers(result, given)
    stats = batch_stats(sim)
    assert stats["created"] == 1
    assert online_calls(sim) == stats["row_errors"] > 0


def test_rows_left_unanswered_when_a_batch_expires_are_asked_again(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Row i of n is done at 2h * (i + 1) / n; the batch expires at 1.5h: the last quarter
    # of every batch expires (and a batch of one row always does).
    sim = simulator_for(
        SimulatorConfig(api_key=KEY, completion_delay_s=2 * HOUR, expire_after_s=1.5 * HOUR)
    )
    BatchClock.installed(sim, monkeypatch)
    given = rows(100)
    result = batch_run(sim, given, tmp_path / "state", batch_fallback="online")
    check_answers(result, given)
    stats = batch_stats(sim)
    assert stats["expired"] == 1 and stats["rows_per_batch"] == [100]
    assert online_calls(sim) == 25  # the expired quarter, online

    again = batch_run(sim, rows(40, start=100), tmp_path / "state", max_attempts=3)
    assert batch_stats(sim)["rows_per_batch"] == [100, 40, 10, 3]  # a quarter each time
    assert again.summary.done == 40 - 1 and again.summary.failed == 1


# -- detached runs ----------------------------------------------------------------------


def test_a_detached_run_submits_and_exits_waiting_then_the_same_command_collects(
    sim: Simulator, clock: BatchClock, tmp_path: Path, cli: Cli
) -> None:
    given = rows(100)
    pd.DataFrame(given).to_csv(tmp_path / "rows.csv", index=False)
    command = (
        "run", "rows.csv", "--key", "id", "--model", MODEL, "--base-url", sim.openai_base_url,
        "--text-column", "text", "--labels", ",".join(LABELS), "--batch-api", "--detach",
        "--state", "state", "--progress",
    )  # fmt: skip
    first = cli(*command)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("waiting: 0 done"), first.stdout
    assert "100 rows wait in 1 open batch(es)" in first.stdout
    assert batch_stats(sim)["created"] == 1 and not clock.waits  # submitted, not waited for
    assert "batches 1 open, 0 collected; rows 0/100 answered" in first.stderr  # progress

    shown = cli("status", "state")
    assert "last run waiting" in shown.stdout, shown.stdout
    (line,) = [line for line in shown.stdout.splitlines() if "open batch" in line]
    batch_id = query(tmp_path / "state", "SELECT batch_id FROM batches", LEDGER_FILE)[0][0]
    assert f"open batch openai {batch_id}: 0 of 100 rows done" in line

    sim.advance_batches(HOUR)  # half done: the next look says so, the run goes on waiting
    again = cli(*command)
    assert again.returncode == 0 and again.stdout.startswith("waiting: 0 done"), again.stdout
    assert "50 of 100 rows done" in cli("status", "state").stdout
    sim.advance_batches(HOUR)
    last = cli(*command)
    assert last.returncode == 0 and last.stdout.startswith("completed: 100 done"), last.stdout
    assert "batches 0 open, 1 collected; rows 100/100 answered" in last.stderr
    assert batch_stats(sim)["created"] == 1 and online_calls(sim) == 0
    assert "open batch" not in cli("status", "state").stdout
    check_answers(batch_run(sim, tmp_path / "rows.csv", tmp_path / "state"), given)


def test_a_mixed_job_sends_to_batches_only_the_rows_not_answered_online_before(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    given = rows(100)
    state = tmp_path / "state"
    online = batch_run(sim, given, state, batch_api=False, limit=50)
    assert online.summary.done == 50 and online_calls(sim) == 50
    mixed = batch_run(sim, given, state)
    check_answers(mixed, given)
    assert mixed.summary.skipped == 50
    assert batch_stats(sim)["rows"] == 50 and online_calls(sim) == 50  # only the rest
    # --force redoes every row from the journal: nothing is asked again, online or batched.
    forced = batch_run(sim, given, state, force=True)
    assert forced.summary.done == 100 and forced.summary.cost_usd == 0.0
    assert batch_stats(sim)["created"] == 1 and online_calls(sim) == 50
    costs = query(state, "SELECT count(*), sum(cost_usd) FROM calls")[0]
    assert costs[0] == 100


# -- packing and refusals -------------------------------------------------------------------


@given(
    sizes=st.lists(st.integers(1, 5_000), max_size=300),
    max_requests=st.integers(1, 60),
    max_bytes=st.integers(2_000, 60_000),
)
def test_requests_are_packed_in_order_into_the_fewest_batches_within_the_limits(
    sizes: list[int], max_requests: int, max_bytes: int
) -> None:
    counts = batch.pack(sizes, max_requests, max_bytes)
    assert sum(counts) == len(sizes) and all(count > 0 for count in counts)
    start = 0
    for index, count in enumerate(counts):
        part = sizes[start : start + count]
        assert count <= max_requests
        assert count == 1 or sum(part) + batch._BODY_OVERHEAD <= max_bytes
        if index + 1 < len(counts):  # full: the next request would not have fitted
            following = sizes[start + count]
            assert count == max_requests or sum(part) + following + batch._BODY_OVERHEAD > max_bytes
        start += count


def test_batch_settings_that_cannot_work_are_refused_before_anything_runs(
    sim: Simulator, tmp_path: Path
) -> None:
    given = rows(5)
    with pytest.raises(ConfigError, match="--detach leaves batches to wait"):
        batch_run(sim, given, tmp_path / "state", batch_api=False, detach=True)
    with pytest.raises(ConfigError, match="one-shot iterator can be read once"):
        batch_run(sim, iter(given), tmp_path / "state")
    with pytest.raises(ConfigError, match="--batch-api would do nothing"):
        batch_run(sim, given, tmp_path / "state", model="local/wordllama", base_url=None)
    assert not (tmp_path / "state").exists()


class FailingLooks(BatchClock):
    """The batch clock, and from the first wait on, the next ``count`` batch requests fail
    with a 500 (once)."""

    def __init__(self, sim: Simulator, count: int) -> None:
        super().__init__(sim)
        self.count = count

    async def __call__(self, seconds: float) -> None:
        if not self.waits:
            self.sim.fail_batch_requests(self.count)
        await super().__call__(seconds)


def events(state: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for log in (state / "logs").glob("*.jsonl"):
        for line in log.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def test_a_provider_error_while_waiting_is_ridden_out_and_too_many_in_a_row_end_the_run(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = rows(30)
    monkeypatch.setattr(batch, "poll_sleep", FailingLooks(sim, 3))
    result = batch_run(sim, given, tmp_path / "state")
    check_answers(result, given)
    retried = events(tmp_path / "state", "batch.retry")
    assert [event["failures"] for event in retried] == [1, 2, 3]
    assert batch_stats(sim)["created"] == 1

    monkeypatch.setattr(batch, "poll_sleep", FailingLooks(sim, batch.TRANSIENT_FAILURES + 1))
    with pytest.raises(ProviderError, match="HTTP 500"):
        batch_run(sim, rows(30, start=30), tmp_path / "state")
    assert batch_stats(sim)["created"] == 2  # submitted, then not looked at for good
