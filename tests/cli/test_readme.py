"""The README's command reference against the live CLI, in the style of sqlite-utils'
docs test: every command and option the README's tables name exists, and every command
and option the CLI has is in the README's tables. Options are read from the typer app
itself, so a command or option added without a README line fails here."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperCommand, TyperGroup, TyperOption

from reconciler.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"
CLI = typer.main.get_command(app)
assert isinstance(CLI, TyperGroup)
HELP = {"-h", "--help"}  # every command has it; the README need not say so
# An option inside a code span: `--only M1,M2` gives --only; `-- CMD` (end of options) none.
OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")
CODE = re.compile(r"`([^`]+)`")


def section(title: str) -> str:
    """The text under a `### title` heading, up to the next heading."""
    text = README.read_text()
    start = text.index(f"\n### {title}\n")
    following = re.compile(r"^#{1,3} ", re.MULTILINE).search(text, start + len(title) + 6)
    return text[start : following.start() if following else len(text)]


COMMANDS_SECTION = section("Commands and exit codes")
GLOBAL_SECTION = section("Global options")


def first_cells() -> list[str]:
    """The first cell of each data row of the commands table (header and rule skipped)."""
    rows = [line for line in COMMANDS_SECTION.splitlines() if line.startswith("|")]
    return [row.split("|")[1].strip() for row in rows[2:]]


def cell_command(cell: str) -> str:
    """`apply --copy-only [--only M1,M2]` names apply; the first word of the first code span."""
    spans = CODE.findall(cell)
    assert spans, f"README commands table: row {cell!r} names no command in backticks"
    return spans[0].split()[0]


def cell_options(cell: str) -> set[str]:
    return {opt for span in CODE.findall(cell) for opt in OPTION.findall(span)}


def options_of(command: TyperCommand) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, TyperOption) and not param.hidden
        for opt in (*param.opts, *param.secondary_opts)
    } - HELP


def visible_commands() -> dict[str, TyperCommand]:
    return {name: cmd for name, cmd in CLI.commands.items() if not cmd.hidden}


def documented() -> dict[str, set[str]]:
    """Each command the table names, with the options its rows name."""
    by_command: dict[str, set[str]] = {}
    for cell in first_cells():
        by_command.setdefault(cell_command(cell), set()).update(cell_options(cell))
    return by_command


GLOBAL_OPTIONS = options_of(CLI)


def test_the_commands_table_is_one_table() -> None:
    """A blank line inside a Markdown table ends it: the rows after it show as plain text."""
    lines = COMMANDS_SECTION.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    gaps = [lines[i + 1 : j] for i, j in pairwise(rows) if j != i + 1]
    assert rows and not gaps, f"README commands table is split by {gaps}"


@pytest.mark.parametrize("cell", first_cells())
def test_every_documented_command_and_option_exists(cell: str) -> None:
    name = cell_command(cell)
    assert name in CLI.commands, f"README names `{name}`, which is not a command of the CLI"
    unknown = cell_options(cell) - options_of(CLI.commands[name]) - GLOBAL_OPTIONS
    assert not unknown, f"README row {cell!r}: {name} has no option {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(visible_commands()))
def test_every_command_is_documented(name: str) -> None:
    assert name in documented(), f"`{name}` has no row in README's commands table"


@pytest.mark.parametrize(
    ("name", "option"),
    [(name, opt) for name, cmd in sorted(visible_commands().items()) for opt in options_of(cmd)],
)
def test_every_option_is_documented(name: str, option: str) -> None:
    assert option in documented().get(name, set()), (
        f"`{name} {option}` is in no row of README's commands table for {name}"
    )


@pytest.mark.parametrize("option", sorted(GLOBAL_OPTIONS))
def test_every_global_option_is_documented(option: str) -> None:
    assert option in {opt for span in CODE.findall(GLOBAL_SECTION) for opt in OPTION.findall(span)}


def test_every_documented_global_option_exists() -> None:
    # The section's examples may use a command's own options (`plan ... --format json`).
    named = {opt for span in CODE.findall(GLOBAL_SECTION) for opt in OPTION.findall(span)}
    all_options = GLOBAL_OPTIONS.union(*(options_of(c) for c in CLI.commands.values()))
    assert named <= all_options, f"README global options name {sorted(named - all_options)}"
