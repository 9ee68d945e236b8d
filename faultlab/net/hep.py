"""Sending HEP to a collector (Homer, heplify-server, sngrep) without ever holding up the relay.

:class:`HepSender` is a trace sink: each event becomes its HEP packets (:mod:`faultlab.trace.hep`), written at once
on a non-blocking socket, in the event's own call, so it works the same on the real clock and under a virtual one
(a lab run) and never waits:

- **UDP**: one datagram per packet on a connected socket. A full send buffer, or a collector that refused the
  last datagram (nothing listens: the kernel reports it on the next send), drops the packet; after a refusal the
  messages of the next ``PROBE`` seconds are dropped without being encoded (attached to a trace, :meth:`attach`:
  without even being described, the trace only counts them), then one tries again.
- **TCP**: packets back to back on one connection (the HEP length delimits them), connected in the background.
  Until it is up, and while the collector reads slower than faultlab writes, packets wait in a buffer of
  ``buffer`` bytes; a packet that does not fit is dropped. A connection that fails is tried again after
  ``retry`` seconds; a packet cut off by the failure is dropped (the collector cannot have read it whole).

Every dropped packet is counted (:attr:`HepSender.dropped`, by reason) and said in a warning at most once per
``warn_every`` seconds. :meth:`HepSender.close` writes what is left for up to ``linger`` seconds, then reports.
"""

from __future__ import annotations

import collections
import errno
import select
import socket
import time
from collections.abc import Callable

from faultlab.net.pending import keep_pushed
from faultlab.trace import Event, Trace
from faultlab.trace.pcap import MESSAGE_KINDS
from faultlab.trace.hep import DECISION_KINDS, HEP_KINDS, HepEncoder, HepTarget

__all__ = ["BUFFER", "HepSender", "keep_sending", "resolve"]

BUFFER = 4 * 1024 * 1024  # bytes of packets a TCP sender holds while its collector is slow or not yet connected
RETRY = 5.0  # seconds before connecting again after a failure
WARN_EVERY = 60.0  # seconds between two warnings about dropped packets
PROBE = 1.0  # UDP: seconds a refusing collector is given up on before a packet tries it again
REFUSED = "collector refused (nothing listens there)"
LINGER = 2.0  # seconds close() gives what is left to reach a TCP collector


def resolve(target: HepTarget) -> tuple[int, tuple]:
    """(address family, socket address) of ``target``; ValueError naming the host when it does not resolve."""
    kind = socket.SOCK_DGRAM if target.transport == "udp" else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=kind)
    except OSError as exc:
        raise ValueError(f"HEP collector {target}: cannot resolve {target.host!r} ({exc})") from None
    family, _, _, _, address = infos[0]
    return family, address


class HepSender:
    """A trace sink sending HEP to ``target`` (module docstring); ``warn(text)`` says what went wrong."""

    kinds = HEP_KINDS  # the events it reads (Trace.add_sink(..., kinds=sender.kinds))

    def __init__(self, target: HepTarget, *, capture_id: int = 1, password: str | None = None,
                 warn: Callable[[str], None] = lambda text: None, buffer: int = BUFFER, retry: float = RETRY,
                 warn_every: float = WARN_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.encoder = HepEncoder(capture_id=capture_id, password=password)
        self._family, self._address = resolve(target)
        self._warn, self._clock = warn, clock
        self._limit, self._retry, self._warn_every = buffer, retry, warn_every
        self.sent = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._sock: socket.socket | None = None
        self._connected = False
        self._next_try = 0.0
        self._queue: collections.deque[bytes] = collections.deque()  # TCP: packets not yet written whole
        self._queued = 0  # their bytes
        self._head_sent = 0  # bytes of the first one already written
        self._warned_at: float | None = None
        self._unsaid = 0  # drops since the last warning
        self._refused_until: float | None = None  # UDP: the collector refused; until then, drop unencoded
        self._closed = False
        self.on_pending: Callable[[], None] | None = None  # keep_sending(): told when packets wait in the queue
        self._trace: Trace | None = None  # attach(): the trace that then builds no event for us while refused
        if target.transport == "udp":
            self._sock = socket.socket(self._family, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            try:
                self._sock.connect(self._address)
            except OSError as exc:
                self._sock.close()
                raise ValueError(f"HEP collector {target}: {exc.strerror or exc}") from None

    def attach(self, trace: Trace, *, every_kind: bool = False) -> None:
        """Become a sink of ``trace`` (of :attr:`kinds`, or ``every_kind``: a lab actor's trace, whose actors say
        their addresses in notes of their own kinds), closed with it. While the collector refuses, the trace
        then builds no message event for this sink at all; it counts them (:meth:`Trace.withheld`)."""
        trace.add_sink(self, self.close, kinds=None if every_kind else self.kinds)
        self._trace = trace

    def __call__(self, event: Event) -> None:
        if self._trace is not None:
            held = self._trace.withheld(self)
            if held:
                self._drop(REFUSED, held)
        if self._refused_until is not None and (event.raw is not None or event.kind in DECISION_KINDS):
            if self._clock() < self._refused_until:  # nothing listens there: not worth making the packet
                self._drop(REFUSED)
                return
            self._refused_until = None  # try again with this one
        for packet in self.encoder.packets(event):
            self.send(packet)
        if self.encoder.too_large:
            self._drop("larger than a HEP packet can be", self.encoder.too_large)
            self.encoder.too_large = 0

    def new_run(self) -> None:
        """The events that follow are another run's (a lab's next run, another trace): learn addresses and the
        start time afresh."""
        self.encoder = HepEncoder(capture_id=self.encoder.capture_id, password=self.encoder.password)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued packet is written (TCP; UDP queues nothing): for a
        replay, which may wait, unlike the relay. Whether the queue is empty."""
        deadline = time.monotonic() + timeout
        while self._queue:
            self._pump()
            left = deadline - time.monotonic()
            if left <= 0 or self._sock is None:
                break
            if self._queue:
                select.select([], [self._sock], [], min(0.05, left))
        return not self._queue

    def send(self, packet: bytes) -> None:
        """Write ``packet`` now, or (TCP) queue it; drop it when it cannot be either."""
        if self.target.transport == "udp":
            self._send_datagram(packet)
            return
        if self._queued + len(packet) > self._limit:
            self._drop("collector slow or unreachable: buffer full")
        else:
            self._queue.append(packet)
            self._queued += len(packet)
        self._pump()
        if self._queue and self.on_pending is not None:
            self.on_pending()

    @property
    def pending(self) -> bool:
        """Packets wait to be written (TCP: connecting, or the collector reads slower than faultlab writes)."""
        return bool(self._queue)

    def pump(self) -> None:
        """Write what the connection takes now (connecting first when due); never waits."""
        if self._queue and not self._closed:
            self._pump()

    def _send_datagram(self, packet: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.send(packet)
        except BlockingIOError:
            self._drop("send buffer full")
        except ConnectionRefusedError:
            self._drop(REFUSED)
            self._refused_until = self._clock() + PROBE
            if self._trace is not None:
                self._trace.pause(self, MESSAGE_KINDS + tuple(DECISION_KINDS), PROBE, self._clock)
        except OSError as exc:
            self._drop(exc.strerror or type(exc).__name__)
        else:
            self.sent += 1

    # -- TCP --------------------------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Connect when due, finish a connect in progress, write what the socket takes."""
        if self._sock is None:
            if self._clock() < self._next_try:
                return
            self._sock = socket.socket(self._family, socket.SOCK_STREAM)
            self._sock.setblocking(False)
            code = self._sock.connect_ex(self._address)
            if code not in (0, errno.EINPROGRESS):
                self._failed(code)
                return
        if not self._connected:
            _, writable, _ = select.select([], [self._sock], [], 0)
            if not writable:
                return
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._failed(code)
                return
            self._connected = True
        while self._queue:
            head = self._queue[0]
            try:
                n = self._sock.send(memoryview(head)[self._head_sent:])
            except BlockingIOError:
                return
            except OSError as exc:
                self._failed(exc.errno or 0)
                return
            self._head_sent += n
            if self._head_sent == len(head):
                self._queue.popleft()
                self._queued -= len(head)
                self._head_sent = 0
                self.sent += 1

    def _failed(self, code: int) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._connected = None, False
        self._next_try = self._clock() + self._retry
        if self._head_sent:  # cut off mid-packet: the collector cannot use its start
            self._queued -= len(self._queue.popleft())
            self._head_sent = 0
            self._drop("connection lost mid-packet")
        self._say(f"HEP collector {self.target}: {errno.errorcode.get(code, code)} "
                  f"({'connection failed' if code else 'closed'}); trying again every {self._retry:g} s, "
                  f"{len(self._queue)} packets wait")

    # -- drops and warnings -----------------------------------------------------------------------------------------

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n
        self._unsaid += n
        if self._say(f"HEP to {self.target}: {self._unsaid} packets dropped ({reason}); the relay goes on"):
            self._unsaid = 0

    def _say(self, text: str) -> bool:
        """Warn ``text`` unless a warning was given less than ``warn_every`` seconds ago; whether it was."""
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self._warn_every:
            return False
        self._warned_at = now
        try:
            self._warn(text)
        except Exception:  # noqa: BLE001 - a warning must not become a failure of the sink
            pass
        return True

    def close(self, linger: float = LINGER) -> None:
        """Write what is queued for up to ``linger`` seconds (TCP), close, and say what was dropped, if any (once:
        closing again does nothing)."""
        if self._closed:
            return
        self._closed = True
        self.drain(linger)
        if self._trace is not None:
            held = self._trace.withheld(self)
            if held:
                self.dropped[REFUSED] += held
        if self._queue:
            self.dropped["not written when faultlab stopped"] += len(self._queue)
            self._queue.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        total = sum(self.dropped.values())
        if total:
            reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
            self._warned_at = None
            self._say(f"HEP to {self.target}: {self.sent} packets sent, {total} dropped ({reasons})")


async def keep_sending(sender: HepSender, every: float = 0.1) -> None:
    """Run beside a TCP :class:`HepSender`, until cancelled: packets that wait (the connection still being made,
    a slow collector) are written within ``every`` seconds even when no further message comes to push them.
    Sleeps only while something waits."""
    await keep_pushed(sender, lambda: every if sender.pending else None, sender.pump)
