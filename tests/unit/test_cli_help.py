"""Every command's --help shows its text as written.

typer renders help with rich, whose markup takes ``[word]`` for a style tag and drops it: "Apply this profile's
[link] section" printed as "Apply this profile's  section". A help text that means literal brackets writes
``\\[link]``. This renders the help of every command (each lazy one imported) and checks that every bracketed
word of its help texts is on screen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from faultlab.cli import app

# "[word]" in a help text, also the escaped "\[word]"; not across lines, not nested.
_BRACKETED = re.compile(r"\\?\[[^\[\]\n]*\]")
# Box drawing of rich's panels, stripped before comparing.
_BORDER = " │╭╮╰╯─"


def _commands(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, cmd
    if hasattr(cmd, "list_commands"):
        ctx = typer.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from _commands(sub, [*path, name])


COMMANDS = {" ".join(path): cmd for path, cmd in _commands(typer.main.get_command(app), [])}


def _help_texts(cmd: Any) -> list[str]:
    texts = [cmd.help, cmd.short_help, cmd.epilog]
    texts += [getattr(param, "help", None) for param in cmd.params]
    return [t for t in texts if t]


def _flat(output: str) -> str:
    """The rendered help as one line: panel borders gone, every run of white space one space."""
    return re.sub(r"\s+", " ", " ".join(line.strip(_BORDER) for line in output.splitlines()))


def test_every_command_is_found() -> None:
    # The walk reaches the lazily imported commands and their subcommands, not only the root's own.
    assert {"proxy", "net impair", "net exec", "ca init", "lab run", "trace ladder"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_shows_every_bracketed_word(path: str) -> None:
    result = CliRunner().invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    wanted = {m.group(0).replace("\\[", "[") for t in _help_texts(COMMANDS[path]) for m in _BRACKETED.finditer(t)}
    lost = sorted(w for w in wanted if w not in shown)
    assert not lost, f"`faultlab {path} --help` lost {lost} (rich markup: write \\[...] in the help text)"
    assert "\\[" not in shown, f"`faultlab {path} --help` shows a markup escape"


def test_net_impair_names_the_link_section() -> None:
    result = CliRunner().invoke(app, ["net", "impair", "--help"])
    assert result.exit_code == 0
    assert "Apply this profile's [link] section" in _flat(result.output)
