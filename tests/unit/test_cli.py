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


def test_profiles_list_shows_every_library_profile_with_its_summary():
    result = run("profiles", "list")
    assert result.exit_code == 0
    lines = dict(line.split(None, 1) for line in result.output.strip().splitlines())
    assert {"clean", "register-drop", "register-503", "lossy-wifi", "nlc-edge"} <= set(lines)
    assert "503" in lines["register-503"]


def test_profiles_show_prints_the_toml():
    result = run("profiles", "show", "register-503")
    assert result.exit_code == 0 and 'respond = 503' in result.output


def test_profiles_check_names_file_key_and_allowed(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "x"\naction = { delay = "3" }\n')
    good = tmp_path / "good.toml"
    good.write_text('summary = "ok"\n[[rules]]\nname = "x"\naction = { drop = true }\n')
    result = run("profiles", "check", str(good), str(bad))
    assert result.exit_code == 1
    assert "ok   " in result.output and "good.toml" in result.output
    assert "bad.toml: rules[0].action.delay: '3'" in result.output


def test_profile_set_without_a_running_proxy_says_so():
    result = run("profile", "set", "register-drop", "--api", "http://127.0.0.1:9")
    assert result.exit_code == 1 and "is `faultlab proxy --api" in result.output


def test_proxy_unknown_profile_lists_the_library():
    result = run("proxy", "-q", "-l", "udp:127.0.0.1:0", "-u", "udp:127.0.0.1:5060", "--profile", "nope")
    assert result.exit_code == 2 and "register-drop" in result.output
