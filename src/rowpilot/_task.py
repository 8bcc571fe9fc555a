"""Tasks: loading ``module:function`` or ``file.py:function``, versioning, calling.

A task is called as ``task(row)`` or ``task(row, ctx)`` and returns a dict or a pydantic
model whose fields become output columns.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import io
import logging
import sys
import time
import tokenize
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rowpilot._items import encode_output
from rowpilot._values import ItemUsage, StepTrail
from rowpilot.errors import OutputCollisionError, TaskLoadError, TaskOutputError

if TYPE_CHECKING:
    from rowpilot._steps import Steps

TaskFn = Callable[..., Any]


@dataclass(frozen=True)
class Ctx:
    """The task's handle on the engine: which run and item it is working on, a logger, and
    the steps a multi-step task takes through the engine.

    In an async task, ``await ctx.llm(...)``, ``await ctx.call(...)`` and
    ``await ctx.map(...)``; in a sync task, ``ctx.llm_sync(...)``, ``ctx.call_sync(...)``
    and ``ctx.map_sync(...)`` do the same and wait. Each step is limited, retried, priced
    and journaled before it returns, so a resumed or retried item replays its answered
    steps instead of paying for them again (see ``rowpilot._steps``).
    """

    run_id: str
    key: str
    row: int
    attempt: int
    logger: logging.Logger
    usage: ItemUsage = field(default_factory=ItemUsage)
    steps: Steps | None = field(default=None, repr=False, compare=False)
    trail: StepTrail | None = field(default=None, repr=False, compare=False)

    # -- async ------------------------------------------------------------------------

    async def llm(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        schema: Any = None,
        system: str | None = None,
        max_tokens: int | None = None,
        cache: bool = True,
        **params: Any,
    ) -> Any:
        """Ask an LLM; return its text, or with ``schema`` (a pydantic model or a JSON
        Schema) the validated instance or dict. ``model`` defaults to the job's
        ``--model``; ``params`` (temperature, ...) go to the provider."""
        steps, trail = self._steps()
        return await steps.llm(
            self.usage,
            trail,
            self.key,
            prompt,
            model=model,
            schema=schema,
            system=system,
            max_tokens=max_tokens,
            cache=cache,
            params=params,
        )

    async def call(
        self,
        resource: str,
        fn: Callable[..., Any],
        *args: Any,
        cost: float | Callable[[Any], float] | None = None,
        max_cost: float | None = None,
        journal: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Call ``fn(*args, **kwargs)`` under ``resource``'s limits and retry policy
        (``[limits.NAME]``). ``cost`` (USD) counts against the budget: a number is reserved
        before the call; a function of the result needs ``max_cost``, which is reserved
        before the call and settled with what the function says after it. With
        ``journal`` (the default) the arguments and the result must be JSON values; the
        result is returned as its JSON round trip."""
        steps, trail = self._steps()
        return await steps.call(
            self.usage,
            trail,
            resource,
            fn,
            args,
            kwargs,
            cost=cost,
            max_cost=max_cost,
            journal=journal,
        )

    async def map(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        *,
        workers: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``fn(subitem)`` or ``fn(subitem, ctx)`` for each sub-item, at most ``workers``
        at once and within the run's ``--workers``; results in order. A failed sub-item
        raises ``SubItemError`` naming each failure (or, with ``return_exceptions``, its
        exception is put in its place)."""
        steps, _ = self._steps()
        return await steps.map(
            subitems, fn, self, workers=workers, return_exceptions=return_exceptions
        )

    def log(self, kind: str, **data: Any) -> None:
        """Append ``data`` to the run's ``<kind>.jsonl`` log (e.g. review verdicts)."""
        steps, _ = self._steps()
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run_id": self.run_id,
            "key": self.key,
            "attempt": self.attempt,
            "kind": kind,
            **data,
        }
        steps.log(kind, record)

    # -- sync: for sync tasks, which run in threads -----------------------------------

    def llm_sync(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        schema: Any = None,
        system: str | None = None,
        max_tokens: int | None = None,
        cache: bool = True,
        **params: Any,
    ) -> Any:
        """``ctx.llm`` for a sync task."""
        loop = self._steps()[0].loop
        call = self.llm(
            prompt,
            model=model,
            schema=schema,
            system=system,
            max_tokens=max_tokens,
            cache=cache,
            **params,
        )
        return run_blocking(loop, call)

    def call_sync(
        self,
        resource: str,
        fn: Callable[..., Any],
        *args: Any,
        cost: float | Callable[[Any], float] | None = None,
        max_cost: float | None = None,
        journal: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``ctx.call`` for a sync task (``fn`` runs in a worker thread)."""
        loop = self._steps()[0].loop
        call = self.call(
            resource, fn, *args, cost=cost, max_cost=max_cost, journal=journal, **kwargs
        )
        return run_blocking(loop, call)

    def map_sync(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        *,
        workers: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``ctx.map`` for a sync task."""
        loop = self._steps()[0].loop
        call = self.map(subitems, fn, workers=workers, return_exceptions=return_exceptions)
        result: list[Any] = run_blocking(loop, call)
        return result

    def _steps(self) -> tuple[Steps, StepTrail]:
        if self.steps is None or self.trail is None:
            raise RuntimeError("ctx.llm, ctx.call, ctx.map and ctx.log work inside a rowpilot run")
        return self.steps, self.trail


def run_blocking(loop: asyncio.AbstractEventLoop, step: Coroutine[Any, Any, Any]) -> Any:
    """A step from a sync task's thread: run on the run's loop, wait here."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # waiting here would block the loop the step needs
        step.close()
        raise RuntimeError(
            "the *_sync ctx methods are for sync tasks; in an async task, await ctx.llm(...)"
        )
    return asyncio.run_coroutine_threadsafe(step, loop).result()


@dataclass(frozen=True)
class Task:
    """A loaded task: the callable and what the engine needs to know about it."""

    fn: TaskFn
    name: str
    version: str
    is_async: bool
    takes_ctx: bool

    @classmethod
    def from_callable(cls, fn: TaskFn, version: str | None = None) -> Task:
        if not callable(fn):
            raise TaskLoadError(f"{fn!r} is not callable", hint="pass a function")
        return cls(
            fn=fn,
            name=getattr(fn, "__qualname__", type(fn).__name__),
            version=version or source_version(fn),
            is_async=_is_async(fn),
            takes_ctx=_takes_ctx(fn),
        )

    def arguments(self, row: dict[str, Any], ctx: Ctx) -> tuple[Any, ...]:
        return (row, ctx) if self.takes_ctx else (row,)


def load_task(spec: str, version: str | None = None) -> Task:
    """Load ``module:function`` or ``path/to/file.py:function``."""
    target, sep, attribute = spec.rpartition(":")
    if not sep or not target or not attribute:
        raise TaskLoadError(
            f"task {spec!r} does not name a function",
            hint="write module:function or path/to/file.py:function",
        )
    module = _import_file(target) if _looks_like_path(target) else _import_module(target)
    fn = module
    for part in attribute.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise TaskLoadError(
                f"{target} has no attribute {attribute!r}",
                hint=f"check the name; it defines {_public_names(module)}",
            )
    if not callable(fn):
        raise TaskLoadError(
            f"{spec} is a {type(fn).__name__}, not callable", hint="name a function"
        )
    return Task.from_callable(fn, version)


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(target: str) -> Any:
    path = Path(target)
    if not path.is_file():
        raise TaskLoadError(f"task file {target} does not exist", hint="check the path")
    name = (
        "rowpilot_task_" + hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()
    )
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskLoadError(f"cannot import {target}", hint="name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The task's own folder on the path lets it import its neighbours, as `python file.py` would.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _import_failed(target, exc) from exc
    return module


def _import_module(target: str) -> Any:
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == target or target.startswith(exc.name + ".")):
            raise TaskLoadError(
                f"no module named {target!r}",
                hint="run from the folder that holds it, or give the file path: "
                "path/to/file.py:function",
            ) from exc
        raise _import_failed(target, exc) from exc
    except Exception as exc:
        raise _import_failed(target, exc) from exc


def _import_failed(target: str, exc: BaseException) -> TaskLoadError:
    return TaskLoadError(
        f"importing {target} raised {type(exc).__name__}: {exc}",
        hint="fix the error in the task's module (run with --debug for the traceback)",
    )


def _public_names(module: Any) -> str:
    names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
    return ", ".join(names[:10]) or "no functions"


def source_version(fn: TaskFn) -> str:
    """The task version: a hash of the code of the module that defines the task.

    The whole module counts, not only the entry function: its helpers, sub-item functions
    and prompt constants are part of what the task does. Comments and blank lines do not
    count. Other modules it imports do not either: after editing one, pass
    ``--task-version`` (or ``--force``). A function with no source file (a notebook cell,
    a REPL) is known by its own source."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    module = _module_code(inspect.getmodule(target))
    # The entry point's name too: two tasks of one module are two tasks.
    text = f"{module}\x00{target.__qualname__}" if module else _own_source(fn, target)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _module_code(module: Any) -> str | None:
    """The module's tokens without comments or blank lines, or None without a source."""
    if module is None or not getattr(module, "__file__", None):
        return None
    try:
        source = inspect.getsource(module)
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        return "\x00".join(
            f"{token.type}:{'' if token.type == tokenize.INDENT else token.string}"
            for token in tokens
            if token.type not in (tokenize.COMMENT, tokenize.NL)
        )
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return None


def _own_source(fn: TaskFn, target: Any) -> str:
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def _is_async(fn: TaskFn) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - async __call__ on callable objects
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _takes_ctx(fn: TaskFn) -> bool:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.name == "ctx" for p in parameters):
        return True
    # A second positional parameter with a default (``def f(row, retries=3)``) is not ctx.
    required = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _model_fields(model: BaseModel, *, task: str, key: str) -> dict[str, Any]:
    try:
        return model.model_dump(mode="json")
    except Exception as exc:  # pydantic's serialisation errors have no common public base
        raise TaskOutputError(
            f"task {task} returned a model that cannot be stored for key {key!r}: {exc}",
            key=key,
            hint="give the model JSON-compatible fields",
        ) from exc


def output_json(
    value: Any,
    *,
    task: str,
    key: str,
    prefix: str = "",
    taken: Mapping[str, str] | None = None,
) -> str:
    """Check what a task returned and encode it; anything but a dict or model is an error.

    Field names get ``prefix``; a name in ``taken`` (an input column, the key column among
    them, or a field the exports keep for themselves; the value says which) is an
    OutputCollisionError: in a table it would overwrite that.
    """
    if isinstance(value, BaseModel):
        value = _model_fields(value, task=task, key=key)
    if not isinstance(value, dict):
        raise TaskOutputError(
            f"task {task} returned a {type(value).__name__} for key {key!r}, not a dict",
            key=key,
            hint="return a dict such as {'label': ...} or a pydantic model "
            "({} if there is no output)",
        )
    if not all(isinstance(name, str) for name in value):
        raise TaskOutputError(
            f"task {task} returned a dict with non-text field names for key {key!r}",
            key=key,
            hint="use str keys; they become the output column names",
        )
    if prefix:
        value = {prefix + name: field for name, field in value.items()}
    if taken and not taken.keys().isdisjoint(value):  # a set operation: on every item
        clash = next(name for name in value if name in taken)
        raise OutputCollisionError(
            f"task {task} returned the field {clash!r} for key {key!r}, and that name is "
            f"{taken[clash]}: the output would overwrite it",
            key=key,
            column=clash,
        )
    try:
        return encode_output(value)
    except (TypeError, ValueError) as exc:
        raise TaskOutputError(
            f"task {task} returned a value that cannot be stored for key {key!r}: {exc}",
            key=key,
            hint="return JSON-compatible values (str, numbers, bools, lists, dicts)",
        ) from exc
