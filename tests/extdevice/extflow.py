"""The external device's SIP transports over asyncio: one UDP socket, or TCP/TLS connections (one per wake-up).

Standalone on purpose (standard library only).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable

from extsip import ParseError, StreamSplitter

PONG_TIMEOUT = 10.0  # RFC 5626 §4.4.1: no pong this long after a ping: the flow failed


class Flow:
    """Where SIP goes out and comes in. ``on_data(data, flow, addr)`` gets each message; ``on_lost(flow)`` is called
    once when the network (not this device) ends a connection."""

    transport = "udp"
    local: tuple[str, int] = ("0.0.0.0", 0)
    alive = True

    def send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class UDPFlow(Flow, asyncio.DatagramProtocol):
    def __init__(self, remote: tuple[str, int], on_data: Callable) -> None:
        self.remote, self.on_data = remote, on_data
        self.transport_ = None

    @classmethod
    async def open(cls, remote: tuple[str, int], on_data: Callable) -> "UDPFlow":
        loop = asyncio.get_running_loop()
        flow = cls(remote, on_data)
        # connected to the relay: the kernel picks the local address on the route to it (Via, Contact)
        await loop.create_datagram_endpoint(lambda: flow, remote_addr=remote)
        return flow

    def connection_made(self, transport) -> None:  # asyncio.DatagramProtocol
        self.transport_ = transport
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr) -> None:
        if data.strip(b"\r\n"):
            self.on_data(data, self, addr[:2])

    def error_received(self, exc) -> None:  # ICMP: nothing to do on UDP
        pass

    def send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        if self.transport_ is not None:
            self.transport_.sendto(data)  # everything goes to the relay (the socket is connected to it)

    def close(self) -> None:
        if self.transport_ is not None:
            self.transport_.close()


class StreamFlow(Flow):
    """One TCP or TLS connection, with RFC 5626 CRLF keep-alives every ``keepalive`` seconds (0: none)."""

    def __init__(self, transport: str, reader, writer, on_data: Callable, on_lost: Callable,
                 keepalive: float) -> None:
        self.transport, self.reader, self.writer = transport, reader, writer
        self.on_data, self.on_lost, self.keepalive = on_data, on_lost, keepalive
        self.local = writer.get_extra_info("sockname")[:2]
        self.closed_by_us = False
        self._pong = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._read())]
        if keepalive > 0:
            self._tasks.append(asyncio.ensure_future(self._ping()))

    @classmethod
    async def open(cls, transport: str, remote: tuple[str, int], on_data: Callable, on_lost: Callable, *,
                   ca: str | None, keepalive: float) -> "StreamFlow":
        context = None
        if transport == "tls":
            context = ssl.create_default_context(cafile=ca)
        reader, writer = await asyncio.open_connection(remote[0], remote[1], ssl=context,
                                                       server_hostname=remote[0] if context else None)
        return cls(transport, reader, writer, on_data, on_lost, keepalive)

    async def _read(self) -> None:
        splitter = StreamSplitter()
        try:
            while data := await self.reader.read(65536):
                for item in splitter.feed(data):
                    if item == b"\r\n":
                        self._pong.set()
                    elif item == b"\r\n\r\n":
                        self.send(b"\r\n")  # a ping from the other side
                    else:
                        self.on_data(item, self, None)
        except (OSError, ssl.SSLError, ParseError, asyncio.IncompleteReadError):
            pass
        self._lost()

    async def _ping(self) -> None:
        while self.alive:
            await asyncio.sleep(self.keepalive)
            self._pong.clear()
            self.send(b"\r\n\r\n")
            try:
                await asyncio.wait_for(self._pong.wait(), PONG_TIMEOUT)
            except asyncio.TimeoutError:
                self._lost()  # the flow failed: close it and recover
                return

    def _lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._abort()
        if not self.closed_by_us:
            self.on_lost(self)

    def _abort(self) -> None:
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        try:
            self.writer.transport.abort()
        except Exception:
            pass

    def send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        if self.alive:
            try:
                self.writer.write(data)
            except Exception:
                self._lost()

    def close(self) -> None:
        self.closed_by_us = True
        if self.alive:
            self.alive = False
            self._abort()
