"""One actor's RTP audio stream in a lab call, on trio: a UDP socket, a sender and a receiver.

:class:`MediaStream` is what a softphone's audio engine does on the wire, with no audio: it binds a UDP port (the
one its SDP offers or answers, :mod:`faultlab.lab.rtp`), receives RTP from the far end (any source, as RFC 3550
allows; anything that is not RTP version 2 is ignored), and once :meth:`MediaStream.start` is given the far end's
address it sends one PCMU packet every 20 ms (160 bytes of silence; sequence number, timestamp and SSRC per
RFC 3550) until :meth:`MediaStream.stop`. The socket is trio's, so on the in-memory network
(:mod:`faultlab.net.memnet`) the packets go straight from actor to actor, and under
``trio.testing.MockClock`` 20 ms packets cost no real time. Sending is paced on absolute times (``t_start + n *
20 ms``), so a late wake-up does not drift the stream.

The timeline (kind ``"media"``, the actor's ``source`` and ``call_id``; ``detail["action"]``):

* ``started`` -- the first packet goes to ``peer``;
* ``first-received`` -- the first RTP packet arrived (``peer`` = its source);
* ``stopped`` -- the sender stopped (``sent``: packets sent, ``received``: packets received so far,
  ``last_sent``: timeline time of the last packet).

No event per packet: a 30-second call is 1,500 packets each way. :attr:`MediaStream.last_received` (trio time)
and the ``on_packet`` callback are how an actor hears that media still flows (the reference device's
media-silence timeout).

Usage::

    stream = MediaStream(timeline, "caller", host="127.0.0.1", call_id=call_id)
    await stream.open(nursery)                 # stream.port: the port the SDP names
    stream.start((peer_host, peer_port))       # after the answer
    ...
    stream.stop()                              # hang-up: no more packets
    stream.close()
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import trio

from faultlab.addr import format_hostport
from faultlab.lab.rtp import PAYLOAD, PTIME, parse_rtp, rtp_packet
from faultlab.lab.timeline import Timeline

__all__ = ["MediaStream"]

RECEIVE_SIZE = 2048  # an RTP datagram larger than this is cut (and not one of ours)


class MediaStream:
    """One RTP stream of one call (see the module docstring)."""

    def __init__(self, timeline: Timeline | None, source: str, *, host: str, call_id: str | None = None,
                 on_packet: Callable[[float], None] | None = None, ptime: float = PTIME) -> None:
        self.timeline = timeline
        self.source = source
        self.host = host
        self.call_id = call_id
        self.on_packet = on_packet  # called with trio's time for each RTP packet received
        self.ptime = ptime
        self.ssrc = secrets.randbits(32)
        self.sent = 0
        self.received = 0
        self.send_errors = 0
        self.last_received: float | None = None  # trio time of the last RTP packet received
        self.heard_from: str | None = None  # HOST:PORT of the first RTP packet received
        self.peer: tuple[str, int] | None = None
        self._sock: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None
        self._sending = trio.CancelScope()
        self._reading = trio.CancelScope()
        self._last_sent: float | None = None
        self._started = False
        self._stopped = False

    @property
    def port(self) -> int:
        assert self._sock is not None, "call open() first"
        return self._sock.getsockname()[1]

    @property
    def sending(self) -> bool:
        return self._started and not self._stopped

    async def open(self, nursery: trio.Nursery) -> None:
        """Bind a UDP port on ``host`` and receive on it from now on (in ``nursery``)."""
        family = trio.socket.AF_INET6 if ":" in self.host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        try:
            await sock.bind((self.host, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._nursery = nursery
        nursery.start_soon(self._receive)

    def start(self, peer: tuple[str, int]) -> None:
        """Send RTP to ``peer`` every ``ptime`` from now until :meth:`stop` (once; later calls do nothing)."""
        if self._started or self._stopped or self._sock is None or self._nursery is None:
            return
        self._started = True
        self.peer = peer
        self._emit("started", f"RTP to {format_hostport(*peer)}")
        self._nursery.start_soon(self._send, peer)

    def stop(self) -> None:
        """No more packets (the call is over for this actor); the receiver keeps counting until :meth:`close`."""
        if self._stopped:
            return
        self._stopped = True
        self._sending.cancel()
        if self._started:
            last = None if self._last_sent is None or self.timeline is None else self._last_sent - self.timeline.t0
            self._emit("stopped", f"RTP stopped: {self.sent} sent, {self.received} received", sent=self.sent,
                       received=self.received, last_sent=None if last is None else round(last, 6))

    def close(self) -> None:
        self.stop()
        self._reading.cancel()
        if self._sock is not None:
            self._sock.close()

    async def _send(self, peer: tuple[str, int]) -> None:
        assert self._sock is not None
        sequence = secrets.randbits(16)  # random initial sequence number and timestamp (RFC 3550 §5.1)
        timestamp = secrets.randbits(32)
        at = trio.current_time()
        with self._sending:
            while True:
                try:
                    await self._sock.sendto(rtp_packet(sequence, timestamp, self.ssrc, marker=self.sent == 0), peer)
                    self.sent += 1
                    self._last_sent = trio.current_time()
                except OSError:  # unreachable for now (ICMP, no route): a real phone keeps its clock going
                    self.send_errors += 1
                sequence += 1
                timestamp += PAYLOAD
                at += self.ptime
                await trio.sleep_until(at)

    async def _receive(self) -> None:
        assert self._sock is not None
        with self._reading:
            while True:
                try:
                    data, source = await self._sock.recvfrom(RECEIVE_SIZE)
                except OSError:  # an error a datagram left behind (ICMP unreachable): not the socket's end
                    continue
                except (trio.ClosedResourceError, ValueError):
                    return
                if parse_rtp(data) is None:
                    continue
                now = trio.current_time()
                self.received += 1
                self.last_received = now
                if self.received == 1:
                    self.heard_from = format_hostport(*source[:2])
                    self._emit("first-received", f"RTP from {self.heard_from}", peer_address=self.heard_from)
                if self.on_packet is not None:
                    self.on_packet(now)

    def _emit(self, action: str, summary: str, **detail) -> None:
        if self.timeline is None:
            return
        peer = format_hostport(*self.peer) if self.peer is not None else None
        self.timeline.emit("media", source=self.source, call_id=self.call_id, transport="udp", peer=peer,
                           summary=summary, detail={"action": action, **detail})
