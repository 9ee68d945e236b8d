"""A trace's SIP messages and faultlab's decisions as HEP v3 packets (the Homer Encapsulation Protocol), for Homer,
heplify-server, sngrep and any other HEP collector. Pure: bytes in, bytes out; :mod:`faultlab.net.hep` sends them.

**Packet.** ``"HEP3"``, the packet's length (16 bits, header included), then chunks, each a vendor id (0,
generic), a type and a length (16 bits each, the 6 header bytes included) before its data, all big-endian. The
chunks, in the order Kamailio's siptrace writes them: IP family (2: IPv4, 10: IPv6), IP protocol (17 UDP, 6 TCP,
22 for TLS as Kamailio marks it), source and destination address, source and destination port, the time in
seconds and microseconds, the payload's protocol (1 SIP, 100 a log line), the capture agent's id (``--hep-id``),
the correlation id (the Call-ID), the password (``--hep-password``, when given), and the payload.

**What becomes a packet.** Each SIP message of the trace, on each wire it crossed, exactly as :mod:`.pcap` picks
them (:func:`.pcap.wire_messages`: both hops of faultlab's relay with their real addresses, TLS as the SIP it
carries, lab actors' messages faultlab did not relay), with the message's bytes as the payload. Each decision of
faultlab's (a fault, a drop, a hold and its release, an answer faultlab made up, a message abandoned, a stalled
connection) becomes a log packet, type 100, whose text is the console's line for it (``faultlab: INVITE dropped
[drop-invite]``) and whose correlation id is the Call-ID of the message it was about, so that Homer shows it beside
that call. A log packet carries the addresses of the hop the message arrived on.

**Time.** The trace's time of the event plus the wall-clock time of the trace's start (its ``start`` event);
without one, the wall-clock time the encoder saw its first event, less that event's ``t``.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from faultlab.addr import format_hostport

from ._event import Event
from ._sinks import ConsolePrinter
from .pcap import MESSAGE_KINDS, RELAY, _AddressBook, _actor_message, _relay_message

__all__ = ["DECISION_KINDS", "HEP_KINDS", "MAX_PACKET", "HepEncoder", "HepPacket", "HepTarget", "LOG", "SIP",
           "decode", "encode", "parse_target"]

SIP = 1  # payload protocol types
LOG = 100
IP_PROTO = {"udp": 17, "tcp": 6, "tls": 22}  # 22: what Kamailio's siptrace writes for TLS
MAX_PACKET = 65507  # the largest UDP payload; HEP's own length field stops at 65535

DECISION_KINDS = frozenset({"fault", "dropped", "held", "released", "responded", "abandoned", "stalled"})
# every kind the encoder reads from a relay: messages, decisions, and what tells it addresses and the start time
# (a lab actor says its own addresses in notes of its own kind: give the encoder all its events)
HEP_KINDS = frozenset(MESSAGE_KINDS) | DECISION_KINDS | {"start", "listening", "flow-open", "flow-close"}
FLOWS = 4096  # flows whose hops are remembered at once (flows that never say they closed: all forgotten at once)

_CHUNK = struct.Struct("!HHH")


@dataclass(frozen=True)
class HepTarget:
    """Where HEP goes: ``transport`` ``udp`` or ``tcp``, ``host``, ``port``."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def parse_target(text: str) -> HepTarget:
    """``udp:HOST:PORT`` or ``tcp:HOST:PORT`` (an IPv6 host in brackets); ValueError with what to write."""
    hint = "write udp:HOST:PORT or tcp:HOST:PORT, e.g. udp:127.0.0.1:9060 (an IPv6 host in brackets: udp:[::1]:9060)"
    transport, sep, rest = text.strip().partition(":")
    if not sep or transport.lower() not in ("udp", "tcp"):
        raise ValueError(f"HEP collector {text!r}: {hint}")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        port = tail[1:] if bracket and tail.startswith(":") else ""
    else:
        host, _, port = rest.rpartition(":")
    if not host or ":" in host and not rest.startswith("["):
        raise ValueError(f"HEP collector {text!r}: {hint}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"HEP collector {text!r}: the port must be a number from 1 to 65535; {hint}")
    return HepTarget(transport.lower(), host, int(port))


def _chunk(kind: int, data: bytes) -> bytes:
    return _CHUNK.pack(0, kind, 6 + len(data)) + data


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:  # a name: the pcap view's placeholders make this rare; the documentation address stands in
        return ipaddress.ip_address("192.0.2.1")


def hop_chunks(src: tuple[str, int], dst: tuple[str, int], transport: str) -> bytes:
    """The chunks that say which wire a packet crossed (IP family, protocol, addresses, ports): the same for every
    message of a hop, so :class:`HepEncoder` keeps them per hop."""
    a, b = _address(src[0]), _address(dst[0])
    if a.version != b.version:  # one hop is IPv4, the other IPv6: both as IPv6 (IPv4-mapped)
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    v6 = a.version == 6
    return b"".join([
        _chunk(1, bytes([10 if v6 else 2])),
        _chunk(2, bytes([IP_PROTO.get(transport, 17)])),
        _chunk(5 if v6 else 3, a.packed),
        _chunk(6 if v6 else 4, b.packed),
        _chunk(7, struct.pack("!H", src[1] & 0xFFFF)),
        _chunk(8, struct.pack("!H", dst[1] & 0xFFFF)),
    ])


def agent_chunks(protocol: int, capture_id: int) -> bytes:
    """The payload's protocol and the capture agent's id."""
    return _chunk(11, bytes([protocol])) + _chunk(12, struct.pack("!I", capture_id & 0xFFFFFFFF))


_TIME = struct.Struct("!HHHIHHHI")  # chunks 9 (seconds) and 10 (microseconds)
_SIZE = struct.Struct("!H")


def assemble(hop: bytes, agent: bytes, when: float, correlation: str | None, password: bytes, payload: bytes
             ) -> bytes | None:
    """A HEP v3 packet from its parts (:func:`hop_chunks`, :func:`agent_chunks`, the password chunk or b"");
    None when it would be larger than :data:`MAX_PACKET` (a collector could not take it)."""
    seconds, micros = divmod(max(round(when * 1_000_000), 0), 1_000_000)
    stamp = _TIME.pack(0, 9, 10, seconds & 0xFFFFFFFF, 0, 10, 10, micros)
    corr = b""
    if correlation:
        text = correlation.encode("utf-8", "surrogateescape")[:1024]
        corr = _CHUNK.pack(0, 17, 6 + len(text)) + text
    size = 6 + len(hop) + len(stamp) + len(agent) + len(corr) + len(password) + 6 + len(payload)
    if size > MAX_PACKET:
        return None
    return b"".join((b"HEP3", _SIZE.pack(size), hop, stamp, agent, corr, password,
                     _CHUNK.pack(0, 15, 6 + len(payload)), payload))


def password_chunk(password: str | None) -> bytes:
    return _chunk(14, password.encode("utf-8")) if password else b""


def encode(payload: bytes, *, src: tuple[str, int], dst: tuple[str, int], transport: str, when: float,
           protocol: int = SIP, capture_id: int = 1, correlation: str | None = None,
           password: str | None = None) -> bytes | None:
    """One HEP v3 packet; None when it would be larger than :data:`MAX_PACKET` (a collector could not take it)."""
    return assemble(hop_chunks(src, dst, transport), agent_chunks(protocol, capture_id), when, correlation,
                    password_chunk(password), payload)


@dataclass(frozen=True)
class HepPacket:
    """A decoded HEP v3 packet (:func:`decode`): what a collector would store."""

    family: int
    ip_proto: int
    src: tuple[str, int]
    dst: tuple[str, int]
    when: float
    protocol: int
    capture_id: int | None
    correlation: str | None
    password: str | None
    payload: bytes


def decode(data: bytes) -> HepPacket:
    """The packet at the start of ``data``; ValueError when it is not one well-formed HEP v3 packet."""
    if len(data) < 6 or data[:4] != b"HEP3":
        raise ValueError("not a HEP v3 packet (it does not start with 'HEP3')")
    size = struct.unpack_from("!H", data, 4)[0]
    if size != len(data):
        raise ValueError(f"HEP v3 length {size} but {len(data)} bytes")
    chunks: dict[int, bytes] = {}
    at = 6
    while at < size:
        if at + 6 > size:
            raise ValueError(f"a chunk header cut off at byte {at}")
        vendor, kind, length = _CHUNK.unpack_from(data, at)
        if length < 6 or at + length > size:
            raise ValueError(f"chunk type {kind} at byte {at}: length {length} does not fit")
        if vendor == 0:
            chunks[kind] = data[at + 6:at + length]
        at += length
    v6 = chunks.get(1) == bytes([10])
    src = str(ipaddress.ip_address(chunks[5 if v6 else 3]))
    dst = str(ipaddress.ip_address(chunks[6 if v6 else 4]))
    number = lambda k: int.from_bytes(chunks[k], "big") if k in chunks else None  # noqa: E731

    def text(k: int) -> str | None:
        return chunks[k].decode("utf-8", "surrogateescape") if k in chunks else None

    return HepPacket(number(1) or 0, number(2) or 0, (src, number(7) or 0), (dst, number(8) or 0),
                     (number(9) or 0) + (number(10) or 0) / 1e6, number(11) or 0, number(12), text(17), text(14),
                     chunks.get(15, b""))


class HepEncoder:
    """Turns a trace's events, one by one as they come, into HEP packets (:meth:`packets`). It learns addresses
    and the start time from the events before (``start``, ``listening``, ``flow-open``), so give it every event of
    :data:`HEP_KINDS` in order.

    A relayed message costs little: the chunks that name its wire are made once per hop (flow, direction, event
    kind, peer) and kept until the flow closes; only the time, the Call-ID and the bytes are new per packet."""

    def __init__(self, *, capture_id: int = 1, password: str | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.capture_id = capture_id
        self.password = password
        self._sip = agent_chunks(SIP, capture_id)
        self._log_agent = agent_chunks(LOG, capture_id)
        self._password = password_chunk(password)
        self._book = _AddressBook()
        self._describe = ConsolePrinter(color=False).describe
        self._wall_clock = wall_clock
        self._start: float | None = None  # wall-clock time of t = 0
        self.too_large = 0  # packets left out: larger than a HEP packet can be
        # per flow: (direction, kind, peer, transport) -> (src, dst, hop chunks); forgotten when the flow closes
        self._hops: dict[str | None, dict[tuple, tuple]] = {}
        self._arrived: dict[tuple, tuple[tuple[str, int], tuple[str, int]]] = {}  # (flow, direction) -> last hop in

    def packets(self, e: Event) -> list[bytes]:
        """The HEP packets ``e`` makes (none for most events); a packet too large for HEP is left out, as
        :attr:`too_large` counts."""
        kind = e.kind
        if self._start is None:  # until a start event says when t = 0 was (_learn)
            self._start = self._wall_clock() - e.t
        if e.raw is not None and kind in MESSAGE_KINDS:
            packet = self._message(e)
            if packet is None:
                return []
            if kind == "responded":  # a message faultlab made up: a decision too
                return [packet, *self._decision(e)]
            return [packet]
        if kind in DECISION_KINDS:
            return self._decision(e)
        self._learn(e)
        return []

    def _learn(self, e: Event) -> None:
        """What an event that is neither a message nor a decision says about addresses and the start."""
        self._book.add(e)
        if e.source != RELAY:
            return
        if e.kind == "start" and self._book.start_wall:
            self._start = self._book.start_wall
        elif e.kind in ("flow-open", "flow-close"):
            self._hops.pop(e.flow, None)
            for direction in ("to-pbx", "to-device"):
                self._arrived.pop((e.flow, direction), None)
            if e.kind == "flow-close":  # a long-running proxy: what it knows stays bounded
                _, _, pbx_side = self._book.flows.pop(e.flow or "", (None, None, None))
                if pbx_side is not None:  # that flow's own socket (the device side may be a shared listener)
                    self._book.faultlab.discard(format_hostport(*pbx_side))

    def _message(self, e: Event) -> bytes | None:
        hops = self._hops.get(e.flow)
        if hops is None:
            if len(self._hops) >= FLOWS:  # flows that never said they closed (an actor's events: flow None)
                self._hops.clear()
                self._arrived.clear()
            hops = self._hops[e.flow] = {}
        key = (e.direction, e.kind, e.peer, e.transport, e.source)
        hop = hops.get(key)
        if hop is None:
            msg = _relay_message(e, self._book) if e.source == RELAY else _actor_message(e, self._book)
            if msg is None:
                return None
            hop = hops[key] = (msg.src, msg.dst, hop_chunks(msg.src, msg.dst, msg.transport))
            if len(hops) > 64:  # one flow, many peers (an actor's): keep the newest
                del hops[next(iter(hops))]
        if e.kind == "received" and e.source == RELAY:
            self._arrived[(e.flow, e.direction)] = (hop[0], hop[1])
        packet = assemble(hop[2], self._sip, self._start + e.t, e.call_id, self._password, e.raw or b"")
        if packet is None:
            self.too_large += 1
        return packet

    def _decision(self, e: Event) -> list[bytes]:
        said = self._describe(e)
        if said is None:  # a drop the fault line before it already told
            return []
        where = {"to-pbx": " (device -> PBX)", "to-device": " (PBX -> device)"}.get(e.direction or "", "")
        hop = self._arrived.get((e.flow, e.direction))  # a decision follows the arrival of its message
        if hop is None and e.direction:
            msg = _relay_message(Event(e.t, "received", flow=e.flow, direction=e.direction, transport=e.transport,
                                       peer=e.peer), self._book)
            hop = (msg.src, msg.dst) if msg is not None else None
        src, dst = hop or (("192.0.2.1", 5060), ("192.0.2.1", 5060))
        text = f"faultlab: {said[0]}{where}".encode("utf-8", "backslashreplace")  # total: wire text may be odd
        packet = assemble(hop_chunks(src, dst, e.transport or "udp"), self._log_agent, self._start + e.t,
                          e.call_id, self._password, text)
        if packet is None:
            self.too_large += 1
            return []
        return [packet]
