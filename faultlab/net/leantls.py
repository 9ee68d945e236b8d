"""TLS over a real TCP socket, with fewer trips through trio's scheduler than :class:`trio.SSLStream`.

:class:`TLSSocketStream` drives an :class:`ssl.SSLObject` (two :class:`ssl.MemoryBIO`) over the
non-blocking socket of a :class:`trio.SocketStream` directly: it calls ``recv``/``send`` first and
waits for the socket (``trio.lowlevel.wait_readable``/``wait_writable``) only when they would block.
Each call is one checkpoint, as trio's streams are (a cancel point on entry; one schedule point, which
a wait for the socket already is), where ``SSLStream`` over ``SocketStream`` takes several (its locks,
the socket's own checkpoints). What it does is ``SSLStream``'s (its error mapping, close_notify on
:meth:`~TLSSocketStream.aclose`, TLS 1.3 session tickets held back until the first write, the stream
broken by a write cut short), so the rest of faultlab treats both alike: :func:`is_tls`,
:func:`wrap`, which uses ``SSLStream`` for any other transport (the lab's memory network).

Bytes to the socket leave in the order TLS made them: every operation appends what the SSLObject wrote
to one buffer before it awaits anything, and one task at a time writes the buffer out.
"""

from __future__ import annotations

import errno
import socket
import ssl
from contextlib import suppress
from typing import NoReturn

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled, wait_readable, wait_writable

RECEIVE_SIZE = 65536  # what one recv reads, as SocketStream.receive_some
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
_OS_SOCKET = socket.socket  # the class, as imported (a test may replace socket.socket)
_OK, _BROKEN, _CLOSED = "ok", "broken", "closed"
_FORWARDED = {"context", "server_side", "server_hostname", "session", "session_reused", "getpeercert",
              "selected_npn_protocol", "cipher", "shared_ciphers", "compression", "pending",
              "get_channel_binding", "selected_alpn_protocol", "version"}


def raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The OS socket of a :class:`trio.SocketStream` on a real socket; None for anything else (a socket
    of the memory network)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = getattr(stream.socket, "_sock", None)  # trio's socket wraps the stdlib one
    return sock if isinstance(sock, _OS_SOCKET) else None


def wrap(transport: trio.abc.Stream, context: ssl.SSLContext, *, server_side: bool = False,
         server_hostname: str | None = None) -> trio.abc.Stream:
    """TLS over ``transport``: a :class:`TLSSocketStream` on a real socket, else a :class:`trio.SSLStream`."""
    if raw_socket(transport) is not None:
        return TLSSocketStream(transport, context, server_side=server_side,  # type: ignore[arg-type]
                               server_hostname=server_hostname)
    return trio.SSLStream(transport, context, server_side=server_side, server_hostname=server_hostname)


def is_tls(stream: object) -> bool:
    """Whether ``stream`` is TLS over another stream (its ``transport_stream``)."""
    return isinstance(stream, (trio.SSLStream, TLSSocketStream))


def _socket_error(exc: OSError) -> NoReturn:
    """Raise a socket's error as trio's SocketStream does (the cause of a reset is ConnectionResetError)."""
    if exc.errno in _CLOSED_ERRNOS:
        raise trio.ClosedResourceError("this socket was already closed") from None
    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


class TLSSocketStream(trio.abc.Stream):
    """TLS over the real socket of ``transport_stream`` (see the module docstring). Like
    :class:`trio.SSLStream`: :meth:`do_handshake` first (or the first read or write does it);
    ``transport_stream`` may be replaced before :meth:`aclose` by a stream on the same socket, which
    then closes it after the close_notify."""

    def __init__(self, transport_stream: trio.SocketStream, context: ssl.SSLContext, *,
                 server_side: bool = False, server_hostname: str | None = None) -> None:
        sock = raw_socket(transport_stream)
        if sock is None:
            raise TypeError("TLSSocketStream needs a trio.SocketStream on a real socket")
        self.transport_stream: trio.abc.Stream = transport_stream
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        name = trio.lowlevel.encode_hostname(server_hostname) if server_hostname is not None else None  # IDNA 2008
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=name)
        self._state = _OK
        self._handshake_done = False
        self._handshaking: trio.Event | None = None
        self._delayed: bytes | None = None  # TLS 1.3 session tickets of a server, sent with the first write
        self._out = bytearray()  # what TLS wrote and the socket has not taken yet, in order
        self._queued = 0  # bytes ever put out; _written of them are in the socket
        self._written = 0
        self._writer = False  # a task is writing _out (the others wait in _flushed)
        self._flushed = trio.lowlevel.ParkingLot()
        self._reader = False  # a task waits for the socket to read (the others wait in _read_done)
        self._read_done = trio.lowlevel.ParkingLot()
        self._drained = False  # the last read took all the socket had
        self._rbuf = bytearray(RECEIVE_SIZE)
        self._rview = memoryview(self._rbuf)
        self._receiving = False
        self._sending = False

    def __getattr__(self, name: str):
        if name in _FORWARDED:
            return getattr(self._ssl, name)
        raise AttributeError(name)

    def _check(self) -> None:
        if self._state is _BROKEN:
            raise trio.BrokenResourceError
        if self._state is _CLOSED:
            raise trio.ClosedResourceError

    def _busy(self, receiving: bool) -> None:
        if receiving and self._receiving or not receiving and self._sending:
            what = "receiving" if receiving else "sending"
            raise trio.BusyResourceError(f"another task is currently {what} data on this TLS stream")

    # -- the socket --------------------------------------------------------------------------------------

    def _put(self, data: bytes) -> None:
        """Queue ``data`` (what TLS wrote) for the socket, sending it now when nothing waits before it."""
        if self._delayed is not None:
            data, self._delayed = self._delayed + data, None
        self._queued += len(data)
        if not self._out:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._state = _BROKEN
                _socket_error(exc)
            self._written += sent
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._out += data

    async def _flush(self, upto: int) -> bool:
        """Wait until the first ``upto`` bytes queued are in the socket; whether it went through the
        scheduler. A write cut short (cancelled, an error) breaks the stream, as SSLStream's."""
        yielded = False
        while self._written < upto:
            if self._writer:
                await self._flushed.park()
                yielded = True
                continue
            self._writer = True
            try:
                while self._out:
                    try:
                        sent = self._sock.send(self._out)
                    except BlockingIOError:
                        yielded = True
                        await wait_writable(self._sock)
                        continue
                    del self._out[:sent]
                    self._written += sent
            except OSError as exc:
                self._state = _BROKEN
                _socket_error(exc)
            except BaseException:
                self._state = _BROKEN
                raise
            finally:
                self._writer = False
                if self._flushed:
                    self._flushed.unpark_all()
        return yielded

    async def _fill(self) -> bool:
        """Read what the socket has into TLS (waiting for it when it has nothing); at EOF, TLS sees EOF.
        When another task is already waiting for the socket, wait for its read instead. A socket that the
        last read emptied is waited for first (no read that can only fail). Returns whether it went through
        the scheduler."""
        if self._reader:
            await self._read_done.park()
            return True
        yielded = False
        self._reader = True
        try:
            if self._drained:
                yielded = True
                await wait_readable(self._sock)
            while True:
                try:
                    n = self._sock.recv_into(self._rbuf)
                    break
                except BlockingIOError:
                    yielded = True
                    await wait_readable(self._sock)
        except OSError as exc:
            _socket_error(exc)
        finally:
            self._reader = False
            if self._read_done:
                self._read_done.unpark_all()
        self._drained = n < RECEIVE_SIZE
        if n:
            self._incoming.write(self._rview[:n])
        else:
            self._incoming.write_eof()
        return yielded

    # -- TLS ---------------------------------------------------------------------------------------------

    async def _retry(self, fn, *args, ignore_want_read: bool = False, is_handshake: bool = False):
        """Call ``fn`` (an SSLObject operation) until it completes, writing what it wants written and reading
        what it wants read; one checkpoint in all. TLS errors break the stream (BrokenResourceError)."""
        await checkpoint_if_cancelled()
        yielded = False
        mine = 0  # bytes to be in the socket before this returns (what this call queued, and what is before)
        while True:
            want_read = False
            result = None
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                want_read = not ignore_want_read
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._state = _BROKEN
                raise trio.BrokenResourceError from exc
            if self._outgoing.pending:
                data = self._outgoing.read()
                if (is_handshake and not want_read and self._ssl.server_side
                        and self._ssl.version() == "TLSv1.3"):
                    self._delayed = data  # session tickets: sent with the first write (as SSLStream)
                else:
                    self._put(data)
                    mine = self._queued
            if self._written < mine:
                yielded = await self._flush(mine) or yielded
            elif want_read:
                yielded = await self._fill() or yielded
            if not want_read:
                break
        if not yielded:
            await cancel_shielded_checkpoint()
        return result

    async def _ensure_handshake(self) -> None:
        if self._handshake_done:
            return
        if self._handshaking is not None:
            await self._handshaking.wait()
            self._check()
            return
        self._handshaking = trio.Event()
        try:
            await self._retry(self._ssl.do_handshake, is_handshake=True)
            self._handshake_done = True
        except BaseException:
            self._state = _BROKEN
            raise
        finally:
            self._handshaking.set()

    async def do_handshake(self) -> None:
        """The TLS handshake, once (a later call only checkpoints). Errors: trio.BrokenResourceError
        (its ``__cause__`` says why: a certificate, a reset, EOF); cancelled, the stream is broken."""
        self._check()
        if self._handshake_done:
            await trio.lowlevel.checkpoint()
            return
        await self._ensure_handshake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._busy(True)
        self._receiving = True
        try:
            self._check()
            await self._ensure_handshake()
            if max_bytes is None:
                max_bytes = max(RECEIVE_SIZE, self._incoming.pending)
            elif max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            return await self._retry(self._ssl.read, max_bytes)
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._busy(False)
        self._sending = True
        try:
            self._check()
            await self._ensure_handshake()
            if not data:  # SSLObject.write(b"") would mean EOF
                await trio.lowlevel.checkpoint()
                return
            await self._retry(self._ssl.write, data)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._busy(False)
        self._sending = True
        try:
            self._check()
            if self._writer:
                await self._flushed.park()
                return
            self._writer = True
            try:
                await wait_writable(self._sock)
            finally:
                self._writer = False
                if self._flushed:
                    self._flushed.unpark_all()
        finally:
            self._sending = False

    async def unwrap(self) -> tuple[trio.abc.Stream, bytes]:
        """Close TLS in order (close_notify both ways); returns the transport and the bytes read past TLS."""
        self._busy(True)
        self._busy(False)
        self._receiving = self._sending = True
        try:
            self._check()
            await self._ensure_handshake()
            await self._retry(self._ssl.unwrap)
            self._state = _CLOSED
            return self.transport_stream, self._incoming.read()
        finally:
            self._receiving = self._sending = False

    async def aclose(self) -> None:
        """Send close_notify (without waiting for the peer's), then close the transport; a broken stream
        just closes its transport."""
        if self._state is _CLOSED:
            await trio.lowlevel.checkpoint()
            return
        if self._state is _BROKEN:
            self._state = _CLOSED
            await self.transport_stream.aclose()
            return
        try:
            await self._ensure_handshake()
            with suppress(trio.BrokenResourceError, trio.BusyResourceError):
                await self._retry(self._ssl.unwrap, ignore_want_read=True)
        except BaseException:
            await trio.aclose_forcefully(self.transport_stream)
            raise
        else:
            await self.transport_stream.aclose()
        finally:
            self._state = _CLOSED
