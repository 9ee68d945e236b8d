"""SDP offer/answer and RTP packets (faultlab.lab.rtp), and one RTP stream on the memory network (faultlab.lab.media)."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from faultlab.lab.media import MediaStream
from faultlab.lab.rtp import PAYLOAD, Media, parse_rtp, parse_sdp, rtp_packet, sdp_body
from faultlab.lab.timeline import Timeline
from faultlab.net import memnet


def test_an_offer_names_its_address_port_and_pcmu():
    body = sdp_body(user="bob", host="10.1.0.2", port=40002)
    assert b"c=IN IP4 10.1.0.2\r\n" in body and b"m=audio 40002 RTP/AVP 0\r\n" in body
    assert parse_sdp(body) == Media("10.1.0.2", 40002, "sendrecv", True)
    assert parse_sdp(body).address == ("10.1.0.2", 40002) and parse_sdp(body).sends
    six = parse_sdp(sdp_body(user="bob", host="::1", port=5004))
    assert six.address == ("::1", 5004)
    with pytest.raises(ValueError):
        sdp_body(user="bob", host="::1", port=5004, direction="sideways")


@pytest.mark.parametrize(("sdp", "address", "sends"), [
    (sdp_body(user="a", host="10.0.0.1", port=9, direction="inactive"), None, False),
    (sdp_body(user="a", host="10.0.0.1", port=4000, direction="recvonly"), ("10.0.0.1", 4000), False),
    (sdp_body(user="a", host="10.0.0.1", port=4000, direction="sendonly"), None, True),
    (sdp_body(user="a", host="10.0.0.1", port=0), None, False),  # refused stream
    (b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n", None, False),  # old-style hold
    (b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 8 101\r\n", None, False),  # no PCMU
    # media-level c= and direction win over the session's
    (b"v=0\r\nc=IN IP4 10.0.0.1\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.9\r\na=sendrecv\r\n",
     ("10.0.0.9", 4000), True),
    # the first audio stream, after a video stream whose own c= and direction are not the audio's
    (b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 10.0.0.7\r\na=inactive\r\n"
     b"m=audio 4000 RTP/AVP 0\r\n", ("10.0.0.1", 4000), True),
])
def test_what_an_answer_allows(sdp, address, sends):
    media = parse_sdp(sdp)
    if media is None:
        assert address is None and not sends
        return
    assert media.address == address and media.sends is sends


@pytest.mark.parametrize("junk", [None, b"", b"hello", b"m=audio", b"m=audio x RTP/AVP 0", "m=audio 99999 RTP/AVP 0",
                                  b"\xff\xfe\x00m=audio 1 RTP/AVP 0\r\nc=IN IP4 999.1.1.1", b"c=IN\r\n" * 10000,
                                  b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 host.example\r\n"])
def test_hostile_sdp_never_raises(junk):
    media = parse_sdp(junk)
    assert media is None or media.address is None


def test_rtp_header_round_trip_and_wrap():
    packet = rtp_packet(0xFFFF, 0xFFFFFFFF + 161, 0xDEADBEEF, marker=True)
    assert len(packet) == 12 + PAYLOAD == 172 and packet[0] == 0x80
    header = parse_rtp(packet)
    assert (header.payload_type, header.marker, header.sequence, header.timestamp, header.ssrc) == (
        0, True, 0xFFFF, 160, 0xDEADBEEF)
    assert header.payload_length == 160
    assert parse_rtp(rtp_packet(1, 2, 3)).marker is False


@pytest.mark.parametrize("data", [b"", b"\x80" * 11, b"\x40" + b"\x00" * 20,  # version 1
                                  b"\x8f" + b"\x00" * 20,  # 15 CSRCs announced, not there
                                  b"\x90" + b"\x00" * 11 + b"\x00\x00\x00\x09",  # extension longer than the packet
                                  b"\xa0" + b"\x00" * 11 + b"\xff",  # padding longer than the packet
                                  b"INVITE sip:a@b SIP/2.0\r\n"])
def test_what_is_not_rtp(data):
    assert parse_rtp(data) is None


def test_extension_csrc_and_padding_are_skipped():
    header = struct.pack("!BBHII", 0x80 | 0x10 | 0x20 | 1, 0, 1, 2, 3) + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!"
    assert parse_rtp(header + b"x" * 10 + b"\x00\x00\x03").payload_length == 10


async def test_a_stream_sends_20_ms_packets_on_the_memory_network_until_stopped(autojump_clock):
    memnet.install()
    timeline = Timeline()
    heard: list[float] = []
    async with trio.open_nursery() as nursery:
        a = MediaStream(timeline, "a", host="127.0.0.1", call_id="c1")
        b = MediaStream(timeline, "b", host="127.0.0.1", call_id="c1", on_packet=heard.append)
        await a.open(nursery)
        await b.open(nursery)
        start = trio.current_time()
        a.start(("127.0.0.1", b.port))
        await trio.sleep(1.0 - 1e-9)
        a.stop()
        await trio.sleep(1.0)
        a.close()
        b.close()
    assert a.sent == b.received == 50  # one every 20 ms, for 1 s
    assert [round(t - start, 6) for t in heard[:3]] == [0.0, 0.02, 0.04]
    assert b.last_received == heard[-1] and round(heard[-1] - start, 6) == 0.98
    kinds = [(e.source, e.detail["action"]) for e in timeline.events]
    assert kinds == [("a", "started"), ("b", "first-received"), ("a", "stopped")]
    assert timeline.events[-1].detail["sent"] == 50


async def test_packets_carry_sequence_timestamp_and_ssrc(autojump_clock):
    memnet.install()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        sink = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sink.bind(("127.0.0.1", 0))
        stream = MediaStream(None, "a", host="127.0.0.1")
        await stream.open(nursery)
        stream.start(sink.getsockname())
        for _ in range(3):
            got.append((await sink.recvfrom(2048))[0])
        stream.close()
        sink.close()
    headers = [parse_rtp(p) for p in got]
    assert [h.marker for h in headers] == [True, False, False]
    assert [(h.sequence - headers[0].sequence) & 0xFFFF for h in headers] == [0, 1, 2]
    assert [(h.timestamp - headers[0].timestamp) & 0xFFFFFFFF for h in headers] == [0, 160, 320]
    assert {h.ssrc for h in headers} == {stream.ssrc} and {h.payload_length for h in headers} == {160}


def test_the_ladder_notes_where_rtp_started_and_stopped():
    from faultlab.trace import Event
    from faultlab.trace.ladder import ladder_rows

    events = [Event(2.0, "media", source="caller", call_id="c1", summary="RTP to 127.0.0.1:4002",
                    detail={"action": "started"}),
              Event(2.0, "media", source="device:alice", call_id="c1", summary="RTP from 127.0.0.1:4000",
                    detail={"action": "first-received"}),
              Event(7.0, "media", source="caller", call_id="c1", summary="RTP stopped: 250 sent, 250 received",
                    detail={"action": "stopped"})]
    rows = ladder_rows(events, "c1")
    assert [(r["t"], r["from"], r["note"]) for r in rows] == [
        (2.0, "caller", "RTP to 127.0.0.1:4002"), (7.0, "caller", "RTP stopped: 250 sent, 250 received")]
