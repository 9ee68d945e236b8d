"""faultlab.trace.pcap: a trace's SIP messages as a pcap, read back with scapy.

A fabricated trace covers the three transports (TLS over IPv6), faultlab's two hops, a lab actor's messages that
did not cross faultlab, and what is not a packet; a real lab run (TLS, memory network, virtual time) checks the
same invariants on what the relay actually records.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from scapy.utils import rdpcap

from faultlab.faults import parse_profile
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.stack import open_lab_stack
from faultlab.trace import Event, wire_messages, write_pcap

WALL = 1_700_000_000.0
DEV, FL_DEV, FL_PBX, PBX = "10.0.0.5:5062", "10.0.0.1:5060", "10.0.1.1:40001", "10.0.1.9:5060"
CALLER = "10.0.2.7:5070"


def sip(first: str, call_id: str = "c1", cseq: str = "1 INVITE", extra: str = "") -> bytes:
    return (f"{first}\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK{extra or 'a'}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode()


INV = sip("INVITE sip:alice@lab.test SIP/2.0")
INV_RR = sip("INVITE sip:alice@lab.test SIP/2.0", extra="rewritten-by-faultlab")
TRYING = sip("SIP/2.0 100 Trying")
RINGING = sip("SIP/2.0 180 Ringing", extra="longer-than-the-others")
RESP_503 = sip("SIP/2.0 503 Service Unavailable", cseq="2 REGISTER")


def relay(t, kind, flow, direction, transport, peer, raw, **kw) -> Event:
    return Event(t, kind, flow=flow, direction=direction, transport=transport, peer=peer, raw=raw,
                 call_id="c1", **kw)


def fabricated() -> list[Event]:
    return [
        Event(0.5, "start", detail={"wall_clock": WALL + 0.5, "seed": 1}),  # started at t = 0.5: t0 is WALL
        Event(0.5, "listening", transport="udp", peer=FL_DEV),
        Event(0.5, "pbx", source="pbx", detail={"action": "start", "listen": ["udp:10.0.1.9:5060"]}),
        # UDP, both hops, and a response made up by faultlab
        Event(1.0, "flow-open", flow="u1", transport="udp", peer=DEV,
              detail={"device_side": FL_DEV, "pbx_side": FL_PBX}),
        relay(1.0, "received", "u1", "to-pbx", "udp", DEV, INV),
        relay(1.1, "sent", "u1", "to-pbx", "udp", PBX, INV_RR),
        Event(1.15, "received", source="pbx", transport="udp", peer=FL_PBX, raw=INV_RR),  # faultlab has it
        relay(1.2, "received", "u1", "to-device", "udp", PBX, TRYING),
        relay(1.3, "sent", "u1", "to-device", "udp", DEV, TRYING),
        relay(1.4, "dropped", "u1", "to-pbx", "udp", DEV, INV, detail={"how": "dropped"}),  # not a packet
        relay(1.45, "sent", "u1", "to-device", "udp", DEV, None),  # no bytes: skipped
        relay(1.5, "responded", "u1", "to-device", "udp", DEV, RESP_503),
        # TCP: sequence numbers per direction
        Event(2.0, "flow-open", flow="t2", transport="tcp", peer="10.0.0.5:50000",
              detail={"device_side": "10.0.0.1:5060", "pbx_side": "10.0.1.1:40002"}),
        relay(2.0, "received", "t2", "to-pbx", "tcp", "10.0.0.5:50000", INV),
        relay(2.1, "received", "t2", "to-pbx", "tcp", "10.0.0.5:50000", RINGING),
        relay(2.2, "sent", "t2", "to-pbx", "tcp", PBX, INV_RR),
        relay(2.3, "received", "t2", "to-device", "tcp", PBX, TRYING),
        relay(2.4, "sent", "t2", "to-device", "tcp", "10.0.0.5:50000", TRYING),
        # TLS over IPv6, PBX on the SIPS port
        Event(3.0, "flow-open", flow="s3", transport="tls", peer="[2001:db8:1::5]:50001",
              detail={"device_side": "[2001:db8:1::1]:5061", "pbx_side": "[2001:db8:2::1]:40003"}),
        relay(3.0, "received", "s3", "to-pbx", "tls", "[2001:db8:1::5]:50001", INV),
        relay(3.1, "sent", "s3", "to-pbx", "tls", "[2001:db8:2::9]:5061", INV_RR),
        # the caller talks to the PBX directly: the PBX's record is taken (it knows its own address)
        Event(4.0, "sent", source="caller", transport="udp", peer=PBX, raw=INV),
        Event(4.0, "received", source="pbx", transport="udp", peer=CALLER, raw=INV),
        Event(4.1, "sent", source="pbx", transport="udp", peer=CALLER, raw=TRYING),
        Event(4.2, "received", source="caller", transport="udp", peer=PBX, raw=TRYING),
    ]


def ends(pkt) -> tuple[tuple[str, int], tuple[str, int]]:
    ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    return (ip.src, l4.sport), (ip.dst, l4.dport)


def hp(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@pytest.fixture
def packets(tmp_path: Path):
    path = tmp_path / "trace.pcap"
    count = write_pcap(fabricated(), path)
    pkts = rdpcap(str(path))
    assert count == len(pkts)
    return pkts


def test_one_packet_per_message_on_each_hop(packets):
    expected = [
        (DEV, FL_DEV, INV), (FL_PBX, PBX, INV_RR), (PBX, FL_PBX, TRYING), (FL_DEV, DEV, TRYING),
        (FL_DEV, DEV, RESP_503),
        ("10.0.0.5:50000", "10.0.0.1:5060", INV), ("10.0.0.5:50000", "10.0.0.1:5060", RINGING),
        ("10.0.1.1:40002", PBX, INV_RR), (PBX, "10.0.1.1:40002", TRYING), ("10.0.0.1:5060", "10.0.0.5:50000", TRYING),
        # TLS: port 5061 is written as 5060 (Wireshark would dissect 5061 as TLS records); other ports are real
        ("[2001:db8:1::5]:50001", "[2001:db8:1::1]:5060", INV), ("[2001:db8:2::1]:40003", "[2001:db8:2::9]:5060", INV_RR),
        (CALLER, PBX, INV), (PBX, CALLER, TRYING),
    ]
    got = [(*ends(p), bytes(p[Raw].load)) for p in packets]
    assert got == [(hp(s), hp(d), raw) for s, d, raw in expected]


def test_times_are_the_trace_start_plus_t(packets):
    times = [float(p.time) for p in packets]
    assert times[0] == pytest.approx(WALL + 1.0, abs=1e-6)
    assert times[-1] == pytest.approx(WALL + 4.1, abs=1e-6)
    assert times == sorted(times)


def test_udp_is_udp_tcp_and_tls_are_tcp_ipv6_when_the_addresses_are(packets):
    assert [UDP in p for p in packets[:5]] == [True] * 5
    assert all(TCP in p and UDP not in p for p in packets[5:12])
    assert [IPv6 in p for p in packets] == [False] * 10 + [True, True] + [False, False]


def test_tcp_sequence_numbers_advance_by_payload_and_ack_the_other_direction(packets):
    inv, ringing, inv_rr, trying_up, trying_down = packets[5:10]
    assert ringing[TCP].seq == inv[TCP].seq + len(INV)  # same direction: no gap
    assert trying_up[TCP].ack == inv_rr[TCP].seq + len(INV_RR)  # PBX acknowledges what faultlab sent it
    assert trying_down[TCP].ack == ringing[TCP].seq + len(RINGING)  # faultlab has all the device sent
    assert inv[TCP].ack == trying_down[TCP].seq  # nothing from faultlab before the device's first message
    assert all("P" in str(p[TCP].flags) and "A" in str(p[TCP].flags) for p in packets[5:12])


def test_unknown_addresses_get_fixed_documentation_addresses(tmp_path: Path):
    events = [relay(1.0, "received", "u9", "to-pbx", "udp", DEV, INV),
              relay(1.0, "sent", "u9", "to-pbx", "udp", "pbx.example.com:5060", INV_RR),
              relay(1.0, "sent", "s9", "to-device", "tls", "[2001:db8:1::5]:50001", INV)]
    msgs = wire_messages(events)
    assert [(m.src, m.dst) for m in msgs] == [
        (hp(DEV), ("192.0.2.1", 5060)),  # faultlab (no listening/flow-open in this trace)
        (("192.0.2.1", 40000), ("192.0.2.20", 5060)),  # faultlab's upstream side, the PBX (a host name)
        (("2001:db8::1", 5061), ("2001:db8:1::5", 50001)),  # IPv6 placeholder next to an IPv6 peer
    ]
    path = tmp_path / "t.pcap"
    assert write_pcap(events, path) == 3
    pkts = rdpcap(str(path))
    assert ends(pkts[2]) == (("2001:db8::1", 5060), ("2001:db8:1::5", 50001))
    assert float(pkts[0].time) == pytest.approx(1.0)  # no start event: from the epoch


def test_a_trace_without_sip_bytes_writes_an_empty_pcap(tmp_path: Path):
    path = tmp_path / "empty.pcap"
    assert write_pcap([Event(0.0, "start"), relay(1.0, "sent", "u1", "to-pbx", "udp", PBX, None)], path) == 0
    assert len(rdpcap(str(path))) == 0


PROFILE = """
name = "slow-invite"
[[rules]]
name = "delay-invite"
match = { direction = "to-device", method = "INVITE", in_dialog = false }
action = { delay = "2s" }
"""


async def test_a_real_tls_lab_run(tmp_path: Path, autojump_clock):
    async with open_lab_stack("tls", network="memory", confdir=tmp_path, profile=parse_profile(PROFILE),
                              device_config=DeviceConfig(answer_after=1.0)) as lab:
        call = await lab.call(hang_up_after=1.0)
    assert call.final == 200
    events = list(lab.timeline.events)
    path = tmp_path / "lab.pcap"
    count = write_pcap(events, path)
    pkts = rdpcap(str(path))
    relayed = [e for e in events if e.source == "proxy" and e.kind in ("received", "sent", "responded") and e.raw]
    caller_pbx = [e for e in events if e.source == "pbx" and e.kind in ("received", "sent") and e.transport == "udp"]
    assert len(relayed) >= 20 and caller_pbx
    assert count == len(pkts) == len(relayed) + len(caller_pbx)
    # every relayed message is there byte for byte, on TCP, between the addresses the trace gives
    tls_pkts = [p for p in pkts if TCP in p]
    assert sorted(bytes(p[Raw].load) for p in tls_pkts) == sorted(e.raw for e in relayed)
    flow = next(e for e in events if e.kind == "flow-open")
    device, device_side, pbx_side = hp(flow.peer), hp(flow.detail["device_side"]), hp(flow.detail["pbx_side"])
    hops = {ends(p) for p in tls_pkts}
    assert hops == {(device, device_side), (device_side, device), (pbx_side, lab.pbx.address("tls")),
                    (lab.pbx.address("tls"), pbx_side)}
    # each direction of each connection: sequence numbers without gaps
    by_direction: dict = {}
    for p in tls_pkts:
        by_direction.setdefault(ends(p), []).append(p[TCP])
    for segments in by_direction.values():
        for a, b in zip(segments, segments[1:]):
            assert b.seq == (a.seq + len(a.payload)) % 2**32
    # the delay is visible on the wire: the INVITE leaves faultlab 2 s after it arrived
    invites = [float(p.time) for p in tls_pkts if bytes(p[Raw].load).startswith(b"INVITE ")]
    assert invites[1] - invites[0] == pytest.approx(2.0, abs=1e-3)
