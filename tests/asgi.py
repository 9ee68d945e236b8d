"""The server side of one ASGI call, for testing a streaming response: what the app sent, and a disconnect to
trigger (tests of the event stream and the prompt stream)."""

from __future__ import annotations

import trio


class FakeAsgi:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.got_message = trio.Event()
        self.disconnect = trio.Event()

    async def receive(self) -> dict:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        self.got_message.set()
        self.got_message = trio.Event()

    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"]

    def body(self) -> bytes:
        return b"".join(self.bodies())

    async def wait_bodies(self, n: int) -> list[bytes]:
        """Until the app has sent ``n`` body chunks."""
        while len(self.bodies()) < n:
            await self.got_message.wait()
        return self.bodies()

    async def wait_body(self, n: int) -> bytes:
        """Until the app has sent ``n`` bytes of body."""
        while len(self.body()) < n:
            await self.got_message.wait()
        return self.body()
