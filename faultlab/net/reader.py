"""The one SIP reader: bytes from a stream connection or a datagram -> SIP messages, keep-alives,
or bytes that do not frame.

Streams (TCP, TLS, memory streams): :class:`SipStreamReader` reads, frames whole messages with the
sans-IO :class:`~faultlab.sip.StreamFramer`, and hands them out one read at a time (:meth:`~SipStreamReader.read_batch`,
as the relay wants them: what arrived together is written together) or one by one
(:meth:`~SipStreamReader.items`, as an actor wants them). When the stream stops framing, the rest
comes out as :class:`Unframed` bytes (the relay forwards them raw; an actor gives the connection up).
A message larger than ``max_message_size`` (or bytes that never make a complete head within it) stops
the framing too, with ``too_large`` set: the relay closes that connection rather than relay it raw.

Datagrams (UDP): :func:`parse_or_raw`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from faultlab.sip import EOF, MAX_MESSAGE_SIZE, NEED_DATA, KeepAlive, Message, SipError, StreamFramer, parse_datagram

RECEIVE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Unframed:
    """Stream bytes that are not (or no longer) SIP messages. ``error``: why the stream stopped framing,
    on the first such item (its ``data`` may be empty); None on the raw reads after it. ``too_large``:
    the framing stopped because a message (or a head that never ends) passed the size limit."""

    data: bytes
    error: str | None = None
    too_large: bool = False


Item = Message | KeepAlive | Unframed


class SipStreamReader:
    """Reads SIP from one direction of a stream connection."""

    def __init__(self, stream: trio.abc.ReceiveStream, *, receive_size: int = RECEIVE_SIZE,
                 max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.stream = stream
        self.receive_size = receive_size
        self.framer = StreamFramer(max_message_size=max_message_size)
        self.raw = False  # the framer gave up: every read is Unframed from here on
        self._ended = False

    async def read_batch(self) -> list[Item] | None:
        """What one read brought, in order (possibly nothing: a part of a message), or None once the
        stream has ended in order (EOF). Errors of the stream (``trio.BrokenResourceError``,
        ``trio.ClosedResourceError``) pass through."""
        if self._ended:
            return None
        return self._frame(await self.stream.receive_some(self.receive_size))

    def _frame(self, data: bytes) -> list[Item] | None:
        if self.raw:
            if not data:
                return None
            return [Unframed(data)]
        self.framer.receive_data(data)
        items: list[Item] = []
        while True:
            try:
                event = self.framer.next_event()
            except SipError as exc:
                self.raw = True
                items.append(Unframed(self.framer.take_unframed(), str(exc), too_large=exc.status_hint in (413, 513)))
                self._ended = not data
                return items
            if event is NEED_DATA:
                return items
            if event is EOF:
                self._ended = True
                return items or None
            items.append(event)

    async def items(self) -> AsyncIterator[Item]:
        """Every message and keep-alive until the stream ends (EOF, reset or closed), then, if it stopped
        framing, one :class:`Unframed` saying why; an actor that cannot relay raw bytes stops there.
        A connection that breaks ends like one closed in order: a message it cut short is Unframed."""
        while True:
            try:
                batch = await self.read_batch()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                batch = None if self._ended else self._frame(b"")
                self._ended = True
            if batch is None:
                return
            for item in batch:
                yield item
                if isinstance(item, Unframed):
                    return


def parse_or_raw(data: bytes) -> tuple[Message | KeepAlive | bytes, str | None]:
    """A datagram as a SIP message or keep-alive, or its bytes and why they do not parse."""
    try:
        return parse_datagram(data), None
    except SipError as exc:
        return data, str(exc)
