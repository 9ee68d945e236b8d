"""Machine-readable prompts: what the person (or a program) at the device must do now, and when.

A :class:`Prompt` is one JSON object (:meth:`Prompt.to_json`)::

    {"kind": "prompt", "seq": 1, "action": "answer", "scenario": "S17", "transport": "udp",
     "uuid": "0b6f...", "call_id": "a84b4c76e66710", "at": 1764166500.125, "deadline": 1764166502.125,
     "text": "S17: tap Answer now on the device"}

``action``: ``answer`` / ``decline`` (the scripted user step of an external lab run), ``call`` / ``hang-up``
(guided runs: the person's other phone). ``at``: UNIX time the action is due (a prompt is published at that
moment); ``deadline``: UNIX time by which it must have happened (None: no deadline). ``uuid`` (the call push's
CallKit uuid, lower case), ``call_id``, ``scenario`` and ``transport`` may be None when not known.

A :class:`PromptHub` numbers the prompts it publishes (``seq`` 1, 2, ...), keeps the last ``limit`` of them, and
lets any number of followers read from a seq on (:meth:`PromptHub.follow`). Publishing never waits: a follower
more than ``buffer`` prompts behind is dropped (its stream ends; it reconnects and replays what it missed).

``GET /prompts`` (:func:`prompt_stream`, served by the event collector and the proxy API): the prompts already
published first, then each new one, and the connection stays open. NDJSON by default (one prompt per line; a
keep-alive empty line every 15 s), Server-Sent Events with ``Accept: text/event-stream`` or ``?format=sse``
(``id: SEQ``, ``event: prompt``, ``data: {json}``; a ``:`` comment as keep-alive). ``?since=SEQ``: start at that
seq (the prompts with ``seq >= SEQ``); SSE's ``Last-Event-ID: SEQ`` (sent by a reconnecting EventSource): the
prompts after it (``seq > SEQ``).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from faultlab.net.streaming import serve_stream

__all__ = ["ACTIONS", "KEEPALIVE", "Prompt", "PromptHub", "PromptRequestError", "PromptStream", "prompt_stream"]

ACTIONS = ("answer", "decline", "call", "hang-up")
KEEPALIVE = 15.0  # seconds of silence before a keep-alive line (NDJSON) or comment (SSE)
LIMIT = 1000  # prompts a hub keeps for replay
BUFFER = 64  # prompts a follower may be behind before it is dropped
_SEQ_DIGITS = 18


@dataclass(frozen=True)
class Prompt:
    seq: int
    action: str
    text: str
    at: float
    deadline: float | None = None
    scenario: str | None = None
    transport: str | None = None
    uuid: str | None = None
    call_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "prompt", "seq": self.seq, "action": self.action, "scenario": self.scenario,
                "transport": self.transport, "uuid": self.uuid, "call_id": self.call_id, "at": self.at,
                "deadline": self.deadline, "text": self.text}

    def line(self) -> bytes:
        """The prompt as one NDJSON line."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"


class PromptHub:
    """Published prompts (the last ``limit``) and their followers; see the module docstring."""

    def __init__(self, *, limit: int = LIMIT, buffer: int = BUFFER,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.buffer = buffer
        self.wall_clock = wall_clock
        self.kept: deque[Prompt] = deque(maxlen=limit)
        self.seq = 0  # the last seq published
        self._followers: set[trio.MemorySendChannel[Prompt]] = set()

    def publish(self, action: str, text: str, *, at: float | None = None, deadline: float | None = None,
                **fields: Any) -> Prompt:
        """Number and keep a prompt, hand it to every follower (never waits); ``at`` defaults to now.
        ``fields``: ``scenario``, ``transport``, ``uuid`` (lower-cased here), ``call_id``."""
        if action not in ACTIONS:
            raise ValueError(f"prompt action {action!r} is not one of {', '.join(ACTIONS)}")
        uuid = fields.pop("uuid", None)
        self.seq += 1
        prompt = Prompt(self.seq, action, text, self.wall_clock() if at is None else at, deadline,
                        uuid=uuid.lower() if isinstance(uuid, str) else None, **fields)
        self.kept.append(prompt)
        for follower in list(self._followers):
            try:
                follower.send_nowait(prompt)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._followers.discard(follower)  # too slow (or gone): dropped, the publisher goes on
                follower.close()
        return prompt

    def since(self, seq: int) -> list[Prompt]:
        """The kept prompts with a seq of at least ``seq``."""
        return [p for p in self.kept if p.seq >= seq]

    def follow(self, seq: int = 1) -> tuple[list[Prompt], trio.MemoryReceiveChannel[Prompt]]:
        """The kept prompts from ``seq`` on, and a channel of the ones published from now on (in the same step:
        no gap, no repeat). Close the channel to stop following; it ends by itself if the follower is dropped."""
        send, receive = trio.open_memory_channel[Prompt](self.buffer)
        self._followers.add(send)
        return self.since(seq), receive

    @property
    def followers(self) -> int:
        self._followers = {f for f in self._followers if not _closed(f)}
        return len(self._followers)


def _closed(channel: trio.MemorySendChannel) -> bool:
    return channel.statistics().open_receive_channels == 0


class PromptRequestError(ValueError):
    """A ``GET /prompts`` with a bad ``since`` or ``Last-Event-ID``; the message says what to give."""


def _seq(text: str, where: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > _SEQ_DIGITS:
        raise PromptRequestError(f"{where}={text!r}: give a prompt seq (1, 2, ...), e.g. since=1 for all")
    return int(text)


def prompt_stream(hub: PromptHub, query: Mapping[str, str], headers: Mapping[str, str]) -> PromptStream:
    """The response to ``GET /prompts`` from its query and headers; :class:`PromptRequestError` if bad."""
    fmt = query.get("format")
    if fmt not in (None, "", "ndjson", "sse"):
        raise PromptRequestError(f"format={fmt!r}: give format=sse or format=ndjson (the default)")
    sse = fmt == "sse" or (not fmt and "text/event-stream" in headers.get("accept", ""))
    last_id = headers.get("last-event-id", "").strip()
    if last_id:
        start = _seq(last_id, "Last-Event-ID") + 1
    elif query.get("since") is not None:
        start = _seq(query["since"], "since")
    else:
        start = 1
    return PromptStream(hub, start, sse=sse)


class PromptStream:
    """An ASGI response: the hub's prompts from ``start`` on, then each new one, keep-alives in the silences;
    until the client leaves or the hub drops it."""

    def __init__(self, hub: PromptHub, start: int = 1, *, sse: bool, keepalive: float = KEEPALIVE) -> None:
        self.hub = hub
        self.start = start
        self.sse = sse
        self.keepalive = keepalive

    @property
    def media_type(self) -> str:
        return "text/event-stream" if self.sse else "application/x-ndjson"

    def encode(self, prompt: Prompt) -> bytes:
        if not self.sse:
            return prompt.line()
        return f"id: {prompt.seq}\nevent: prompt\ndata: ".encode() + prompt.line() + b"\n"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        replay, channel = self.hub.follow(self.start)

        async def write() -> None:
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"".join(self.encode(p) for p in replay)})
            await self._forward(channel, send)  # returns when the hub dropped this follower: it reconnects

        async with channel:
            await serve_stream(receive, send, self.media_type, write)

    async def _forward(self, channel: trio.MemoryReceiveChannel[Prompt], send: Any) -> None:
        keepalive = b": keep-alive\n\n" if self.sse else b"\n"
        while True:
            with trio.move_on_after(self.keepalive if math.isfinite(self.keepalive) else math.inf) as idle:
                try:
                    prompt = await channel.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            body = keepalive if idle.cancelled_caught else self.encode(prompt)
            await send({"type": "http.response.body", "body": body, "more_body": True})
