"""rowpilot.simulator.batches through the official OpenAI and Anthropic SDKs: files, batches,
the batch clock, row errors, expiry, cancellation, paging, limits, stats and disagreement."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowpilot.errors import ConfigError
from rowpilot.simulator.batches import _Batch, _page_after, _Row
from rowpilot.simulator.server import (
    DEFAULT_MODELS,
    Simulator,
    SimulatorConfig,
    _contrary,
    disagreement_draw,
)

KEY = "sk-sim-test"
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
CHAT = "/v1/chat/completions"
HOUR = 3600.0

# Bodies that take every answer path: text, Fields/Labels, a schema, tagged rows, a cut.
PROMPTS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "the quick brown fox"}]},
    {
        "messages": [
            {"role": "system", "content": "Labels: spam, urgent"},
            {"role": "user", "content": "urgent: win money"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Fields: title, pages:int\nA long book about seas"}
        ],
        "max_tokens": 3,
    },
    {
        "messages": [{"role": "user", "content": "[key=1] red apple\n[key=2] green pear"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "rows",
                "schema": {
                    "type": "object",
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "key": {"type": "integer"},
                                    "colour": {"enum": ["red", "green", "blue"]},
                                    "ripe": {"type": "boolean"},
                                },
                            },
                        }
                    },
                },
            },
        },
    },
]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api_key=KEY)) as simulator:
        yield simulator


def clients(simulator: Simulator) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (
        openai.OpenAI(base_url=simulator.openai_base_url, api_key=KEY, max_retries=0),
        anthropic.Anthropic(base_url=simulator.anthropic_base_url, api_key=KEY, max_retries=0),
    )


@pytest.fixture
def gpt(sim: Simulator) -> Iterator[openai.OpenAI]:
    with clients(sim)[0] as client:
        yield client


@pytest.fixture
def claude(sim: Simulator) -> Iterator[anthropic.Anthropic]:
    with clients(sim)[1] as client:
        yield client


def line(custom_id: str, body: Mapping[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": dict(body)}


def chat(text: str, model: str = GPT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def submit(
    client: openai.OpenAI,
    lines: Sequence[Mapping[str, Any]],
    endpoint: str = CHAT,
    **extra: Any,
) -> Any:
    data = "".join(json.dumps(item) + "\n" for item in lines).encode()
    file = client.files.create(file=("rows.jsonl", data), purpose="batch")
    return client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **extra,
    )


def read_file(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    return {entry["custom_id"]: entry for entry in map(json.loads, text.splitlines())}


def messages(text: str, model: str = CLAUDE) -> dict[str, Any]:
    return {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}]}


def submit_claude(client: anthropic.Anthropic, rows: Mapping[str, Mapping[str, Any]]) -> Any:
    requests: Any = [{"custom_id": cid, "params": params} for cid, params in rows.items()]
    return client.messages.batches.create(requests=requests)


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {entry.custom_id: entry.result for entry in client.messages.batches.results(batch_id)}


def http(url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    request.add_header("authorization", f"Bearer {KEY}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def same_answer(batch_body: Mapping[str, Any], online: Mapping[str, Any]) -> None:
    """Everything but the ids and the time: choices (content, finish) and usage."""
    skipped = ("id", "created")
    assert {k: v for k, v in batch_body.items() if k not in skipped} == {
        k: v for k, v in online.items() if k not in skipped
    }


# -- every row answers as the online endpoint does ------------------------------------------


def test_openai_batch_rows_answer_exactly_as_the_online_endpoint(
    sim: Simulator, gpt: openai.OpenAI
) -> None:
    bodies = {f"row-{n}": {"model": GPT, **prompt} for n, prompt in enumerate(PROMPTS)}
    bodies["bad"] = {"model": GPT, "messages": [], "max_tokens": 5}  # a 400 online too
    batch = submit(gpt, [line(cid, body) for cid, body in bodies.items()], metadata={"run": "7"})
    assert batch.status == "validating" and batch.request_counts.total == 0
    batch = gpt.batches.retrieve(batch.id)  # the default delay of 0: done at the first look
    assert batch.status == "completed" and batch.metadata == {"run": "7"} and batch.model == GPT
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
    output, errors = read_file(gpt, batch.output_file_id), read_file(gpt, batch.error_file_id)
    assert set(output) == set(bodies) - {"bad"} and set(errors) == {"bad"}
    for cid, body in bodies.items():
        if cid == "bad":
            with pytest.raises(openai.BadRequestError) as refused:
                gpt.chat.completions.create(**body)
            response = errors[cid]["response"]
            assert response["status_code"] == 400 and errors[cid]["error"] is None
            assert response["body"]["error"] == refused.value.body  # the SDK keeps the inner error
            continue
        online = gpt.chat.completions.create(**body).model_dump(exclude_unset=True)
        assert output[cid]["response"]["status_code"] == 200 and output[cid]["error"] is None
        same_answer(output[cid]["response"]["body"], online)
    finishes = {
        cid: output[cid]["response"]["body"]["choices"][0]["finish_reason"] for cid in output
    }
    assert finishes["row-2"] == "length"  # max_tokens cuts a batch row as it cuts a call
    usage = output["row-0"]["response"]["body"]["usage"]
    assert batch.usage is not None and batch.usage.input_tokens >= usage["prompt_tokens"]
    total_in = sum(entry["response"]["body"]["usage"]["prompt_tokens"] for entry in output.values())
    assert batch.usage.input_tokens == total_in


def test_an_embeddings_batch_answers_the_online_vectors(gpt: openai.OpenAI) -> None:
    body = {
        "model": "text-embedding-3-small",
        "input": ["alpha", "beta"],
        "encoding_format": "float",
    }
    batch = submit(gpt, [line("e1", body, "/v1/embeddings")], endpoint="/v1/embeddings")
    batch = gpt.batches.retrieve(batch.id)
    answer = read_file(gpt, batch.output_file_id)["e1"]["response"]["body"]
    online = gpt.embeddings.create(**body).model_dump(exclude_unset=True)
    assert answer == online


def test_anthropic_batch_rows_answer_exactly_as_the_online_endpoint(
    sim: Simulator, claude: anthropic.Anthropic
) -> None:
    rows = {
        "text": messages("the quick brown fox"),
        "labels": {**messages("urgent: win money"), "system": "Labels: spam, urgent"},
        "cut": {**messages("Fields: title\nA long book about the seas"), "max_tokens": 2},
        "unknown": messages("hi", model="claude-nonexistent"),
    }
    batch = submit_claude(claude, rows)
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 4
    batch = claude.messages.batches.retrieve(batch.id)
    assert batch.processing_status == "ended"
    assert batch.results_url == f"{sim.url}/v1/messages/batches/{batch.id}/results"
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (3, 1)
    got = results(claude, batch.id)  # the SDK follows results_url
    for cid, params in rows.items():
        if cid == "unknown":
            with pytest.raises(anthropic.NotFoundError) as refused:
                claude.messages.create(**params)
            assert got[cid].type == "errored"
            assert got[cid].model_dump(exclude_none=True)["error"] == refused.value.body
            continue
        online = claude.messages.create(**params).model_dump(exclude_unset=True)
        assert got[cid].type == "succeeded"
        same_answer(got[cid].message.model_dump(exclude_unset=True), online)
    assert got["cut"].message.stop_reason == "max_tokens"


# -- time, expiry, cancellation -------------------------------------------------------------


@pytest.fixture
def slow() -> Iterator[Simulator]:
    config = SimulatorConfig(api_key=KEY, completion_delay_s=10 * HOUR, expire_after_s=6 * HOUR)
    with Simulator(config) as simulator:
        yield simulator


def test_rows_finish_on_the_batch_clock_and_the_rest_expire(slow: Simulator) -> None:
    gpt, claude = clients(slow)
    batch = submit(gpt, [line(f"r{n}", chat(f"row {n}")) for n in range(10)])
    claude_batch = submit_claude(claude, {f"r{n}": messages(f"row {n}") for n in range(10)})
    counts = gpt.batches.retrieve(batch.id).request_counts
    assert gpt.batches.retrieve(batch.id).status == "in_progress" and counts.completed == 0
    slow.advance_batches(3 * HOUR)  # row i is done at (i + 1) hours
    assert gpt.batches.retrieve(batch.id).request_counts.completed == 3
    assert claude.messages.batches.retrieve(claude_batch.id).request_counts.processing == 10
    slow.advance_batches(3 * HOUR)
    batch = gpt.batches.retrieve(batch.id)
    assert batch.status == "expired" and batch.expired_at == batch.expires_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (6, 4)
    output, errors = read_file(gpt, batch.output_file_id), read_file(gpt, batch.error_file_id)
    assert set(output) == {f"r{n}" for n in range(6)}
    assert {cid: entry["error"]["code"] for cid, entry in errors.items()} == {
        f"r{n}": "batch_expired" for n in range(6, 10)
    }
    assert all(entry["response"] is None for entry in errors.values())
    ended = claude.messages.batches.retrieve(claude_batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (6, 4)
    kinds = {cid: result.type for cid, result in results(claude, claude_batch.id).items()}
    assert kinds == {f"r{n}": "succeeded" if n < 6 else "expired" for n in range(10)}


def test_a_cancelled_batch_keeps_the_rows_done_so_far(slow: Simulator) -> None:
    gpt, claude = clients(slow)
    batch = submit(gpt, [line(f"r{n}", chat(f"row {n}")) for n in range(10)])
    claude_batch = submit_claude(claude, {f"r{n}": messages(f"row {n}") for n in range(10)})
    slow.advance_batches(4 * HOUR)
    cancelling = gpt.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert claude.messages.batches.cancel(claude_batch.id).processing_status == "canceling"
    slow.advance_batches(5 * HOUR)  # rows past the cancel never run
    batch = gpt.batches.retrieve(batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 6)
    assert set(read_file(gpt, batch.output_file_id)) == {f"r{n}" for n in range(4)}
    codes = {e["error"]["code"] for e in read_file(gpt, batch.error_file_id).values()}
    assert codes == {"batch_cancelled"}
    ended = claude.messages.batches.retrieve(claude_batch.id)
    assert ended.processing_status == "ended" and ended.cancel_initiated_at is not None
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (4, 6)
    with pytest.raises(openai.ConflictError):
        gpt.batches.cancel(batch.id)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.batches.cancel(claude_batch.id)
    assert slow.stats()["batches"]["openai"]["cancelled"] == 1


def test_results_wait_for_the_end_and_only_ended_batches_are_deleted(slow: Simulator) -> None:
    _, claude = clients(slow)
    batch = submit_claude(claude, {"a": messages("a")})
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        list(claude.messages.batches.results(batch.id))
    status, body = http(f"{slow.url}/v1/messages/batches/{batch.id}/results")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.batches.delete(batch.id)
    slow.advance_batches(10 * HOUR)
    assert claude.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(batch.id)


def test_the_clock_moves_only_forward_by_a_number(sim: Simulator) -> None:
    for bad in ("-1", "x", "inf", ""):
        status, body = http(f"{sim.url}/batches/advance?seconds={bad}", b"")
        assert status == 400 and "seconds" in body["error"]["message"]
    status, body = http(f"{sim.url}/batches/advance?seconds=0", b"")
    assert status == 200 and body["advanced_s"] >= 0


# -- row errors -----------------------------------------------------------------------------


def erring(custom_ids: Sequence[str], share: float) -> set[str]:
    """The rows the documented rule draws an error for."""
    digest = (
        hashlib.blake2b(f"batch-error\0{cid}".encode(), digest_size=8).digest()
        for cid in custom_ids
    )
    return {
        cid for cid, d in zip(custom_ids, digest, strict=True) if int.from_bytes(d) / 2**64 < share
    }


@pytest.mark.parametrize("persist", [False, True])
def test_row_errors_fall_on_the_rows_the_hash_picks_once_or_for_good(persist: bool) -> None:
    config = SimulatorConfig(api_key=KEY, batch_row_errors=0.3, batch_errors_persist=persist)
    ids = [f"row-{n}" for n in range(40)]
    expected = erring(ids, 0.3)
    assert 0 < len(expected) < 40
    with Simulator(config) as simulator:
        gpt, claude = clients(simulator)
        for attempt in range(2):
            batch = gpt.batches.retrieve(submit(gpt, [line(c, chat(c)) for c in ids]).id)
            errors = read_file(gpt, batch.error_file_id)
            claude_batch = submit_claude(claude, {c: messages(c) for c in ids})
            kinds = results(claude, claude_batch.id)
            failing = expected if persist or attempt == 0 else set()
            assert set(errors) == failing and batch.request_counts.failed == len(failing)
            assert {c for c, r in kinds.items() if r.type == "errored"} == failing
            for cid in failing:
                assert errors[cid]["response"]["status_code"] == 500
                assert errors[cid]["response"]["body"]["error"]["type"] == "server_error"
                assert kinds[cid].model_dump()["error"]["error"]["type"] == "api_error"
        stats = simulator.stats()["batches"]
    counted = len(expected) * (2 if persist else 1)
    assert stats["openai"]["row_errors"] == stats["anthropic"]["row_errors"] == counted


def content_draw(body: Mapping[str, Any]) -> float:
    text = "batch-content\0" + json.dumps(body, sort_keys=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest()) / 2**64


def test_content_faults_fall_on_the_rows_their_body_draws_in_every_batch() -> None:
    config = SimulatorConfig(api_key=KEY, batch_bad_content=0.3, batch_missing_field=0.3)
    bodies = {f"row-{n}": chat(f"Fields: title, pages:int\nbook {n}") for n in range(40)}
    draws = {cid: content_draw(body) for cid, body in bodies.items()}
    bad = {cid for cid, draw in draws.items() if draw < 0.3}
    missing = {cid for cid, draw in draws.items() if 0.3 <= draw < 0.6}
    assert bad and missing and len(bad | missing) < 40
    with Simulator(config) as simulator:
        gpt, _ = clients(simulator)
        for _ in range(2):  # the same request draws the same fault in a later batch
            batch = submit(gpt, [line(cid, body) for cid, body in bodies.items()])
            output = read_file(gpt, gpt.batches.retrieve(batch.id).output_file_id)
            for cid, entry in output.items():
                content = entry["response"]["body"]["choices"][0]["message"]["content"]
                if cid in bad:
                    with pytest.raises(json.JSONDecodeError):
                        json.loads(content)
                else:
                    fields = set(json.loads(content))
                    assert fields == ({"title"} if cid in missing else {"title", "pages"})


@pytest.mark.parametrize(
    "shares", [{"batch_bad_content": 1.5}, {"batch_bad_content": 0.6, "batch_missing_field": 0.6}]
)
def test_content_fault_shares_beyond_one_are_refused(shares: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(api_key=KEY, **shares)
    given = {name.replace("_", "-"): str(share / 2) for name, share in shares.items()}
    config = SimulatorConfig.from_options(**given)  # as `rowpilot simulate` passes them
    assert config.batch_bad_content == shares["batch_bad_content"] / 2


# -- validation and limits ------------------------------------------------------------------


def failed_codes(
    client: openai.OpenAI, lines: Sequence[Any], raw: bytes | None = None
) -> list[Any]:
    if raw is None:
        batch = submit(client, lines)
    else:
        file = client.files.create(file=("rows.jsonl", raw), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.errors is not None
    assert batch.request_counts.total == 0 and batch.output_file_id is None
    return [(error.code, error.line) for error in batch.errors.data or []]


def test_a_bad_input_file_fails_the_batch_with_its_lines(gpt: openai.OpenAI) -> None:
    good = json.dumps(line("a", chat("a")))
    raw = "\n".join(
        [
            good,
            "{not json",
            json.dumps(line("a", chat("b"))),  # the same custom_id
            json.dumps(line("c", chat("c", model="gpt-4o"))),  # another model
            json.dumps(line("d", chat("d"), url="/v1/embeddings")),
            json.dumps(line("e", chat("e", model="gpt-nonexistent"))),
            json.dumps({"custom_id": "f", "method": "GET", "url": CHAT, "body": chat("f")}),
        ]
    ).encode()
    assert failed_codes(gpt, [], raw) == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("mismatched_model", 4),
        ("invalid_url", 5),
        ("model_not_found", 6),
        ("invalid_request", 7),
    ]
    assert failed_codes(gpt, [], b"\n\n") == [("empty_file", None)]


def test_the_default_request_limit_is_50000_a_file(gpt: openai.OpenAI) -> None:
    one = json.dumps(line("{}", chat("x")))
    raw = "".join(one.replace("{}", str(n), 1) + "\n" for n in range(50_001)).encode()
    assert failed_codes(gpt, [], raw) == [("too_many_requests", None)]


def test_configured_limits_refuse_larger_batches_of_either_provider() -> None:
    config = SimulatorConfig(api_key=KEY, batch_max_requests=3, batch_max_bytes=2_000)
    with Simulator(config) as simulator:
        gpt, claude = clients(simulator)
        assert failed_codes(gpt, [line(f"r{n}", chat("x")) for n in range(4)]) == [
            ("too_many_requests", None)
        ]
        big = [line(f"r{n}", chat("x" * 800)) for n in range(3)]
        assert failed_codes(gpt, big) == [("file_too_large", None)]
        assert gpt.batches.retrieve(submit(gpt, big[:2]).id).status == "completed"
        with pytest.raises(anthropic.BadRequestError, match="at most 3"):
            submit_claude(claude, {f"r{n}": messages("x") for n in range(4)})
        with pytest.raises(anthropic.APIStatusError) as too_large:
            submit_claude(claude, {f"r{n}": messages("x" * 800) for n in range(3)})
        assert too_large.value.status_code == 413
        assert too_large.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_anthropic_refuses_at_creation_what_its_api_refuses(
    sim: Simulator, claude: anthropic.Anthropic
) -> None:
    for rows in ({"bad id!": messages("x")}, {}):
        with pytest.raises(anthropic.BadRequestError):
            submit_claude(claude, rows)
    requests: Any = [{"custom_id": "same", "params": messages("x")}] * 2
    with pytest.raises(anthropic.BadRequestError, match="not unique"):
        claude.messages.batches.create(requests=requests)
    entry = {"custom_id": "r", "params": {}}
    many = [dict(entry, custom_id=f"r{n}") for n in range(100_001)]
    status, body = http(f"{sim.url}/v1/messages/batches", json.dumps({"requests": many}).encode())
    assert status == 400 and "100000" in body["error"]["message"]


def test_an_upload_for_batch_must_be_jsonl_and_files_come_and_go(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        gpt.files.create(file=("rows.csv", b"a,b"), purpose="batch")
    file = gpt.files.create(file=("rows.jsonl", b"{}\n"), purpose="batch")
    assert gpt.files.retrieve(file.id).bytes == 3 and gpt.files.content(file.id).read() == b"{}\n"
    assert gpt.files.delete(file.id).deleted
    with pytest.raises(openai.NotFoundError):
        gpt.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        gpt.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")


def test_a_bad_batch_request_is_a_400(gpt: openai.OpenAI) -> None:
    file = gpt.files.create(file=("rows.jsonl", b"{}\n"), purpose="batch")
    bad: list[dict[str, Any]] = [
        {"endpoint": "/v1/images/generations"},
        {"completion_window": "48h"},
        {"metadata": {f"k{n}": "v" for n in range(17)}},
        {"metadata": {"k": "v" * 513}},
    ]
    for change in bad:
        arguments: Any = {"input_file_id": file.id, "endpoint": CHAT, "completion_window": "24h"}
        with pytest.raises(openai.BadRequestError):
            gpt.batches.create(**(arguments | change))


def test_the_enqueued_token_limit_fails_a_batch_while_others_run() -> None:
    config = SimulatorConfig(api_key=KEY, batch_queue_tokens=10, completion_delay_s=HOUR)
    with Simulator(config) as simulator:
        gpt, _ = clients(simulator)
        first = submit(gpt, [line("a", chat("x" * 32))])  # 8 prompt tokens
        assert gpt.batches.retrieve(first.id).status == "in_progress"
        second = gpt.batches.retrieve(submit(gpt, [line("b", chat("x" * 12))]).id)
        assert second.status == "failed" and second.errors and second.errors.data
        assert second.errors.data[0].code == "token_limit_exceeded"
        simulator.advance_batches(HOUR)
        third = submit(gpt, [line("c", chat("x" * 12))])
        assert gpt.batches.retrieve(third.id).status == "in_progress"


# -- listing, stats, rate limits ------------------------------------------------------------


def test_lists_page_newest_first_as_the_sdks_expect() -> None:
    with Simulator(SimulatorConfig(api_key=KEY)) as simulator:
        gpt, claude = clients(simulator)
        openai_ids = [submit(gpt, [line("a", chat(str(n)))]).id for n in range(5)]
        claude_ids = [submit_claude(claude, {"a": messages(str(n))}).id for n in range(5)]
        assert [b.id for b in gpt.batches.list(limit=2)] == openai_ids[::-1]
        page = gpt.batches.list(limit=2)
        assert [b.id for b in page.data] == openai_ids[:2:-1] and page.has_more
        assert [b.id for b in claude.messages.batches.list(limit=2)] == claude_ids[::-1]
        older = claude.messages.batches.list(limit=2, after_id=claude_ids[3])
        assert [b.id for b in older.data] == [claude_ids[2], claude_ids[1]] and older.has_more
        newer = claude.messages.batches.list(limit=2, before_id=claude_ids[1])
        assert [b.id for b in newer.data] == [claude_ids[3], claude_ids[2]] and newer.has_more
        assert (newer.first_id, newer.last_id) == (claude_ids[3], claude_ids[2])
        with pytest.raises(openai.BadRequestError):
            gpt.batches.list(limit=101)


def test_stats_count_batches_rows_files_and_downloads(sim: Simulator) -> None:
    sim.reset_stats()
    gpt, claude = clients(sim)
    batch = gpt.batches.retrieve(submit(gpt, [line(f"r{n}", chat("x")) for n in range(3)]).id)
    read_file(gpt, batch.output_file_id)
    read_file(gpt, batch.output_file_id)
    claude_batch = submit_claude(claude, {"a": messages("a"), "b": messages("b")})
    submit_claude(claude, {"c": messages("c")})
    results(claude, claude_batch.id)
    stats = sim.stats()
    openai_counts, claude_counts = stats["batches"]["openai"], stats["batches"]["anthropic"]
    assert openai_counts["created"] == 1 and openai_counts["rows_per_batch"] == [3]
    assert openai_counts["files_uploaded"] == 1 and openai_counts["results_downloads"] == 2
    assert claude_counts["created"] == 2 and claude_counts["rows"] == 3
    assert claude_counts["rows_per_batch"] == [2, 1] and claude_counts["results_downloads"] == 1
    assert stats["requests"]["files"] == {"200": 3} and stats["requests"]["batches"] == {"200": 2}
    status, over_http = http(f"{sim.url}/stats")
    assert status == 200 and over_http["batches"] == sim.stats()["batches"]
    sim.reset_stats()
    assert sim.stats()["batches"]["openai"]["created"] == 0


def test_batches_do_not_count_against_the_online_limits() -> None:
    with Simulator(SimulatorConfig(api_key=KEY, rpm=1, window_s=1.0)) as simulator:
        gpt, claude = clients(simulator)
        batch = submit(gpt, [line(f"r{n}", chat("x")) for n in range(20)])
        assert gpt.batches.retrieve(batch.id).request_counts.completed == 20
        submit_claude(claude, {f"r{n}": messages("x") for n in range(20)})
        assert simulator.admissions() == {}  # no batch row reached a model's bucket
        gpt.chat.completions.create(**chat("the one request a second"))
        with pytest.raises(openai.RateLimitError):
            gpt.chat.completions.create(**chat("a second one"))


def test_batch_endpoints_need_the_key(sim: Simulator) -> None:
    request = urllib.request.Request(f"{sim.url}/v1/batches")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=120)
    assert refused.value.code == 401
    refused.value.close()


# -- disagreement ---------------------------------------------------------------------------

DISAGREE = {"gpt-4o": 0.2, "gpt-4.1-mini": 0.1, "claude-sonnet-4-5": 0.3}
REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "sentiment": {"enum": ["positive", "negative", "mixed"]},
                    "urgent": {"type": "boolean"},
                    "stars": {"type": "integer"},
                    "summary": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}
TEXTS = [
    f"review {n}: the parcel came {'late' if n % 3 else 'early'}, mixed feelings"
    for n in range(400)
]


def review_body(model: str) -> dict[str, Any]:
    prompt = "\n".join(f"[key={n}] {text}" for n, text in enumerate(TEXTS))
    response_format = {"type": "json_schema", "json_schema": {"name": "r", "schema": REVIEW_SCHEMA}}
    return chat(prompt, model, max_tokens=200_000, response_format=response_format)


def entries(content: str) -> list[dict[str, Any]]:
    return list(json.loads(content)["results"])


@pytest.fixture(scope="module")
def judges() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api_key=KEY, disagree=DISAGREE)) as simulator:
        yield simulator


def test_a_disagreeing_model_differs_on_exactly_the_rows_its_share_draws(
    judges: Simulator,
) -> None:
    gpt, _ = clients(judges)
    models = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
    online = {
        model: entries(
            gpt.chat.completions.create(**review_body(model)).choices[0].message.content or ""
        )
        for model in models
    }
    draws = [disagreement_draw(text) for text in TEXTS]
    rule, wide, narrow = (online[model] for model in models)
    for n, draw in enumerate(draws):
        assert (rule[n] != wide[n]) == (draw < 0.2)
        assert (rule[n] != narrow[n]) == (draw < 0.1)
        assert (wide[n] != narrow[n]) == (0.1 <= draw < 0.2)
        if draw < 0.2:  # every field answers against the rule, and stays valid
            sentiments = ["positive", "negative", "mixed"]
            assert wide[n]["key"] == rule[n]["key"]
            next_sentiment = sentiments[(sentiments.index(rule[n]["sentiment"]) + 1) % 3]
            assert wide[n]["sentiment"] == next_sentiment
            assert wide[n]["urgent"] is not rule[n]["urgent"]
            assert wide[n]["stars"] == rule[n]["stars"] + 1
            assert wide[n]["summary"] == "NOT " + rule[n]["summary"]
            assert wide[n]["tags"] == ["NOT " + tag for tag in rule[n]["tags"]]
    agreement = sum(a == b for a, b in zip(rule, wide, strict=True)) / len(TEXTS)
    assert agreement == sum(draw >= 0.2 for draw in draws) / len(TEXTS)
    assert abs(agreement - 0.8) < 0.06  # the sample's share is near the set one


def test_batch_answers_disagree_as_the_online_ones(judges: Simulator) -> None:
    gpt, claude = clients(judges)
    for model in ("gpt-4o", "gpt-4o-mini"):
        body = review_body(model)
        batch = gpt.batches.retrieve(submit(gpt, [line("all", body)]).id)
        answer = read_file(gpt, batch.output_file_id)["all"]["response"]["body"]
        online = gpt.chat.completions.create(**body).model_dump(exclude_unset=True)
        same_answer(answer, online)
    rows = {f"t{n}": messages(text, "claude-sonnet-4-5") for n, text in enumerate(TEXTS[:60])}
    got = results(claude, submit_claude(claude, rows).id)
    for n, (cid, params) in enumerate(rows.items()):
        online_text = claude.messages.create(**params).content[0]
        assert got[cid].message.content[0] == online_text  # type: ignore[union-attr]
        changed = online_text.text.startswith("NOT ")  # type: ignore[union-attr]
        assert changed == (disagreement_draw(TEXTS[n]) < 0.3)


def test_disagree_is_checked_and_read_from_options() -> None:
    config = SimulatorConfig.from_options(disagree=["gpt-4o=0.2", "gpt-4.1-mini=0.1"])
    assert config == SimulatorConfig(disagree={"gpt-4o": 0.2, "gpt-4.1-mini": 0.1})
    assert hash(config) == hash(SimulatorConfig(disagree=config.disagree))  # a cache key
    assert config.disagree_share("gpt-4o") == 0.2 and config.disagree_share("gpt-4o-mini") == 0
    assert SimulatorConfig.from_options(disagree="gpt-4o=0.5").disagree == (("gpt-4o", 0.5),)
    for bad in ({"nope": 0.1}, {"gpt-4o": 1.5}):
        with pytest.raises(ConfigError):
            SimulatorConfig(disagree=bad)
    with pytest.raises(ConfigError, match="cannot read"):
        SimulatorConfig.from_options(disagree="gpt-4o")


@pytest.mark.parametrize(
    "settings",
    [
        {"completion_delay_s": -1},
        {"expire_after_s": 0},
        {"batch_row_errors": 1.5},
        {"batch_max_requests": 0},
        {"batch_max_bytes": 0},
        {"batch_queue_tokens": 0},
    ],
)
def test_bad_batch_settings_are_config_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(**settings)


def test_batch_options_from_the_command_line_are_parsed() -> None:
    options = {
        "completion-delay-s": "60",
        "expire-after-s": "120",
        "batch-row-errors": "0.1",
        "batch-errors-persist": "true",
        "batch-max-requests": "10",
        "batch-max-bytes": "1000",
        "batch-queue-tokens": "500",
    }
    assert SimulatorConfig.from_options(**options) == SimulatorConfig(
        completion_delay_s=60.0,
        expire_after_s=120.0,
        batch_row_errors=0.1,
        batch_errors_persist=True,
        batch_max_requests=10,
        batch_max_bytes=1000,
        batch_queue_tokens=500,
    )
    with pytest.raises(ConfigError, match="cannot read"):
        SimulatorConfig.from_options(batch_errors_persist="maybe")


def test_rowpilot_simulate_serves_batches_on_an_advanced_clock() -> None:
    rowpilot = os.path.join(os.path.dirname(sys.executable), "rowpilot")
    command = [rowpilot, "simulate", "--port", "0", "--api-key", KEY, "--completion-delay-s", "600"]
    command += [
        "--disagree",
        "claude-haiku-4-5=1",
        "--batch-row-errors",
        "0",
        "--batch-errors-persist",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        with anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0) as claude:
            batch = submit_claude(claude, {"a": messages("hello there")})
            assert claude.messages.batches.retrieve(batch.id).processing_status == "in_progress"
            assert http(f"{url}/batches/advance?seconds=600", b"")[0] == 200
            assert claude.messages.batches.retrieve(batch.id).processing_status == "ended"
            text = results(claude, batch.id)["a"].message.content[0].text  # type: ignore[union-attr]
            assert text.startswith("NOT Answer ")  # a share of 1 disagrees on every row
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


# -- properties of the clock, the paging and the contrary answers ---------------------------


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 500),
    delay=st.just(0.0) | st.floats(1e-3, 1e6),
    moments=st.lists(st.floats(-10.0, 2e6, allow_nan=False), min_size=2, max_size=5),
)
def test_rows_done_grow_with_the_clock_within_bounds(
    rows: int, delay: float, moments: list[float]
) -> None:
    batch = _Batch("b", "openai", CHAT, 0.0, delay, 86_400.0, [_Row("r", {}, False)] * rows)
    counts = [batch.done(moment) for moment in sorted(moments)]
    assert all(0 <= count <= rows for count in counts) and counts == sorted(counts)
    assert batch.done(delay) == rows and batch.done(-1.0) == 0
    for index in range(0, rows, max(1, rows // 7)):  # row i is done at delay * (i + 1) / n
        assert batch.done(delay * (index + 1) / rows) >= index + 1


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 60), limit=st.integers(1, 25))
def test_paging_after_the_last_id_visits_every_batch_once_in_order(count: int, limit: int) -> None:
    batches = [_Batch(f"b{n}", "openai", CHAT, 0.0, 0.0, 1.0, []) for n in range(count)]
    seen: list[str] = []
    after: str | None = None
    while True:
        page, more = _page_after(batches, after, limit)
        seen += [batch.id for batch in page]
        assert len(page) <= limit and more == (len(seen) < count)
        if not more:
            break
        after = page[-1].id
    assert seen == [batch.id for batch in batches]


VALUES = st.recursive(
    st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8) | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


def leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    return [value]


@given(value=VALUES)
def test_a_contrary_value_differs_in_every_leaf_but_null(value: Any) -> None:
    contrary = _contrary(value, {})
    assert type(contrary) is type(value)
    for before, after in zip(leaves(value), leaves(contrary), strict=True):
        assert (before == after) == (before is None)


@given(options=st.lists(st.text(max_size=5), min_size=1, max_size=6, unique=True), data=st.data())
def test_a_contrary_enum_value_is_the_next_option(options: list[str], data: st.DataObject) -> None:
    chosen = data.draw(st.sampled_from(options))
    contrary = _contrary(chosen, {"enum": options})
    assert contrary == options[(options.index(chosen) + 1) % len(options)]
    assert contrary in options and (contrary != chosen or len(options) == 1)


@given(shares=st.dictionaries(st.sampled_from(DEFAULT_MODELS), st.floats(0.0, 1.0), max_size=4))
def test_disagree_options_read_back_what_was_written(shares: dict[str, float]) -> None:
    written = [f"{model}={share!r}" for model, share in shares.items()]
    config = SimulatorConfig.from_options(disagree=written)
    assert config == SimulatorConfig(disagree=shares)
    assert SimulatorConfig.from_options(disagree=",".join(written)) == config
