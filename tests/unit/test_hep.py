"""HEP v3 as faultlab writes it (faultlab.trace.hep): the packet layout a collector parses, which events become
packets, and the --hep address. The collectors themselves read them in tests/integration/test_hep_collectors.py."""

from __future__ import annotations

import struct

import pytest

from faultlab.trace import Event
from faultlab.trace.hep import LOG, MAX_PACKET, SIP, HepEncoder, HepTarget, decode, encode, parse_target

INVITE = (b"INVITE sip:bob@10.0.0.9 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK1\r\n"
          b"Call-ID: c1@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def chunks(packet: bytes) -> list[tuple[int, int, bytes]]:
    """(vendor, type, data) of every chunk, read by hand as a collector does."""
    assert packet[:4] == b"HEP3" and struct.unpack("!H", packet[4:6])[0] == len(packet)
    out, at = [], 6
    while at < len(packet):
        vendor, kind, length = struct.unpack_from("!HHH", packet, at)
        out.append((vendor, kind, packet[at + 6:at + length]))
        at += length
    assert at == len(packet)
    return out


def test_a_sip_packet_has_the_chunks_collectors_read_in_kamailios_order():
    packet = encode(INVITE, src=("10.0.0.7", 5060), dst=("10.0.0.1", 5062), transport="udp", when=1764000000.25,
                    capture_id=2001, correlation="c1@x", password="secret")
    got = chunks(packet)
    assert [k for _, k, _ in got] == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 17, 14, 15]
    assert all(vendor == 0 for vendor, _, _ in got)
    data = {k: v for _, k, v in got}
    assert data[1] == b"\x02" and data[2] == bytes([17])
    assert data[3] == bytes([10, 0, 0, 7]) and data[4] == bytes([10, 0, 0, 1])
    assert struct.unpack("!H", data[7])[0] == 5060 and struct.unpack("!H", data[8])[0] == 5062
    assert struct.unpack("!I", data[9])[0] == 1764000000 and struct.unpack("!I", data[10])[0] == 250000
    assert data[11] == bytes([SIP]) and struct.unpack("!I", data[12])[0] == 2001
    assert data[17] == b"c1@x" and data[14] == b"secret" and data[15] == INVITE


@pytest.mark.parametrize("transport, proto", [("udp", 17), ("tcp", 6), ("tls", 22)])
def test_the_ip_protocol_says_the_transport(transport, proto):
    packet = encode(b"x", src=("::1", 5061), dst=("2001:db8::20", 5061), transport=transport, when=0.0)
    decoded = decode(packet)
    assert (decoded.family, decoded.ip_proto) == (10, proto)
    assert decoded.src == ("::1", 5061) and decoded.dst == ("2001:db8::20", 5061)


def test_mixed_families_become_ipv4_mapped_ipv6_and_names_a_documentation_address():
    decoded = decode(encode(b"x", src=("10.0.0.7", 1), dst=("::1", 2), transport="udp", when=0.0))
    assert decoded.src[0] == "::ffff:a00:7" and decoded.dst[0] == "::1"
    assert decode(encode(b"x", src=("pbx.example", 1), dst=("10.0.0.1", 2), transport="udp",
                         when=0.0)).src[0] == "192.0.2.1"


def test_a_message_too_large_for_hep_is_refused_not_cut():
    assert encode(b"x" * (MAX_PACKET - 50), src=("10.0.0.1", 1), dst=("10.0.0.2", 2), transport="udp",
                  when=0.0) is None
    fits = encode(b"x" * (MAX_PACKET - 150), src=("10.0.0.1", 1), dst=("10.0.0.2", 2), transport="udp", when=0.0)
    assert fits is not None and len(fits) <= MAX_PACKET


@pytest.mark.parametrize("bad", [b"", b"HEP2\x00\x06", b"HEP3\x00\x07\x00", b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x03"])
def test_decode_refuses_what_is_not_one_hep3_packet(bad):
    with pytest.raises(ValueError):
        decode(bad)


def relay_events(start_wall: float = 1764000000.0) -> list[Event]:
    return [
        Event(0.0, "start", detail={"wall_clock": start_wall}),
        Event(0.1, "flow-open", flow="u1", transport="udp", peer="10.0.0.7:5060",
              detail={"device_side": "10.0.0.1:5060", "pbx_side": "10.0.0.1:40000"}),
        Event(1.0, "received", flow="u1", direction="to-device", transport="udp", peer="10.0.0.20:5060",
              call_id="c1@x", method="INVITE", raw=INVITE),
        Event(1.0, "fault", flow="u1", direction="to-device", transport="udp", call_id="c1@x", method="INVITE",
              summary="INVITE", detail={"action": "drop", "rule": "drop-invite"}),
        Event(1.0, "dropped", flow="u1", direction="to-device", transport="udp", call_id="c1@x", method="INVITE",
              summary="INVITE", detail={"rules": ["drop-invite"]}),
        Event(2.5, "sent", flow="u1", direction="to-device", transport="udp", peer="10.0.0.7:5060",
              call_id="c1@x", method="INVITE", raw=INVITE),
        Event(3.0, "warning", detail={"message": "not a packet"}),
    ]


def test_each_message_on_its_hop_and_each_decision_as_a_log_line_of_its_call():
    encoder = HepEncoder(capture_id=7)
    packets = [decode(p) for e in relay_events() for p in encoder.packets(e)]
    assert [p.protocol for p in packets] == [SIP, LOG, SIP]  # the drop the fault line told is not said twice
    arrived, log, left = packets
    assert (arrived.src, arrived.dst) == (("10.0.0.20", 5060), ("10.0.0.1", 40000))  # PBX -> faultlab's PBX side
    assert (left.src, left.dst) == (("10.0.0.1", 5060), ("10.0.0.7", 5060))  # faultlab's device side -> device
    assert arrived.payload == left.payload == INVITE
    assert arrived.when == pytest.approx(1764000001.0) and left.when == pytest.approx(1764000002.5)
    assert log.correlation == arrived.correlation == "c1@x" and log.capture_id == 7
    assert log.payload == b"faultlab: INVITE dropped [drop-invite] (PBX -> device)"
    assert (log.src, log.dst) == (arrived.src, arrived.dst)  # the hop the message arrived on


def test_without_a_start_event_times_count_from_when_the_encoder_saw_the_first_event():
    encoder = HepEncoder(wall_clock=lambda: 1000.0)
    events = relay_events()[1:3]
    packets = [decode(p) for e in events for p in encoder.packets(e)]
    assert packets[0].when == pytest.approx(1000.0 - 0.1 + 1.0)


def test_a_lab_actor_message_uses_the_actors_own_address():
    encoder = HepEncoder()
    note = Event(0.0, "pbx", source="pbx", detail={"action": "start", "listen": ["udp:10.0.0.20:5060"]})
    msg = Event(1.0, "sent", source="pbx", transport="udp", peer="10.0.0.30:5070", call_id="c2", raw=INVITE)
    (packet,) = [decode(p) for e in (note, msg) for p in encoder.packets(e)]
    assert (packet.src, packet.dst) == (("10.0.0.20", 5060), ("10.0.0.30", 5070))


@pytest.mark.parametrize("text, target", [
    ("udp:127.0.0.1:9060", HepTarget("udp", "127.0.0.1", 9060)),
    ("TCP:homer.example:9061", HepTarget("tcp", "homer.example", 9061)),
    ("udp:[::1]:9060", HepTarget("udp", "::1", 9060)),
])
def test_parse_target(text, target):
    assert parse_target(text) == target
    assert parse_target(str(target)) == target


@pytest.mark.parametrize("text, says", [
    ("127.0.0.1:9060", "udp:HOST:PORT or tcp:HOST:PORT"),
    ("sctp:127.0.0.1:9060", "udp:HOST:PORT or tcp:HOST:PORT"),
    ("udp:127.0.0.1", "udp:HOST:PORT or tcp:HOST:PORT"),
    ("udp:127.0.0.1:x", "port must be a number"),
    ("udp:127.0.0.1:0", "port must be a number from 1 to 65535"),
    ("udp:::1:9060", "IPv6 host in brackets"),
])
def test_parse_target_says_what_to_write(text, says):
    with pytest.raises(ValueError, match="HEP collector") as raised:
        parse_target(text)
    assert says in str(raised.value)


def test_a_long_running_proxy_forgets_each_flow_when_it_closes():
    encoder = HepEncoder()
    for n in range(3000):
        flow = f"u{n}"
        for e in (Event(0.0, "flow-open", flow=flow, transport="udp", peer=f"10.0.{n // 250}.{n % 250}:5060",
                        detail={"device_side": "10.0.0.1:5060", "pbx_side": f"10.0.0.1:{20000 + n}"}),
                  Event(0.1, "received", flow=flow, direction="to-pbx", transport="udp",
                        peer=f"10.0.{n // 250}.{n % 250}:5060", call_id=f"c{n}", raw=INVITE),
                  Event(0.2, "flow-close", flow=flow, transport="udp")):
            encoder.packets(e)
    assert not encoder._book.flows and not encoder._arrived
    assert encoder._book.faultlab == {"10.0.0.1:5060"}


@pytest.mark.parametrize("args, says", [
    (["proxy", "--listen", "udp:127.0.0.1:0", "--upstream", "udp:127.0.0.1:5070", "--hep", "127.0.0.1:9060"],
     "--hep: HEP collector '127.0.0.1:9060': write udp:HOST:PORT or tcp:HOST:PORT"),
    (["pbx", "--listen", "udp:127.0.0.1:0", "--hep-password", "x"], "--hep-id and --hep-password go with --hep"),
    (["lab", "run", "-s", "S01", "--hep", "udp:127.0.0.1:99999"], "port must be a number from 1 to 65535"),
    (["trace", "hep", "README.md", "--to", "udp:127.0.0.1:9060"], "not a faultlab trace event"),
])
def test_the_cli_says_what_is_wrong_with_the_hep_options(args, says):
    from typer.testing import CliRunner

    from faultlab.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())


def test_text_from_the_wire_that_is_not_utf8_never_stops_a_packet():
    encoder = HepEncoder()
    odd = "c\udcbd@x"  # a Call-ID whose byte 0xbd was not UTF-8, kept as a surrogate
    events = [Event(1.0, "received", flow="u1", direction="to-pbx", transport="udp", peer="10.0.0.7:5060",
                    call_id=odd, raw=INVITE),
              Event(1.0, "fault", flow="u1", direction="to-pbx", transport="udp", call_id=odd,
                    summary="INVITE \udcbd", detail={"action": "delay", "rule": "r\udcff", "delay": 1})]
    packets = [decode(p) for e in events for p in encoder.packets(e)]
    assert [p.protocol for p in packets] == [SIP, LOG]
    assert all(p.correlation for p in packets)
