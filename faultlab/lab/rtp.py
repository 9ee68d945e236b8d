"""SDP offer/answer and RTP packets for the lab's calls, sans-IO (no sockets, no trio).

* :func:`sdp_body` -- the SDP (RFC 4566) of a softphone with one PCMU audio stream (RFC 3264 offer or answer):
  ``c=`` the actor's address, ``m=audio PORT RTP/AVP 0`` on a port it really listens on, ``a=rtpmap:0 PCMU/8000``,
  ``a=ptime:20`` and a direction (``sendrecv``; ``inactive`` for a call that carries no media);
* :func:`parse_sdp` -- the audio stream of a peer's SDP: where to send (``c=`` at session or media level, the
  ``m=audio`` port), whether it sends and receives, whether it offers PCMU. Total: any bytes give a
  :class:`Media` or ``None``, never an exception;
* :func:`rtp_packet` / :func:`parse_rtp` -- the RTP fixed header (RFC 3550 §5.1: V=2, no padding, no extension, no
  CSRC, marker on the first packet, payload type 0 = PCMU, sequence number, timestamp, SSRC) and a 20 ms PCMU
  payload (160 bytes at 8000 Hz; 0xFF is mu-law silence).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["Media", "PTIME", "PCMU", "PAYLOAD", "RtpHeader", "SILENCE", "parse_rtp", "parse_sdp", "rtp_packet",
           "sdp_body"]

PCMU = 0  # RTP/AVP static payload type (RFC 3551 §6)
CLOCK = 8000  # PCMU's RTP clock rate
PTIME = 0.020  # seconds of audio per packet
PAYLOAD = int(CLOCK * PTIME)  # 160 bytes: one mu-law byte per sample
SILENCE = b"\xff" * PAYLOAD  # mu-law silence
HEADER = struct.Struct("!BBHII")
MAX_SDP = 16384  # an SDP body longer than this is not read
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def sdp_body(*, user: str, host: str, port: int, session: str = "faultlab", direction: str = "sendrecv",
             version: int = 1) -> bytes:
    """A one-stream PCMU offer or answer at ``host``:``port`` (IPv4 or IPv6 ``host``)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    ipv = "IP6" if ":" in host else "IP4"
    return (f"v=0\r\no={user} 1 {version} IN {ipv} {host}\r\ns={session}\r\nc=IN {ipv} {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {PCMU}\r\na=rtpmap:{PCMU} PCMU/{CLOCK}\r\na=ptime:{int(PTIME * 1000)}\r\n"
            f"a={direction}\r\n").encode()


@dataclass(frozen=True)
class Media:
    """A peer's audio stream as its SDP describes it."""

    host: str  # where to send RTP ("" when the SDP gives no usable address)
    port: int  # 0: the stream is refused (RFC 3264 §6)
    direction: str  # sendrecv | sendonly | recvonly | inactive
    pcmu: bool  # PCMU (payload type 0) is among the formats

    @property
    def address(self) -> tuple[str, int] | None:
        """Where RTP for this peer goes, or ``None`` when it must not be sent (refused, on hold, no PCMU)."""
        if not self.host or self.port == 0 or not self.pcmu or self.direction in ("sendonly", "inactive"):
            return None
        return self.host, self.port

    @property
    def sends(self) -> bool:
        """The peer says it will send RTP (so silence from it means something)."""
        return bool(self.host) and self.port != 0 and self.pcmu and self.direction in ("sendrecv", "sendonly")


def _connection(value: str) -> str:
    """The address of a ``c=`` value (``IN IP4 192.0.2.1``), or "" (unusable, or 0.0.0.0: on hold)."""
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        return ""
    host = parts[2].split("/", 1)[0]  # a multicast TTL/number suffix
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    return "" if address.is_unspecified else str(address)


def parse_sdp(body: bytes | str | None) -> Media | None:
    """The first ``m=audio`` stream of an SDP body, or ``None`` (no body, not SDP, no audio stream)."""
    if not body:
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    if len(text) > MAX_SDP:
        return None
    session_host, session_direction = "", "sendrecv"
    media: dict | None = None
    other = False  # inside another stream's lines (video, ...)
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        key, value = line[0], line[2:].strip()
        if key == "m":
            if media is not None:
                break  # only the first audio stream
            parts = value.split()
            other = True
            if len(parts) >= 4 and parts[0] == "audio" and parts[1].split("/", 1)[0].isdigit():
                port = int(parts[1].split("/", 1)[0])
                media = {"port": port if port <= 65535 else 0, "formats": parts[3:], "host": "",
                         "direction": session_direction}
                other = False
            continue
        if other:
            continue
        if key == "c":
            if media is None:
                session_host = _connection(value)
            else:
                media["host"] = _connection(value)
        elif key == "a" and value in DIRECTIONS:
            if media is None:
                session_direction = value
            else:
                media["direction"] = value
    if media is None:
        return None
    return Media(host=media["host"] or session_host, port=media["port"], direction=media["direction"],
                 pcmu=str(PCMU) in media["formats"])


@dataclass(frozen=True)
class RtpHeader:
    """The fixed header of an RTP packet (RFC 3550 §5.1) and its payload's length."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload_length: int


def rtp_packet(sequence: int, timestamp: int, ssrc: int, *, marker: bool = False,
               payload: bytes = SILENCE) -> bytes:
    """One RTP packet: version 2, payload type PCMU, 16-bit sequence and 32-bit timestamp (both wrap)."""
    return HEADER.pack(0x80, (0x80 if marker else 0) | PCMU, sequence & 0xFFFF, timestamp & 0xFFFFFFFF,
                       ssrc & 0xFFFFFFFF) + payload


def parse_rtp(data: bytes) -> RtpHeader | None:
    """The header of an RTP version 2 packet (CSRCs, extension and padding skipped), or ``None`` if it is not
    one (too short, another version, a length that does not add up)."""
    if len(data) < HEADER.size:
        return None
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    offset = HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if first & 0x20:  # padding: the last byte counts it
        end -= data[-1]
    if offset > end:
        return None
    return RtpHeader(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, end - offset)
