"""The commands' options, built from the settings table (rowpilot._settings), and the
command class that still takes a renamed flag's old spelling."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperCommand

from rowpilot import _settings

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
SourceArgument = Annotated[str, typer.Argument(help="The input (CSV, TSV, JSONL, Parquet, Excel).")]
SampleOption = Annotated[
    int,
    typer.Option(help="Items the estimate runs for real.", rich_help_panel=_settings.PROMPT_PANEL),
]
IncludeStaleOption = Annotated[
    bool,
    typer.Option(
        "--include-stale",
        help="Also the items an older version of the task produced (they count as pending).",
    ),
]
SchemaFile = Path  # on the command line the schema is a file of JSON


def option(name: str, command: str) -> Any:
    """The typer option of setting ``name`` on ``command``: its flag, help and default
    from the table. The Python default of an option stays None (or False): unset, it
    leaves the job file's value, and the table's default applies after."""
    setting = _settings.BY_NAME[name]
    flags = [_flag_names(setting), *([setting.short] if setting.short else [])]
    return typer.Option(
        *flags,
        help=setting.help_for(command),
        rich_help_panel=setting.panel,
        show_default=False,
    )


def _flag_names(setting: _settings.Setting) -> str:
    if setting.default is True or (setting.name == "progress"):
        return f"{setting.flag}/--no-{setting.flag[2:]}"  # a switch that is on unless turned off
    return setting.flag


class SettingsCommand(TyperCommand):
    """A command that reads a renamed flag's old spelling as the new one, with a warning."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        aliases = _settings.flag_aliases(self.name or "")
        return super().parse_args(ctx, [_current(arg, aliases) for arg in args])


def _current(arg: str, aliases: dict[str, str]) -> str:
    flag, equals, value = arg.partition("=")
    new = aliases.get(flag)
    if new is None:
        return arg
    _settings.deprecated(flag, new)
    return new + equals + value
