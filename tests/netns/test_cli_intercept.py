"""`faultlab net intercept`: the nftables table appears in the lab's gateway and goes again."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from faultlab.cli import app

pytestmark = pytest.mark.netns


@pytest.fixture
def lab():
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft (network namespaces, nftables)")
    from faultlab.labnet.topology import lab_down, lab_up

    name = f"ic{os.getpid() % 1000}"
    lab_up(name, subnet="10.88.0.0/16")
    try:
        yield name
    finally:
        lab_down(name)


def tables(name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", f"fl-{name}-gateway", "nft", "list", "tables"],
                          capture_output=True, text=True, check=True).stdout


def test_intercept_on_and_off(lab):
    runner = CliRunner()
    on = runner.invoke(app, ["net", "intercept", "--name", lab])
    assert on.exit_code == 0, on.output
    assert "SIP for 10.88.0.2 ports 5060,5061 now goes to faultlab" in on.output
    assert f"faultlab_{lab}" in tables(lab)
    bad = runner.invoke(app, ["net", "intercept", "--name", lab, "--ports", "5060,sip"])
    assert bad.exit_code == 2 and "comma-separated numbers" in bad.output
    off = runner.invoke(app, ["net", "intercept", "--name", lab, "--off"])
    assert off.exit_code == 0 and f"faultlab_{lab}" not in tables(lab)


def test_intercept_without_a_lab_says_what_to_run():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    result = CliRunner().invoke(app, ["net", "intercept", "--name", "nolab"])
    assert result.exit_code == 1 and "faultlab net up --name nolab" in result.output
