"""``GET /events``: the live timeline as NDJSON or Server-Sent Events.

One :meth:`faultlab.trace.Event.to_json` object per line (``application/x-ndjson``), or per ``data:``
field (``text/event-stream``, when the client's Accept asks for it). The stream ends when the client
disconnects or when the proxy closes the subscription (it is stopping). Either way the subscription
channel is closed, which is how :meth:`Control.subscribe` is unsubscribed.

The response is a small ASGI callable rather than Starlette's ``StreamingResponse``: it watches
``receive()`` for ``http.disconnect`` itself, so a client that leaves is noticed at once, even when no
event is coming, and not at the next failed write.

Replay (``GET /events?since=T``, ``?after=SEQ``, or SSE's ``Last-Event-ID``): the endpoint subscribes and takes
the events the proxy still holds in the same step (no checkpoint between), so the held events it replays and the
subscription's live events follow on without a gap or a repeat. Events are numbered (``seq``) by the proxy; the
stream says the number of its first event in a header (the ``replay`` record), and in SSE every event carries
its number as ``id:``, so that a browser's ``EventSource`` resumes where it left off after a reconnect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from faultlab.net.streaming import serve_stream

from ._http import dumps

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from faultlab.trace import Event

__all__ = ["EventStream", "SSE_KEEPALIVE"]

# An SSE comment line this often when no event comes, so that idle-timeout proxies between the
# client and faultlab keep the stream open (the same order as the 15 s that the SSE spec suggests).
SSE_KEEPALIVE = 15.0


class EventStream:
    """An ASGI response that forwards ``channel`` until the client leaves or the channel ends; owns ``channel``.

    ``header`` (a JSON object) is written first: a line, or in SSE an ``event: replay`` record. Then ``replay``
    (held events), then the channel's events. With ``first_seq`` (the number of the first event written),
    SSE records carry ``id: SEQ``.
    """

    def __init__(
        self, channel: trio.MemoryReceiveChannel[Event], *, sse: bool, keepalive: float = SSE_KEEPALIVE,
        replay: Sequence[Event] = (), first_seq: int | None = None, header: dict[str, Any] | None = None,
    ) -> None:
        self.channel = channel
        self.sse = sse
        self.keepalive = keepalive
        self.replay = replay
        self.seq = first_seq  # the number of the next event written
        self.header = header

    @staticmethod
    def media_type(sse: bool) -> str:
        return "text/event-stream" if sse else "application/x-ndjson"

    def encode(self, event: Event) -> bytes:
        text = _json(event.to_json())
        seq = self.seq
        if seq is not None:
            self.seq = seq + 1
        if not self.sse:
            return f"{text}\n".encode("utf-8", "backslashreplace")
        return (f"id: {seq}\ndata: {text}\n\n" if seq is not None else f"data: {text}\n\n").encode(
            "utf-8", "backslashreplace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def write() -> None:
            await self._replay(send)
            await self._forward(send)  # returns when the proxy ended the subscription

        async with self.channel:
            await serve_stream(receive, send, self.media_type(self.sse), write)

    async def _replay(self, send: Send) -> None:
        chunk = bytearray()
        if self.header is not None:
            text = _json(self.header)
            chunk += (f"event: replay\ndata: {text}\n\n" if self.sse else f"{text}\n").encode(
                "utf-8", "backslashreplace")
        for event in self.replay:
            chunk += self.encode(event)
            if len(chunk) >= _REPLAY_CHUNK:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
                chunk.clear()
        self.replay = ()
        if chunk:
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})

    async def _forward(self, send: Send) -> None:
        while True:
            with trio.move_on_after(self.keepalive if self.sse else float("inf")) as idle:
                try:
                    event = await self.channel.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if idle.cancelled_caught:
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                continue
            await send({"type": "http.response.body", "body": self.encode(event), "more_body": True})


_REPLAY_CHUNK = 64 * 1024  # held events are written this many bytes at a time


def _json(obj: Any) -> str:
    return dumps(obj).rstrip("\n")
