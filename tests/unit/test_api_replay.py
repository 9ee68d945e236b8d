"""``GET /events`` with a replay (``?since=T``, ``?after=SEQ``, SSE's ``Last-Event-ID``), in process: the API app
over a real :class:`~faultlab.proxy.ProxyControl` on a :class:`~faultlab.proxy.Proxy` that serves nothing, driven
as ASGI. What the proxy still holds comes first, then the live events, each exactly once and in timeline order."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from faultlab.api import create_app
from faultlab.proxy import ProxyControl
from faultlab.proxy import Proxy, ProxyConfig


class Client:
    """One ASGI request to the app; what it sent back, and a disconnect to trigger."""

    def __init__(self, app, path: str, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "server": ("127.0.0.1", 5099), "client": ("127.0.0.1", 40000),
            "headers": [(b"host", b"127.0.0.1:5099"),
                        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())],
        }
        self.sent: list[dict] = []
        self.changed = trio.Event()
        self.gone = trio.Event()
        self.done = trio.Event()

    async def run(self) -> None:
        async def receive() -> dict:
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            self.sent.append(message)
            self.changed.set()
            self.changed = trio.Event()

        try:
            await self.app(self.scope, receive, send)
        finally:
            self.done.set()

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def records(self) -> list[dict]:
        """SSE records: {"id"?, "event"?, "data": parsed JSON}; comments left out."""
        out = []
        for block in self.body.decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
            if fields:
                fields["data"] = json.loads(fields["data"])
                out.append(fields)
        return out

    async def wait_for(self, condition) -> None:
        with trio.fail_after(10):
            while not condition(self):
                await self.changed.wait()


async def get(nursery, app, path="/events", query="", **headers) -> Client:
    client = Client(app, path, query, headers)
    nursery.start_soon(client.run)
    await trio.testing.wait_all_tasks_blocked()
    return client


def make_proxy(keep: int | None = None) -> tuple[Proxy, object]:
    proxy = Proxy(ProxyConfig(listen=[], upstream=[], keep_events=keep, seed=1))
    proxy.control = ProxyControl(proxy)
    return proxy, create_app(proxy.control)


def emit(proxy: Proxy, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        proxy.emit("warning", detail={"message": f"m{i}"})


def messages(items: list[dict]) -> list[str]:
    return [e["detail"]["message"] for e in items]


async def test_since_zero_replays_all_that_is_held_then_follows_live(nursery, autojump_clock):
    proxy, app = make_proxy()
    emit(proxy, 3)
    client = await get(nursery, app, query="since=0")
    assert client.status == 200
    emit(proxy, 2, start=3)
    await client.wait_for(lambda c: len(c.lines()) == 6)
    header, *events = client.lines()
    assert header["kind"] == "replay" and header["source"] == "api"
    assert header["detail"] == {"since": 0.0, "after": None, "first_seq": 1, "replayed": 3,
                                "earliest": {"seq": 1, "t": 0.0}, "complete": True}
    assert messages(events) == ["m0", "m1", "m2", "m3", "m4"]
    client.gone.set()


async def test_replay_and_live_part_meet_without_gap_or_repeat_while_the_proxy_keeps_emitting(nursery):
    """Events arrive at every checkpoint while the request is handled and the replay is written."""
    proxy, app = make_proxy()
    emit(proxy, 50)
    produced = trio.Event()

    async def producer() -> None:
        for i in range(50, 400):
            emit(proxy, 1, start=i)
            await trio.lowlevel.checkpoint()
        produced.set()

    nursery.start_soon(producer)
    client = await get(nursery, app, query="since=0")
    await produced.wait()
    await trio.testing.wait_all_tasks_blocked()  # all of it written
    header, *events = client.lines()
    assert messages(events) == [f"m{i}" for i in range(400)]
    assert header["detail"]["first_seq"] == 1 and 50 <= header["detail"]["replayed"] < 400
    client.gone.set()


async def test_after_a_number_replays_from_the_next_one_and_sse_ids_resume_with_last_event_id(nursery):
    proxy, app = make_proxy()
    emit(proxy, 4)
    sse = await get(nursery, app, accept="text/event-stream")  # no cursor: from now on, numbered
    emit(proxy, 3, start=4)
    await sse.wait_for(lambda c: len(c.records()) == 3)
    records = sse.records()
    assert [(r["id"], r["data"]["detail"]["message"]) for r in records] == [("5", "m4"), ("6", "m5"), ("7", "m6")]
    assert all("event" not in r for r in records)
    sse.gone.set()
    emit(proxy, 2, start=7)  # missed while away

    again = await get(nursery, app, accept="text/event-stream", **{"last-event-id": "6"})
    emit(proxy, 1, start=9)
    await again.wait_for(lambda c: len(c.records()) == 5)
    replay, *rest = again.records()
    assert replay["event"] == "replay" and "id" not in replay
    assert replay["data"]["detail"]["after"] == 6 and replay["data"]["detail"]["first_seq"] == 7
    assert [(r["id"], r["data"]["detail"]["message"]) for r in rest] == [
        ("7", "m6"), ("8", "m7"), ("9", "m8"), ("10", "m9")]
    again.gone.set()

    lines = await get(nursery, app, query="after=8")
    await lines.wait_for(lambda c: len(c.lines()) == 3)
    header, *events = lines.lines()
    assert header["detail"]["first_seq"] == 9 and messages(events) == ["m8", "m9"]
    lines.gone.set()


async def test_events_the_proxy_no_longer_holds_are_reported(nursery):
    proxy, app = make_proxy(keep=5)
    emit(proxy, 12)  # numbers 1..12; 8..12 held
    gap = await get(nursery, app, query="after=3")
    await gap.wait_for(lambda c: len(c.lines()) == 6)
    header, *events = gap.lines()
    t8 = proxy.events[0].t
    assert header["detail"]["earliest"] == {"seq": 8, "t": t8}
    assert header["detail"]["complete"] is False and header["detail"]["first_seq"] == 8
    assert messages(events) == ["m7", "m8", "m9", "m10", "m11"]
    gap.gone.set()

    whole = await get(nursery, app, query="after=7")  # nothing after 7 was dropped
    await whole.wait_for(lambda c: len(c.lines()) == 6)
    assert whole.lines()[0]["detail"]["complete"] is True
    whole.gone.set()


async def test_since_a_time_replays_the_events_from_that_time(nursery, autojump_clock):
    proxy, app = make_proxy(keep=4)
    for i in range(6):  # t = 0, 1, ..., 5; the first two dropped
        emit(proxy, 1, start=i)
        await trio.sleep(1)
    later = await get(nursery, app, query="since=3")
    await later.wait_for(lambda c: len(c.lines()) == 4)
    header, *events = later.lines()
    assert messages(events) == ["m3", "m4", "m5"]
    assert header["detail"]["complete"] is True and header["detail"]["earliest"] == {"seq": 3, "t": 2.0}
    later.gone.set()

    early = await get(nursery, app, query="since=0.5")  # m1 (t=1) is gone
    await early.wait_for(lambda c: len(c.lines()) == 5)
    header = early.lines()[0]
    assert header["detail"]["complete"] is False and header["detail"]["replayed"] == 4
    assert header["t"] == 6.0  # the proxy's clock when the replay was cut
    early.gone.set()

    future = await get(nursery, app, query="since=100")
    await future.wait_for(lambda c: len(c.lines()) == 1)
    assert future.lines()[0]["detail"]["replayed"] == 0
    emit(proxy, 1, start=6)
    await future.wait_for(lambda c: len(c.lines()) == 2)
    assert messages(future.lines()[1:]) == ["m6"]
    future.gone.set()


async def test_a_number_from_an_earlier_run_replays_everything_held(nursery):
    proxy, app = make_proxy()
    emit(proxy, 2)
    client = await get(nursery, app, query="after=5000")
    await client.wait_for(lambda c: len(c.lines()) == 3)
    header, *events = client.lines()
    assert header["detail"]["after"] == 0 and header["detail"]["complete"] is True
    assert messages(events) == ["m0", "m1"]
    client.gone.set()


@pytest.mark.parametrize(("query", "headers", "message"), [
    ("since=abc", {}, "since='abc': give a time in seconds on the trace clock"),
    ("since=nan", {}, "since='nan'"),
    ("after=-1", {}, "after='-1': give an event number"),
    ("after=1&since=0", {}, "give since (a trace time) or after (an event number), not both"),
    ("", {"last-event-id": "x7"}, "Last-Event-ID='x7'"),
])
async def test_a_bad_cursor_is_a_400_that_says_what_to_give(nursery, query, headers, message):
    proxy, app = make_proxy()
    client = await get(nursery, app, query=query, **headers)
    await client.done.wait()
    assert client.status == 400
    assert message in json.loads(client.body)["error"]
    assert proxy.control._subscribers == []  # nothing subscribed


async def test_a_follower_cut_off_for_lagging_is_reported_after_the_event_that_overflowed_it():
    """The others see the timeline in the order the proxy holds it (their event numbers depend on it)."""
    from faultlab.proxy.control import SUBSCRIBER_BUFFER

    proxy, _ = make_proxy()
    lagging, reading = proxy.control.subscribe(), proxy.control.subscribe()
    got = []
    for i in range(SUBSCRIBER_BUFFER + 1):
        emit(proxy, 1, start=i)
        while True:
            try:
                got.append(reading.receive_nowait())
            except trio.WouldBlock:
                break
    assert [e.kind for e in got[-2:]] == ["warning", "warning"]
    assert got[-2].detail["message"] == f"m{SUBSCRIBER_BUFFER}" and "fell 1000 events behind" in got[-1].detail["message"]
    first, held, _ = proxy.control.history()
    assert first == 1 and list(held) == got  # the same order as the proxy holds them
    with pytest.raises(trio.EndOfChannel):
        for _ in range(SUBSCRIBER_BUFFER + 1):
            lagging.receive_nowait()
