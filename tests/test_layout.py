"""The package's shape: no import cycle, no module too long to read, and the engine's side
of the Task seam free of task kinds.

Read from the source with ``ast``, so type-only (``if TYPE_CHECKING:``) and function-level
imports count: a cycle held apart by either is still a cycle for whoever changes the code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import rowpilot

PACKAGE = Path(rowpilot.__file__).resolve().parent
MAX_LINES = 900
LONG_BY_NATURE = {"simulator/server.py"}  # a whole fake provider, in one file on purpose
# The modules that must treat every task alike: they see only rowpilot.tasks.base.Task.
KIND_BLIND = ("engine/job.py", "_doctor.py", "_estimate.py", "engine/scheduler.py")
KIND_NAMES = {
    "is_prompt",
    "is_local",
    "PromptTask",
    "PythonTask",
    "EmbedTask",
    "LocalLabelTask",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every rowpilot module ``path`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from pkg import module`` imports that module; ``from pkg import name``,
                # the package that defines the name.
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in modules else base


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imported(name, path, modules) if target in modules} - {name}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(PACKAGE).as_posix()
)
def test_no_module_is_over_900_lines(path: Path) -> None:
    if path.relative_to(PACKAGE).as_posix() in LONG_BY_NATURE:
        return
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it"


@pytest.mark.parametrize("name", KIND_BLIND)
def test_the_engine_side_never_asks_a_tasks_kind(name: str) -> None:
    path = PACKAGE / name
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if _reads_a_task_by_name(node):
            pytest.fail(f"{name}:{node.lineno}: {ast.unparse(node)} reads a task by name")
        if isinstance(node, ast.Attribute | ast.Name):
            word = node.attr if isinstance(node, ast.Attribute) else node.id
            assert word not in KIND_NAMES, f"{name}:{node.lineno}: {word} names a task kind"
            assert word != "modules" or "sys" not in ast.unparse(node), f"{name}: sys.modules"


def _reads_a_task_by_name(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and "task" in ast.unparse(node.args[0])
    )


SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|ATTACH|CREATE TABLE)\b")


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(PACKAGE).as_posix()
)
def test_all_sql_is_in_the_registry_module(path: Path) -> None:
    own_sql = (
        "state/registry.py",
        "state/schema.py",
        "state/writeback.py",
        "state/batches.py",
        "state/reading.py",
    )
    if path.relative_to(PACKAGE).as_posix() in own_sql:
        return  # the registry, its read-only reader; the write-back's and batches' ledgers
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not SQL.search(node.value), (
                f"{path.name}:{node.lineno}: SQL outside the registry"
            )
