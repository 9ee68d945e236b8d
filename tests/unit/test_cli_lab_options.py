"""`faultlab lab run --pbx HOST:PORT` without --transport: the transports a PBX of one's own is tried on."""

from faultlab.cli.lab import own_pbx_transports


def test_a_pbx_of_ones_own_runs_tls_only_when_its_tls_port_is_given():
    assert own_pbx_transports(None) == ["udp", "tcp"]  # many PBXes (Kamailio's default config) have no TLS
    assert own_pbx_transports(5061) == ["udp", "tcp", "tls"]
