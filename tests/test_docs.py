"""The documentation agrees with the command: every ``rowpilot`` command line written in
README.md, docs/ and the examples' READMEs parses with the real CLI (a flag that does not
exist, or a value of the wrong kind, fails here), and the help pages show no markup
debris.

Parsing, not running: the documented commands name files of the reader's (reviews.csv,
tasks.py:classify) that no test could stand in for faithfully; what can go stale in a
document is the command's shape, and the parser is what judges that. The commands that
run on bundled files are run for real by the examples' tests.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer import _click as click  # typer's own copy of click: its exceptions are these

from rowpilot import cli

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*/README.md")]
)
FENCE = re.compile(r"^```.*?$(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(rowpilot [^`]+)`")
PROMPT = re.compile(r"^\s*(?:\$\s+)?(rowpilot\s.*)$")
# Words in prose that stand for a value the reader fills in.
PLACEHOLDERS = re.compile(r"[A-Z][A-Z_]+|<[a-z ]+>")


def _fenced_commands(text: str) -> list[str]:
    commands: list[str] = []
    for block in FENCE.findall(text):
        pending = ""
        for raw in block.splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            found = PROMPT.match(line)
            if found:
                commands.append(found.group(1))
    return commands


def _documented() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        where = str(document.relative_to(ROOT))
        commands = _fenced_commands(text) + INLINE.findall(text)
        found += [(where, command) for command in commands]
    return found


DOCUMENTED = _documented()


SHELL = re.compile(r"^(&|&&|\||;|[0-9]?>>?.*|<.*)$")


def _args(command: str) -> list[str]:
    """The command's arguments: a shell's redirections and ``&`` left out, and a value the
    reader fills in (STATE, ...) stood in for by a plain word."""
    words = shlex.split(command, comments=True)
    assert words[0] == "rowpilot"
    cut = next((i for i, word in enumerate(words) if SHELL.match(word)), len(words))
    kept: list[str] = []
    for word in words[1:cut]:
        if word in ("...", "…"):  # a value after an option; else "and the rest"
            if kept and kept[-1].startswith("-"):
                kept.append("placeholder")
        elif word != "--debug":
            kept.append(_optional(word))
    return cli._spread_lists([w if not PLACEHOLDERS.fullmatch(w) else "placeholder" for w in kept])


def _optional(word: str) -> str:
    """``[--json]`` or ``[JOB.toml]`` in a usage line: the word itself."""
    return word[1:-1] if word.startswith("[") and word.endswith("]") else word


@functools.cache
def _root() -> Any:
    """The CLI's click command, built once for the parsing checks: parsing a command line
    never changes it, and each build cost typer ~0.05 s (~0.1 s under coverage), over 170
    documented lines. The help pages are still shown by a fresh build each."""
    return cli.command()


def _parse(args: list[str]) -> None:
    """Resolve the subcommand and parse its options, as ``rowpilot`` would, without
    running it."""
    root = _root()
    with root.make_context("rowpilot", list(args), resilient_parsing=False) as context:
        name, sub, rest = root.resolve_command(context, list(args))
        assert sub is not None, f"no command {name!r}"
        sub.make_context(name or "", rest, parent=context).close()


def test_the_documents_hold_commands_to_check() -> None:
    assert len(DOCUMENTED) >= 40
    assert {where for where, _ in DOCUMENTED} >= {"README.md", "docs/steps.md"}


@pytest.mark.parametrize(("where", "command"), DOCUMENTED, ids=[c for _, c in DOCUMENTED])
def test_every_documented_command_line_parses(where: str, command: str) -> None:
    args = _args(command)
    if args[0] == "placeholder":
        pytest.skip(f"{where}: `{command}` stands for any command")
    try:
        _parse(args)
    except click.exceptions.MissingParameter:
        # Prose may show a command without its input ("rowpilot status" with no state is
        # fine; "rowpilot run --no-cache" in a sentence names a flag, not a whole job).
        _parse_options_only(args)
    except click.ClickException as error:
        pytest.fail(f"{where}: `{command}`: {error.format_message()}")


def _parse_options_only(args: list[str]) -> None:
    """Every option in ``args`` exists on its command and takes the value it is given."""
    root = _root()
    sub = root.get_command(click.Context(root), args[0])  # type: ignore[attr-defined]
    assert sub is not None, f"no command {args[0]!r}"
    known: dict[str, Any] = {}
    for param in sub.params:
        for name in (*param.opts, *param.secondary_opts):
            known[name] = param
    for word in args[1:]:
        flag = word.partition("=")[0]
        if flag.startswith("-") and not _negative_number(flag):
            assert flag in known, f"`{' '.join(args)}`: no option {flag}"


def _negative_number(word: str) -> bool:
    return bool(re.fullmatch(r"-\d+(\.\d+)?", word))


def _command_names() -> list[str]:
    root = _root()
    return sorted(getattr(root, "commands", {}))


@pytest.mark.parametrize("name", _command_names())
def test_help_pages_show_no_markup_debris(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    cli.command().main(args=[name, "--help"], prog_name="rowpilot", standalone_mode=False)
    shown = capsys.readouterr().out
    assert "Usage: rowpilot" in shown
    assert "<bool>" not in shown
    # A help text's "[default]" taken for rich markup leaves "word ." behind.
    assert not re.search(r"\w \.(\s|$)", shown), shown
