"""Closing a TCP/TLS connection: in order (FIN, TLS close_notify, then reading until the peer closes too, so
the close is not a reset over unread data), or with RST."""

from __future__ import annotations

import socket
import ssl
import struct

import trio

from faultlab.net.leantls import is_tls

# After faultlab's FIN: how long the peer may take to close its side (what it sends meanwhile is read and
# discarded, so that closing does not answer unread data with a reset).
LINGER = 1.0
# Before a TLS close: how long to read what is already buffered (see _drain_tls).
TLS_DRAIN = 0.01


def _socket_stream(stream: trio.abc.Stream) -> trio.SocketStream:
    while is_tls(stream):
        stream = stream.transport_stream  # type: ignore[attr-defined]
    assert isinstance(stream, trio.SocketStream)
    return stream


def abort(stream: trio.abc.Stream) -> None:
    """Close with RST (SO_LINGER 0), as the other side was closed."""
    try:
        _socket_stream(stream).socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def is_reset(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, (ConnectionResetError, BrokenPipeError))


async def send_eof(stream: trio.SocketStream) -> None:
    """FIN to the other side; keep reading from it."""
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class _Lingering(trio.abc.HalfCloseableStream):
    """A TCP stream whose close is FIN, then reading (and discarding) until the peer closes too."""

    def __init__(self, raw: trio.SocketStream) -> None:
        self.raw = raw
        self.discarded = 0

    async def send_all(self, data) -> None:
        await self.raw.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.raw.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.raw.send_eof()

    async def aclose(self) -> None:
        try:
            await self.raw.send_eof()
            while data := await self.raw.receive_some(65536):
                self.discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.raw.aclose()


async def _drain_tls(stream: trio.abc.Stream) -> int:
    """Read what TLS has already buffered, and what comes within TLS_DRAIN s of it: a whole record left
    unread makes sending close_notify fail (OpenSSL's shutdown meets application data; trio's close then
    sends a bare FIN). Each read has its own deadline, so one that has buffered data is not cut short."""
    discarded = 0
    while True:
        with trio.move_on_after(TLS_DRAIN):
            data = await stream.receive_some(65536)
            if not data:
                return discarded
            discarded += len(data)
            continue
        return discarded


async def close_in_order(stream: trio.abc.Stream) -> int:
    """Close ``stream`` in order: TLS close_notify, FIN, then what the peer still sends is read until it
    closes too (at most LINGER s), so the close is a FIN and not a reset. Returns the bytes discarded."""
    raw = _socket_stream(stream)
    lingering = _Lingering(raw)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(LINGER):
            try:
                if is_tls(stream):
                    lingering.discarded += await _drain_tls(stream)
                    # its close_notify, then the lingering close
                    stream.transport_stream = lingering  # type: ignore[attr-defined]
                    await stream.aclose()
                else:
                    await lingering.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass
        await trio.aclose_forcefully(raw)
    return lingering.discarded


async def close_all(how: str, *streams: trio.abc.Stream | None) -> int:
    """Close the pair's streams as the pair ended: with RST after a reset, else in order (together, at most
    LINGER s). Returns the bytes read and discarded while waiting for the peers to close."""
    discarded = 0

    async def close(stream: trio.abc.Stream) -> None:
        nonlocal discarded
        discarded += await close_in_order(stream)

    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            for stream in streams:
                if stream is None:
                    continue
                if how == "reset":
                    abort(stream)
                    await trio.aclose_forcefully(stream)
                else:
                    nursery.start_soon(close, stream)
    return discarded
