"""An in-memory network for one trio run: UDP and TCP without the kernel.

The lab's actors and faultlab's relay open sockets with trio (``trio.socket.socket``,
``trio.open_tcp_stream``, ``trio.open_tcp_listeners``) and the relay's UDP path with
:class:`faultlab.net.udp.Datagrams`. :func:`install` swaps all of them, for the current
``trio.run`` only, for sockets of a :class:`MemoryNetwork`: the same code then runs on
memory, and under :class:`trio.testing.MockClock` a 30-second call takes milliseconds
and no socket, port or packet leaves the process. TLS works unchanged
(:class:`trio.SSLStream` over a memory TCP stream).

The network is one host that owns every address: a socket may bind any IPv4 or IPv6
address; an unbound socket that sends or connects takes the destination's address as
its own (as Linux does for a local destination) and an ephemeral port.

* **UDP**: delivered at once to the socket bound to the destination (or the wildcard
  address on that port); a datagram to nobody is counted in :attr:`MemoryNetwork.undelivered`
  and gone, as on a real network; a *connected* sender's next receive then raises
  ``ConnectionRefusedError`` (Linux's answer to ICMP port unreachable). A connected UDP
  socket receives only from its peer.
* **TCP**: ``connect`` to a listener succeeds at once (``ConnectionRefusedError`` when
  nothing listens); bytes sent are readable by the peer at once; ``shutdown(SHUT_WR)``
  and ``close`` are an EOF for the peer, and ``close`` with ``SO_LINGER`` ``(1, 0)`` is a
  reset: the peer reads what had arrived, then its receive raises ``ConnectionResetError``.
  A send to a peer that has closed is taken (the peer's RST comes back): the next send or
  receive fails with ``ConnectionResetError``.
* Not modelled: IPv4-mapped addresses on an IPv6 wildcard socket (the families are
  separate networks here).

**Latency**: ``MemoryNetwork(delay=0.02)`` carries every datagram, every TCP segment (its bytes, its EOF or
reset) and every TCP handshake ``delay`` seconds one way (a round trip of ``2 * delay`` between any two sockets),
in order, by a system task of the run: under the mock clock the call then shows real round trips. The default,
0, delivers at once. Lab runs take it from the scenario (``[network] rtt``, :mod:`faultlab.lab.scenario`).

* **An address that leaves** (:meth:`MemoryNetwork.remove_address`, a phone that leaves Wi-Fi): every socket
  bound to it is cut off. Its own sends fail (``ENETUNREACH``); what its peers send to it is lost (as to an
  address nobody has); closing it sends nothing (no FIN), so the other end of a TCP connection learns nothing.

Nothing here drops: link impairment is faultlab's (the ``[link]`` of a profile).
Host names other than ``localhost`` do not resolve (``socket.gaierror``), so a name
never leaks to a real resolver.
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import itertools
import math
import socket as stdlib_socket
from collections.abc import Callable

import trio

from faultlab.net.memsock import EPHEMERAL, Addr, MemorySocket, RawUdp, _Endpoint, _err, _wildcard

__all__ = ["MemoryNetwork", "MemorySocket", "RawUdp", "current", "install"]

_current: trio.lowlevel.RunVar[MemoryNetwork | None] = trio.lowlevel.RunVar("faultlab_memnet", default=None)


class MemoryNetwork:
    """Bound sockets by ``(kind, family, ip, port)``; see the module docstring."""

    def __init__(self, delay: float = 0.0) -> None:
        if not (math.isfinite(delay) and 0 <= delay <= 60):
            raise ValueError(f"delay must be 0 to 60 seconds one way, not {delay!r}")
        self._bound: dict[tuple[int, int, str, int], _Endpoint] = {}
        self._ports = itertools.cycle(EPHEMERAL)
        self._fds = itertools.count(1000)
        self.undelivered = 0  # UDP datagrams sent to an address nobody had bound
        self.connections = 0  # TCP connections accepted
        self.delay = delay  # seconds one way (see the module docstring)
        self._wire: list[tuple[float, int, Callable[[], None]]] = []  # (due, order, delivery), a heap
        self._order = itertools.count()
        self._carrier: trio.lowlevel.ParkingLot | None = None  # where the carrying task waits; None: not started

    # -- latency ------------------------------------------------------------------------------

    def later(self, deliver: Callable[[], None]) -> None:
        """Run ``deliver`` (a delivery: synchronous, cannot fail) ``delay`` seconds from now, after every
        delivery scheduled before it; at once when the network has no delay."""
        if self.delay <= 0:
            deliver()
            return
        if self._carrier is None:
            self._carrier = trio.lowlevel.ParkingLot()
            trio.lowlevel.spawn_system_task(self._carry, name="faultlab.memnet.wire")
        entry = (trio.current_time() + self.delay, next(self._order), deliver)
        heapq.heappush(self._wire, entry)
        if self._wire[0] is entry:  # due before what the carrier waits for (or it waits for nothing): wake it
            self._carrier.unpark_all()

    async def _carry(self) -> None:
        assert self._carrier is not None
        while True:
            if not self._wire:
                await self._carrier.park()
                continue
            due = self._wire[0][0]
            if due > trio.current_time():
                with trio.move_on_at(due):
                    await self._carrier.park()
                continue
            while self._wire and self._wire[0][0] <= due:
                heapq.heappop(self._wire)[2]()

    # -- binding ------------------------------------------------------------------------------

    def _bind(self, end: _Endpoint, addr: Addr) -> None:
        if end.local is not None:
            raise _err(errno.EINVAL)
        ip, port = addr
        if port == 0:
            for _ in EPHEMERAL:
                candidate = next(self._ports)
                if not self._in_use(end, ip, candidate):
                    port = candidate
                    break
            else:
                raise _err(errno.EADDRINUSE)
        elif self._in_use(end, ip, port):
            raise _err(errno.EADDRINUSE)
        end.local = (ip, port)
        self._bound[(end.kind, end.family, ip, port)] = end

    def _in_use(self, end: _Endpoint, ip: str, port: int) -> bool:
        wild = _wildcard(end.family)
        if ip == wild:
            return any(k[:2] == (end.kind, end.family) and k[3] == port for k in self._bound)
        return ((end.kind, end.family, ip, port) in self._bound
                or (end.kind, end.family, wild, port) in self._bound)

    def _unbind(self, end: _Endpoint) -> None:
        if end.local is not None and self._bound.get((end.kind, end.family, *end.local)) is end:
            del self._bound[(end.kind, end.family, *end.local)]

    def _lookup(self, kind: int, family: int, addr: Addr) -> _Endpoint | None:
        return (self._bound.get((kind, family, *addr))
                or self._bound.get((kind, family, _wildcard(family), addr[1])))

    def _autobind(self, end: _Endpoint, dest: Addr) -> None:
        if end.local is None:
            self._bind(end, (dest[0], 0))
        elif end.local[0] == _wildcard(end.family):
            # the bound wildcard stays the binding; the source IP is the destination's
            end.source_ip = dest[0]

    def remove_address(self, ip: str) -> int:
        """The address ``ip`` leaves the network (see the module docstring); returns how many sockets it cuts off.
        New sockets may bind it again (the address comes back)."""
        ip = ipaddress.ip_address(ip.strip("[]")).compressed
        cut = 0
        for end in list(self._bound.values()):
            if end.local is not None and ip in (end.local[0], end.source_ip) and not end.cut:
                end.cut = True
                self._unbind(end)
                end.wake()
                cut += 1
        return cut

    # -- sockets ------------------------------------------------------------------------------

    def socket(self, family: int = stdlib_socket.AF_INET, type: int = stdlib_socket.SOCK_STREAM,
               proto: int = 0, fileno: int | None = None) -> MemorySocket:
        if fileno is not None:
            raise OSError(errno.EINVAL, "a memory network has no file descriptors to wrap")
        if family not in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
            raise _err(errno.EAFNOSUPPORT)
        kind = type & ~(getattr(stdlib_socket, "SOCK_NONBLOCK", 0) | getattr(stdlib_socket, "SOCK_CLOEXEC", 0))
        if kind not in (stdlib_socket.SOCK_STREAM, stdlib_socket.SOCK_DGRAM):
            raise _err(errno.EPROTONOSUPPORT)
        return MemorySocket(_Endpoint(self, family, kind, next(self._fds)))

    def raw_udp(self, family: int) -> RawUdp:
        """A UDP socket with the non-blocking, synchronous calls :class:`faultlab.net.udp.Datagrams` makes."""
        return RawUdp(_Endpoint(self, family, stdlib_socket.SOCK_DGRAM, next(self._fds)))


class _Resolver(trio.abc.HostnameResolver):
    """Only numeric addresses and ``localhost``: nothing reaches a real resolver."""

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        if isinstance(host, bytes):
            host = host.decode("ascii")
        if host in ("localhost", None):
            host = "::1" if family == stdlib_socket.AF_INET6 else "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise stdlib_socket.gaierror(stdlib_socket.EAI_NONAME,
                                         f"{host}: only numeric addresses resolve on a memory network") from None
        fam = stdlib_socket.AF_INET6 if ip.version == 6 else stdlib_socket.AF_INET
        kinds = [type] if type else [stdlib_socket.SOCK_STREAM, stdlib_socket.SOCK_DGRAM]
        addr = (ip.compressed, int(port or 0)) + ((0, 0) if fam == stdlib_socket.AF_INET6 else ())
        return [(fam, kind, 0, "", addr) for kind in kinds]

    async def getnameinfo(self, sockaddr, flags):  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return sockaddr[0], str(sockaddr[1])


class _Factory(trio.abc.SocketFactory):
    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net

    def socket(self, family=None, type=None, proto=None):  # type: ignore[override]
        return self.net.socket(family or stdlib_socket.AF_INET, type or stdlib_socket.SOCK_STREAM, proto or 0)


def install(net: MemoryNetwork | None = None) -> MemoryNetwork:
    """Make every socket the current ``trio.run`` opens from now on a socket of ``net`` (a new one by default)."""
    net = net if net is not None else MemoryNetwork()
    trio.socket.set_custom_socket_factory(_Factory(net))
    trio.socket.set_custom_hostname_resolver(_Resolver())
    _current.set(net)
    return net


def current() -> MemoryNetwork | None:
    """The memory network installed in this ``trio.run``, if any (``None`` outside a run, too)."""
    try:
        return _current.get()
    except RuntimeError:
        return None
