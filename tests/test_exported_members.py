"""rowpilot.__all__ is exactly the package's public namespace."""

from __future__ import annotations

import types

import rowpilot


def _public_names() -> set[str]:
    names = set()
    for name, value in vars(rowpilot).items():
        if name.startswith("_"):
            continue
        if isinstance(value, types.ModuleType) and name != "errors":
            continue  # submodules imported elsewhere (rowpilot.cli) are not re-exports
        names.add(name)
    return names


def test_all_lists_every_public_name() -> None:
    assert sorted(_public_names() - set(rowpilot.__all__)) == []


def test_every_name_in_all_exists() -> None:
    missing = [name for name in rowpilot.__all__ if not hasattr(rowpilot, name)]
    assert missing == []
    assert len(set(rowpilot.__all__)) == len(rowpilot.__all__)


def test_the_documented_api_is_exported() -> None:
    for name in ("run", "Result", "Summary", "Ctx", "ItemRecord", "errors"):
        assert name in rowpilot.__all__
    assert callable(rowpilot.run)
    assert isinstance(rowpilot.errors, types.ModuleType)
