"""Python tasks: a function (or callable object) called per row, loaded from
``module:function`` or ``path/to/file.py:function``, versioned by its module's code.

A function is called as ``fn(row)`` or ``fn(row, ctx)`` and returns a dict or a pydantic
model whose fields become output columns. Its ``ctx`` steps (``ctx.llm``, ``ctx.call``,
``ctx.map``, ``ctx.log``) go through ``rowpilot.tasks.steps.Steps``, made when the run opens.
With ``--batch-api``, its ``ctx.llm(..., can_wait=True)`` steps go through the providers'
Batch APIs (``rowpilot.llm.step_batches``): ``answer_ahead`` and ``answer_parked``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import sys
import tokenize
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.errors import TaskLoadError
from rowpilot.tasks.base import RunScope, Task

if TYPE_CHECKING:
    from rowpilot._config import JobConfig
    from rowpilot._projection import TaskProjection
    from rowpilot.engine.sizing import Rates
    from rowpilot.llm.cost import Budget
    from rowpilot.llm.limits import Limits
    from rowpilot.llm.session import LLMSession
    from rowpilot.tasks.ctx import Ctx, StepRunner
    from rowpilot.tasks.steps import Steps
    from rowpilot.tasks.values import Ahead

TaskFn = Callable[..., Any]


class PythonTask(Task):
    """A user's function as a task; with ``config``, its ctx steps get the job's limits,
    budget and model."""

    def __init__(
        self, fn: TaskFn, *, version: str | None = None, config: JobConfig | None = None
    ) -> None:
        if not callable(fn):
            raise TaskLoadError(f"{fn!r} is not callable", hint="pass a function")
        self.fn = fn
        self.name = getattr(fn, "__qualname__", type(fn).__name__)
        self.version = version or source_version(fn)
        self.is_async = _is_async(fn)
        self.takes_ctx = _takes_ctx(fn)
        self.sizing = "async" if self.is_async else "sync"
        self._config = config
        self._budget: Budget | None = None
        self._environ: dict[str, str] = {}
        self._sessions: dict[str, LLMSession] = {}  # preflight-checked before the run
        self._steps: Steps | None = None

    portable = True

    def __reduce__(self) -> tuple[Any, ...]:
        # What a worker process or Ray actor needs: the function and the version, never
        # the run's sessions, budget or environment (which may hold API keys).
        return (_rebuilt, (self.fn, self.version))

    @classmethod
    def from_callable(cls, fn: TaskFn, version: str | None = None) -> PythonTask:
        return cls(fn, version=version)

    def arguments(self, row: dict[str, Any], ctx: Ctx) -> tuple[Any, ...]:
        return (row, ctx) if self.takes_ctx else (row,)

    def call(self, row: dict[str, Any], ctx: Ctx) -> Any:
        return self.fn(*self.arguments(row, ctx))

    def describe(self) -> str:
        module = getattr(self.fn, "__module__", None)
        return f"{module}:{self.name}" if module else self.name

    async def preflight(self) -> None:
        """The job's own model, checked once before any item (a bad key fails here)."""
        if self._config is None:
            return
        from rowpilot.tasks.steps import preflight_sessions

        self._budget, self._environ, self._sessions = await preflight_sessions(self._config)

    async def open(self, scope: RunScope) -> StepRunner | None:
        if self._config is None:
            return None
        from rowpilot.llm.cost import Budget
        from rowpilot.tasks.steps import Steps

        self._steps = Steps(
            self._config,
            scope,
            budget=self._budget or Budget(self._config.budget),
            environ=self._environ or None,
            sessions=self._sessions,
        )
        return self._steps

    async def answer_ahead(
        self, rows: Iterable[tuple[str, dict[str, Any]]], scope: RunScope
    ) -> Ahead | None:
        """With ``--batch-api``: the batches of earlier runs' can-wait steps looked at
        once; the items still waiting in open ones are kept out of the first pass."""
        if self._steps is None or self._steps.batches is None:
            return None
        return await self._steps.batches.look()

    async def answer_parked(self, scope: RunScope) -> Ahead | None:
        """With ``--batch-api``: the requests of the items that parked at a can-wait
        step, through the Batch API (``rowpilot.llm.step_batches``)."""
        if self._steps is None or self._steps.batches is None:
            return None
        return await self._steps.batches.answer_parked()

    async def close(self) -> None:
        if self._steps is not None:
            await self._steps.aclose()
        else:
            for session in self._sessions.values():
                await session.aclose()
        self._sessions = {}

    def check_estimable(self) -> None:
        return None

    def project(self, state: Path, total: int, *, workers: int) -> TaskProjection:
        from rowpilot._projection import project_items
        from rowpilot.llm.answer_bound import DEFAULT_MAX_TOKENS

        max_tokens = (self._config.max_tokens if self._config else None) or DEFAULT_MAX_TOKENS
        return project_items(
            state, total, workers=workers, max_tokens=max_tokens, limits=self.resource_limits()
        )

    def rates(self) -> Rates | None:
        """The item pace the run's steps see; before the run, the tightest rpm of the
        job's ``[limits.NAME]`` tables as if an item made one call of it (an item making
        more goes slower, so the start this gives errs high, and is cut at the first look)."""
        if self._steps is not None:
            return self._steps.item_rates()
        config = self._config
        if config is None:
            return None
        given = [
            (float(table["rpm"]) * config.limits_share, name)
            for name, table in config.limits.items()
            if isinstance(table.get("rpm"), int | float) and table["rpm"] > 0
        ]
        if not given:
            return None
        from rowpilot.engine.sizing import Rates

        rpm, name = min(given)
        return Rates(rpm=rpm, source=f"{name} at rpm {rpm:g}")

    def waited_seconds(self) -> float:
        return self._steps.waited_seconds() if self._steps is not None else 0.0

    def budget_stop(self) -> str | None:
        return self._steps.budget.final_refusal() if self._steps is not None else None

    def resource_limits(self) -> dict[str, Limits]:
        if self._steps is None:
            return {}
        return {name: resource.limits for name, resource in self._steps.resources().items()}

    def resource_stats(self) -> dict[str, dict[str, Any]]:
        if self._steps is None:
            return {}
        return {name: r.stats() for name, r in self._steps.resources().items()}


def _rebuilt(fn: Any, version: str) -> PythonTask:
    return PythonTask(fn, version=version)


@dataclass(frozen=True)
class TaskModule:
    """A task file's module as it travels to a worker: its code goes along, so a worker on
    another machine runs the same code without the file, under the same module name (so
    the task's functions, classes and exceptions pickle by name both ways)."""

    name: str
    path: str
    source: str

    def install(self) -> None:
        if self.name in sys.modules:
            return
        module = types.ModuleType(self.name)
        module.__file__ = self.path
        setattr(module, _SOURCE, self.source)
        sys.modules[self.name] = module
        folder = str(Path(self.path).parent)
        if Path(folder).is_dir() and folder not in sys.path:
            sys.path.insert(0, folder)  # its neighbours, where the folder exists
        exec(compile(self.source, self.path, "exec"), module.__dict__)


def task_modules() -> list[TaskModule]:
    """Every task file loaded in this process, for workers to install before the task."""
    return [
        TaskModule(name, str(module.__file__), getattr(module, _SOURCE))
        for name, module in list(sys.modules.items())
        if getattr(module, _SOURCE, None) is not None
    ]


_SOURCE = "__rowpilot_source__"


def load_task(
    spec: str, version: str | None = None, *, config: JobConfig | None = None
) -> PythonTask:
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
    return PythonTask(fn, version=version, config=config)


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
    setattr(module, _SOURCE, path.read_text(encoding="utf-8"))  # what a worker will run
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
