"""Tests for rowpilot.engine.retry: backoff delays, which errors are retried, --retry-on names."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowpilot.engine.retry import DEFAULT_RETRY_ON, RetryPolicy, exception_types
from rowpilot.errors import (
    ConfigError,
    ItemTimeoutError,
    SourceFormatError,
    StateError,
    TaskOutputError,
    UserError,
)

# -- delay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8, 20])
def test_delay_is_full_jitter_under_the_capped_ceiling(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=30, base_delay=0.5, max_delay=3.0, rng=random.Random(7))
    ceiling = min(3.0, 0.5 * 2 ** (attempt - 1))
    delays = [policy.delay(attempt) for _ in range(300)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    # Full jitter: the draws spread over the whole range, not just near the ceiling.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    first = RetryPolicy(rng=random.Random(42))
    second = RetryPolicy(rng=random.Random(42))
    assert [first.delay(a) for a in range(1, 6)] == [second.delay(a) for a in range(1, 6)]


def test_delay_respects_at_least() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=2.0, rng=random.Random(3))
    assert all(policy.delay(1, at_least=5.0) == 5.0 for _ in range(50))
    assert all(policy.delay(3, at_least=1.0) >= 1.0 for _ in range(200))


def test_zero_delays_mean_no_wait() -> None:
    policy = RetryPolicy(base_delay=0.0, max_delay=0.0, rng=random.Random(0))
    assert {policy.delay(attempt) for attempt in range(1, 10)} == {0.0}


@given(
    attempt=st.integers(1, 64),
    base=st.floats(0, 10, allow_nan=False),
    cap=st.floats(0, 120, allow_nan=False),
    at_least=st.floats(0, 200, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_delay_property(attempt: int, base: float, cap: float, at_least: float, seed: int) -> None:
    policy = RetryPolicy(max_attempts=100, base_delay=base, max_delay=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2 ** (attempt - 1))
    assert 0.0 <= policy.delay(attempt) <= ceiling
    assert max(at_least, 0.0) <= policy.delay(attempt, at_least=at_least) <= max(at_least, ceiling)


def test_delay_for_a_late_attempt_stays_at_the_cap() -> None:
    # --max-attempts has no upper bound, so attempt numbers past 1024 are reachable.
    policy = RetryPolicy(max_attempts=5000, base_delay=0.5, max_delay=30.0, rng=random.Random(1))
    for attempt in (1024, 1025, 2000, 4999):
        assert 0.0 <= policy.delay(attempt) <= 30.0


# -- should_retry --------------------------------------------------------------------------


def test_default_retry_on_is_connection_timeout_and_item_timeout() -> None:
    policy = RetryPolicy()
    assert policy.retry_on == DEFAULT_RETRY_ON
    assert policy.should_retry(ConnectionError("reset"), 1)
    assert policy.should_retry(TimeoutError("slow"), 1)
    assert policy.should_retry(ItemTimeoutError("ran past --timeout", key="k"), 1)
    assert not policy.should_retry(ValueError("bad"), 1)
    assert not policy.should_retry(KeyError("k"), 1)


def test_should_retry_stops_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    error = ConnectionError("reset")
    assert [policy.should_retry(error, attempt) for attempt in (1, 2, 3, 4)] == [
        True,
        True,
        False,
        False,
    ]


def test_one_attempt_means_no_retry() -> None:
    assert not RetryPolicy(max_attempts=1).should_retry(ConnectionError("reset"), 1)


@pytest.mark.parametrize(
    "error",
    [
        TaskOutputError("returned a str", key="k"),
        UserError("user"),
        ConfigError("config"),
        StateError("state"),
        SourceFormatError("ragged"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_user_errors_and_task_output_errors_are_never_retried(error: Exception) -> None:
    policy = RetryPolicy(max_attempts=10, retry_on=(Exception,))
    assert not policy.should_retry(error, 1)


def test_only_retry_on_types_are_retried_subclasses_included() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(OSError, LookupError))
    assert policy.should_retry(OSError("disk"), 1)
    assert policy.should_retry(ConnectionResetError("reset"), 1)  # OSError subclass
    assert policy.should_retry(FileNotFoundError("gone"), 2)  # OSError subclass
    assert policy.should_retry(KeyError("k"), 1)  # LookupError subclass
    assert policy.should_retry(IndexError("i"), 4)
    assert not policy.should_retry(ValueError("v"), 1)
    assert policy.should_retry(TimeoutError("slow"), 1)  # TimeoutError is an OSError
    assert not policy.should_retry(ItemTimeoutError("late"), 1)
    assert not policy.should_retry(KeyError("k"), 5)


def test_exception_retries_every_ordinary_error_but_not_user_errors() -> None:
    policy = RetryPolicy(retry_on=(Exception,))
    assert policy.should_retry(ValueError("v"), 1)
    assert policy.should_retry(ItemTimeoutError("late"), 1)
    assert not policy.should_retry(TaskOutputError("not a dict"), 1)
    assert not policy.should_retry(KeyboardInterrupt(), 1)


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_below_one_is_a_config_error(max_attempts: int) -> None:
    with pytest.raises(ConfigError, match="at least 1") as caught:
        RetryPolicy(max_attempts=max_attempts)
    assert caught.value.hint is not None
    assert "--max-attempts 1" in caught.value.hint


@pytest.mark.parametrize(("base", "cap"), [(-0.1, 1.0), (0.5, -1.0)])
def test_negative_delays_are_a_config_error(base: float, cap: float) -> None:
    with pytest.raises(ConfigError, match="negative"):
        RetryPolicy(base_delay=base, max_delay=cap)


# -- exception_types -----------------------------------------------------------------------


def test_exception_types_resolves_builtins_and_dotted_names() -> None:
    assert exception_types(["ValueError", "TimeoutError", "Exception"]) == (
        ValueError,
        TimeoutError,
        Exception,
    )
    assert exception_types(["json.JSONDecodeError"]) == (json.JSONDecodeError,)
    assert exception_types(["rowpilot.errors.ItemTimeoutError"]) == (ItemTimeoutError,)
    assert exception_types(["KeyboardInterrupt"]) == (KeyboardInterrupt,)  # a BaseException
    assert exception_types([]) == ()


def test_resolved_names_drive_should_retry() -> None:
    policy = RetryPolicy(retry_on=exception_types(["json.JSONDecodeError"]))
    assert policy.should_retry(json.JSONDecodeError("bad", "{", 0), 1)
    assert not policy.should_retry(ValueError("plain"), 1)


@pytest.mark.parametrize(
    "name",
    [
        "int",  # a builtin that is a class but no exception
        "print",  # a builtin function
        "json.dumps",  # a dotted function
        "os.path",  # a dotted module
        "NoSuchError",  # unknown builtin
        "json.NoSuchError",  # unknown attribute of a real module
        "no_such_module_xyz.Error",  # unknown module
        "",
        "json.",
    ],
)
def test_exception_types_rejects_non_exceptions_and_unknown_names(name: str) -> None:
    with pytest.raises(ConfigError, match="is not an exception class") as caught:
        exception_types(["ValueError", name])
    assert repr(name) in caught.value.message
    assert caught.value.hint is not None
    assert "dotted path" in caught.value.hint


def test_exception_types_rejects_a_relative_name_with_config_error() -> None:
    # A user typo such as `--retry-on .errors.Timeout` must be a one-line ConfigError.
    with pytest.raises(ConfigError, match="is not an exception class"):
        exception_types([".errors.Timeout"])
