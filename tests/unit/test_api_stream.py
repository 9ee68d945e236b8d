"""``GET /events``'s stream at the ASGI level, on trio's MockClock: no sockets, no waiting."""

from __future__ import annotations

import json

import trio
import trio.testing

from faultlab.api.stream import SSE_KEEPALIVE, EventStream
from faultlab.trace import Event
from tests.asgi import FakeAsgi


async def start(nursery, sse: bool) -> tuple[FakeAsgi, trio.MemorySendChannel]:
    send, receive = trio.open_memory_channel(10)
    asgi = FakeAsgi()
    nursery.start_soon(EventStream(receive, sse=sse), {"type": "http"}, asgi.receive, asgi.send)
    await trio.testing.wait_all_tasks_blocked()
    return asgi, send


async def test_ndjson_lines_then_end_when_the_proxy_closes_the_subscription(nursery):
    asgi, channel = await start(nursery, sse=False)
    start_message = asgi.sent[0]
    assert start_message["status"] == 200
    assert (b"content-type", b"application/x-ndjson; charset=utf-8") in start_message["headers"]
    await channel.send(Event(t=1.5, kind="received", flow="udp-1", summary="REGISTER sip:pbx"))
    await channel.send(Event(t=2.0, kind="rule", detail={"rule": "drop-register"}))
    await channel.aclose()
    await trio.testing.wait_all_tasks_blocked()
    bodies = asgi.bodies()
    assert [json.loads(b) for b in bodies[:2]] == [
        {"t": 1.5, "kind": "received", "source": "proxy", "flow": "udp-1", "summary": "REGISTER sip:pbx"},
        {"t": 2.0, "kind": "rule", "source": "proxy", "detail": {"rule": "drop-register"}},
    ]
    assert all(b.endswith(b"\n") and b.count(b"\n") == 1 for b in bodies[:2])
    assert asgi.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_sse_records_and_a_keepalive_comment_after_silence(nursery, autojump_clock):
    asgi, channel = await start(nursery, sse=True)
    assert (b"content-type", b"text/event-stream; charset=utf-8") in asgi.sent[0]["headers"]
    await channel.send(Event(t=0.5, kind="sent", raw=b"\xff\x00"))
    assert await asgi.wait_bodies(1) == [b'data: {"t":0.5,"kind":"sent","source":"proxy","raw_b64":"/wA="}\n\n']
    assert trio.current_time() == 0
    # nothing more comes: a keep-alive comment, one interval later
    assert (await asgi.wait_bodies(2))[1] == b": keep-alive\n\n"
    assert trio.current_time() == SSE_KEEPALIVE


async def test_disconnect_unsubscribes_even_when_no_event_comes(nursery, autojump_clock):
    asgi, channel = await start(nursery, sse=False)
    asgi.disconnect.set()
    await trio.testing.wait_all_tasks_blocked()
    assert channel.statistics().open_receive_channels == 0  # the subscription is closed
    assert asgi.bodies() == []  # and nothing is sent to a client that has gone
    assert trio.current_time() == 0  # at once, not at a keep-alive tick
