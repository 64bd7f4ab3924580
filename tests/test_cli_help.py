"""Every command's --help shows every word of its help text (no markup eats "[base]")."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from implicit_reg.cli import app

COMMAND = typer.main.get_command(app)
NAMES = sorted(COMMAND.commands)


def words(text: str) -> list[str]:
    return [w for w in re.split(r"\s+", text or "") if w]


def squeeze(text: str) -> str:
    """The help output without white space: wrapping (even inside a hyphenated word)
    cannot hide a word, only leaving it out can."""
    return re.sub(r"\s+", "", text)


def test_there_are_commands():
    assert {"train", "sweep", "summary", "plot", "probe", "reproduce", "demo"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_help_renders_every_word(name):
    command = COMMAND.commands[name]
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    shown = squeeze(result.output)
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    missing = [w for t in texts for w in words(t) if w not in shown]
    assert not missing, f"{name} --help drops {missing}"


def test_sweep_help_shows_the_toml_tables():
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    assert "[base] fields and [grid] lists" in result.output


def test_a_bracketed_word_would_be_caught():
    """The check itself: a help text whose "[grid]" were eaten fails it."""
    shown = squeeze("Sweep file (.toml):  fields and  lists.")
    assert [
        w for w in words("Sweep file (.toml): [base] fields and [grid] lists.") if w not in shown
    ] == [
        "[base]",
        "[grid]",
    ]
