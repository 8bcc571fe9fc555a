"""The ``rowpilot`` command: thin commands over the library.

Every command's help ends with an example; tests/test_cli_docs.py keeps it that way. One
module per concept registers its commands on ``app`` (importing it is what registers
them): ``_run`` (run, estimate), ``_compare`` (compare), ``_local_commands`` (label,
embed, dedupe), ``_state_commands`` (status, export, failures, merge, verify),
``_tool_commands`` (doctor, simulate).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

import typer

from rowpilot.cli import (  # noqa: F401  (importing a command module registers its commands)
    _compare,
    _local_commands,
    _report_commands,
    _run,
    _state_commands,
    _tool_commands,
)
from rowpilot.cli._app import app
from rowpilot.engine.events import NOTICES
from rowpilot.errors import RowpilotError

_LISTS = ("--labels", "--models")


def _spread_lists(args: list[str]) -> list[str]:
    """``--labels a b c`` as click reads it: ``--labels a --labels b --labels c``; the
    same for ``--models``."""
    spread: list[str] = []
    in_list: str | None = None
    for arg in args:
        if arg in _LISTS:
            in_list = arg
            continue
        if in_list is not None and not arg.startswith("-"):
            spread += [in_list, arg]
            continue
        in_list = None
        spread.append(arg)
    return spread


def command() -> Any:
    """The click command behind ``app``, with flags shown without a type: typer labels a
    switch such as --force or --help ``<bool>``, which reads as a value to pass."""
    root = typer.main.get_command(app)
    for sub in getattr(root, "commands", {}).values():
        for param in sub.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        sub.get_help_option = _without_type(sub.get_help_option)
    return root


def _without_type(get_help_option: Any) -> Any:
    def wrapped(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return wrapped


def _print_warnings() -> None:
    """The engine's warnings (rowpilot.engine.events.warn) as ``rowpilot: warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rowpilot: warning: %(message)s"))
    NOTICES.handlers[:] = [handler]
    NOTICES.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors (exit 2 for user errors) unless --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ROWPILOT_DEBUG") == "1"
    args = _spread_lists([a for a in args if a != "--debug"])
    _print_warnings()
    try:
        command().main(args=args, prog_name="rowpilot")
    except RowpilotError as exc:
        if debug:
            traceback.print_exc()
        print(f"rowpilot: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


__all__ = ["app", "main"]
