"""The probe: the first outcomes of a run, held on probation, tell a broken job from bad
rows. When the first ``PROBE`` all fail alike (the same provider cause, or the same error
of the task with the row's key taken out), the job is broken: the run stops and those rows
go back to pending, exactly as they were."""

from __future__ import annotations

import re

from rowpilot.state.registry import Outcome

PROBE = 5  # the first outcomes that, all failing alike, abort the run
# Provider causes the probe watches (run-level ones, auth and not_found, abort at once).
PROBED_CAUSES = frozenset({"bad_request", "connection", "server", "timeout", "rate_limit"})


def likeness(outcome: Outcome) -> tuple[str, ...]:
    """What makes two failures alike: a provider's cause and error class (their messages
    name the row), or a task error's class and message, with the item's key taken out."""
    cause = outcome.cause or "task_error"
    if cause in PROBED_CAUSES:
        return (cause, outcome.error_type or "")
    message = (outcome.error or "").replace(outcome.key, "<key>") if outcome.key else ""
    return (cause, outcome.error_type or "", message or outcome.error or "")


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _last_frame(trace: str | None) -> str:
    """``tasks.py line 12, in classify``: where the task raised, from its traceback."""
    frames = _FRAME.findall(trace or "")
    if not frames:
        return ""
    path, line, function = frames[-1]
    return f"{path.rsplit('/', 1)[-1]} line {line}, in {function}"


def abort_message(outcome: Outcome, cause: str) -> str:
    """Why the run stops: the shared error, and where the task raised it (a provider's
    error says where on its own)."""
    where = _last_frame(outcome.traceback) if cause not in PROBED_CAUSES else ""
    return (
        f"the first {PROBE} items all failed alike ({cause}): {outcome.error}"
        + (f" ({where})" if where else "")
        + "; they are left pending (pass --keep-going if only these rows are bad)"
    )
