"""The CLI parses, calls the library and prints: errors are one actionable line, no traceback."""

import stat

import pytest
from typer.testing import CliRunner

from faultlab import __version__
from faultlab.cli import app

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, list(args), env=env)


def test_version():
    result = run("version")
    assert result.exit_code == 0 and result.output.strip() == f"faultlab {__version__}"


@pytest.mark.parametrize("args, words", [
    (["--listen", "udp:127.0.0.1:5060:", "--upstream", "udp:127.0.0.1:5060"], "too many ':'"),
    (["--listen", "tcp:127.0.0.1:0", "--upstream", "udp:127.0.0.1:5060"], "add --upstream tcp:HOST:PORT"),
    (["--listen", "udp:127.0.0.1:0", "--upstream", "udp:127.0.0.1:0"], "out of range 1-65535"),
    (["--listen", "udp:127.0.0.1:0", "--upstream", "udp:127.0.0.1:1", "--upstream", "udp:127.0.0.1:2"],
     "two --upstream for udp"),
    (["--listen", "udp:127.0.0.1:0", "--upstream", "udp:nonexistent.invalid:5060"], "cannot resolve"),
])
def test_proxy_bad_input_is_one_clear_line(args, words):
    result = run("proxy", "-q", *args)
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output


def test_ca_init_and_export(tmp_path):
    confdir = tmp_path / "conf"
    result = run("ca", "init", "--confdir", str(confdir))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((confdir / "ca.key").stat().st_mode) == 0o600
    again = run("ca", "init", "--confdir", str(confdir))
    assert again.exit_code == 2 and "--force" in again.output
    out = tmp_path / "ca.pem"
    assert run("ca", "export", "--confdir", str(confdir), "--out", str(out)).exit_code == 0
    assert out.read_bytes() == (confdir / "ca.crt").read_bytes()
    printed = run("ca", "export", "--confdir", str(confdir))
    assert printed.output.startswith("-----BEGIN CERTIFICATE-----")


def test_ca_export_without_ca_says_what_to_run(tmp_path):
    result = run("ca", "export", env={"FAULTLAB_HOME": str(tmp_path / "none")})
    assert result.exit_code == 2 and "faultlab ca init" in result.output
