"""`faultlab gateway intercept` without root: the ruleset restricted to an interface, and the command's
--dry-run, input checks and root check (nothing is applied here)."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.cli import gateway as gateway_cli
from faultlab.labnet.intercept import InterceptError, InterceptSpec, route_argv, rule_argv, ruleset

WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}


def spec(**kw):
    args = dict(pbx="192.168.50.10", proxy_udp_port=5060, proxy_tcp_port=5060, proxy_tls_port=5061)
    args.update(kw)
    return InterceptSpec.make(**args)


def test_iface_restricts_every_rule_toward_the_pbx():
    assert ruleset(spec(iface="wlan0", table="faultlab_gw")) == (
        "table inet faultlab_gw\n"
        "delete table inet faultlab_gw\n"
        "table inet faultlab_gw {\n"
        "  chain intercept_tcp {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        '    iifname "wlan0" ip daddr 192.168.50.10 tcp dport { 5060 } redirect to :5060\n'
        '    iifname "wlan0" ip daddr 192.168.50.10 tcp dport { 5061 } redirect to :5061\n'
        "  }\n"
        "  chain intercept_mark {\n"
        "    type filter hook prerouting priority mangle; policy accept;\n"
        '    iifname "wlan0" ip daddr 192.168.50.10 udp dport { 5060, 5061 } '
        "tproxy ip to :5060 meta mark set 1 accept\n"
        "  }\n"
        "}\n"
    )


def test_without_iface_and_counter_the_lab_ruleset_is_unchanged():
    with_iface = ruleset(spec(iface="eth1", counter=True))
    plain = ruleset(spec())
    assert with_iface.replace('iifname "eth1" ', "").replace("counter ", "") == plain
    assert "iifname" not in plain and "counter" not in plain


def test_counter_on_every_rule_and_answers_not_restricted():
    text = ruleset(spec(iface="wlan0", counter=True, spoof_source=True))
    rules = [line.strip() for line in text.splitlines() if "192.168.50.10" in line]
    assert len(rules) == 5 and all(" counter " in r for r in rules)
    to_pbx = [r for r in rules if "ip daddr" in r]
    answers = [r for r in rules if "ip saddr" in r]
    assert len(to_pbx) == 3 and all(r.startswith('iifname "wlan0" ip daddr ') for r in to_pbx)
    assert len(answers) == 2 and not any("iifname" in r for r in answers)
    assert "udp dport { 5060, 5061 } counter tproxy ip to :5060 meta mark set 1 accept" in text
    assert "socket transparent 1 counter meta mark set 1 accept" in text


@pytest.mark.parametrize("bad", ["", "a" * 16, 'wl"an0', "wl an0", "a/b", ".", "..", "x\\y", "wlan0\n"])
def test_bad_interface_names_are_refused(bad):
    with pytest.raises(InterceptError, match="not a Linux interface name"):
        spec(iface=bad)


def test_non_ip_pbx_says_how_to_fix():
    with pytest.raises(InterceptError, match=r"not an IP address: give the PBX's IPv4 address .*getent"):
        spec(pbx="pbx.example.test")


def run(*args, env=WIDE):
    return CliRunner().invoke(app, ["gateway", *args], env=env)


def test_dry_run_prints_the_ruleset_and_ip_commands_without_root(monkeypatch):
    monkeypatch.setattr(gateway_cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(gateway_cli, "apply", lambda *a, **k: pytest.fail("--dry-run applied something"))
    result = run("intercept", "--pbx", "192.168.50.10", "--iface", "lo", "--ports", "5060,5061,5080",
                 "--dry-run")
    assert result.exit_code == 0, result.output
    expected = spec(ports=(5060, 5061, 5080), iface="lo", counter=True, table="faultlab_gw")
    assert ruleset(expected) in result.output
    assert shlex.join(rule_argv(None, "add", 1, 100)) in result.output
    assert shlex.join(route_argv(None, "replace", 100)) in result.output


def test_dry_run_tcp_only_has_no_policy_route():
    result = run("intercept", "--pbx", "10.0.0.1", "--iface", "lo", "--proxy-udp-port", "0",
                 "--proxy-tls-port", "0", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "tproxy" not in result.output and "ip -4 rule" not in result.output
    assert 'iifname "lo" ip daddr 10.0.0.1 tcp dport { 5060 } counter redirect to :5060' in result.output
    assert "5061" not in result.output


def test_dry_run_with_an_unknown_interface_warns_but_prints():
    result = run("intercept", "--pbx", "10.0.0.1", "--iface", "nosuchif9", "--dry-run")
    assert result.exit_code == 0
    assert "no interface 'nosuchif9' here" in result.output and 'iifname "nosuchif9"' in result.output


def test_off_dry_run_prints_what_it_removes():
    result = run("intercept", "--off", "--dry-run", "--table", "faultlab_x", "--mark", "7", "--route-table", "77")
    assert result.exit_code == 0, result.output
    assert "nft delete table inet faultlab_x" in result.output
    assert shlex.join(rule_argv(None, "del", 7, 77)) in result.output
    assert shlex.join(route_argv(None, "del", 77)) in result.output


@pytest.mark.parametrize(("args", "expected"), [
    (["--pbx", "pbx.example.test", "--iface", "lo"], "is not an IP address: give the PBX's IPv4 address"),
    (["--pbx", "fd00::10", "--iface", "lo"], "IPv4 only"),
    (["--pbx", "10.0.0.1", "--iface", "nosuchif9"], "there is no interface 'nosuchif9' in this network namespace"),
    (["--pbx", "10.0.0.1", "--iface", 'a"b'], "not a Linux interface name"),
    (["--pbx", "10.0.0.1", "--iface", "lo", "--ports", "5060,sip"], "--ports takes comma-separated port numbers"),
    (["--iface", "lo"], "give --pbx ADDRESS"),
    (["--pbx", "10.0.0.1"], "--iface IFACE"),
    (["--pbx", "10.0.0.1", "--iface", "lo", "--table", "bad-name"], "nftables table name 'bad-name'"),
    (["--pbx", "10.0.0.1", "--iface", "lo", "--proxy-udp-port", "0", "--proxy-tcp-port", "0",
      "--proxy-tls-port", "0"], "nothing to intercept to"),
])
def test_bad_input_exits_2_before_anything_is_applied(monkeypatch, args, expected):
    monkeypatch.setattr(gateway_cli, "apply", lambda *a, **k: pytest.fail("applied despite bad input"))
    result = run("intercept", *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output


def test_not_root_is_a_clear_message(monkeypatch):
    monkeypatch.setattr(gateway_cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(gateway_cli, "apply", lambda *a, **k: pytest.fail("applied without root"))
    for args in (["intercept", "--pbx", "10.0.0.1", "--iface", "lo"], ["intercept", "--off"], ["status"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert f"faultlab gateway {args[0]}" in result.output and "needs root" in result.output
        assert "sudo" in result.output
