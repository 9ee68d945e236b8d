"""The sockets of the in-memory network (:mod:`faultlab.net.memnet`): one endpoint's state, shared by the async
face trio code uses (:class:`MemorySocket`: UDP and TCP) and the synchronous face of the relay's UDP path
(:class:`RawUdp`). An endpoint finds its peers through its network (``end.net``)."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket as stdlib_socket
import struct
from collections import deque
from typing import Any

import trio

__all__ = ["Addr", "EPHEMERAL", "MemorySocket", "RawUdp"]

Addr = tuple[str, int]
EPHEMERAL = range(32768, 61000)


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _norm(family: int, addr: Any) -> Addr:
    """``(ip, port)`` with the IP in its canonical text form; OSError for a bad address."""
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        raise _err(errno.EINVAL) from None
    if type(host) is str and type(port) is int:  # the usual case: a text address, remembered
        known = _NORMAL.get((family, host, port))
        if known is not None:
            return known
        normal = _normalise(family, host, port)
        if len(_NORMAL) >= _NORMAL_SIZE:
            _NORMAL.clear()
        _NORMAL[(family, host, port)] = normal
        return normal
    return _normalise(family, host, port)


_NORMAL: dict[tuple[int, str, int], Addr] = {}  # (family, host, port) -> _normalise's answer
_NORMAL_SIZE = 4096


def _normalise(family: int, host: Any, port: Any) -> Addr:
    try:
        port = int(port)
        ip = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        raise _err(errno.EINVAL) from None
    if (family == stdlib_socket.AF_INET6) != (ip.version == 6):
        raise _err(errno.EAFNOSUPPORT)
    if not 0 <= port <= 65535:
        raise OverflowError("port must be 0-65535")
    return ip.compressed, port


def _wildcard(family: int) -> str:
    return "::" if family == stdlib_socket.AF_INET6 else "0.0.0.0"


def _end_of_stream(end: _Endpoint, *, reset: bool) -> None:
    """The peer's FIN (or RST) reaches ``end``."""
    if reset:
        end.reset = True
    else:
        end.eof = True
    end.wake()


def _bytes_arrive(end: _Endpoint, data: bytes) -> None:
    """TCP bytes reach ``end``."""
    end.inbox += data
    end.wake()


def _sockaddr(family: int, addr: Addr) -> tuple:
    return (addr[0], addr[1], 0, 0) if family == stdlib_socket.AF_INET6 else addr


class _Endpoint:
    """One socket's state, shared by the async (:class:`MemorySocket`) and sync (:class:`RawUdp`) faces."""

    def __init__(self, net: Any, family: int, kind: int, fd: int) -> None:
        self.net = net
        self.family = family
        self.kind = kind
        self.fd = fd
        self.local: Addr | None = None
        self.source_ip: str | None = None
        self.peer: Addr | None = None
        self.closed = False
        self.cut = False  # its address left the network (MemoryNetwork.remove_address): nothing in or out
        self.lot = trio.lowlevel.ParkingLot()
        # UDP
        self.datagrams: deque[tuple[bytes, Addr]] = deque()
        self.refused = False  # a connected socket's datagram met no listener (ECONNREFUSED on the next receive)
        # TCP
        self.listening = False
        self.backlog: deque[_Endpoint] = deque()
        self.other: _Endpoint | None = None  # the connected peer endpoint
        self.inbox = bytearray()
        self.eof = False  # the peer will send no more
        self.reset = False  # the peer aborted the connection
        self.shut_wr = False
        self.linger_abort = False

    def wake(self) -> None:
        self.lot.unpark_all()

    def name(self) -> Addr:
        if self.local is None:
            return (_wildcard(self.family), 0)
        if self.source_ip is not None:
            return (self.source_ip, self.local[1])
        return self.local

    # UDP

    def sendto(self, data: bytes, dest: Any) -> int:
        if self.closed:
            raise _err(errno.EBADF)
        if self.cut:
            raise _err(errno.ENETUNREACH)
        addr = _norm(self.family, dest)
        self.net._autobind(self, addr)
        source = (self.source_ip or self.local[0], self.local[1])
        if source[0] == _wildcard(self.family):
            source = (addr[0], source[1])
        data = bytes(data)
        self.net.later(lambda: self._arrive(data, source, addr))
        return len(data)

    def _arrive(self, data: bytes, source: Addr, addr: Addr) -> None:
        """A datagram from this endpoint reaches ``addr`` (the network's delay after it was sent)."""
        target = self.net._lookup(stdlib_socket.SOCK_DGRAM, self.family, addr)
        if target is None or target.closed or (target.peer is not None and target.peer != source):
            self.net.undelivered += 1
            if (target is None or target.closed) and self.peer is not None:
                # ICMP port unreachable: a connected UDP socket's next receive reports it (as Linux does)
                self.refused = True
                self.wake()
        else:
            target.datagrams.append((data, source))
            target.wake()

    def recvfrom(self) -> tuple[bytes, Addr]:
        if self.closed:
            raise _err(errno.EBADF)
        if self.refused:
            self.refused = False
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        if not self.datagrams:
            raise BlockingIOError(errno.EAGAIN, "no datagram ready")
        return self.datagrams.popleft()

    # TCP

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.net._unbind(self)
        other = self.other
        if other is not None and not self.cut:  # from an address that left, not even a FIN gets out
            self.net.later(functools.partial(_end_of_stream, other, reset=self.linger_abort))
        for pending in self.backlog:  # connections never accepted: their clients are reset
            pending.closed = True
            if pending.other is not None:
                pending.other.reset = True
                pending.other.wake()
        self.backlog.clear()
        self.wake()


class RawUdp:
    """Synchronous, non-blocking UDP socket calls on a memory endpoint (see :class:`faultlab.net.udp.Datagrams`)."""

    def __init__(self, end: _Endpoint) -> None:
        self._end = end

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def bind(self, addr: Any) -> None:
        self._end.net._bind(self._end, _norm(self._end.family, addr))

    def connect(self, addr: Any) -> None:
        addr = _norm(self._end.family, addr)
        self._end.net._autobind(self._end, addr)
        self._end.peer = addr

    def getsockname(self) -> tuple:
        return _sockaddr(self._end.family, self._end.name())

    def fileno(self) -> int:
        return -1 if self._end.closed else self._end.fd

    def sendto(self, data: bytes, addr: Any) -> int:
        return self._end.sendto(data, addr)

    def send(self, data: bytes) -> int:
        if self._end.peer is None:
            raise _err(errno.EDESTADDRREQ)
        return self._end.sendto(data, self._end.peer)

    def recvfrom(self, bufsize: int) -> tuple[bytes, tuple]:
        data, source = self._end.recvfrom()
        return data[:bufsize], _sockaddr(self._end.family, source)

    async def wait_readable(self) -> None:
        if not self._end.datagrams and not self._end.closed and not self._end.refused:
            await self._end.lot.park()

    def close(self) -> None:
        self._end.close()

    def __enter__(self) -> RawUdp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemorySocket(trio.socket.SocketType):
    """A trio socket (UDP or TCP) on a :class:`MemoryNetwork`, made by ``trio.socket.socket`` after :func:`install`."""

    def __init__(self, end: _Endpoint) -> None:
        super().__init__()
        self._end = end

    # -- plain attributes ----------------------------------------------------------------------

    @property
    def family(self) -> int:  # type: ignore[override]
        return self._end.family

    @property
    def type(self) -> int:  # type: ignore[override]
        return self._end.kind

    @property
    def proto(self) -> int:  # type: ignore[override]
        return 0

    @property
    def did_shutdown_SHUT_WR(self) -> bool:  # type: ignore[override]
        return self._end.shut_wr

    def fileno(self) -> int:
        return -1 if self._end.closed else self._end.fd

    def getsockname(self) -> tuple:
        return _sockaddr(self._end.family, self._end.name())

    def getpeername(self) -> tuple:
        if self._end.peer is None:
            raise _err(errno.ENOTCONN)
        return _sockaddr(self._end.family, self._end.peer)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if self._end.closed:
            raise _err(errno.EBADF)
        if (level, optname) == (stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER) and isinstance(value, bytes):
            onoff, seconds = struct.unpack("ii", value)
            self._end.linger_abort = bool(onoff) and seconds == 0

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int:
        if (level, optname) == (stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN):
            return int(self._end.listening)
        return 0

    def setblocking(self, flag: bool) -> None:
        pass

    def is_readable(self) -> bool:
        end = self._end
        return bool(end.datagrams or end.inbox or end.eof or end.reset or end.backlog or end.closed)

    def __enter__(self) -> MemorySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._end.close()

    def __repr__(self) -> str:
        kind = "udp" if self._end.kind == stdlib_socket.SOCK_DGRAM else "tcp"
        return f"<MemorySocket {kind} {self.getsockname()[:2]}{' closed' if self._end.closed else ''}>"

    # -- binding and connecting ----------------------------------------------------------------

    async def bind(self, address: Any) -> None:
        await trio.lowlevel.checkpoint()
        self._end.net._bind(self._end, _norm(self._end.family, address))

    def listen(self, backlog: int = 128) -> None:
        if self._end.kind != stdlib_socket.SOCK_STREAM:
            raise _err(errno.EOPNOTSUPP)
        if self._end.local is None:
            self._end.net._bind(self._end, (_wildcard(self._end.family), 0))
        self._end.listening = True

    async def connect(self, address: Any) -> None:
        await trio.lowlevel.checkpoint()
        end = self._end
        addr = _norm(end.family, address)
        if end.kind == stdlib_socket.SOCK_DGRAM:
            end.net._autobind(end, addr)
            end.peer = addr
            return
        if end.net.delay > 0:
            await trio.sleep(end.net.delay)  # the SYN's way there (its answer's way back: below)
        listener = end.net._lookup(stdlib_socket.SOCK_STREAM, end.family, addr)
        if listener is None or not listener.listening or listener.closed:
            await trio.sleep(end.net.delay)
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        end.net._autobind(end, addr)
        server = _Endpoint(end.net, end.family, end.kind, next(end.net._fds))
        server.local = addr
        server.peer = end.name()
        server.other, end.other = end, server
        end.peer = addr
        listener.backlog.append(server)
        listener.wake()
        if end.net.delay > 0:
            await trio.sleep(end.net.delay)

    async def accept(self) -> tuple[MemorySocket, tuple]:
        end = self._end
        parked = False  # a wait that ended is this call's checkpoint (as trio's own sockets): no second one
        while True:
            if end.closed:
                raise _err(errno.EBADF)
            if end.backlog:
                if not parked:
                    await trio.lowlevel.checkpoint()
                    if not end.backlog:
                        continue
                server = end.backlog.popleft()
                end.net.connections += 1
                return MemorySocket(server), _sockaddr(end.family, server.peer)
            await end.lot.park()
            parked = True

    # -- data ----------------------------------------------------------------------------------

    async def send(self, data: Any, flags: int = 0) -> int:
        await trio.lowlevel.checkpoint()
        end = self._end
        if end.closed:
            raise _err(errno.EBADF)
        if end.kind == stdlib_socket.SOCK_DGRAM:
            if end.peer is None:
                raise _err(errno.EDESTADDRREQ)
            return end.sendto(bytes(data), end.peer)
        if end.reset:
            raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
        if end.cut:
            raise _err(errno.ENETUNREACH)
        other = end.other
        if other is None:
            raise _err(errno.ENOTCONN)
        if end.shut_wr:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        if other.cut:  # the peer's address left: the bytes are lost, and nothing comes back
            return len(data)
        if other.closed:  # as TCP: the kernel takes the bytes, the peer answers RST, the next send fails
            end.reset = True
            end.wake()
            return len(data)
        self._end.net.later(functools.partial(_bytes_arrive, other, bytes(data)))
        return len(data)

    async def sendto(self, data: Any, *args: Any) -> int:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return self._end.sendto(bytes(data), args[-1])

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        end = self._end
        if end.kind == stdlib_socket.SOCK_DGRAM:
            return (await self.recvfrom(bufsize))[0]
        parked = False  # a wait that ended is this call's checkpoint (as trio's own sockets): no second one
        while True:
            if end.closed:
                raise _err(errno.EBADF)
            if end.inbox:  # what arrived before a reset is still read first
                if not parked:
                    await trio.lowlevel.checkpoint()
                    if end.closed or not end.inbox:
                        continue
                data = bytes(end.inbox[:bufsize])
                del end.inbox[:bufsize]
                return data
            if end.reset:
                raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
            if end.eof:
                if not parked:
                    await trio.lowlevel.checkpoint()
                return b""
            await end.lot.park()
            parked = True

    async def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple]:
        end = self._end
        parked = False  # a wait that ended is this call's checkpoint (as trio's own sockets): no second one
        while True:
            if end.closed:
                raise _err(errno.EBADF)
            if end.datagrams or end.refused:
                if not parked:
                    await trio.lowlevel.checkpoint()
                    if end.closed or not (end.datagrams or end.refused):
                        continue
                data, source = end.recvfrom()
                return data[:bufsize], _sockaddr(end.family, source)
            await end.lot.park()
            parked = True

    def shutdown(self, how: int) -> None:
        end = self._end
        if how in (stdlib_socket.SHUT_WR, stdlib_socket.SHUT_RDWR) and not end.shut_wr:
            end.shut_wr = True
            if end.other is not None and not end.cut:
                end.net.later(functools.partial(_end_of_stream, end.other, reset=False))

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()
