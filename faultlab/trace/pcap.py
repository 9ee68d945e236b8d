"""A trace's SIP messages as a pcap file, for Wireshark.

:func:`wire_messages` works out, from the events alone, which bytes crossed which wire between which addresses
(pure: no scapy); :func:`write_pcap` turns them into Ethernet/IP/UDP or Ethernet/IP/TCP packets with scapy.

**What becomes a packet.** Every ``received``, ``sent`` and ``responded`` event of faultlab's relay (source
``"proxy"``) that carries raw bytes, on both hops: the device <-> faultlab hop and the faultlab <-> PBX hop, so a
message faultlab relayed appears twice (as it arrived, as it left: a delay shows as the time between them, a drop
as a message that arrived and never left, a duplicate as two copies leaving). ``responded`` (an answer faultlab
made up) is on the wire like ``sent``. Lab actors' ``received``/``sent`` events (``pbx``, ``caller``...) with raw
bytes and a peer go in too when faultlab did not record the same message: a message whose peer is one of
faultlab's addresses is already there from the relay's side, and a message between two actors is taken once,
from the actor whose own address the trace knows (the PBX's ``listen`` addresses in its ``start`` note). Events
without raw bytes are skipped.

**Addresses.** Real ones where the trace knows them: each ``flow-open`` event names the device (``peer``) and
faultlab's two local addresses (``detail.device_side``, ``detail.pbx_side``); the ``peer`` of each message event
is the other end of its hop. Where an address is unknown (a trace without its ``flow-open``, an actor that does
not record its own address, a wildcard ``0.0.0.0``, a host name), a fixed documentation address stands in (RFC
5737 ``192.0.2.0/24``, RFC 3849 ``2001:db8::/32`` when the other end is IPv6), one per role: faultlab
``.1`` (port 5060, 5061 for TLS; upstream side port 40000), device ``.10`` (5060), PBX ``.20`` (5060), other
actors ``.30`` (5060).

**Transports.** UDP as IP/UDP; TCP and TLS as IP/TCP carrying the SIP text (faultlab sees TLS decrypted), with
sequence numbers per direction of each connection that advance by the payload length and acknowledge what the
other direction sent, so Wireshark follows the stream without "previous segment not captured". There are no
handshake packets: one packet per event. Wireshark decodes SIP on port 5060 by its port table and SIP on other
ports by its SIP-over-UDP and SIP-over-TCP heuristics (on by default). Port 5061 is the one exception: Wireshark
maps it to TLS and would show the decrypted SIP as broken TLS records, so a TLS hop's port 5061 is written as 5060
(every other port is the real one) and Wireshark decodes it as SIP without "Decode As".

**Times.** Each packet's time is its event's ``t`` plus the wall-clock time of the trace's start (the relay's
``start`` event records it), so Wireshark shows when it happened; without a ``start`` event, times count from
the epoch (1970-01-01 00:00:00 + t).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from faultlab.addr import format_hostport, parse_endpoint

from ._event import Event

__all__ = ["WireMessage", "wire_messages", "write_pcap"]

RELAY = "proxy"
MESSAGE_KINDS = ("received", "sent", "responded")
SIPS_PORT = 5061
SIP_PORT = 5060

_PLACEHOLDER_HOST = {"faultlab": 1, "device": 10, "pbx": 20, "actor": 30}


@dataclass(frozen=True, slots=True)
class WireMessage:
    """Bytes that crossed one wire: ``src`` -> ``dst`` (``(host, port)``), at trace time ``t``."""

    t: float
    transport: str  # "udp" | "tcp" | "tls"
    src: tuple[str, int]
    dst: tuple[str, int]
    data: bytes
    event: Event


def _placeholder(role: str, transport: str, v6: bool, port: int | None = None) -> tuple[str, int]:
    n = _PLACEHOLDER_HOST[role]
    host = f"2001:db8::{n:x}" if v6 else f"192.0.2.{n}"
    if port is None:
        port = SIPS_PORT if transport == "tls" else SIP_PORT
    return host, port


def _is_v6(addr: tuple[str, int] | None) -> bool:
    return addr is not None and ":" in addr[0]


def _parse_hostport(text: str | None) -> tuple[str, int] | None:
    """``"127.0.0.1:5060"`` / ``"[::1]:5060"`` -> ``(host, port)``; None when it is not an IP address and port."""
    if not text:
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        return None
    return (host, port) if 0 <= port <= 65535 else None


def _usable(addr: tuple[str, int] | None) -> bool:
    return addr is not None and not ipaddress.ip_address(addr[0]).is_unspecified


class _AddressBook:
    """What the trace says about who is where."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.flows: dict[str, tuple[tuple[str, int] | None, ...]] = {}  # flow -> (device, device_side, pbx_side)
        self.listen: dict[str, tuple[str, int]] = {}  # transport -> faultlab's listening address
        self.faultlab: set[str] = set()  # "host:port" of faultlab's own sockets
        self.actors: dict[str, dict[str, tuple[str, int]]] = {}  # source -> transport -> its own address
        self.actor_addresses: set[str] = set()
        self.start_wall: float = 0.0
        for e in events:
            self.add(e)

    def add(self, e: Event) -> None:
        """Learn what ``e`` says about addresses (a trace read as it grows adds its events one by one)."""
        if e.source == RELAY:
            if e.kind == "start" and isinstance(e.detail.get("wall_clock"), (int, float)):
                self.start_wall = float(e.detail["wall_clock"]) - e.t
            elif e.kind == "listening" and e.transport and e.peer:
                self.faultlab.add(e.peer)
                addr = _parse_hostport(e.peer)
                if addr is not None:
                    self.listen.setdefault(e.transport, addr)
            elif e.kind == "flow-open" and e.flow:
                dev_side, pbx_side = e.detail.get("device_side"), e.detail.get("pbx_side")
                self.faultlab.update(a for a in (dev_side, pbx_side) if a)
                self.flows[e.flow] = (_parse_hostport(e.peer), _parse_hostport(dev_side),
                                      _parse_hostport(pbx_side))
        elif isinstance(e.detail.get("listen"), list):
            for spec in e.detail["listen"]:
                try:
                    ep = parse_endpoint(str(spec))
                except ValueError:
                    continue
                if ep.port and _parse_hostport(format_hostport(ep.host, ep.port)):
                    by_transport = self.actors.setdefault(e.source, {})
                    if ep.transport not in by_transport:
                        by_transport[ep.transport] = (ep.host, ep.port)
                        self.actor_addresses.add(format_hostport(ep.host, ep.port))


def _relay_message(e: Event, book: _AddressBook) -> WireMessage | None:
    transport = e.transport or "udp"
    if e.direction not in ("to-pbx", "to-device"):
        return None
    _, dev_side, pbx_side = book.flows.get(e.flow or "", (None, None, None))
    if dev_side is None:
        dev_side = book.listen.get(transport)
    peer = _parse_hostport(e.peer)
    v6 = _is_v6(peer) or _is_v6(dev_side) or _is_v6(pbx_side)
    towards_pbx = e.direction == "to-pbx"
    # Which of faultlab's sockets this hop used, and who is on the other end.
    on_device_hop = towards_pbx if e.kind == "received" else not towards_pbx
    if on_device_hop:
        ours = dev_side if _usable(dev_side) else _placeholder("faultlab", transport, v6, dev_side and dev_side[1])
        peer = peer if _usable(peer) else _placeholder("device", transport, v6)
    else:
        ours = pbx_side if _usable(pbx_side) else _placeholder("faultlab", transport, v6,
                                                               pbx_side[1] if pbx_side else 40000)
        peer = peer if _usable(peer) else _placeholder("pbx", transport, v6)
    src, dst = (peer, ours) if e.kind == "received" else (ours, peer)
    return WireMessage(e.t, transport, src, dst, e.raw or b"", e)


def _actor_message(e: Event, book: _AddressBook) -> WireMessage | None:
    if e.kind not in ("received", "sent") or not e.peer or e.peer in book.faultlab:
        return None  # faultlab's own record of this hop has it
    transport = e.transport or "udp"
    peer = _parse_hostport(e.peer)
    own = book.actors.get(e.source, {}).get(transport)
    if own is None and e.peer in book.actor_addresses:
        return None  # the actor at the other end recorded it, with both addresses
    v6 = _is_v6(peer) or _is_v6(own)
    if not _usable(own):
        role = "pbx" if e.source == "pbx" else "device" if e.source.startswith("device") else "actor"
        own = _placeholder(role, transport, v6, own and own[1])
    if not _usable(peer):
        peer = _placeholder("actor", transport, v6, peer and peer[1])
    src, dst = (peer, own) if e.kind == "received" else (own, peer)
    return WireMessage(e.t, transport, src, dst, e.raw or b"", e)


def wire_messages(events: Iterable[Event]) -> list[WireMessage]:
    """The SIP messages of a trace as they crossed each wire, in time order (see the module docstring)."""
    events = list(events)
    book = _AddressBook(events)
    out: list[WireMessage] = []
    for e in events:
        if e.raw is None or e.kind not in MESSAGE_KINDS:
            continue
        msg = _relay_message(e, book) if e.source == RELAY else _actor_message(e, book)
        if msg is not None:
            out.append(msg)
    out.sort(key=lambda m: m.t)  # stable: same-time messages keep the trace's order
    return out


def start_wall_clock(events: Iterable[Event]) -> float:
    """The wall-clock time of the trace's t = 0 (0.0 when the trace does not record it)."""
    return _AddressBook(list(events)).start_wall


def _mac(host: str) -> str:
    b = zlib.crc32(host.encode()).to_bytes(4, "big")
    return "02:00:" + ":".join(f"{x:02x}" for x in b)


def _ip_pair(src: str, dst: str) -> tuple[str, str, bool]:
    """Both ends in one family: an IPv4 end talking to an IPv6 end is written IPv4-mapped."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == b.version:
        return src, dst, a.version == 6
    mapped = [str(ipaddress.IPv6Address(f"::ffff:{x}")) if x.version == 4 else str(x) for x in (a, b)]
    return mapped[0], mapped[1], True


def write_pcap(events: Iterable[Event], path: Path | str) -> int:
    """Write the trace's SIP messages to ``path`` as a pcap (Ethernet link type); return the packet count."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import PcapWriter

    events = list(events)
    base = start_wall_clock(events)
    next_seq: dict[tuple, int] = {}  # (src, dst) of a stream direction -> its next sequence number
    count = 0
    writer = PcapWriter(str(path), linktype=1, sync=False)
    try:
        for msg in wire_messages(events):
            (shost, sport), (dhost, dport) = msg.src, msg.dst
            if msg.transport == "tls":
                sport = SIP_PORT if sport == SIPS_PORT else sport
                dport = SIP_PORT if dport == SIPS_PORT else dport
            shost, dhost, v6 = _ip_pair(shost, dhost)
            ip = IPv6(src=shost, dst=dhost) if v6 else IP(src=shost, dst=dhost)
            if msg.transport == "udp":
                l4 = UDP(sport=sport, dport=dport)
            else:
                key, back = ((shost, sport), (dhost, dport)), ((dhost, dport), (shost, sport))
                seq = next_seq.setdefault(key, _isn(key))
                ack = next_seq.setdefault(back, _isn(back))
                next_seq[key] = (seq + len(msg.data)) % 2**32
                l4 = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags="PA", window=65535)
            pkt = Ether(src=_mac(shost), dst=_mac(dhost)) / ip / l4 / Raw(load=msg.data)
            pkt.time = base + msg.t
            writer.write(pkt)
            count += 1
    finally:
        writer.close()
    return count


def _isn(key: tuple) -> int:
    """A fixed initial sequence number per stream direction (reproducible output)."""
    return zlib.crc32(repr(key).encode()) & 0x7FFFFFFF
