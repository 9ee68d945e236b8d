"""An endless HTTP response on an ASGI server (hypercorn under trio): the event stream, the prompt stream.

:func:`serve_stream` sends the headers, runs ``write`` (which sends body chunks with ``more_body``) until it
returns (the source ended: the client reconnects) or the client disconnects (``write`` is cancelled), then ends the
response if the client is still there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["serve_stream"]


async def serve_stream(receive: Any, send: Any, media_type: str, write: Callable[[], Awaitable[None]]) -> None:
    disconnected = False
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", f"{media_type}; charset=utf-8".encode()),
        (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no"),  # reverse proxies: do not buffer a stream
    ]})
    async with trio.open_nursery() as nursery:

        async def until_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_disconnect)
        await write()
        nursery.cancel_scope.cancel()
    if not disconnected:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
