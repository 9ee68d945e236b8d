"""The lab topology (faultlab.labnet.topology and `faultlab net`): real namespaces, so root.

Each test gets its own lab name (``t<pid%1000><n>``) and a fixture that calls ``lab_down`` in ``finally``;
traffic goes only between the lab's own namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from faultlab.labnet import PREFIX, LabError, exec_argv, lab_down, lab_status, lab_up, netns_name
from faultlab.cli.net import app as net_app
from faultlab.labnet.names import find_tool
from tests.netns import netns_skip_reason

pytestmark = pytest.mark.netns

_counter = itertools.count(1)

# ICMP echo with a raw socket, run inside a namespace: prints the reply's TTL, so a test can tell how many
# routers the packet crossed. Used because the `ping` binary (iputils-ping) is not always installed.
_ICMP_ECHO = r"""
import os, socket, struct, sys, time
dst = sys.argv[1]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
body = b"faultlab-netns-test."  # even length: the checksum sums 16-bit words
hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, 1) + body
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(pkt, (dst, 0))
deadline = time.monotonic() + 1.0
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    ihl = (data[0] & 0x0F) * 4
    typ, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    if addr[0] == dst and typ == 0 and rid == ident:
        print(data[8]); sys.exit(0)
sys.exit(1)
"""


@pytest.fixture
def lab_name() -> Iterator[str]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"t{os.getpid() % 1000}{next(_counter)}"
    lab_down(name)  # a previous run of this pid may have died
    try:
        yield name
    finally:
        lab_down(name)
        assert _leftovers(name) == ([], [])


def _ip(*args: str) -> str:
    return subprocess.run([find_tool("ip") or "ip", *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout


def _leftovers(name: str) -> tuple[list[str], list[str]]:
    """What `ip netns list` and the host's `ip link` show with the lab's prefix."""
    prefix = f"{PREFIX}-{name}-"
    namespaces = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.startswith(prefix)]
    links = [link["ifname"] for link in json.loads(_ip("-j", "link", "show") or "[]")
             if link["ifname"].startswith(prefix)]
    return namespaces, links


def _in(name: str, role: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(exec_argv(name, role, list(argv)), capture_output=True, text=True, timeout=10, check=False)


def _echo_ttl(name: str, role: str, dst: str) -> int | None:
    """TTL of the ICMP echo reply from ``dst`` seen in ``role``'s namespace; None if no reply within 1 s."""
    r = _in(name, role, sys.executable, "-c", _ICMP_ECHO, dst)
    assert r.returncode in (0, 1) and not r.stderr, r.stderr
    return int(r.stdout) if r.returncode == 0 else None


def _cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(net_app, name="net")
    return root


# -- input checks (no root needed) ------------------------------------------------------------------

def test_names_and_argv() -> None:
    assert netns_name("lab", "device1") == "fl-lab-device1"
    assert exec_argv("lab", "pbx", ["ip", "route"])[1:] == ["netns", "exec", "fl-lab-pbx", "ip", "route"]
    with pytest.raises(LabError, match="at most 9") as e:
        netns_name("a" * 10, "pbx")
    assert e.value.usage
    with pytest.raises(LabError, match="no '-'"):
        netns_name("a-b", "pbx")  # '-' would let `down --name a` match lab "a-b"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"subnet": "10.213.0.0/25"}, "too small"),
    ({"subnet": "10.0.0.0/23", "devices": 2}, r"needs a /22"),
    ({"subnet": "nonsense"}, "bad subnet"),
    ({"subnet": "fd00::/48"}, "IPv6"),
    ({"devices": 0}, "at least 1"),
    ({"name": "abcdefghi", "devices": 10}, r"at most 8"),  # fl-abcdefghi-g10 would be 16 characters
])
def test_bad_input_is_refused_before_touching_anything(kwargs: dict[str, object], message: str) -> None:
    name = str(kwargs.pop("name", f"t{os.getpid() % 1000}bad"))
    try:
        with pytest.raises(LabError, match=message) as e:
            lab_up(name, **kwargs)  # type: ignore[arg-type]
        assert e.value.usage
    finally:
        if netns_skip_reason() is None:
            lab_down(name)  # only if the check above failed and a lab was built


# -- the real thing ---------------------------------------------------------------------------------

def test_up_creates_namespaces_addresses_routes(lab_name: str) -> None:
    lab = lab_up(lab_name, devices=2)
    p = f"fl-{lab_name}"
    assert set(_ip("netns", "list").split()) >= {f"{p}-gateway", f"{p}-pbx", f"{p}-air", f"{p}-device1",
                                                f"{p}-device2"}
    assert _leftovers(lab_name)[1] == []  # no lab link in the host's namespace
    assert (lab.gateway.address, lab.pbx.address) == ("10.213.0.1", "10.213.0.2")
    assert [d.address for d in lab.devices] == ["10.213.1.2", "10.213.2.2"]
    assert {i.name: i.addresses for i in lab.gateway.interfaces} == {
        f"{p}-gp": ("10.213.0.1/24",), f"{p}-g1": ("10.213.1.1/24",), f"{p}-g2": ("10.213.2.1/24",)}
    # the air between the devices and the gateway: no address of its own, only forwarding
    assert {i.name: i.addresses for i in lab.air.interfaces} == {
        f"{p}-a1": (), f"{p}-u1": (), f"{p}-a2": (), f"{p}-u2": ()}
    assert lab.air.address == "" and lab.complete

    for role, gw in (("device1", "10.213.1.1"), ("device2", "10.213.2.1"), ("pbx", "10.213.0.1")):
        routes = json.loads(_in(lab_name, role, "ip", "-j", "route", "show", "default").stdout)
        assert [(r["gateway"], r["dev"]) for r in routes] == [(gw, lab.roles[role].interfaces[0].name)]
    for role in lab.roles:
        if role == "air":
            continue
        lo = json.loads(_in(lab_name, role, "ip", "-j", "link", "show", "lo").stdout)[0]
        assert "UP" in lo["flags"], role
    assert _in(lab_name, "gateway", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert _in(lab_name, "air", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert _in(lab_name, "device1", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"


def test_device_reaches_pbx_through_the_air_and_the_gateway(lab_name: str) -> None:
    lab = lab_up(lab_name, devices=2)
    # The reply's TTL drops by one per router: the air and the gateway.
    assert _echo_ttl(lab_name, "device1", lab.pbx.address) == 62
    assert _echo_ttl(lab_name, "pbx", lab.devices[1].address) == 62
    # device to device: up through the air, the gateway, down through the air again
    assert _echo_ttl(lab_name, "device1", lab.devices[1].address) == 61
    assert _echo_ttl(lab_name, "device1", "10.213.1.1") == 63  # the gateway itself: the air only
    # the device's neighbour is the gateway's .1 as if on one wire (proxy ARP in the air)
    neigh = json.loads(_in(lab_name, "device1", "ip", "-j", "neigh", "show", "10.213.1.1").stdout)
    assert neigh and neigh[0]["dev"] == f"fl-{lab_name}-d1", neigh
    if find_tool("ping"):
        r = _in(lab_name, "device1", "ping", "-c", "1", "-W", "1", lab.pbx.address)
        assert r.returncode == 0, r.stdout + r.stderr
    # Forwarding off: the air (then the gateway) no longer passes the echo, so forwarding is what carried it.
    assert _in(lab_name, "air", "sysctl", "-qw", "net.ipv4.ip_forward=0").returncode == 0
    assert _echo_ttl(lab_name, "device1", lab.pbx.address) is None
    assert _in(lab_name, "air", "sysctl", "-qw", "net.ipv4.ip_forward=1").returncode == 0
    assert _echo_ttl(lab_name, "device1", lab.pbx.address) == 62
    assert _in(lab_name, "gateway", "sysctl", "-qw", "net.ipv4.ip_forward=0").returncode == 0
    assert _echo_ttl(lab_name, "device1", lab.pbx.address) is None


def test_status_json_shape(lab_name: str) -> None:
    lab_up(lab_name, subnet="10.99.0.0/22", devices=3)
    lab = lab_status(lab_name)
    assert lab is not None and lab.complete and lab.subnet == "10.99.0.0/22"
    data = json.loads(lab.to_json())
    assert data["name"] == lab_name and data["subnet"] == "10.99.0.0/22" and data["complete"] is True
    assert list(data["roles"]) == ["gateway", "pbx", "air", "device1", "device2", "device3"]
    assert data["roles"]["device3"] == {
        "role": "device3", "netns": f"fl-{lab_name}-device3", "address": "10.99.3.2",
        "interfaces": [{"name": f"fl-{lab_name}-d3", "addresses": ["10.99.3.2/24"]}],
    }
    result = CliRunner().invoke(_cli(), ["net", "status", "--name", lab_name, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {**data, "impairment": None}
    result = CliRunner().invoke(_cli(), ["net", "status", "--name", lab_name])
    assert result.exit_code == 0 and f"air fl-{lab_name}-air: clean" in result.output, result.output


def test_up_refuses_an_existing_lab(lab_name: str) -> None:
    lab_up(lab_name)
    with pytest.raises(LabError, match=f"run faultlab net down --name {lab_name} first"):
        lab_up(lab_name)
    assert lab_status(lab_name).complete  # type: ignore[union-attr] - untouched by the refusal


def test_down_removes_everything_and_is_idempotent(lab_name: str) -> None:
    lab_up(lab_name, devices=2)
    expected = [f"namespace fl-{lab_name}-{r}" for r in ("gateway", "pbx", "air", "device1", "device2")]
    if find_tool("nft"):  # the interception's table (made by faultlab.labnet.intercept) goes with the gateway
        r = _in(lab_name, "gateway", find_tool("nft") or "nft", "add", "table", "inet", f"faultlab_{lab_name}")
        assert r.returncode == 0, r.stderr
        expected.append(f"nftables table inet faultlab_{lab_name} in fl-{lab_name}-gateway")
    removed = lab_down(lab_name)
    assert sorted(removed) == sorted(expected)
    assert _leftovers(lab_name) == ([], [])
    assert lab_status(lab_name) is None
    assert lab_down(lab_name) == []


def test_down_after_a_crash_removes_the_leftovers(lab_name: str) -> None:
    # lab_up in another process, SIGKILLed (with pyroute2's helper children: its process group) as soon
    # as the first namespace exists, so it dies partway.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from faultlab.labnet import lab_up; lab_up(sys.argv[1], devices=6)",
         lab_name], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _leftovers(lab_name)[0] and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # More debris of the kind a crash (or someone's experiment) leaves: a stray namespace with the prefix
    # and a veth pair in the host's namespace.
    _ip("netns", "add", f"fl-{lab_name}-x")
    _ip("link", "add", f"fl-{lab_name}-za", "type", "veth", "peer", "name", f"fl-{lab_name}-zb")
    namespaces, links = _leftovers(lab_name)
    assert f"fl-{lab_name}-x" in namespaces and len(namespaces) >= 2
    assert sorted(links) == [f"fl-{lab_name}-za", f"fl-{lab_name}-zb"]

    status = lab_status(lab_name)
    assert status is not None and "x" in status.roles and not status.complete
    removed = lab_down(lab_name)
    assert f"namespace fl-{lab_name}-x" in removed
    assert f"interface fl-{lab_name}-za in the host namespace" in removed
    assert _leftovers(lab_name) == ([], [])
    assert lab_down(lab_name) == []


def test_cli_up_exec_down(lab_name: str) -> None:
    cli, runner = _cli(), CliRunner()
    result = runner.invoke(cli, ["net", "up", "--name", lab_name, "--devices", "2"])
    assert result.exit_code == 0, result.output
    assert f"fl-{lab_name}-device2" in result.output and "10.213.2.2" in result.output

    # A command that runs replaces the process (tests/netns/test_net_exec.py): not in-process here.
    result = runner.invoke(cli, ["net", "exec", "device9", "--name", lab_name, "--", "true"])
    assert result.exit_code == 2 and "no role 'device9'" in result.output
    result = runner.invoke(cli, ["net", "up", "--name", lab_name])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(cli, ["net", "up", "--name", "x", "--subnet", "10.0.0.0/25"])
    assert result.exit_code == 2 and "too small" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["net", "impair", "--name", lab_name])
    assert result.exit_code == 2 and "exactly one of --profile NAME or --clear" in result.output

    result = runner.invoke(cli, ["net", "down", "--name", lab_name])
    assert result.exit_code == 0 and f"removed namespace fl-{lab_name}-gateway" in result.output
    result = runner.invoke(cli, ["net", "down", "--name", lab_name])
    assert result.exit_code == 0 and "nothing to remove" in result.output
    result = runner.invoke(cli, ["net", "status", "--name", lab_name])
    assert result.exit_code == 1 and "does not exist" in result.output
