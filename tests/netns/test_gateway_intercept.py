"""`faultlab gateway intercept` in a throwaway namespace of this test's own (not a faultlab lab).

Two namespaces joined by a veth pair: fl-gwtest-<pid> plays the real gateway (its side is "wifi0"),
fl-gwph-<pid> a phone. The command runs inside the gateway namespace (`ip netns exec NS python -m
faultlab ...`) as it would in a gateway's main namespace; the table, ip rule and route must appear
there, a UDP datagram the phone sends to the PBX must show on the counters, and --off must leave
nothing (twice). Both namespaces are deleted whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import netns_skip_reason

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
PBX = "192.0.2.10"  # TEST-NET-1: nothing answers, nothing leaves the namespaces


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def gateway_ns():
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    if not shutil.which("nft"):
        pytest.skip("needs nft (nftables): apt-get install nftables")
    gw, phone = f"fl-gwtest-{os.getpid()}", f"fl-gwph-{os.getpid()}"
    try:
        sh("ip", "netns", "add", gw)
        sh("ip", "netns", "add", phone)
        sh("ip", "-n", gw, "link", "add", "wifi0", "type", "veth", "peer", "name", "eth0", "netns", phone)
        sh("ip", "-n", gw, "addr", "add", "10.66.0.1/24", "dev", "wifi0")
        sh("ip", "-n", phone, "addr", "add", "10.66.0.2/24", "dev", "eth0")
        for ns, dev in ((gw, "wifi0"), (phone, "eth0"), (gw, "lo"), (phone, "lo")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", phone, "route", "add", "default", "via", "10.66.0.1")
        yield gw, phone
    finally:
        sh("ip", "netns", "del", phone, check=False)
        sh("ip", "netns", "del", gw, check=False)
        left = sh("ip", "netns", "list", check=False).stdout
        assert gw not in left and phone not in left, left


def faultlab(ns: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "faultlab", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


def state(ns: str) -> tuple[str, str, str]:
    ruleset = sh("ip", "netns", "exec", ns, "nft", "list", "ruleset").stdout
    rules = sh("ip", "-n", ns, "-4", "rule", "show").stdout
    routes = sh("ip", "-n", ns, "-4", "route", "show", "table", "100", check=False).stdout
    return ruleset, rules, routes


def test_gateway_intercept_on_status_off(gateway_ns):
    gw, phone = gateway_ns
    on = faultlab(gw, "gateway", "intercept", "--pbx", PBX, "--iface", "wifi0", "--spoof-source")
    assert on.returncode == 0, on.stderr
    assert f"SIP for {PBX} ports 5060,5061 arriving on wifi0 now goes to faultlab" in on.stdout

    ruleset, rules, routes = state(gw)
    assert "table inet faultlab_gw" in ruleset
    to_pbx = [line.strip() for line in ruleset.splitlines() if f"ip daddr {PBX}" in line]
    assert len(to_pbx) == 3 and all(line.startswith('iifname "wifi0" ') for line in to_pbx), ruleset
    answers = [line.strip() for line in ruleset.splitlines() if f"ip saddr {PBX}" in line]
    assert len(answers) == 2 and not any("iifname" in line for line in answers), ruleset
    assert "fwmark 0x1 lookup 100" in rules
    assert "local default dev lo" in routes

    # a phone's datagram to the PBX is caught on wifi0 (TPROXY to a port nobody listens on: dropped)
    sh("ip", "netns", "exec", phone, sys.executable, "-c",
       "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
       f"[s.sendto(b'OPTIONS sip:pbx SIP/2.0\\r\\n\\r\\n', ('{PBX}', 5060)) for _ in range(3)]")
    status = faultlab(gw, "gateway", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "nftables table inet faultlab_gw: present" in status.stdout
    assert "ip rule fwmark 1 lookup 100: present" in status.stdout
    assert "route local 0.0.0.0/0 dev lo table 100: present" in status.stdout
    udp = next(line for line in status.stdout.splitlines() if "tproxy" in line)
    assert "counter packets 3 " in udp, status.stdout

    # again: replaced, not duplicated
    again = faultlab(gw, "gateway", "intercept", "--pbx", PBX, "--iface", "wifi0")
    assert again.returncode == 0, again.stderr
    ruleset, rules, _ = state(gw)
    assert ruleset.count("table inet faultlab_gw") == 1 and rules.count("fwmark 0x1 lookup 100") == 1
    assert f"ip saddr {PBX}" not in ruleset

    off = faultlab(gw, "gateway", "intercept", "--off")
    assert off.returncode == 0, off.stderr
    assert "removed nftables table inet faultlab_gw" in off.stdout and "removed ip rule" in off.stdout
    ruleset, rules, routes = state(gw)
    assert ruleset.strip() == "" and "fwmark" not in rules and routes.strip() == ""
    twice = faultlab(gw, "gateway", "intercept", "--off")
    assert twice.returncode == 0 and "nothing to remove" in twice.stdout
    gone = faultlab(gw, "gateway", "status")
    assert gone.returncode == 1 and "no interception here" in gone.stderr


def test_unknown_interface_is_refused_and_nothing_applied(gateway_ns):
    gw, _ = gateway_ns
    done = faultlab(gw, "gateway", "intercept", "--pbx", PBX, "--iface", "wlan9")
    assert done.returncode == 2 and "there is no interface 'wlan9'" in done.stderr
    assert "wifi0" in done.stderr  # the interfaces that do exist
    ruleset, rules, routes = state(gw)
    assert ruleset.strip() == "" and "fwmark" not in rules and routes.strip() == ""


def test_dry_run_applies_nothing(gateway_ns):
    gw, _ = gateway_ns
    done = faultlab(gw, "gateway", "intercept", "--pbx", PBX, "--iface", "wifi0", "--dry-run")
    assert done.returncode == 0 and 'iifname "wifi0"' in done.stdout
    ruleset, rules, routes = state(gw)
    assert ruleset.strip() == "" and "fwmark" not in rules and routes.strip() == ""
