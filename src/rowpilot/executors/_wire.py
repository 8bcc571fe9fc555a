"""What crosses between the driver and a worker (a process or a Ray actor): messages as
plain tuples in pickled batches, and exceptions made safe to send.

Driver to worker:

* ``("run", [(work_id, kind, payload), ...])``: items (``kind`` ``"call"``, payload
  ``(row, run_id, key, seq, attempt, timeout)``) or groups (``"group"``, payload
  ``(rows, encode)``) to run;
* ``("reply", step_id, ok, value)``: the answer to a step the worker asked for;
* ``("invoke", step_id)``: the driver holds the permit and the budget for a ``ctx.call``:
  run its function now.

Worker to driver:

* ``("ready", pid)`` once the task is loaded, or ``("broken", message)`` if it cannot be;
* ``("done", work_id, ok, value, cpu_seconds, seconds)``: an item's (or group's) outcome;
* ``("step", work_id, step_id, kind, payload)``: ``ctx.llm`` or ``ctx.call`` asked;
* ``("invoked", step_id, ok, value, cost)``: what a ``ctx.call`` function returned;
* ``("log", kind, record)``: a ``ctx.log`` line;
* ``("stuck", work_id)``: a sync call ran past its timeout: kill this worker.

A batch is pickled once by the side that sends it, so a value that cannot be pickled fails
its own item (``sendable``), never the batch or the connection.
"""

from __future__ import annotations

import pickle
import traceback
from typing import TYPE_CHECKING, Any

from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task

Message = tuple[Any, ...]


def task_blob(task: Task) -> bytes:
    """The task, pickled once for every worker, after the task files it needs (see
    ``load_task_blob``); a user error if it cannot be pickled."""
    import cloudpickle  # type: ignore[import-untyped]

    from rowpilot.tasks.python import task_modules

    try:
        blob: bytes = cloudpickle.dumps((task_modules(), cloudpickle.dumps(task)))
        return blob
    except Exception as exc:
        raise ConfigError(
            f"the task {task.describe()} cannot be sent to worker processes: {exc}",
            hint="define the task function at the top level of a module or file, or use "
            "--executor local",
        ) from exc


def load_task_blob(blob: bytes) -> Task:
    """In a worker: install the task files' modules, then unpickle the task."""
    modules, inner = pickle.loads(blob)
    for module in modules:
        module.install()
    task: Task = pickle.loads(inner)
    return task


class WorkerError(Exception):
    """An exception from a worker that could not be sent as itself: its type and text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind


class WorkerLost(Exception):
    """The worker running a call died (killed, out of memory, its node gone)."""


def portable(exc: BaseException) -> BaseException:
    """``exc`` as it can cross to the driver: itself if it pickles and unpickles, else a
    ``WorkerError`` with its type and message. Its traceback goes along as a note."""
    frames = "".join(traceback.format_exception(exc)).rstrip()
    copy: BaseException
    try:
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:
        copy = WorkerError(type(exc).__name__, str(exc))
    if frames and isinstance(copy, BaseException) and not getattr(copy, "__notes__", None):
        copy.add_note("in the worker:\n" + frames)
    return copy


def pack(messages: list[Message]) -> bytes:
    """One batch as bytes; a message whose value cannot be pickled is made sendable."""
    try:
        return pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps([sendable(message) for message in messages])


def unpack(blob: bytes) -> list[Message]:
    messages: list[Message] = pickle.loads(blob)
    return messages


def sendable(message: Message) -> Message:
    """A message whose payload fails to pickle, with the payload replaced by the error."""
    try:
        pickle.dumps(message)
        return message
    except Exception as exc:
        kind = message[0]
        failure = WorkerError(type(exc).__name__, f"cannot send the value back: {exc}")
        if kind == "done":
            return ("done", message[1], False, failure, *message[4:])
        if kind == "invoked":
            return ("invoked", message[1], False, failure, None)
        if kind == "reply":
            return ("reply", message[1], False, failure)
        return ("log", "rowpilot", {"error": str(failure)})
