"""The typer app every command module registers on, and what they all share."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="rowpilot",
    help="Run a task over every row of a dataset, in parallel, durably and resumably. "
    "Add --debug anywhere for tracebacks.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _example(*lines: str) -> str:
    return "[bold]Example[/bold]\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        raise SystemExit(code)
