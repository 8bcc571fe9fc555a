"""The retry policy: a small pure object that says whether and when to try again.

The scheduler owns the loop (so attempts are counted and recorded); this only decides.
"""

from __future__ import annotations

import builtins
import importlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from rowpilot.errors import (
    ConfigError,
    ItemTimeoutError,
    OutputCollisionError,
    ProviderError,
    TaskOutputError,
    UserError,
    WorkerCrashError,
)

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ItemTimeoutError,
)
NEVER_RETRIED: tuple[type[BaseException], ...] = (TaskOutputError, UserError, WorkerCrashError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; retry only the listed exception types."""

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(
                "max attempts must be at least 1", hint="use --max-attempts 1 for no retries"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("retry delays cannot be negative")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """``attempt`` is the 1-based number of the attempt that just failed."""
        if attempt >= self.max_attempts or isinstance(error, NEVER_RETRIED):
            return False
        if isinstance(error, ProviderError):
            return error.retryable  # the provider layer knows which of its failures pass
        return isinstance(error, self.retry_on)

    def delay(self, attempt: int, *, at_least: float = 0.0) -> float:
        """Seconds to wait before attempt ``attempt + 1``: full jitter under the capped ceiling."""
        # The exponent is capped: 2.0 ** 1024 overflows a float long before any real cap.
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))
        return max(at_least, self.rng.uniform(0, ceiling))


def exception_types(names: Sequence[str]) -> tuple[type[BaseException], ...]:
    """Resolve ``ValueError`` or ``package.module.Error`` names to exception classes."""
    return tuple(_exception_type(name) for name in names)


def _exception_type(name: str) -> type[BaseException]:
    module_name, _, attribute = name.rpartition(".")
    try:
        found = (
            getattr(importlib.import_module(module_name), attribute)
            if module_name
            else getattr(builtins, name)
        )
    except (ImportError, AttributeError, TypeError, ValueError):
        found = None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ConfigError(
            f"--retry-on {name!r} is not an exception class",
            hint="name a built-in (TimeoutError) or a dotted path (httpx.ReadTimeout); "
            "Exception retries all",
        )
    return found


def failure_cause(error: BaseException) -> str:
    """The cause class a failed item is filed under (``failures``, the summary)."""
    if isinstance(error, ProviderError):
        return error.cause
    if isinstance(error, ItemTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, OutputCollisionError):
        return "output_collision"
    if isinstance(error, WorkerCrashError):
        return "process_crash"
    if isinstance(error, TaskOutputError):
        return "invalid_output"
    return "task_error"
