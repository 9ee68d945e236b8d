"""`faultlab ca export --mobileconfig FILE`: the iOS profile from the CLI, alone or with --out."""

from __future__ import annotations

import plistlib

from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from faultlab.ca import LabCA
from faultlab.cli import app

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, list(args), env=env)


def test_mobileconfig_is_written_and_carries_the_ca(tmp_path):
    ca = LabCA.init(tmp_path / "conf")
    out = tmp_path / "faultlab-ca.mobileconfig"
    result = run("ca", "export", "--confdir", str(ca.confdir), "--mobileconfig", str(out))
    assert result.exit_code == 0, result.output
    assert "-----BEGIN CERTIFICATE-----" not in result.output  # no PEM on stdout without --out
    assert "full trust" in result.output and ca.common_name in result.output
    profile = plistlib.loads(out.read_bytes())
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadContent"][0]["PayloadContent"] == ca.cert.public_bytes(serialization.Encoding.DER)
    again = tmp_path / "again.mobileconfig"
    assert run("ca", "export", "--confdir", str(ca.confdir), "--mobileconfig", str(again)).exit_code == 0
    assert again.read_bytes() == out.read_bytes()  # reproducible


def test_mobileconfig_and_out_together(tmp_path):
    ca = LabCA.init(tmp_path / "conf")
    profile, pem = tmp_path / "ca.mobileconfig", tmp_path / "ca.pem"
    result = run("ca", "export", "--confdir", str(ca.confdir), "--mobileconfig", str(profile), "--out", str(pem))
    assert result.exit_code == 0, result.output
    assert pem.read_bytes() == ca.cert_pem
    assert plistlib.loads(profile.read_bytes())["PayloadDisplayName"] == "faultlab lab CA"


def test_mobileconfig_without_ca_says_what_to_run(tmp_path):
    out = tmp_path / "x.mobileconfig"
    result = run("ca", "export", "--mobileconfig", str(out), env={"FAULTLAB_HOME": str(tmp_path / "none")})
    assert result.exit_code == 2 and "faultlab ca init" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_mobileconfig_into_a_missing_directory_is_one_clear_line(tmp_path):
    ca = LabCA.init(tmp_path / "conf")
    out = tmp_path / "no" / "such" / "dir" / "x.mobileconfig"
    result = run("ca", "export", "--confdir", str(ca.confdir), "--mobileconfig", str(out))
    assert result.exit_code == 2
    assert "cannot write the configuration profile" in result.output and "Traceback" not in result.output
