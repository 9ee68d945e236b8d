"""The root command loads subcommands only when they run, and shows them all in its help without loading them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from faultlab import cli

_PROBE = """
import sys
import faultlab.cli
sys.argv = ["faultlab", *{argv!r}]
try:
    faultlab.cli.main()
except SystemExit:
    pass
print("MODULES", sorted(m for m in sys.modules if m.startswith("faultlab")))
print("HEAVY", sorted(m for m in ("trio", "scapy", "pyroute2", "hypercorn", "starlette", "cryptography")
                      if m in sys.modules))
"""


def _loaded(*argv: str) -> tuple[list[str], list[str]]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argv=list(argv))], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("MODULES", "HEAVY")))
    return eval(lines["MODULES"]), eval(lines["HEAVY"])  # noqa: S307 - our own probe's repr of two lists


@pytest.mark.parametrize("argv", [("--help",), ("version",)])
def test_help_and_version_import_no_subcommand(argv: tuple[str, ...]) -> None:
    modules, heavy = _loaded(*argv)
    assert modules == ["faultlab", "faultlab.cli", "faultlab.cli._common"]
    assert heavy == []


def test_a_subcommand_loads_only_its_own_module() -> None:
    modules, _ = _loaded("trace", "--help")
    assert "faultlab.cli.trace" in modules
    assert not any(m.startswith(("faultlab.lab", "faultlab.labnet")) for m in modules)


def test_root_help_lists_every_command_in_order() -> None:
    result = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    listed = re.findall(r"^\W*([a-z][a-z-]*)\s{2,}\S", result.output.split("Commands", 1)[1], flags=re.MULTILINE)
    assert listed == list(cli.ORDER), result.output


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", sorted(cli.LAZY))
def test_lazy_help_is_the_commands_own(name: str) -> None:
    """The one-liner written in cli.LAZY starts the help the command itself carries: they cannot drift."""
    command = cli.load_lazy(name)
    assert isinstance(command, (TyperCommand, TyperGroup))
    own = _words(command.help or "")
    assert own.startswith(_words(cli.LAZY[name][2])), (name, own)


@pytest.mark.parametrize("name", sorted(cli.LAZY))
def test_every_lazy_command_runs(name: str) -> None:
    result = CliRunner().invoke(cli.app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_unknown_command_is_refused() -> None:
    result = CliRunner().invoke(cli.app, ["proxi"])
    assert result.exit_code == 2
    assert "No such command" in result.output
