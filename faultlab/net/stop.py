"""How the proxy stops (SIGINT, SIGTERM): gracefully, losing nothing it has taken in.

1. **No new connections.** Every TCP/TLS listener stops accepting (:meth:`Stopper.accepting`).
2. **The drain.** Connections and UDP flows keep relaying both ways, so what is in flight is forwarded
   and answered: requests sent and not yet answered with a final response, and messages kept back by a
   delay or a hold (:meth:`faultlab.relay.Relay.in_flight`). The drain ends when nothing is in flight,
   or after ``drain`` seconds.
3. **The close.** Each connection writes what is due, records what still waits (a hold, a delay past
   the drain) as ``abandoned``, and closes both sides in order: FIN, and TLS close_notify
   (:func:`faultlab.net.pair.close_in_order`). Then the rest of the proxy (UDP, the API) is cancelled;
   a UDP datagram still delayed or held then is recorded ``abandoned`` too.

The stopper of a relay is :func:`stopper_of`: the listeners, the connections and the proxy's signal
handler share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

# During the drain, how often the proxy looks whether anything is still in flight.
POLL = 0.05
# After the drain: how long connections may take to write what is due and close in order.
CLOSE_TIME = 3.0


class Stopper:
    """The stop state shared by a relay's listeners and connections."""

    def __init__(self) -> None:
        self.stopping = False  # no new connections
        self.closing = trio.Event()  # the drain is over: every connection closes now
        self.connections = 0
        self._accepting: set[trio.CancelScope] = set()
        self._pairs: set[Any] = set()  # connection pairs to close when the drain is over
        self._opening: set[trio.CancelScope] = set()  # connections not yet relaying: cancelled then
        self._no_connections: trio.Event | None = None

    @contextmanager
    def accepting(self) -> Iterator[None]:
        """Run an accept loop inside: it is cancelled when the stop begins."""
        scope = trio.CancelScope()
        if self.stopping:
            scope.cancel()
        self._accepting.add(scope)
        try:
            with scope:
                yield
        finally:
            self._accepting.discard(scope)

    @contextmanager
    def until_closing(self) -> Iterator[trio.CancelScope]:
        """Run a connection's opening (connect-time faults, the TLS handshake) inside: it is cancelled
        when the drain is over."""
        scope = trio.CancelScope()
        if self.closing.is_set():
            scope.cancel()
        self._opening.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._opening.discard(scope)

    @contextmanager
    def closes(self, pair: Any) -> Iterator[None]:
        """While inside, ``pair.finish("stop")`` is called when the drain is over (the pair looks at
        :attr:`closing` itself when it starts)."""
        self._pairs.add(pair)
        try:
            yield
        finally:
            self._pairs.discard(pair)

    @contextmanager
    def connection(self) -> Iterator[None]:
        """Count one connection while it is open."""
        self.connections += 1
        try:
            yield
        finally:
            self.connections -= 1
            if self.connections == 0 and self._no_connections is not None:
                self._no_connections.set()

    async def stop(self, relay: Any, drain: float) -> None:
        """Steps 1-3 of the module docstring; returns when every connection is closed (or after
        ``CLOSE_TIME``): the caller then cancels the rest."""
        self.stopping = True
        for scope in list(self._accepting):
            scope.cancel()
        with trio.move_on_after(drain):
            while relay.in_flight():
                await trio.sleep(POLL)
        self.closing.set()
        for pair in list(self._pairs):
            pair.finish("stop")
        for scope in list(self._opening):
            scope.cancel()
        if self.connections:
            self._no_connections = trio.Event()
            with trio.move_on_after(CLOSE_TIME):
                await self._no_connections.wait()


def stopper_of(relay: Any) -> Stopper:
    """The relay's :class:`Stopper` (made on first use)."""
    stopper = relay.__dict__.get("_stopper")
    if stopper is None:
        stopper = relay.__dict__["_stopper"] = Stopper()
    return stopper
