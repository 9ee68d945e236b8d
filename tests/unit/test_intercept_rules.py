"""The interception ruleset is generated from validated values only (no root needed)."""

from __future__ import annotations

import pytest

from faultlab.netns.intercept import (
    InterceptError,
    InterceptSpec,
    route_argv,
    rule_argv,
    ruleset,
)


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
