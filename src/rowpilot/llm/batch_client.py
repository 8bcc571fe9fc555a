"""The providers' Batch APIs through the official SDKs: the part of ``rowpilot.llm.batch``
that knows each SDK (docs/batch.md).

``BatchClient`` speaks to one provider kind, over the SDK client a ``ChatClient`` already
holds (its key, address and timeouts), and every SDK or transport failure comes out as the
``ProviderError`` the ``ChatClient`` maps it to:

* **OpenAI**: the requests are uploaded as a JSONL file (purpose ``batch``), then a batch on
  ``/v1/chat/completions`` is created with ``metadata = {"rowpilot_intent": INTENT}``; a
  batch is open until ``completed``, ``failed``, ``expired`` or ``cancelled``; its answers
  are read from its output and error files.
* **Anthropic**: one ``messages.batches.create`` with every request; a batch is open until
  ``ended``; its results are streamed. Anthropic keeps no metadata, so a batch is found
  again by its ``custom_id``s, which begin with the intent (``find``).

A request's body is the one ``ChatClient.complete`` sends for the same arguments (the
params in the body, the structured-output schema where that provider takes it), so a
batch answer is the answer the online call would get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from rowpilot.llm.providers import ChatClient, Completion, request_options

if TYPE_CHECKING:  # each SDK is imported with its first client (llm/providers.py)
    import anthropic
    import openai

__all__ = ["COMPLETION_WINDOW", "BatchClient", "BatchLook", "RowResult", "request_body"]

COMPLETION_WINDOW: Literal["24h"] = "24h"  # both providers' one window
INTENT_METADATA = "rowpilot_intent"
_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
# Each provider's limits on one batch: requests, and bytes (OpenAI: the file; Anthropic:
# the create request's body).
LIMITS: Mapping[str, tuple[int, int]] = {
    "openai": (50_000, 200 * 2**20),
    "anthropic": (100_000, 256 * 2**20),
}
_OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_ANTHROPIC_FINISH |= {"refusal": "content_filter", "tool_use": "tool_calls"}
_LIST_PAGE = 100


@dataclass(frozen=True)
class BatchLook:
    """A batch as the provider shows it now."""

    ended: bool
    status: str
    done: int  # rows answered or failed so far (Anthropic counts them only at the end)
    total: int


@dataclass(frozen=True)
class RowResult:
    """One row's result: a completion, or why there is none (an error, expiry, cancel)."""

    custom_id: str
    completion: Completion | None
    error: str = ""


def request_body(
    kind: Literal["openai", "anthropic"],
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    system: str | None,
    max_tokens: int,
    json_schema: dict[str, Any] | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON body ``ChatClient.complete`` sends for these arguments."""
    extra = dict(request_options(params).get("extra_body") or {})
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if kind == "openai":
        body["messages"] = ([{"role": "system", "content": system}] if system else []) + list(
            messages
        )
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema},
            }
    else:
        body["messages"] = list(messages)
        if system is not None:
            body["system"] = system
        if json_schema is not None:
            body["output_config"] = {"format": {"type": "json_schema", "schema": json_schema}}
    return {**body, **extra}


class BatchClient:
    """One provider's Batch API for one model (see the module docstring)."""

    def __init__(self, chat: ChatClient) -> None:
        self._chat = chat
        self.kind = chat.spec.kind
        self.limits = LIMITS[self.kind]

    @property
    def _openai(self) -> openai.AsyncOpenAI:
        return cast("openai.AsyncOpenAI", self._chat.sdk)

    @property
    def _anthropic(self) -> anthropic.AsyncAnthropic:
        return cast("anthropic.AsyncAnthropic", self._chat.sdk)

    async def create(self, intent: str, lines: Sequence[tuple[str, dict[str, Any]]]) -> str:
        """Submit ``lines`` (custom_id, body) as one batch; its provider id."""
        try:
            if self.kind == "openai":
                return await self._create_openai(self._openai, intent, lines)
            return await self._create_anthropic(self._anthropic, lines)
        except self._chat.boundary as exc:
            raise self._chat.provider_error(exc) from exc

    async def look(self, batch_id: str) -> BatchLook:
        try:
            if self.kind == "openai":
                batch = await self._openai.batches.retrieve(batch_id)
                counts = batch.request_counts
                done = (counts.completed + counts.failed) if counts else 0
                total = counts.total if counts else 0
                return BatchLook(batch.status in _OPENAI_ENDED, batch.status, done, total)
            found = await self._anthropic.messages.batches.retrieve(batch_id)
            c = found.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            return BatchLook(found.processing_status == "ended", found.processing_status,
                             total - c.processing, total)  # fmt: skip
        except self._chat.boundary as exc:
            raise self._chat.provider_error(exc) from exc

    async def results(self, batch_id: str) -> list[RowResult]:
        """Every row's result of an ended batch (rows never run: an error)."""
        try:
            if self.kind == "openai":
                return await self._openai_results(self._openai, batch_id)
            return await self._anthropic_results(self._anthropic, batch_id)
        except self._chat.boundary as exc:
            raise self._chat.provider_error(exc) from exc

    async def find(self, intent: str, since: float, known: set[str]) -> str | bool:
        """The batch created for ``intent`` (recorded as intended at ``since``, UNIX time),
        among batches not ``known``: its id; ``False`` when there is surely none; ``True``
        while it cannot be told yet (Anthropic: a candidate batch has not ended)."""
        try:
            if self.kind == "openai":
                return await self._find_openai(self._openai, intent, since)
            return await self._find_anthropic(self._anthropic, intent, since, known)
        except self._chat.boundary as exc:
            raise self._chat.provider_error(exc) from exc

    # -- OpenAI ----------------------------------------------------------------------

    async def _create_openai(
        self, sdk: openai.AsyncOpenAI, intent: str, lines: Sequence[tuple[str, dict[str, Any]]]
    ) -> str:
        data = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": _ENDPOINT, "body": body}) + "\n"
            for cid, body in lines
        ).encode()
        file = await sdk.files.create(file=(f"{intent}.jsonl", data), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=file.id,
            endpoint=_ENDPOINT,
            completion_window=COMPLETION_WINDOW,
            metadata={INTENT_METADATA: intent},
        )
        return batch.id

    async def _openai_results(self, sdk: openai.AsyncOpenAI, batch_id: str) -> list[RowResult]:
        batch = await sdk.batches.retrieve(batch_id)
        found: list[RowResult] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is None:
                continue
            text = (await sdk.files.content(file_id)).text
            found.extend(_openai_row(json.loads(line)) for line in text.splitlines() if line)
        return found

    async def _find_openai(self, sdk: openai.AsyncOpenAI, intent: str, since: float) -> str | bool:
        async for batch in sdk.batches.list(limit=_LIST_PAGE):
            if (batch.metadata or {}).get(INTENT_METADATA) == intent:
                return batch.id
            if batch.created_at < since - _CLOCK_SLACK_S:
                break  # newest first: older batches cannot be this intent's
        return False

    # -- Anthropic -------------------------------------------------------------------

    async def _create_anthropic(
        self, sdk: anthropic.AsyncAnthropic, lines: Sequence[tuple[str, dict[str, Any]]]
    ) -> str:
        requests = [{"custom_id": cid, "params": body} for cid, body in lines]
        batch = await sdk.messages.batches.create(requests=cast(Any, requests))
        return batch.id

    async def _anthropic_results(
        self, sdk: anthropic.AsyncAnthropic, batch_id: str
    ) -> list[RowResult]:
        found = []
        async for entry in await sdk.messages.batches.results(batch_id):
            result = entry.result
            if result.type != "succeeded":
                error = getattr(result, "error", None)
                found.append(RowResult(entry.custom_id, None, f"{result.type}: {error}"))
                continue
            message = result.message
            text = "".join(b.text for b in message.content if b.type == "text")
            stop = str(message.stop_reason)
            completion = Completion(
                text=text,
                input_tokens=message.usage.input_tokens,
                output_tokens=message.usage.output_tokens,
                finish_reason=_ANTHROPIC_FINISH.get(stop, stop),
                raw_model=message.model,
                headers={},
            )
            found.append(RowResult(entry.custom_id, completion))
        return found

    async def _find_anthropic(
        self, sdk: anthropic.AsyncAnthropic, intent: str, since: float, known: set[str]
    ) -> str | bool:
        undecided = False
        async for batch in sdk.messages.batches.list(limit=_LIST_PAGE):
            if batch.created_at.timestamp() < since - _CLOCK_SLACK_S:
                break  # newest first
            if batch.id in known:
                continue
            if batch.processing_status != "ended":
                undecided = True  # its custom_ids can be read only once it has ended
                continue
            async for entry in await sdk.messages.batches.results(batch.id):
                if entry.custom_id.startswith(intent + "-"):
                    return batch.id
                break  # one row tells whose batch it is
        return undecided


_CLOCK_SLACK_S = 600.0  # the provider's clock may differ from ours by this much


def _openai_row(line: dict[str, Any]) -> RowResult:
    custom_id = str(line.get("custom_id"))
    response = line.get("response") or {}
    body = response.get("body") or {}
    if response.get("status_code") != 200 or not body.get("choices"):
        error = line.get("error") or body.get("error") or {}
        return RowResult(custom_id, None, str(error.get("message") or error or "no answer"))
    choice, usage = body["choices"][0], body.get("usage") or {}
    completion = Completion(
        text=(choice.get("message") or {}).get("content") or "",
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=str(choice.get("finish_reason")),
        raw_model=str(body.get("model")),
        headers={},
    )
    return RowResult(custom_id, completion)
