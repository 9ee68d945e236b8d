"""Transparent mode without root: the interception ruleset is generated from validated values only;
the proxy's transparent configuration and original-destination parsing."""

from __future__ import annotations

import socket
import struct

import pytest

from faultlab.net import transparent
from faultlab.addr import parse_endpoint
from faultlab.labnet.intercept import (
    InterceptError,
    InterceptSpec,
    route_argv,
    rule_argv,
    ruleset,
)
from faultlab.proxy import ConfigError, ProxyConfig


def spec(**kw):
    args = dict(pbx="10.213.2.2", proxy_udp_port=15060, proxy_tcp_port=15060, proxy_tls_port=15061)
    args.update(kw)
    return InterceptSpec.make(**args)


def test_default_ruleset_text():
    assert ruleset(spec()) == (
        "table inet faultlab_lab\n"
        "delete table inet faultlab_lab\n"
        "table inet faultlab_lab {\n"
        "  chain intercept_tcp {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        "    ip daddr 10.213.2.2 tcp dport { 5060 } redirect to :15060\n"
        "    ip daddr 10.213.2.2 tcp dport { 5061 } redirect to :15061\n"
        "  }\n"
        "  chain intercept_mark {\n"
        "    type filter hook prerouting priority mangle; policy accept;\n"
        "    ip daddr 10.213.2.2 udp dport { 5060, 5061 } tproxy ip to :15060 meta mark set 1 accept\n"
        "  }\n"
        "}\n"
    )


def test_no_tls_port_leaves_tls_alone_and_custom_ports():
    text = ruleset(spec(ports=(5080, 5061, 5080), proxy_tls_port=None, table="faultlab_x1", mark=7))
    assert "5061 } redirect" not in text
    assert "tcp dport { 5080 } redirect to :15060" in text
    assert "udp dport { 5080, 5061 } tproxy ip to :15060 meta mark set 7 accept" in text
    assert text.startswith("table inet faultlab_x1\ndelete table inet faultlab_x1\n")


def test_udp_only_has_no_nat_chain():
    text = ruleset(spec(proxy_tcp_port=None, proxy_tls_port=None))
    assert "nat" not in text and "redirect" not in text
    assert "tproxy" in text


def test_spoof_source_marks_the_pbx_answers_for_transparent_sockets():
    text = ruleset(spec(spoof_source=True))
    assert "ip saddr 10.213.2.2 udp sport { 5060, 5061 } socket transparent 1 meta mark set 1 accept" in text
    assert "ip saddr 10.213.2.2 tcp sport { 5060, 5061 } socket transparent 1 meta mark set 1 accept" in text


def test_ip_argument_lists():
    assert rule_argv("fl-gw", "add", 1, 100) == ["ip", "-n", "fl-gw", "-4", "rule", "add", "fwmark", "1",
                                                  "lookup", "100"]
    assert route_argv(None, "del", 100) == ["ip", "-4", "route", "del", "local", "0.0.0.0/0", "dev", "lo",
                                            "table", "100"]
    with pytest.raises(InterceptError):
        rule_argv("bad name; rm -rf /", "add", 1, 100)


@pytest.mark.parametrize("kw, needle", [
    ({"pbx": "10.0.0.1; flush ruleset"}, "not an IP address"),
    ({"pbx": "pbx.example.test"}, "not an IP address"),
    ({"pbx": "2001:db8::1"}, "IPv4 only"),
    ({"ports": ("5060",)}, "SIP port"),
    ({"ports": (0,)}, "SIP port"),
    ({"ports": (70000,)}, "SIP port"),
    ({"ports": ()}, "at least one"),
    ({"proxy_udp_port": "15060"}, "proxy UDP port"),
    ({"proxy_tcp_port": True}, "proxy TCP port"),
    ({"proxy_udp_port": None, "proxy_tcp_port": None, "proxy_tls_port": None}, "nothing to intercept"),
    ({"table": "faultlab lab"}, "table name"),
    ({"table": "x}; flush ruleset; table inet y {"}, "table name"),
    ({"mark": 0}, "mark"),
    ({"route_table": 254}, "route table"),
])
def test_rejects_what_would_be_pasted_unchecked(kw, needle):
    with pytest.raises(InterceptError, match=needle):
        spec(**kw)


# -- the proxy's side of transparent mode: configuration and original-destination parsing ------------


def config(**kw) -> ProxyConfig:
    args = dict(listen=[parse_endpoint("udp:0.0.0.0:15060")], upstream=[], transparent=True)
    args.update(kw)
    return ProxyConfig(**args)


def test_transparent_needs_no_upstream_and_refuses_one(monkeypatch):
    monkeypatch.setattr(transparent, "support_problem", lambda: None)
    config().validate()
    assert config().upstream_for("udp") is None
    with pytest.raises(ConfigError, match="drop --upstream"):
        config(upstream=[parse_endpoint("udp:10.0.0.2:5060")]).validate()


def test_relay_mode_still_needs_an_upstream():
    with pytest.raises(ConfigError, match="add --upstream udp"):
        config(transparent=False).validate()


def test_spoof_source_needs_transparent():
    with pytest.raises(ConfigError, match="--spoof-source needs --transparent"):
        config(transparent=False, spoof_source=True, upstream=[parse_endpoint("udp:10.0.0.2:5060")]).validate()


def test_transparent_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setattr(transparent.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(transparent.sys, "platform", "linux")
    with pytest.raises(ConfigError, match="needs root"):
        config().validate()
    monkeypatch.setattr(transparent.sys, "platform", "darwin")
    with pytest.raises(ConfigError, match="needs Linux"):
        config().validate()


def test_parse_sockaddr_in():
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 5061) + socket.inet_aton("10.213.0.2") + bytes(8)
    assert transparent.parse_sockaddr_in(raw) == ("10.213.0.2", 5061)
    assert transparent.parse_sockaddr_in(struct.pack("=H", socket.AF_INET6) + bytes(14)) is None
    assert transparent.parse_sockaddr_in(b"") is None


def test_was_redirected_tells_intercepted_from_direct_traffic():
    assert transparent.was_redirected(("10.213.0.2", 5060), ("0.0.0.0", 5060))  # the PBX, not local
    assert not transparent.was_redirected(("127.0.0.1", 5060), ("0.0.0.0", 5060))  # faultlab itself
    assert transparent.was_redirected(("127.0.0.1", 5070), ("0.0.0.0", 5060))
    assert not transparent.was_redirected(None, ("0.0.0.0", 5060))
