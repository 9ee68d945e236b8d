"""``faultlab lab run --device external --listen tls:...`` shows the phone certificates from the lab CA the phone
was told to trust (``faultlab ca export``, ``$FAULTLAB_HOME`` or ``~/.faultlab``), not from a CA made for the run."""

from __future__ import annotations

from faultlab.cli._lab_external import _external_settings


def _settings(listen: list[str]):
    return _external_settings({"listen": listen}, virtual=None, behaviour=None, network="", transports=[])


def test_a_tls_listener_uses_the_lab_ca_in_faultlab_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FAULTLAB_HOME", str(tmp_path))
    assert _settings(["udp:127.0.0.1:0", "tls:127.0.0.1:0"]).confdir == tmp_path


def test_without_tls_no_ca_is_needed(monkeypatch, tmp_path):
    monkeypatch.setenv("FAULTLAB_HOME", str(tmp_path))
    assert _settings(["udp:127.0.0.1:0"]).confdir is None
