"""faultlab's HEP in the collectors VoIP engineers use: sngrep (Debian's, listening for HEP) gets every SIP message
of a call through `faultlab proxy --hep` to Kamailio, on both hops, byte for byte; tshark, with the HEP dissector
of the Homer project (tests/integration/hep/), decodes the packets of a lab run with a fault, the fault's log
line included, and `faultlab trace hep` replays the run's trace as the same packets.

Marker integration: needs sngrep, tshark and Kamailio (Debian packages); under CI=true a skip is a failure."""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.ua import TRANSPORTS, SipUA
from faultlab.trace import read_jsonl, wire_messages
from faultlab.trace.hep import HepTarget, decode
from tests.integration.conftest import Kamailio
from tests.integration.test_kamailio_e2e import establish, hang_up, kamailio_address, register

pytestmark = pytest.mark.integration

HEP_LUA = Path(__file__).parent / "hep" / "hep.lua"
WAIT = 20.0  # seconds for an external program to do its part (polled, bounded)


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"needs {program} (apt-get install {program})")
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_bound(port: int) -> bool:
    """Some process has a UDP socket on 127.0.0.1:``port`` (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1] == want for line in table.readlines()[1:])


class Sngrep:
    """`sngrep -N -q -L udp:127.0.0.1:PORT -O FILE`: sngrep as a HEP collector, saving what it gets as a pcap."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_udp_port()
        self.pcap = tmp_path / "sngrep.pcap"
        self.proc = subprocess.Popen([need("sngrep"), "-F", "-N", "-q", "-L", f"udp:127.0.0.1:{self.port}",
                                      "-O", str(self.pcap)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        while not udp_bound(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"sngrep did not listen on UDP {self.port}: {self.proc.stderr.read()!r}")
            time.sleep(0.02)  # another process starting up: polled, with a bound

    def packets(self, count: int) -> list:
        """The first ``count`` packets of sngrep's pcap, once it has them (it writes each as it gets it)."""
        deadline = time.monotonic() + WAIT
        while True:
            got = rdpcap(str(self.pcap)) if self.pcap.exists() and self.pcap.stat().st_size > 24 else []
            if len(got) >= count or time.monotonic() > deadline:
                return list(got)
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sngrep_gets_every_message_of_a_call_on_both_hops_byte_for_byte(
    kamailio: Kamailio, transport: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    from faultlab.addr import parse_endpoint
    from faultlab.proxy import ProxyConfig, serve_proxy

    sngrep = Sngrep(tmp_path)
    try:
        pbx = kamailio_address(kamailio, transport)
        config = ProxyConfig(listen=[parse_endpoint(f"{transport}:127.0.0.1:0")],
                             upstream=[parse_endpoint(f"{transport}:{pbx[0]}:{pbx[1]}")],
                             upstream_ca=kamailio.ca_file, confdir=tmp_path / "faultlab", quiet=True,
                             keep_events=None, hep=HepTarget("udp", "127.0.0.1", sngrep.port), hep_id=2001)
        proxy = await nursery.start(serve_proxy, config)
        relay = tuple(proxy.bound[transport])
        ca_file = proxy.ca_cert_path if transport == "tls" else None
        alice, bob = (SipUA(name, transport, relay, ca_file=ca_file) for name in ("alice", "bob"))
        for ua in (alice, bob):
            await ua.start(nursery)
        await register(alice, bob)
        caller, callee = await establish(alice, bob)
        await hang_up(caller, callee)

        sent = wire_messages(proxy.trace.events)
        hops = {(m.event.direction, m.event.kind) for m in sent}
        assert hops == {(d, k) for d in ("to-pbx", "to-device") for k in ("received", "sent")}
        want = collections.Counter((m.src, m.dst, m.data) for m in sent)
        got = await trio.to_thread.run_sync(sngrep.packets, len(sent))
    finally:
        sngrep.stop()
    seen = collections.Counter(((p[IP].src, p[UDP].sport), (p[IP].dst, p[UDP].dport), bytes(p[UDP].payload))
                               for p in got)
    assert seen == want, (f"sngrep has {len(got)} packets, faultlab relayed {len(sent)} messages; "
                          f"missing {list((want - seen).elements())[:3]}, extra {list((seen - want).elements())[:3]}")
    invite = next(m for m in sent if m.event.method == "INVITE")
    assert invite.data.startswith(b"INVITE sip:bob@")


def run_with_hep(tmp_path: Path, *extra: str) -> tuple[list[bytes], Path]:
    """`faultlab lab run -s S01 -p invite-drop --hep udp:...` into a socket of the test's; the HEP datagrams it got
    and the run's trace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        collector.bind(("127.0.0.1", 0))
        port = collector.getsockname()[1]
        result = CliRunner().invoke(app, ["lab", "run", "-s", "S01", "-p", "invite-drop", "-t", "udp", "--seed", "1",
                                          "-q", "--trace-dir", str(tmp_path), "--hep", f"udp:127.0.0.1:{port}",
                                          "--hep-id", "2001", "--hep-password", "s3cret", *extra])
        assert result.exit_code == 1, result.output  # invite-drop: the reference device ends it failed, not remoteEnded
        collector.setblocking(False)
        datagrams = []
        while True:
            try:
                datagrams.append(collector.recv(65536))
            except BlockingIOError:
                break
    (trace,) = tmp_path.glob("S01-*.jsonl")
    return datagrams, trace


def tshark_fields(datagrams: list[bytes], tmp_path: Path, *fields: str) -> list[list[str]]:
    """tshark's decoding of ``datagrams`` sent to UDP 9060, with the Homer project's HEP dissector: the values of
    ``fields`` per packet."""
    pcap = tmp_path / "hep.pcap"
    wrpcap(str(pcap), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=9060) / Raw(d)
                       for d in datagrams])
    args = [need("tshark"), "-n", "-X", f"lua_script:{HEP_LUA}", "-r", str(pcap), "-T", "fields",
            "-E", "separator=|", "-E", "occurrence=f"]
    for field in fields:
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("|") for line in out.stdout.splitlines()]


def test_tshark_decodes_the_messages_and_the_fault_of_a_lab_run(tmp_path):
    datagrams, trace = run_with_hep(tmp_path)
    rows = tshark_fields(datagrams, tmp_path, "hep3.version", "hep3.application_protocol", "hep3.capture_node_id",
                         "hep3.auth_key", "hep3.correlation_id", "sip.Call-ID", "hep3.payload",
                         "hep3.source_ipv4_address", "hep3.source_port", "hep3.destination_ipv4_address",
                         "hep3.destination_port", "sip.Method")
    assert len(rows) == len(datagrams) > 10
    version, app_proto, node, key, correlation, sip_call_id, payload, src, sport, dst, dport, method = zip(*rows)
    assert set(version) == {"HEP3"} and set(node) == {"2001"} and set(key) == {"s3cret"}
    assert set(app_proto) == {"SIP", "LOG"}
    sip = [r for r in rows if r[1] == "SIP"]
    assert all(r[4] == r[5] and r[5] for r in sip)  # the correlation id is the message's own Call-ID
    # every SIP message of the trace, on its hop, with its addresses
    messages = wire_messages(read_jsonl(trace))
    assert sorted((r[7], int(r[8]), r[9], int(r[10])) for r in sip) == sorted(
        (m.src[0], m.src[1], m.dst[0], m.dst[1]) for m in messages)
    # the fault, beside the call it struck
    logs = [r for r in rows if r[1] == "LOG"]
    invite_call = next(r[5] for r in sip if r[11] == "INVITE")
    assert logs and all(r[4] == invite_call for r in logs)
    assert all(r[6] == "faultlab: INVITE dropped [drop-invite] (PBX -> device)" for r in logs)


def test_trace_hep_replays_a_recorded_run_as_the_packets_sent_live(tmp_path):
    live, trace = run_with_hep(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        collector.bind(("127.0.0.1", 0))
        result = CliRunner().invoke(app, ["trace", "hep", str(trace), "--to",
                                          f"udp:127.0.0.1:{collector.getsockname()[1]}", "--hep-id", "2001",
                                          "--hep-password", "s3cret"])
        assert result.exit_code == 0, result.output
        assert f"sent {len(live)} HEP packets" in result.output
        collector.settimeout(5)
        replayed = [collector.recv(65536) for _ in live]
    assert [decode(p) for p in replayed] == [decode(p) for p in live]
