"""The lab CA and the permissions of its files: a key that others can read is made private and the change said;
a directory that others can write to is refused with a message saying how to fix it; `faultlab ca` says both."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from faultlab.ca import CA_CERT_FILE, CA_KEY_FILE, CAError, LabCA


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    LabCA.init(tmp_path / "lab")
    return tmp_path / "lab"


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o666])
def test_a_key_others_can_read_is_made_private_and_the_change_is_said(
        confdir: Path, loose: int, caplog: pytest.LogCaptureFixture) -> None:
    key = confdir / CA_KEY_FILE
    os.chmod(key, loose)
    with caplog.at_level(logging.WARNING, logger="faultlab.ca"):
        ca = LabCA.load(confdir)
    assert mode(key) == 0o600
    assert ca.key_path == key
    [record] = [r for r in caplog.records if r.name == "faultlab.ca"]
    message = record.getMessage()
    assert str(key) in message and f"mode {loose:04o}" in message and "now 0600" in message
    assert "faultlab ca init --force" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="faultlab.ca"):
        LabCA.load(confdir)  # private now: nothing more to say
    assert not [r for r in caplog.records if r.name == "faultlab.ca"]


def test_a_private_key_is_used_without_a_word(confdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="faultlab.ca"):
        LabCA.load(confdir)
        LabCA.load_or_init(confdir)
    assert not [r for r in caplog.records if r.name == "faultlab.ca"]
    assert mode(confdir / CA_KEY_FILE) == 0o600


@pytest.mark.parametrize(("loose", "who"), [(0o777, "others"), (0o733, "others"), (0o770, "its group"),
                                            (0o1777, "others")])
def test_a_directory_others_can_write_is_refused_saying_how_to_fix_it(confdir: Path, loose: int, who: str) -> None:
    os.chmod(confdir, loose)
    for attempt in (LabCA.load, LabCA.load_or_init):
        with pytest.raises(CAError) as info:
            attempt(confdir)
        message = str(info.value)
        assert f"{confdir} is writable by {who}" in message
        assert f"chmod 700 {confdir}" in message and "--confdir" in message
    with pytest.raises(CAError, match="is writable by"):
        LabCA.init(confdir, force=True)  # nor is a new CA put there
    os.chmod(confdir, 0o700)
    LabCA.load(confdir)  # fixed as the message says: used again


def test_a_new_ca_is_not_created_in_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    for attempt in (LabCA.init, LabCA.load_or_init):
        with pytest.raises(CAError, match="is writable by others"):
            attempt(shared)
    assert list(shared.iterdir()) == []


def test_a_directory_others_can_only_read_is_used(confdir: Path) -> None:
    os.chmod(confdir, 0o755)  # the key's own mode keeps it private
    LabCA.load(confdir)
    assert mode(confdir) == 0o755


def test_a_key_faultlab_cannot_change_is_refused(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = confdir / CA_KEY_FILE
    os.chmod(key, 0o644)

    def not_the_owner(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", not_the_owner)  # another user's key: chmod is not ours to do
    with pytest.raises(CAError) as info:
        LabCA.load(confdir)
    assert f"the lab CA key {key} can be read by others (mode 0644)" in str(info.value)
    assert f"faultlab cannot change that (it is not the file's owner): run `chmod 600 {key}`" in str(info.value)
    assert mode(key) == 0o644


def faultlab(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it (its warnings go through logging set up by the command itself)."""
    return subprocess.run([sys.executable, "-m", "faultlab", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_says_what_it_fixed_and_what_it_refused(confdir: Path) -> None:
    key = confdir / CA_KEY_FILE
    os.chmod(key, 0o644)
    result = faultlab("ca", "export", "--confdir", str(confdir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert f"faultlab: the lab CA key {key} could be read by others (mode 0644); its mode is now 0600" \
        in result.stderr
    os.chmod(key, 0o644)
    result = faultlab("ca", "init", "--confdir", str(confdir))
    assert result.returncode != 0 and "a lab CA already exists" in result.stderr
    assert "its mode is now 0600" in result.stderr  # the CA stays, its key private
    assert mode(key) == 0o600
    os.chmod(confdir, 0o777)
    for args in (["ca", "export"], ["ca", "init", "--force"]):
        result = faultlab(*args, "--confdir", str(confdir))
        assert result.returncode != 0
        assert f"faultlab: the lab CA directory {confdir} is writable by others (mode 0777)" in result.stderr
        assert "Traceback" not in result.stderr
    assert (confdir / CA_CERT_FILE).exists()
