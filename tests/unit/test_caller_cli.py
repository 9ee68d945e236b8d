"""``faultlab call``: --help explains every option; bad input is one clear line and exit 2; an unreachable PBX is
exit 1. (The calls themselves: tests/loopback/test_caller_cli_run.py.)"""

from __future__ import annotations

import socket

import pytest
import typer
from typer.testing import CliRunner

from faultlab.cli.call import app

main = typer.Typer()
main.add_typer(app, name="call")  # as faultlab/cli/__init__.py mounts it


@main.command()
def _other() -> None:  # a second command, so that "call" stays a sub-command as in the real CLI
    pass


runner = CliRunner()
BASE = ["call", "sip:alice@lab.test", "--pbx", "udp:127.0.0.1:5060"]
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}


def test_help_explains_every_option_and_the_exit_codes() -> None:
    result = runner.invoke(main, ["call", "--help"], env=WIDE)
    assert result.exit_code == 0
    flat = " ".join(result.output.replace("│", " ").split())
    for option in ("TARGET", "--pbx", "--from", "--domain", "--bind", "--cancel-after", "--cancel-reason",
                   "--hang-up-after", "--timeout", "--expect", "--ca", "--tls-name", "--json"):
        assert option in flat, option
    assert "Exit 0 when the final response is the expected one" in flat
    assert "hangs up at once" in flat  # the default of --hang-up-after
    assert "COMMAND" not in flat
    command = typer.main.get_command(main).commands["call"]
    for param in command.params:
        assert getattr(param, "help", None), f"{param.name} has no help text"


@pytest.mark.parametrize("args, words", [
    (["call", "--pbx", "udp:127.0.0.1:5060"], "give the SIP URI to call"),
    (["call", "alice@lab.test", "--pbx", "udp:127.0.0.1:5060"], "expected a SIP URI such as sip:alice@lab.test"),
    (["call", "sip:alice@lab.test"], "--pbx is required"),
    (["call", "sip:alice@lab.test", "--pbx", "sctp:127.0.0.1:5060"], "--pbx: 'sctp:127.0.0.1:5060': unknown transport"),
    (["call", "sip:alice@lab.test", "--pbx", "udp:pbx.lab.test:5060"], "HOST must be an IP address"),
    (["call", "sip:alice@lab.test", "--pbx", "udp:127.0.0.1:0"], "--pbx"),
    ([*BASE, "--cancel-after", "soon"], "--cancel-after 'soon': expected a duration such as 2s"),
    ([*BASE, "--hang-up-after", "-1s"], "--hang-up-after '-1s'"),
    ([*BASE, "--timeout", "0"], "--timeout '0': must be more than 0"),
    ([*BASE, "--cancel-reason", "SIP;cause=200"], "--cancel-reason needs --cancel-after"),
    ([*BASE, "--cancel-after", "30s", "--timeout", "10s"], "is not before --timeout"),
    ([*BASE, "--from", "bob@x"], "--from 'bob@x': expected a SIP user name"),
    ([*BASE, "--bind", "localhost"], "--bind 'localhost': expected an IP address"),
    ([*BASE, "--tls-name", "pbx.lab.test"], "--ca and --tls-name are for a tls: PBX"),
    (["call", "sip:alice@lab.test", "--pbx", "tls:127.0.0.1:5061", "--ca", "/nonexistent/ca.pem"], "no such file"),
])
def test_bad_input_exits_2_with_what_to_fix(args: list[str], words: str) -> None:
    result = runner.invoke(main, args, env=WIDE)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output


def test_expect_is_a_final_status() -> None:
    result = runner.invoke(main, [*BASE, "--expect", "180"], env=WIDE)
    assert result.exit_code == 2 and "--expect" in result.output


def test_unreachable_pbx_exits_1() -> None:
    with socket.socket() as s:  # a TCP port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(main, ["call", "sip:alice@lab.test", "--pbx", f"tcp:127.0.0.1:{port}", "--json"], env=WIDE)
    assert result.exit_code == 1, result.output
    assert '"ok": false' in result.output and "cannot reach the PBX at tcp:127.0.0.1:" in result.output
