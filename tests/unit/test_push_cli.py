"""``faultlab push-gateway`` options, mounted the way the main CLI mounts it."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from faultlab.cli.push_gateway import app as push_app
from faultlab.cli.push_gateway import parse_listen

root = typer.Typer()
root.add_typer(push_app, name="push-gateway")


@root.command()
def other() -> None:  # a second command, so that push-gateway is a subcommand as in faultlab
    pass


def test_help_explains_every_option():
    result = CliRunner().invoke(root, ["push-gateway", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in ("--listen", "--tls", "--cert", "--key", "--confdir", "--drop-cancel", "--drop-all", "--delay",
                   "--duplicate", "--offline", "--refuse", "--relay", "--relay-ca", "--topic-suffix", "--device",
                   "--events", "--trace"):
        assert option in result.output
    assert "APNs" in result.output


@pytest.mark.parametrize(("args", "needle"), [
    (["--listen", "nowhere"], "expected HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "port"),
    (["--delay", "2"], "2"),
    (["--device", "abc"], "even number of hex digits"),
    (["--events", "::1:80"], "brackets"),
    (["--refuse", "Unregistered"], "e.g. '410 Unregistered'"),
    (["--refuse", "200 OK"], "e.g. '410 Unregistered'"),
    (["--offline", "forever"], "forever"),
])
def test_bad_options_are_refused(args, needle):
    result = CliRunner().invoke(root, ["push-gateway", *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_parse_listen():
    assert parse_listen("127.0.0.1:2197") == ("127.0.0.1", 2197)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:443") == ("localhost", 443)
