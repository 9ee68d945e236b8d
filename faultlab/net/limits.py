"""Bounded resources: the descriptor budget, the limits derived from it, and an accept loop that
neither ends nor floods the console when descriptors run out.

At start the proxy raises its soft descriptor limit (``RLIMIT_NOFILE``) to the hard one
(:func:`raise_descriptor_limit`). Unless given, the number of UDP flows and of TCP/TLS connections
follows from that limit (:func:`resolve`): after :data:`RESERVED` descriptors for listeners, the
trace and the control API, half of the rest is for UDP flows (one socket each; two in transparent
mode) and half for stream connections (two sockets each: the device's and the PBX's). So both can be
full at once and the proxy still has descriptors left.

:func:`serve_bounded` replaces :func:`trio.serve_listeners`: at ``max_connections`` it closes each
new connection at once after accepting it (as Kamailio does at ``tcp_max_connections``), with a trace
event; when ``accept`` fails for want of descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOMEM``,
``ENOBUFS``) it waits :data:`ACCEPT_RETRY` seconds and tries again, as trio's ``serve_listeners`` does,
but says so in at most one warning line a second (:class:`Throttle`) and without a traceback.
"""

from __future__ import annotations

import errno
import os
import resource
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from faultlab.addr import format_hostport
from faultlab.relay import Relay
from faultlab.sip import MAX_MESSAGE_SIZE

#: Descriptors kept for everything but flows and connections: listeners, the trace file, the control API
#: and its clients, the CA files, the lab's own sockets.
RESERVED = 64

#: Errors of accept(2) that mean the system is out of something, not that the listener is broken
#: (trio's ``ACCEPT_CAPACITY_ERRNOS``).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

#: Seconds the accept loop waits after such an error (trio's ``SLEEP_TIME``).
ACCEPT_RETRY = 0.1

#: At most one warning of a kind per this many seconds.
WARN_INTERVAL = 1.0

#: Descriptors assumed when the limit is infinite.
_UNLIMITED = 1 << 20


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an infinite hard limit above the kernel's nr_open
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (_UNLIMITED, hard))
            except (ValueError, OSError):
                pass
    return descriptor_limit()


def descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE``: how many descriptors this process may have open."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _UNLIMITED if soft == resource.RLIM_INFINITY else soft


def sockets_per_flow(transparent: bool) -> int:
    """Sockets one UDP flow holds: its upstream socket, and in transparent mode its device-side one too."""
    return 2 if transparent else 1


def default_max_flows(descriptors: int, *, transparent: bool = False) -> int:
    """Half of the descriptors after :data:`RESERVED`, one per flow (two in transparent mode)."""
    return max(1, (descriptors - RESERVED) // 2 // sockets_per_flow(transparent))


def default_max_connections(descriptors: int) -> int:
    """The other half of the descriptors after :data:`RESERVED`, two per connection."""
    return max(1, (descriptors - RESERVED) // 2 // 2)


@dataclass(frozen=True)
class Limits:
    """The bounds a running proxy keeps."""

    descriptors: int
    max_flows: int
    max_connections: int
    max_message_size: int

    def descriptors_needed(self, transparent: bool) -> int:
        return RESERVED + self.max_flows * sockets_per_flow(transparent) + self.max_connections * 2

    def as_detail(self) -> dict:
        return {"descriptors": self.descriptors, "max_flows": self.max_flows,
                "max_connections": self.max_connections, "max_message_size": self.max_message_size}


def resolve(config, descriptors: int | None = None) -> Limits:
    """The limits of ``config`` (a :class:`faultlab.proxy.ProxyConfig`): each one given, or derived from the
    descriptor limit in force."""
    descriptors = descriptor_limit() if descriptors is None else descriptors
    flows = getattr(config, "max_flows", None)
    connections = getattr(config, "max_connections", None)
    return Limits(
        descriptors=descriptors,
        max_flows=flows or default_max_flows(descriptors, transparent=getattr(config, "transparent", False)),
        max_connections=connections or default_max_connections(descriptors),
        max_message_size=getattr(config, "max_message_size", None) or MAX_MESSAGE_SIZE,
    )


class Throttle:
    """Warnings of one kind, at most one per ``interval`` seconds of the trio clock; a warning that follows
    suppressed ones says how many there were."""

    def __init__(self, relay: Relay, interval: float = WARN_INTERVAL) -> None:
        self.relay = relay
        self.interval = interval
        self._next = -float("inf")
        self._suppressed = 0

    def warn(self, message: str, **fields) -> bool:
        """Emit ``message`` as a warning unless one was emitted less than ``interval`` ago; True if emitted."""
        now = trio.current_time()
        if now < self._next:
            self._suppressed += 1
            return False
        if self._suppressed:
            message += f" ({self._suppressed} more like it in the last {self.interval:g} s not shown)"
            self._suppressed = 0
        self._next = now + self.interval
        self.relay.warn(message, **fields)
        return True


def make_room(flows, evict, full: Throttle) -> None:
    """At ``--max-flows`` (``flows.full``), close the UDP flow idle longest through ``evict(reason)`` and warn
    through ``full`` (at most once a second): the one policy of the UDP relay and the transparent UDP relay."""
    if flows.full:
        evict(f"max-flows: {flows.limit} flows open, this one idle longest")
        full.warn(f"{flows.limit} UDP flows open (--max-flows): each new device closes the flow idle longest",
                  transport="udp")


class Slots:
    """Stream connections open on one proxy, shared by its TCP and TLS listeners."""

    def __init__(self, relay: Relay, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.full = Throttle(relay)  # the "at --max-connections" warning
        self.starved = Throttle(relay)  # the accept-error warning


_slots: weakref.WeakKeyDictionary[Relay, Slots] = weakref.WeakKeyDictionary()


def slots_of(relay: Relay, limit: int) -> Slots:
    """The connection slots of ``relay``'s proxy (one set for all its stream listeners)."""
    slots = _slots.get(relay)
    if slots is None:
        slots = _slots[relay] = Slots(relay, limit)
    return slots


def _peer_of(stream: trio.abc.Stream) -> str | None:
    try:
        return format_hostport(*stream.socket.getpeername()[:2])  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None


async def serve_bounded(relay: Relay, transport: str, handler: Callable[[trio.SocketStream], Awaitable[object]],
                        listeners: Sequence[trio.SocketListener], slots: Slots, nursery: trio.Nursery) -> None:
    """Accept on every listener and run ``handler`` for each connection in ``nursery``, at most
    ``slots.limit`` at once over all the proxy's stream listeners; never returns."""

    async def run_handler(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # e.g. a connection reset while it waited in the backlog: getpeername() fails. One connection's
            # error ends that connection, never the listener.
            relay.warn(f"{transport} connection ended by an error: {exc.__cause__ or exc}", transport=transport,
                       peer=_peer_of(stream))
        finally:
            slots.used -= 1
            await trio.aclose_forcefully(stream)

    async def serve_one(listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    _starved(relay, transport, slots, exc)
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                if slots.used >= slots.limit:
                    await _refuse(relay, transport, slots, stream)
                    continue
                slots.used += 1
                nursery.start_soon(run_handler, stream)

    async with trio.open_nursery() as accepting:
        for listener in listeners:
            accepting.start_soon(serve_one, listener)


def _starved(relay: Relay, transport: str, slots: Slots, exc: OSError) -> None:
    name = errno.errorcode.get(exc.errno or 0, "error")
    reason = f"{exc.strerror or os.strerror(exc.errno or 0)} ({name})"
    if exc.errno in ACCEPT_CAPACITY_ERRNOS:
        advice = ("raise the descriptor limit (ulimit -n, LimitNOFILE=) or lower --max-connections/--max-flows"
                  if exc.errno in (errno.EMFILE, errno.ENFILE) else "the system is short of memory")
    else:
        advice = "the listener keeps trying"
    slots.starved.warn(f"cannot accept a {transport} connection: {reason}; retrying every {ACCEPT_RETRY:g} s; "
                       f"{advice}", transport=transport)


async def _refuse(relay: Relay, transport: str, slots: Slots, stream: trio.SocketStream) -> None:
    """A connection over ``--max-connections``: closed at once, with a trace event."""
    peer = _peer_of(stream)
    await trio.aclose_forcefully(stream)
    relay.emit("refused", transport=transport, peer=peer,
               detail={"reason": "max-connections", "limit": slots.limit})
    slots.full.warn(f"{slots.limit} TCP/TLS connections open (--max-connections): closing new ones at once",
                    transport=transport)
