"""The Vagrantfile (the QA lab's gateway VM) passes ``vagrant validate --ignore-provider``.

Marked ``integration``: without vagrant it skips on a developer's machine, and under CI=true that skip
is a failure (tests/conftest.py), so CI must install Debian's ``vagrant`` package. Validation reads the
Vagrantfile and checks it (synced folders, networks, the shell provisioner's script exists) without a
box, a provider or the network; Vagrant's state goes to a temporary directory, not the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _validate(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (Debian: apt-get install vagrant)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAULTLAB_", "VAGRANT_"))}
    env.update(
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),  # not .vagrant/ in the checkout
        VAGRANT_HOME=str(tmp_path / "home"),
        VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
        **settings,
    )
    return subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_vagrantfile_validates(tmp_path):
    done = _validate(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout


def test_vagrantfile_validates_with_the_lab_settings(tmp_path):
    done = _validate(tmp_path, FAULTLAB_BRIDGE="enp3s0", FAULTLAB_GATEWAY_IP="192.168.50.1",
                     FAULTLAB_PBX="192.168.50.10", FAULTLAB_LISTEN="udp:0.0.0.0:5060 tcp:0.0.0.0:5060")
    assert done.returncode == 0, done.stdout + done.stderr


def test_provisioning_script_the_vagrantfile_names_exists_and_is_executable():
    text = (REPO / "Vagrantfile").read_text()
    assert 'path: "deploy/provision.sh"' in text
    script = REPO / "deploy" / "provision.sh"
    assert script.is_file() and os.access(script, os.X_OK)


def test_vagrantfile_validates_with_an_apns_key_from_the_host(tmp_path):
    key = tmp_path / "AuthKey_ABC123DEFG.p8"
    key.write_text("not a real key: vagrant validate only needs the file to exist\n")
    done = _validate(tmp_path, FAULTLAB_PBX="192.168.50.10", FAULTLAB_PUSH_RELAY="https://api.sandbox.push.apple.com",
                     FAULTLAB_APNS_KEY=str(key), FAULTLAB_APNS_KEY_ID="ABC123DEFG", FAULTLAB_APNS_TEAM_ID="DEF123GHIJ")
    assert done.returncode == 0, done.stdout + done.stderr


def test_vagrantfile_passes_the_push_relay_settings_on():
    text = (REPO / "Vagrantfile").read_text()
    settings = text.split("PROVISION_SETTINGS = %w[", 1)[1].split("]", 1)[0].split()
    assert {"FAULTLAB_PUSH_RELAY", "FAULTLAB_APNS_KEY", "FAULTLAB_APNS_KEY_ID", "FAULTLAB_APNS_TEAM_ID"} <= set(settings)
    # every setting provision.sh documents is passed on
    script = (REPO / "deploy" / "provision.sh").read_text()
    documented = set(re.findall(r"^#   (FAULTLAB_[A-Z_]+)", script, re.M)) - {"FAULTLAB_SRC"}
    assert documented <= set(settings), documented - set(settings)
