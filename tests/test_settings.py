"""The settings table (rowpilot._settings) is what every face of a setting says: the
JobConfig field and its default, the TOML key, each command's flag, help and default, and
the keywords of rowpilot.run / label / embed. A renamed setting's old spelling still works
on each face, with one warning."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rowpilot
from rowpilot import _settings, cli
from rowpilot._config import JobConfig, build_config, read_job_file
from rowpilot._settings import SETTINGS, Setting
from rowpilot.engine.events import NOTICES
from rowpilot.errors import ConfigError

TOML_SETTINGS = [s for s in SETTINGS if s.section is not None]
COMMANDS = sorted({command for s in SETTINGS for command in s.commands})
LIBRARY: dict[str, Callable[..., Any]] = {
    "run": rowpilot.run,
    "label": rowpilot.label,
    "embed": rowpilot.embed,
}
ALIASES = [(setting, alias) for setting in SETTINGS for alias in setting.aliases]


class Notices(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def notices() -> Iterator[Notices]:
    handler = Notices()
    NOTICES.addHandler(handler)
    try:
        yield handler
    finally:
        NOTICES.removeHandler(handler)


def _click_command(name: str) -> Any:
    return cli.command().commands[name]


def _options(command: str) -> dict[str, Any]:
    return {param.name: param for param in _click_command(command).params}


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_the_config_field_has_the_table_default(setting: Setting) -> None:
    field = JobConfig.model_fields[setting.config_field]
    if field.is_required():
        return  # the source: no job without one
    assert field.get_default(call_default_factory=True) == setting.default


@pytest.mark.parametrize("setting", TOML_SETTINGS, ids=[s.name for s in TOML_SETTINGS])
def test_the_toml_key_sets_the_field(setting: Setting, tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'[{setting.section}]\n{setting.toml_key} = "x"\n', encoding="utf-8")
    assert setting.config_field in read_job_file(job)


def test_every_config_field_is_in_the_table_or_internal() -> None:
    internal = {"force_before", "command", "normalise", "limits", "prices", "providers"}
    fields = {s.config_field for s in SETTINGS}
    assert set(JobConfig.model_fields) - fields == internal


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_shows_the_table_flag_help_and_default(command: str) -> None:
    options = _options(command)
    for setting in _settings.for_command(command):
        option = options[setting.name]
        assert setting.flag in option.opts, (command, setting.name)
        assert option.help == setting.help_for(command), (command, setting.name)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_names_a_setting_outside_the_table(command: str) -> None:
    shown = {s.name for s in _settings.for_command(command)}
    settings_options = set(_options(command)) & set(_settings.BY_NAME)
    assert settings_options - {"source"} <= shown


def _library_default(setting: Setting, command: str) -> Any:
    if setting.name == "progress":
        return False  # the library draws no bar unless asked; the CLI does on a terminal
    default = setting.default_for(command)
    return None if default == {} else default  # a mapping's keyword is None, read as empty


@pytest.mark.parametrize("command", sorted(LIBRARY))
def test_the_library_keywords_have_the_table_names_and_defaults(command: str) -> None:
    parameters = inspect.signature(LIBRARY[command]).parameters
    for name, parameter in parameters.items():
        setting = _settings.BY_NAME.get(name)
        if setting is None or parameter.default is inspect.Parameter.empty:
            continue
        assert parameter.default == _library_default(setting, command), (command, name)
    if command == "run":  # every setting of a job file can be given to rowpilot.run
        assert {s.name for s in SETTINGS} - {"name"} <= set(parameters) | {"name"}
        assert "prompt" in parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "renamed"
            for p in parameters.values()
        )


@pytest.mark.parametrize(
    ("setting", "old"),
    ALIASES,
    ids=[a.old for _, a in ALIASES],
)
def test_an_old_flag_still_works_and_warns_once(
    setting: Setting, old: _settings.Alias, notices: Notices
) -> None:
    for command in old.commands:
        value = "auto" if setting.name == "workers" else "first"
        args = [*_required_args(command), old.flag, value]
        sub = _click_command(command)
        context = sub.make_context(command, args)
        assert context.params[setting.name] in (value, [value])
        assert notices.lines == [f"{old.flag} is deprecated, use {setting.flag}"]
        notices.lines.clear()


REQUIRED = {
    "run": ["data.csv"],
    "verify": ["data.csv"],
    "estimate": ["job.toml"],
    "compare": ["job.toml", "--models", "openai/gpt-4o-mini"],
    "label": ["data.csv", "--text-column", "text", "--labels", "a"],
    "embed": ["data.csv", "--text-column", "text"],
    "dedupe": ["data.csv", "--text-column", "text", "-o", "out.csv"],
}


def _required_args(command: str) -> list[str]:
    return list(REQUIRED[command])


@pytest.mark.parametrize(
    ("setting", "old"),
    ALIASES,
    ids=[a.old for _, a in ALIASES],
)
def test_an_old_keyword_still_works_and_warns_once(
    setting: Setting, old: _settings.Alias, notices: Notices
) -> None:
    for command in old.commands:
        assert _settings.renamed({old.old: "first"}, command) == {setting.name: "first"}
        assert notices.lines == [f"{old.old}= is deprecated, use {setting.name}="]
        notices.lines.clear()


def test_run_takes_the_old_dedupe_keyword(tmp_path: Path, notices: Notices) -> None:
    rows = [{"id": "a", "n": 1}, {"id": "a", "n": 2}, {"id": "b", "n": 3}]
    result = rowpilot.run(
        lambda row: {"twice": row["n"] * 2}, rows, key="id", state=tmp_path / "s", dedupe="first"
    )
    assert (result.summary.done, result.summary.dropped) == (2, 1)
    assert notices.lines == ["dedupe= is deprecated, use duplicates="]


def test_an_old_toml_key_still_works_and_warns_once(tmp_path: Path, notices: Notices) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[source]\npath = "data.csv"\ndedupe = "first"\n', encoding="utf-8")
    assert read_job_file(job)["duplicates"] == "first"
    assert notices.lines == [f"{job}: [source] dedupe is deprecated, use duplicates"]


def test_workers_takes_auto_on_every_command() -> None:
    for command in _settings.BY_NAME["workers"].commands:
        args = _required_args(command)
        context = _click_command(command).make_context(command, [*args, "--workers", "auto"])
        assert context.params["workers"] == "auto"


@pytest.mark.parametrize(
    ("shard", "shard_limits", "share"),
    [
        (None, "split", 1.0),
        ("2/4", "split", 0.25),
        ("3/10", "split", 0.1),
        ("1/1", "split", 1.0),
        ("2/4", "full", 1.0),
        (None, "full", 1.0),
    ],
)
def test_shard_limits_on_each_face_gives_a_shard_its_share(
    shard: str | None, shard_limits: str, share: float, tmp_path: Path
) -> None:
    job = tmp_path / "job.toml"
    run_table = f'shard = "{shard}"\n' if shard else ""
    job.write_text(
        f'[source]\npath = "data.csv"\n[task]\nfunction = "tasks.py:f"\n'
        f'[run]\n{run_table}shard_limits = "{shard_limits}"\n',
        encoding="utf-8",
    )
    assert build_config(read_job_file(job)).limits_share == pytest.approx(share)
    flags = [*(["--shard", shard] if shard else []), "--shard-limits", shard_limits]
    context = _click_command("run").make_context("run", [*_required_args("run"), *flags])
    assert context.params["shard_limits"] == shard_limits
    keywords = {"shard": shard, "shard_limits": shard_limits}
    config = build_config({"source": "data.csv", "task": "tasks.py:f", **keywords})
    assert config.limits_share == pytest.approx(share)


def test_a_shard_splits_the_limits_unless_told_full() -> None:
    config = build_config({"source": "data.csv", "task": "tasks.py:f", "shard": "2/4"})
    assert (config.shard_limits, config.limits_share) == ("split", 0.25)


def test_an_unknown_shard_limits_value_is_a_one_line_config_error(tmp_path: Path) -> None:
    half: Any = "half"
    with pytest.raises(ConfigError, match=r"shard_limits: .*'split' or 'full'") as raised:
        rowpilot.run(lambda row: {}, [{"a": 1}], shard="1/2", shard_limits=half, state=tmp_path)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "registry.sqlite").exists()
