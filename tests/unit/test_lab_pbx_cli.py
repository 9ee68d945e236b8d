"""``faultlab pbx`` command line: help, argument errors, a port already in use."""

from __future__ import annotations

import socket

import pytest
import typer
from typer.testing import CliRunner

from faultlab.cli.pbx import app, parse_seconds

main = typer.Typer()
main.add_typer(app, name="pbx")
runner = CliRunner()


def test_help_explains_every_option():
    result = runner.invoke(main, ["pbx", "--help"], env={"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for option in ("--listen", "--push-url", "--hold", "--cancel-push", "--no-cancel-push", "--ring-timeout",
                   "--push-topic", "--advertise", "--trace", "--confdir"):
        assert option in result.output


@pytest.mark.parametrize("args,message", [
    (["--listen", "sctp:127.0.0.1:5060"], "unknown transport"),
    (["--listen", "udp:127.0.0.1:5060", "--hold", "soon"], "--hold 'soon'"),
    (["--listen", "udp:127.0.0.1:5060", "--ring-timeout", "0s"], "more than 0"),
])
def test_bad_arguments(args, message):
    result = runner.invoke(main, ["pbx", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_port_in_use_is_reported():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = runner.invoke(main, ["pbx", "--listen", f"udp:127.0.0.1:{port}", "-q"])
    assert result.exit_code == 1
    assert "cannot listen on udp:127.0.0.1" in result.output


def test_parse_seconds():
    assert parse_seconds("8s", "--hold") == 8.0
    assert parse_seconds("500ms", "--hold") == 0.5
    assert parse_seconds("2", "--hold") == 2.0
