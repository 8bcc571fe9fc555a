"""rowpilot._secrets: what is stored and printed never carries a secret (issue 10, item 18)."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rowpilot
from fake_sheets import FakeSheets
from rowpilot._secrets import (
    MIN_SECRET_CHARS,
    REDACTED,
    SECRET_FLAGS,
    redact_args,
    redact_secret,
    redact_urls,
)
from rowpilot.llm.providers import map_openai_error

SECRETS = st.text(string.ascii_letters + string.digits + "-_.~!$&'()*+,;=%", min_size=8)
HOSTS = st.sampled_from(["127.0.0.1:8900", "api.example.com", "[::1]:9", "host"])


@given(user=st.text(string.ascii_letters, min_size=1), password=SECRETS, host=HOSTS)
def test_property_url_credentials_never_survive(user: str, password: str, host: str) -> None:
    url = f"http://{user}:{password}@{host}/v1"
    for args in (["--base-url", url], [f"--base-url={url}"], ["run", "job.toml", url]):
        shown = " ".join(redact_args(args))
        assert password not in shown
        assert f"{REDACTED}@{host}/v1" in shown


@given(
    flag=st.sampled_from(sorted(SECRET_FLAGS)),
    value=SECRETS,
    before=st.lists(st.sampled_from(["run", "job.toml", "--workers", "4", "--no-progress"])),
)
def test_property_secret_flag_values_never_survive(
    flag: str, value: str, before: list[str]
) -> None:
    for args in ([*before, flag, value], [*before, f"{flag}={value}"]):
        redacted = redact_args(args)
        # The value's place holds REDACTED, whatever it is (compared by place, not by
        # substring: a value such as "--api-ke" is part of the flag's own text).
        assert redacted[len(before) :] in ([flag, REDACTED], [f"{flag}={REDACTED}"])
        assert redacted[: len(before)] == before  # the rest of the command is kept as it was


def test_urls_without_credentials_and_other_words_are_kept() -> None:
    args = ["run", "job.toml", "--base-url", "http://127.0.0.1:8900/v1", "--name", "a@b"]
    assert redact_args(args) == args
    assert redact_urls("see https://example.com/x?y=1") == "see https://example.com/x?y=1"


@given(text=st.text(min_size=1), key=st.text(min_size=1, max_size=MIN_SECRET_CHARS - 1))
def test_property_a_key_too_short_to_be_one_never_blanks_text(text: str, key: str) -> None:
    assert redact_secret(text, key) == text


@given(
    key=st.text(string.ascii_letters + string.digits + "-_", min_size=MIN_SECRET_CHARS),
    around=st.lists(st.text(max_size=20), max_size=4),
)
def test_property_a_plausible_key_never_survives(key: str, around: list[str]) -> None:
    text = key.join(around) if len(around) > 1 else f"{''.join(around)}{key}"
    assert key not in redact_secret(text, key).replace(REDACTED, "")


def test_a_one_letter_key_leaves_a_provider_error_readable() -> None:
    import httpx2  # the HTTP client the openai SDK is built on
    import openai

    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx2.Response(400, request=request, json={"error": {"message": "a bad param"}})
    error = openai.BadRequestError("a bad param", response=response, body=None)
    mapped = map_openai_error(error, provider="openai", model="gpt-4o-mini", secret="a")
    assert "a bad param" in str(mapped)
    assert REDACTED not in str(mapped)


def test_a_sheets_write_back_stores_and_prints_no_key_and_no_token(
    fake_sheets: FakeSheets, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The service account's private key and the access tokens the fake issued appear in
    no file of the state (registry, ledger, logs) and in nothing printed."""
    fake_sheets.add_sheet("book1", "S", [["id", "text"], ["a", "x"], ["b", "y"]])
    key_file = Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"])
    pem = json.loads(key_file.read_text())["private_key"]
    body = "".join(pem.splitlines()[1:-1])  # the key itself, without its armour
    state = tmp_path / "state"
    result = rowpilot.run(
        _shout,
        "gsheet://book1/S",
        key="id",
        state=state,
        write_back=True,
        sheets_write_rpm=6000.0,
        progress=False,
    )
    assert result.summary.done == 2 and fake_sheets.writes()
    secrets = [body[:64], body[-64:], *fake_sheets.tokens]
    printed = "".join(capfd.readouterr())
    stored = [path.read_bytes() for path in state.rglob("*") if path.is_file()]
    for secret in secrets:
        assert secret not in printed
        assert not any(secret.encode() in blob for blob in stored)


def _shout(row: dict[str, object]) -> dict[str, object]:
    return {"loud": str(row["text"]).upper()}
