"""rowpilot.simulator.server through the official OpenAI and Anthropic SDKs and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel

from conftest import wait_until
from rowpilot.errors import ConfigError
from rowpilot.simulator.server import (
    FAULTS,
    Simulator,
    SimulatorConfig,
    _Dice,
    _duration,
    _TokenBucket,
)

KEY = "sk-sim-test"
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api_key=KEY, hang_seconds=0.5)) as simulator:
        yield simulator


@pytest.fixture
def gpt(sim: Simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.openai_base_url, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def claude(sim: Simulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key=KEY, max_retries=0) as client:
        yield client


def ask(client: openai.OpenAI, prompt: str, **kwargs: Any) -> str:
    messages: Any = [{"role": "user", "content": prompt}]
    completion = client.chat.completions.create(model=GPT, messages=messages, **kwargs)
    return completion.choices[0].message.content or ""


def http(
    url: str, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str], bytes]:
    """A raw request (POST when there is a body): status, headers and body, errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def chat_body(prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": GPT, "messages": [{"role": "user", "content": prompt}], **extra}


def blake_bit(name: str, text: str) -> bool:
    return bool(hashlib.blake2b(f"{name}\0{text}".encode(), digest_size=8).digest()[0] & 1)


# -- the SDKs work against it ---------------------------------------------------------------


def test_chat_answers_text_with_a_content_hash_and_usage(gpt: openai.OpenAI) -> None:
    completion = gpt.chat.completions.create(
        model=GPT,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "the quick brown fox"},
        ],
    )
    content = completion.choices[0].message.content
    short_hash = hashlib.blake2b(b"the quick brown fox", digest_size=4).hexdigest()
    assert content == f"Answer {short_hash}: THE QUICK BROWN FOX"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == math.ceil((14 + 19) / 4)
    assert completion.usage.completion_tokens == math.ceil(len(content) / 4)
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_embeddings_are_deterministic_unit_vectors(gpt: openai.OpenAI) -> None:
    model = "text-embedding-3-small"
    default = gpt.embeddings.create(model=model, input=["alpha", "beta"])  # base64 on the wire
    floats = gpt.embeddings.create(model=model, input="alpha", encoding_format="float")
    small = gpt.embeddings.create(model=model, input="alpha", dimensions=16)
    alpha, beta = (item.embedding for item in default.data)
    assert len(alpha) == 64 and len(small.data[0].embedding) == 16
    assert math.isclose(sum(value * value for value in alpha), 1.0, rel_tol=1e-5)
    assert alpha == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert alpha != pytest.approx(beta, abs=1e-3)
    assert default.usage.prompt_tokens == math.ceil(len("alphabeta") / 4)


def test_embeddings_reach_the_wire_as_little_endian_float32(sim: Simulator) -> None:
    body = {"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"}
    status, _, raw = http(f"{sim.openai_base_url}/embeddings", body, AUTH)
    vector = struct.unpack("<64f", base64.b64decode(json.loads(raw)["data"][0]["embedding"]))
    assert status == 200 and math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)


def test_models_are_listed_in_each_providers_shape(
    sim: Simulator, gpt: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    assert [model.id for model in gpt.models.list()] == list(sim.config.models)
    assert [model.id for model in claude.models.list()] == list(sim.config.models)


def test_anthropic_messages_answer_with_usage(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        system="Fields: title, pages:int",
        messages=[{"role": "user", "content": "a tale of two cities"}],
    )
    block = message.content[0]
    assert block.type == "text"
    assert json.loads(block.text) == {"title": "A TALE OF TWO CITIES", "pages": 20}
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == math.ceil((24 + 20) / 4)
    assert message.usage.output_tokens == math.ceil(len(block.text) / 4)


def test_max_tokens_cuts_the_answer(gpt: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    completion = gpt.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "one two three four five"}], max_tokens=2
    )
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].message.content or "") == 8
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    message = claude.messages.create(
        model=CLAUDE, max_tokens=1, messages=[{"role": "user", "content": "one two three"}]
    )
    assert message.stop_reason == "max_tokens"


def test_streaming_is_a_bad_request(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="streaming not simulated"):
        gpt.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "hi"}], stream=True
        )


# -- deterministic, content-derived answers -------------------------------------------------


def test_answers_are_the_same_across_simulator_instances(gpt: openai.OpenAI) -> None:
    prompts = ["hello", "Answer in JSON: hello", "Labels: spam\n[key=1] buy spam\n[key=2] hi"]
    with (
        Simulator() as other,
        openai.OpenAI(base_url=other.openai_base_url, api_key="x", max_retries=0) as client,
    ):
        assert [ask(client, prompt) for prompt in prompts] == [ask(gpt, p) for p in prompts]


def test_a_batch_answers_each_key_from_its_own_line(gpt: openai.OpenAI) -> None:
    lines = ["[key=a1] Buy cheap spam now", "[key=b2] Meeting moved to noon", "[key=c3] urgent!"]
    labels = "Classify each line as JSON.\nLabels: spam, urgent\n"
    forward = json.loads(ask(gpt, labels + "\n".join(lines)))["results"]
    backward = json.loads(ask(gpt, labels + "\n".join(reversed(lines))))["results"]
    assert [entry["key"] for entry in forward] == ["a1", "b2", "c3"]
    assert [entry["key"] for entry in backward] == ["c3", "b2", "a1"]
    assert {e["key"]: e for e in forward} == {e["key"]: e for e in backward}
    by_key = {entry["key"]: entry for entry in forward}
    assert by_key["a1"]["spam"] is True and by_key["c3"]["urgent"] is True
    assert by_key["b2"] == {
        "key": "b2",
        "spam": blake_bit("spam", "Meeting moved to noon"),
        "urgent": blake_bit("urgent", "Meeting moved to noon"),
    }


class Row(BaseModel):
    key: int
    title: str
    pages: int
    spam: bool
    kind: Literal["book", "film", "song"]
    tags: list[str]
    note: str | None


class Batch(BaseModel):
    results: list[Row]


def test_a_pydantic_json_schema_fills_every_field(gpt: openai.OpenAI) -> None:
    prompt = "[key=7] a film about spam\n[key=8] The little prince, a book"
    completion = gpt.chat.completions.parse(
        model=GPT, messages=[{"role": "user", "content": prompt}], response_format=Batch
    )
    parsed = completion.choices[0].message.parsed
    assert parsed is not None
    first, second = parsed.results
    assert first == Row(
        key=7,
        title="A FILM ABOUT SPAM",
        pages=17,
        spam=True,
        kind="film",
        tags=["A", "FILM", "ABOUT"],
        note="A FILM ABOUT SPAM",
    )
    assert (second.key, second.kind, second.pages) == (8, "book", len("The little prince, a book"))


def test_fields_and_labels_lines_shape_a_single_answer(gpt: openai.OpenAI) -> None:
    prompt = "Fields: title, words:int, tags:list\nLabels: urgent\nurgent reply needed today"
    answer = json.loads(ask(gpt, prompt))
    text = "urgent reply needed today"
    assert answer == {
        "title": text.upper(),
        "words": len(text),
        "tags": ["URGENT", "REPLY", "NEEDED"],
        "urgent": True,
    }


def test_json_without_fields_gives_answer_length_and_hash(gpt: openai.OpenAI) -> None:
    answer = json.loads(ask(gpt, "ping", response_format={"type": "json_object"}))
    assert answer == {
        "answer": "PING",
        "length": 4,
        "hash": hashlib.blake2b(b"ping", digest_size=4).hexdigest(),
    }


def test_content_blocks_are_read_as_their_text(
    gpt: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    completion = gpt.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": [{"type": "text", "text": "block text"}]}],
    )
    message = claude.messages.create(
        model=CLAUDE,
        max_tokens=50,
        system=[{"type": "text", "text": "Reply in JSON."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "block text"}]}],
    )
    assert (completion.choices[0].message.content or "").endswith("BLOCK TEXT")
    block = message.content[0]
    assert block.type == "text" and json.loads(block.text)["answer"] == "BLOCK TEXT"


# -- rate limits ----------------------------------------------------------------------------


def test_an_rpm_burst_gets_one_request_through_and_429s_the_rest() -> None:
    with Simulator(SimulatorConfig(rpm=60, window_s=1.0)) as limited:
        url = f"{limited.openai_base_url}/chat/completions"
        replies = [http(url, chat_body(f"burst {n}")) for n in range(5)]
        assert [status for status, _, _ in replies] == [200, 429, 429, 429, 429]
        ok_headers = replies[0][1]
        assert ok_headers["x-ratelimit-limit-requests"] == "60"
        assert ok_headers["x-ratelimit-remaining-requests"] == "0"
        assert ok_headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
        _, headers, body = replies[-1]
        retry_after = float(headers["retry-after"])
        assert 0.5 < retry_after <= 1.0
        assert int(headers["retry-after-ms"]) == pytest.approx(retry_after * 1000, abs=1)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
        assert json.loads(body)["error"]["type"] == "requests"
        time.sleep(retry_after)
        assert http(url, chat_body("after the wait"))[0] == 200
        assert limited.stats()["rate_limited"] == 4


def test_the_sdk_sees_a_rate_limit_error() -> None:
    with (
        Simulator(SimulatorConfig(rpm=60)) as limited,
        openai.OpenAI(base_url=limited.openai_base_url, api_key="x", max_retries=0) as client,
    ):
        ask(client, "first")
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "second")
        assert float(caught.value.response.headers["retry-after"]) > 0


def test_tpm_counts_prompt_tokens_plus_max_tokens() -> None:
    # tpm=600 holds 10 tokens; "abcd" is 1 prompt token, so max_tokens=8 costs 9.
    with Simulator(SimulatorConfig(tpm=600)) as limited:
        url = f"{limited.openai_base_url}/chat/completions"
        status, headers, _ = http(url, chat_body("abcd", max_tokens=8))
        assert (status, headers["x-ratelimit-remaining-tokens"]) == (200, "1")
        assert headers["x-ratelimit-limit-tokens"] == "600"
        assert "x-ratelimit-limit-requests" not in headers
        status, headers, body = http(url, chat_body("abcd", max_tokens=8))
        assert status == 429 and json.loads(body)["error"]["type"] == "tokens"
        assert float(headers["retry-after"]) > 0.5
        status, headers, body = http(url, chat_body("abcd", max_tokens=700))
        assert status == 429 and "retry-after" not in headers
        assert "Request too large" in json.loads(body)["error"]["message"]


def test_anthropic_rate_limits_use_anthropic_headers() -> None:
    with (
        Simulator(SimulatorConfig(rpm=60, tpm=600_000)) as limited,
        anthropic.Anthropic(
            base_url=limited.anthropic_base_url, api_key="x", max_retries=0
        ) as client,
    ):
        url = f"{limited.anthropic_base_url}/v1/messages"
        body = {"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        status, headers, _ = http(url, body)
        assert status == 200
        assert headers["anthropic-ratelimit-requests-limit"] == "60"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(10_000 - 11)
        reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
        assert reset.tzinfo is not None
        status, headers, raw = http(url, body)
        assert status == 429 and float(headers["retry-after"]) > 0
        assert json.loads(raw)["error"]["type"] == "rate_limit_error"
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model=CLAUDE, max_tokens=10, messages=body["messages"])


def test_the_token_bucket_refills_continuously_and_allows_debt() -> None:
    bucket = _TokenBucket(limit=120, window_s=1.0, now=0.0)  # 2 per second, holds 2
    assert bucket.wait(2, now=0.0) == 0.0
    bucket.take(2, now=0.0)
    assert bucket.wait(1, now=0.0) == pytest.approx(0.5)
    assert bucket.wait(1, now=0.5) == 0.0
    # A cost above the capacity passes on a full bucket and leaves a debt.
    assert bucket.wait(5, now=1.0) == 0.0
    bucket.take(5, now=1.0)
    assert bucket.remaining(now=1.0) == 0
    assert bucket.until_full(now=1.0) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0, "0s"), (0.35, "350ms"), (1.2, "1.2s"), (360.0, "6m0s")]
)
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_max_concurrent_rejects_requests_beyond_the_limit() -> None:
    async def burst(limited: Simulator) -> list[BaseException | Any]:
        async with openai.AsyncOpenAI(
            base_url=limited.openai_base_url, api_key="x", max_retries=0
        ) as client:
            calls = [
                client.chat.completions.create(
                    model=GPT, messages=[{"role": "user", "content": f"row {n}"}]
                )
                for n in range(4)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    with Simulator(SimulatorConfig(max_concurrent=2, latency_ms=300)) as limited:
        outcomes = asyncio.run(burst(limited))
        rejected = [item for item in outcomes if isinstance(item, openai.RateLimitError)]
        assert len(rejected) == 2
        stats = limited.stats()
    assert stats["in_flight_max"] == 2
    assert stats["concurrency_rejected"] == 2
    assert stats["requests"]["chat.completions"] == {"200": 2, "429": 2}


def test_latency_applies_after_admission() -> None:
    # Told by order, not by a stopwatch: the refused request is answered while the admitted
    # one still waits out its latency (a refusal that waited too would find it gone).
    with Simulator(SimulatorConfig(rpm=60, latency_ms=3000)) as slow:
        url = f"{slow.openai_base_url}/chat/completions"
        statuses: list[int] = []
        first = threading.Thread(target=lambda: statuses.append(http(url, chat_body())[0]))
        started = time.monotonic()
        first.start()
        wait_until(lambda: slow.stats()["in_flight"] == 1)
        assert http(url, chat_body())[0] == 429
        assert slow.stats()["in_flight"] == 1 and not statuses
        first.join()
        admitted = time.monotonic() - started
    assert statuses == [200]
    assert admitted >= 2.99  # a lower bound: a loaded machine only adds to it


# -- faults ---------------------------------------------------------------------------------


def fault(name: str) -> dict[str, str]:
    return {"x-sim-fault": name}


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("reset", openai.APIConnectionError),
        ("hang", openai.APITimeoutError),
        ("malformed", ValueError),  # the SDK lets json.JSONDecodeError through
    ],
)
def test_forced_faults_raise_in_the_openai_sdk(
    gpt: openai.OpenAI, kind: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        ask(gpt, "hello", extra_headers=fault(kind), timeout=0.25)
    if kind in ("500", "503"):
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == int(kind)
    if kind == "reset":
        assert not isinstance(caught.value, openai.APITimeoutError)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("500", anthropic.InternalServerError),
        ("503", anthropic.ServiceUnavailableError),
        ("reset", anthropic.APIConnectionError),
        ("hang", anthropic.APITimeoutError),
    ],
)
def test_forced_faults_raise_in_the_anthropic_sdk(
    claude: anthropic.Anthropic, kind: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        claude.messages.create(
            model=CLAUDE,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=fault(kind),
            timeout=0.25,
        )


def test_a_malformed_body_is_a_200_that_is_not_json(sim: Simulator) -> None:
    headers = {**AUTH, **fault("malformed")}
    status, _, body = http(f"{sim.openai_base_url}/chat/completions", chat_body(), headers)
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def test_bad_content_is_not_json(gpt: openai.OpenAI) -> None:
    content = ask(gpt, "Answer in JSON: hello", extra_headers=fault("bad_content"))
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    # Text answers have no JSON to spoil: the fault does not apply.
    assert ask(gpt, "hello", extra_headers=fault("bad_content")) == ask(gpt, "hello")


def test_missing_field_drops_a_field_or_a_batch_row(gpt: openai.OpenAI) -> None:
    single = json.loads(ask(gpt, "Fields: a, b:int\nhello", extra_headers=fault("missing_field")))
    assert single == {"a": "HELLO"}
    batch = ask(gpt, "[key=1] one\n[key=2] two", extra_headers=fault("missing_field"))
    assert [entry["key"] for entry in json.loads(batch)["results"]] == ["1"]


def test_none_overrides_the_fault_rates() -> None:
    with (
        Simulator(SimulatorConfig(error_500=1.0)) as failing,
        openai.OpenAI(base_url=failing.openai_base_url, api_key="x", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError):
            ask(client, "hello")
        assert ask(client, "hello", extra_headers=fault("none")).startswith("Answer ")


def test_an_unknown_fault_header_is_a_bad_request(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="x-sim-fault"):
        ask(gpt, "hello", extra_headers=fault("explode"))


def test_fault_draws_are_seeded_and_reproducible() -> None:
    config = SimulatorConfig(seed=7, error_500=0.3, error_503=0.2, malformed=0.1)
    bodies = [chat_body(f"row {n % 10}") for n in range(30)]  # every body three times

    def statuses(simulator: Simulator) -> list[tuple[int, bool]]:
        url = f"{simulator.openai_base_url}/chat/completions"
        replies = [http(url, body) for body in bodies]
        return [(status, raw.endswith(b"}")) for status, _, raw in replies]

    with Simulator(config) as first, Simulator(config) as second:
        outcomes = statuses(first)
        assert statuses(second) == outcomes
        faults = first.stats()["faults"]
    assert {status for status, _ in outcomes} == {200, 500, 503}
    assert faults["500"] + faults["503"] + faults["malformed"] == sum(
        1 for status, whole in outcomes if status != 200 or not whole
    )


def test_dice_rolls_depend_on_seed_body_and_occurrence() -> None:
    def draws(seed: int, bodies: list[bytes]) -> list[float]:
        dice = _Dice(seed)
        return [dice.roll("/v1/chat/completions", body).random() for body in bodies]

    assert draws(1, [b"a", b"b", b"a"]) == draws(1, [b"a", b"b", b"a"])
    first_a, _, second_a = draws(1, [b"a", b"b", b"a"])
    assert first_a != second_a
    assert draws(1, [b"a"]) != draws(2, [b"a"])
    assert draws(1, [b"b", b"a"])[1] == first_a  # arrival order of other bodies is irrelevant


# -- auth and errors ------------------------------------------------------------------------


def test_a_wrong_key_is_a_401_in_each_providers_shape(sim: Simulator) -> None:
    with (
        openai.OpenAI(base_url=sim.openai_base_url, api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        ask(client, "hello")
    with (
        anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="wrong", max_retries=0) as c,
        pytest.raises(anthropic.AuthenticationError),
    ):
        c.messages.create(model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    status, _, body = http(f"{sim.openai_base_url}/chat/completions", chat_body())
    error = json.loads(body)["error"]
    assert status == 401 and error["type"] == "invalid_request_error" and error["message"]
    status, _, body = http(f"{sim.url}/v1/messages", {"model": CLAUDE}, {"x-api-key": "no"})
    assert status == 401
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }


def test_the_anthropic_x_api_key_header_is_accepted(sim: Simulator) -> None:
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert http(f"{sim.url}/v1/messages", body, {"x-api-key": KEY})[0] == 200


def test_an_unknown_model_is_a_404(gpt: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gpt.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(
            model="claude-9", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_a_body_that_is_not_json_is_a_400(sim: Simulator) -> None:
    request = urllib.request.Request(
        f"{sim.openai_base_url}/chat/completions",
        data=b"{not json",
        headers=AUTH,
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=120)
    with caught.value as error:
        assert error.code == 400
        assert json.loads(error.read())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", {"model": GPT, "messages": []}, "non-empty list"),
        ("/v1/chat/completions", {"model": GPT, "messages": ["hi"]}, "must be an object"),
        (
            "/v1/chat/completions",
            {"model": GPT, "messages": [{"role": "system", "content": "x"}]},
            "user message",
        ),
        ("/v1/chat/completions", chat_body(max_tokens=0), "max_tokens"),
        (
            "/v1/messages",
            {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [1, 2]}, "input"),
        (
            "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": "x", "dimensions": -1},
            "dimensions",
        ),
    ],
)
def test_invalid_requests_are_400s_that_say_what_is_wrong(
    sim: Simulator, path: str, body: dict[str, Any], message: str
) -> None:
    status, _, raw = http(f"{sim.url}{path}", body, AUTH)
    assert status == 400
    assert message in json.loads(raw)["error"]["message"]


# -- stats ----------------------------------------------------------------------------------


def test_stats_count_requests_statuses_faults_and_tokens() -> None:
    with (
        Simulator() as counted,
        openai.OpenAI(base_url=counted.openai_base_url, api_key="x", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "count me"}]
        )
        with pytest.raises(openai.InternalServerError):
            ask(client, "x", extra_headers=fault("500"))
        with pytest.raises(openai.APIConnectionError):
            ask(client, "x", extra_headers=fault("reset"))
        client.embeddings.create(model="text-embedding-3-small", input="abcdefgh")
        status, _, body = http(f"{counted.url}/stats")
        stats = json.loads(body)
        assert status == 200 and stats == counted.stats()
        reset = json.loads(http(f"{counted.url}/stats/reset", {})[2])
    assert completion.usage is not None
    assert stats["requests"] == {
        "chat.completions": {"200": 1, "500": 1, "dropped": 1},
        "embeddings": {"200": 1},
    }
    assert stats["requests_total"] == 4
    assert stats["faults"] == {kind: int(kind in ("500", "reset")) for kind in FAULTS}
    assert stats["tokens"] == {
        "input": completion.usage.prompt_tokens + 2,
        "output": completion.usage.completion_tokens,
        "charged": stats["tokens"]["charged"],  # see the accounting tests
    }
    assert stats["in_flight"] == 0 and stats["in_flight_max"] == 1
    assert reset["requests_total"] == 0
    assert reset["tokens"] == {"input": 0, "output": 0, "charged": 0}


# -- configuration and lifecycle ------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"rpm": 0},
        {"tpm": -5},
        {"window_s": 0},
        {"max_concurrent": 0},
        {"error_500": 1.5},
        {"hang": -0.1},
        {"error_500": 0.6, "reset": 0.6},
        {"latency_ms": -1},
        {"port": 70000},
        {"models": ()},
        {"api_key": ""},
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(**settings)


def test_options_from_the_command_line_are_parsed() -> None:
    config = SimulatorConfig.from_options(
        **{"latency-ms": "25", "rpm": "500", "models": "a, b", "seed": "3", "tpm": None}
    )
    assert config == SimulatorConfig(latency_ms=25.0, rpm=500.0, models=("a", "b"), seed=3)
    with pytest.raises(ConfigError, match="unknown simulator option"):
        SimulatorConfig.from_options(rmp="5")
    with pytest.raises(ConfigError, match="cannot read"):
        SimulatorConfig.from_options(rpm="fast")


def test_a_port_in_use_is_a_config_error(sim: Simulator) -> None:
    port = int(sim.url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match="cannot listen"):
        Simulator(SimulatorConfig(port=port)).start_in_thread()


def test_start_and_stop_on_the_callers_loop() -> None:
    async def roundtrip() -> str:
        simulator = Simulator()
        await simulator.start()
        try:
            async with openai.AsyncOpenAI(
                base_url=simulator.openai_base_url, api_key="x", max_retries=0
            ) as client:
                completion = await client.chat.completions.create(
                    model=GPT, messages=[{"role": "user", "content": "async"}]
                )
                return completion.choices[0].message.content or ""
        finally:
            await simulator.stop()

    assert asyncio.run(roundtrip()).endswith("ASYNC")


def test_the_url_is_unknown_before_start() -> None:
    with pytest.raises(RuntimeError, match="not been started"):
        _ = Simulator().url


def test_serve_forever_prints_the_url_and_stops_on_ctrl_c() -> None:
    # A shell without job control starts background jobs with SIGINT ignored; undo that.
    code = (
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from rowpilot.simulator.server import SimulatorConfig, serve_forever\n"
        "serve_forever(SimulatorConfig())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        first = process.stdout.readline()
        url = first.rsplit(" ", 1)[1].strip()
        assert http(f"{url}/v1/models")[0] == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
    assert first.startswith("rowpilot simulator listening on http://127.0.0.1:")


def test_free_ports_differ_between_instances() -> None:
    with Simulator() as first, Simulator() as second:
        assert first.url != second.url
        assert http(f"{first.url}/stats")[0] == http(f"{second.url}/stats")[0] == 200


def test_a_connection_racing_with_stop_is_closed() -> None:
    with Simulator() as simulator:
        port = int(simulator.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)):
            pass
    # A server transport leaked by the stop would warn here (and filterwarnings=error fails).
    gc.collect()


def test_stopping_cancels_a_hang_whose_client_has_gone() -> None:
    # A stop that waited for the hang would outlast the test's timeout.
    simulator = Simulator(SimulatorConfig(hang_seconds=3600))
    simulator.start_in_thread()
    try:
        with (
            openai.OpenAI(base_url=simulator.openai_base_url, api_key="x", max_retries=0) as c,
            pytest.raises(openai.APITimeoutError),
        ):
            ask(c, "hello", extra_headers=fault("hang"), timeout=0.2)
        assert simulator.stats()["in_flight"] == 1
    finally:
        simulator.stop_in_thread()
    assert simulator.stats()["in_flight"] == 0


# -- the search API -------------------------------------------------------------------------


def search(sim: Simulator, body: Mapping[str, Any], **headers: str) -> tuple[int, Any, Any]:
    status, response_headers, raw = http(sim.search_url, body, {**AUTH, **headers})
    try:
        return status, response_headers, json.loads(raw)
    except ValueError:
        return status, response_headers, raw


def test_search_answers_every_result_from_the_query_alone(sim: Simulator) -> None:
    from rowpilot.simulator.server import search_answer

    status, headers, body = search(sim, {"query": "Kaveh Tea reviews", "max_results": 3})
    assert status == 200 and headers["x-request-id"].startswith("sim")
    assert body == search_answer("Kaveh Tea reviews", 3)
    assert len({r["url"] for r in body["results"]}) == 3
    first = body["results"][0]
    digest = hashlib.blake2b(b"Kaveh Tea reviews\x000", digest_size=8).digest()
    assert first["url"].endswith(f"/kaveh-tea-reviews-{digest[2:6].hex()}")
    assert first["title"].startswith("Kaveh Tea reviews: ")
    assert first["snippet"].startswith("Kaveh Tea reviews ")
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # The default is 5 results, the same in every simulator, and another query differs.
    assert len(search(sim, {"query": "Kaveh Tea reviews"})[2]["results"]) == 5
    with Simulator() as other:
        again = http(other.search_url, {"query": "Kaveh Tea reviews", "max_results": 3})[2]
        assert json.loads(again) == body
    assert search(sim, {"query": "Simorgh Shoes", "max_results": 3})[2] != body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "query"),
        ({"query": "  "}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x", "max_results": 0}, "between 1 and 20"),
        ({"query": "x", "max_results": 21}, "between 1 and 20"),
        ({"query": "x", "max_results": "3"}, "an integer"),
        ({"query": "x", "max_results": True}, "an integer"),
    ],
)
def test_a_bad_search_is_a_400_that_says_why(
    sim: Simulator, body: dict[str, Any], message: str
) -> None:
    status, _, answer = search(sim, body)
    assert status == 400 and message in answer["error"]["message"]


def test_search_needs_the_key_as_a_bearer_token(sim: Simulator) -> None:
    assert http(sim.search_url, {"query": "x"})[0] == 401
    status, _, body = http(sim.search_url, {"query": "x"}, {"authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert http(sim.search_url, {"query": "x"}, {"x-api-key": KEY})[0] == 401
    assert http(f"{sim.url}/search", None)[0] == 405  # GET is not the search


def test_search_has_its_own_rate_limit_apart_from_the_models() -> None:
    with Simulator(SimulatorConfig(rpm=60, search_rpm=60)) as limited:
        chat = f"{limited.openai_base_url}/chat/completions"
        replies = [http(limited.search_url, {"query": f"burst {n}"}) for n in range(4)]
        assert [status for status, _, _ in replies] == [200, 429, 429, 429]
        assert replies[0][1]["x-ratelimit-limit-requests"] == "60"
        _, headers, body = replies[-1]
        retry_after = float(headers["retry-after"])
        assert 0.5 < retry_after <= 1.0
        assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
        assert "for search on requests per min: Limit 60" in json.loads(body)["error"]["message"]
        # The search bucket is empty, the model's is not; then the other way round.
        assert http(chat, chat_body("still fine"))[0] == 200
        assert http(chat, chat_body("now limited"))[0] == 429
        time.sleep(retry_after)
        assert http(limited.search_url, {"query": "after the wait"})[0] == 200
        stats = limited.stats()
        admissions = limited.admissions(window_s=0.5)
    assert stats["requests"]["search"] == {"200": 2, "429": 3}
    assert stats["rate_limited"] == 4  # 3 searches and 1 chat request
    assert admissions["search"] == {
        "arrived": 5,
        "admitted": 2,
        "max_arrived": 4,
        "max_admitted": 1,
        "window_s": 0.5,
    }
    assert admissions[GPT]["arrived"] == 2 and admissions[GPT]["admitted"] == 1


def test_unlimited_search_admits_every_request() -> None:
    with Simulator(SimulatorConfig(rpm=60)) as limited:
        statuses = [http(limited.search_url, {"query": f"q{n}"})[0] for n in range(10)]
        assert statuses == [200] * 10
        assert limited.admissions()["search"]["max_admitted"] == 10


def test_search_waits_its_own_latency_and_draws_faults() -> None:
    config = SimulatorConfig(search_latency_ms=150, seed=1)
    with Simulator(config) as slow:
        started = time.monotonic()
        assert http(slow.search_url, {"query": "slow"})[0] == 200
        searched = time.monotonic() - started
        started = time.monotonic()
        assert http(f"{slow.openai_base_url}/chat/completions", chat_body())[0] == 200
        chatted = time.monotonic() - started
        assert http(slow.search_url, {"query": "x"}, fault("503"))[0] == 503
        assert http(slow.search_url, {"query": "x"}, fault("malformed"))[0] == 200
        assert http(slow.search_url, {"query": "x"}, fault("bad_content"))[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            http(slow.search_url, {"query": "x"}, fault("reset"))
        stats = slow.stats()
    assert searched >= 0.14 and chatted < 0.1
    assert stats["requests"]["search"] == {"200": 3, "503": 1, "dropped": 1}
    assert stats["faults"]["503"] == 1 and stats["faults"]["reset"] == 1
    assert stats["in_flight_max"] == 1  # the chat request: searches are not model requests
    with Simulator(SimulatorConfig(error_500=1.0)) as failing:
        assert http(failing.search_url, {"query": "x"})[0] == 500
        assert http(failing.search_url, {"query": "x"}, fault("none"))[0] == 200


def test_the_search_latency_defaults_to_the_models() -> None:
    with Simulator(SimulatorConfig(latency_ms=150)) as slow:
        started = time.monotonic()
        assert http(slow.search_url, {"query": "slow"})[0] == 200
        assert time.monotonic() - started >= 0.14


def test_admissions_report_the_most_in_any_window(sim: Simulator) -> None:
    from rowpilot.simulator.server import _max_in_window

    assert _max_in_window([], 1.0) == 0
    assert _max_in_window([0.0, 0.5, 0.99, 1.0, 1.2, 3.0], 1.0) == 4  # 0.5 up to 1.2
    assert _max_in_window([0.0, 0.5, 0.99, 1.0, 1.2, 3.0], 0.1) == 2
    with Simulator() as fresh:
        for n in range(3):
            http(fresh.search_url, {"query": f"q{n}"})
        status, _, body = http(f"{fresh.url}/stats/admissions?window_s=2&times=1")
        view = json.loads(body)
        assert status == 200 and view == fresh.admissions(2.0, times=True)
        times = view["search"]["times"]
        assert len(times) == 3 and times == sorted(times) and times[0] >= 0
        assert "times" not in json.loads(http(f"{fresh.url}/stats/admissions")[2])["search"]
        assert http(f"{fresh.url}/stats/admissions?window_s=0")[0] == 400
        assert http(f"{fresh.url}/stats/admissions?window_s=x")[0] == 400
        fresh.reset_stats()
        assert fresh.admissions() == {}


def test_search_options_are_parsed_and_checked() -> None:
    config = SimulatorConfig.from_options(**{"search-rpm": "100", "search_latency_ms": "20"})
    assert (config.search_rpm, config.search_latency_ms) == (100.0, 20.0)
    for bad in ({"search_rpm": 0}, {"search_latency_ms": -1}):
        with pytest.raises(ConfigError):
            SimulatorConfig(**bad)


def test_rowpilot_simulate_serves_search_with_its_limit() -> None:
    rowpilot = os.path.join(os.path.dirname(sys.executable), "rowpilot")
    process = subprocess.Popen(
        [rowpilot, "simulate", "--port", "0", "--search-rpm", "60", "--search-latency-ms", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        lines = [process.stdout.readline() for _ in range(4)]
        search_url = lines[3].rsplit(" ", 1)[1].strip()
        assert lines[3].startswith("  Search URL:") and search_url.endswith("/search")
        statuses = [http(search_url, {"query": f"q{n}"})[0] for n in range(2)]
        assert statuses == [200, 429]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


# -- token accounting -----------------------------------------------------------------------


def test_usage_accounting_gives_back_the_unused_max_tokens() -> None:
    # tpm=60,000 holds 1,000 tokens; "abcd" is 1 prompt token and the answer a few.
    for accounting in ("admission", "usage"):
        with Simulator(SimulatorConfig(tpm=60_000, token_accounting=accounting)) as limited:
            url = f"{limited.openai_base_url}/chat/completions"
            status, headers, raw = http(url, chat_body("abcd", max_tokens=500))
            assert status == 200
            used = json.loads(raw)["usage"]["completion_tokens"]
            assert 1 <= used < 500
            remaining = int(headers["x-ratelimit-remaining-tokens"])
            if accounting == "admission":
                assert remaining == 1000 - 501  # prompt + max_tokens, kept
            else:
                # prompt + real completion (a little refill in between: at most the capacity)
                assert 1000 - 1 - used <= remaining <= 1000


def test_usage_accounting_lets_more_requests_through_than_admission() -> None:
    """Back to back on a bucket of 900 that refills 10 tokens a second: at admission each
    request keeps 1 + 590 (a second one would wait 28 s, far longer than ten local calls
    take even on a busy machine); at usage 1 + its short answer (about 6 tokens)."""

    def admitted(accounting: str) -> int:
        config = SimulatorConfig(tpm=600, window_s=90, token_accounting=accounting)
        with Simulator(config) as sim:
            url = f"{sim.openai_base_url}/chat/completions"
            asks = [http(url, chat_body("abcd", max_tokens=590))[0] for _ in range(10)]
            return asks.count(200)

    assert admitted("admission") == 1  # 900 holds one reservation of 591, not two
    assert admitted("usage") == 10


def test_the_stats_count_what_the_token_limit_charged_under_either_rule() -> None:
    def charged(accounting: str) -> tuple[int, int, int]:
        with Simulator(SimulatorConfig(tpm=600_000, token_accounting=accounting)) as sim:
            url = f"{sim.openai_base_url}/chat/completions"
            for _ in range(3):
                assert http(url, chat_body("abcd", max_tokens=100))[0] == 200
            tokens = sim.stats()["tokens"]
            return tokens["charged"], tokens["input"], tokens["output"]

    kept, prompt, _ = charged("admission")
    assert kept == prompt + 3 * 100  # prompt + max_tokens, nothing given back
    settled, prompt, answer = charged("usage")
    assert settled == prompt + answer  # the unused max_tokens given back


def test_anthropic_input_and_output_limits_apart() -> None:
    config = SimulatorConfig(input_tpm=60_000, output_tpm=30_000)  # hold 1,000 and 500
    with Simulator(config) as limited:
        url = f"{limited.anthropic_base_url}/v1/messages"
        messages = [{"role": "user", "content": "x" * 400}]
        body = {"model": CLAUDE, "max_tokens": 400, "messages": messages}
        status, headers, raw = http(url, body)
        assert status == 200
        usage = json.loads(raw)["usage"]
        assert usage["input_tokens"] == 100
        assert headers["anthropic-ratelimit-input-tokens-limit"] == "60000"
        assert headers["anthropic-ratelimit-output-tokens-limit"] == "30000"
        assert int(headers["anthropic-ratelimit-input-tokens-remaining"]) in (900, 901)
        # Output reserved at 400, settled at the real count when the answer was done.
        output_left = int(headers["anthropic-ratelimit-output-tokens-remaining"])
        assert 500 - usage["output_tokens"] <= output_left <= 500 - usage["output_tokens"] + 1
        # No tpm: the combined headers are the tighter of the two (less remaining).
        tightest = min(output_left, int(headers["anthropic-ratelimit-input-tokens-remaining"]))
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(tightest)
        # Output reserved at max_tokens: 600 cannot pass a bucket of 500 that is not full.
        status, headers, raw = http(url, {**body, "max_tokens": 600})
        assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit_error"


def test_openai_answers_carry_no_separate_input_or_output_headers() -> None:
    with Simulator(SimulatorConfig(tpm=60_000, input_tpm=60_000, output_tpm=60_000)) as sim:
        status, headers, _ = http(f"{sim.openai_base_url}/chat/completions", chat_body("abcd"))
        assert status == 200
        assert "x-ratelimit-remaining-tokens" in headers
        assert not any("input" in name or "output" in name for name in headers)


def test_token_accounting_is_checked_and_read_from_options() -> None:
    with pytest.raises(ConfigError, match="token_accounting"):
        SimulatorConfig(token_accounting="later")
    with pytest.raises(ConfigError, match="input_tpm"):
        SimulatorConfig(input_tpm=0)
    config = SimulatorConfig.from_options(
        **{"token-accounting": "usage", "input-tpm": "1000", "output-tpm": "500"}
    )
    assert (config.token_accounting, config.input_tpm, config.output_tpm) == ("usage", 1000, 500)
