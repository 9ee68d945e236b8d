"""The prompt hub (seq, replay, bounds, slow followers) and ``GET /prompts``'s stream at the ASGI level, on trio's
MockClock: no sockets, no waiting."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from faultlab.lab.prompts import KEEPALIVE, PromptHub, PromptRequestError, PromptStream, prompt_stream
from tests.asgi import FakeAsgi


def hub(**kwargs) -> PromptHub:
    return PromptHub(wall_clock=lambda: 1764166500.0, **kwargs)


def test_prompts_are_numbered_and_say_what_to_do():
    h = hub()
    first = h.publish("answer", "S17: tap Answer now on the device", deadline=1764166502.0, scenario="S17",
                      transport="udp", uuid="0B6F-ABC", call_id="a84b4c76e66710")
    second = h.publish("decline", "S29: tap Decline now on the device", at=1764166510.5)
    assert first.to_json() == {
        "kind": "prompt", "seq": 1, "action": "answer", "scenario": "S17", "transport": "udp",
        "uuid": "0b6f-abc", "call_id": "a84b4c76e66710", "at": 1764166500.0, "deadline": 1764166502.0,
        "text": "S17: tap Answer now on the device"}
    assert (second.seq, second.at, second.uuid, second.deadline) == (2, 1764166510.5, None, None)
    assert json.loads(second.line()) == second.to_json() and second.line().endswith(b"\n")
    with pytest.raises(ValueError, match="not one of answer, decline, call, hang-up"):
        h.publish("tap", "?")


def test_a_hub_keeps_the_last_prompts_only_and_replays_from_a_seq():
    h = hub(limit=3)
    for i in range(5):
        h.publish("call", f"call {i + 1}")
    assert [p.seq for p in h.kept] == [3, 4, 5]
    assert [p.seq for p in h.since(4)] == [4, 5]
    assert [p.seq for p in h.since(1)] == [3, 4, 5]  # the older ones are gone
    assert h.since(6) == []


async def test_followers_get_the_replay_then_every_new_prompt():
    h = hub()
    h.publish("call", "one")
    replay_a, a = h.follow(1)
    replay_b, b = h.follow(2)
    assert [p.seq for p in replay_a] == [1] and replay_b == []
    h.publish("hang-up", "two")
    assert (await a.receive()).seq == 2 and (await b.receive()).seq == 2
    await b.aclose()
    h.publish("call", "three")  # a closed follower is forgotten, the others go on
    assert (await a.receive()).seq == 3
    assert h.followers == 1


async def test_a_slow_follower_is_dropped_not_the_publisher():
    h = hub(buffer=2)
    _, slow = h.follow()
    _, fast = h.follow()
    for i in range(3):
        h.publish("call", str(i))  # never waits, even with a follower that reads nothing
        assert (await fast.receive()).seq == i + 1
    assert [(await slow.receive()).seq for _ in range(2)] == [1, 2]
    with pytest.raises(trio.EndOfChannel):  # the third did not fit: that follower's stream ends
        await slow.receive()
    h.publish("call", "4")
    assert (await fast.receive()).seq == 4 and h.followers == 1


def test_request_parsing():
    h = hub()
    for i in range(3):
        h.publish("call", str(i))
    assert prompt_stream(h, {}, {}).start == 1
    assert prompt_stream(h, {"since": "2"}, {}).start == 2
    assert prompt_stream(h, {"since": "2"}, {"last-event-id": "2"}).start == 3  # a reconnecting EventSource wins
    assert prompt_stream(h, {}, {"accept": "text/event-stream"}).sse
    assert prompt_stream(h, {"format": "sse"}, {}).sse and not prompt_stream(h, {"format": "ndjson"}, {}).sse
    for query, headers, words in [({"since": "-1"}, {}, "since='-1'"), ({"since": "x"}, {}, "prompt seq"),
                                  ({}, {"last-event-id": "1e3"}, "Last-Event-ID"), ({"format": "xml"}, {}, "format=")]:
        with pytest.raises(PromptRequestError, match=words):
            prompt_stream(h, query, headers)


async def test_ndjson_stream_replays_follows_and_keeps_alive(nursery, autojump_clock):
    h = hub()
    h.publish("answer", "first")
    asgi = FakeAsgi()
    nursery.start_soon(PromptStream(h, 1, sse=False), {"type": "http"}, asgi.receive, asgi.send)
    await trio.testing.wait_all_tasks_blocked()
    assert (b"content-type", b"application/x-ndjson; charset=utf-8") in asgi.sent[0]["headers"]
    assert asgi.body() == h.kept[0].line()
    later = h.publish("decline", "second")
    body = await asgi.wait_body(len(asgi.body()) + 1)
    assert body.splitlines()[1] == later.line().rstrip(b"\n")
    start = trio.current_time()
    body = await asgi.wait_body(len(body) + 1)  # silence: an empty line, 15 s later
    assert body.endswith(b"}\n\n") and trio.current_time() - start == KEEPALIVE
    asgi.disconnect.set()
    await trio.testing.wait_all_tasks_blocked()
    assert h.followers == 0


async def test_sse_records_from_last_event_id_and_keepalive_comments(nursery, autojump_clock):
    h = hub()
    for action in ("call", "answer", "hang-up"):
        h.publish(action, action)
    asgi = FakeAsgi()
    stream = prompt_stream(h, {}, {"accept": "text/event-stream", "last-event-id": "1"})
    nursery.start_soon(stream, {"type": "http"}, asgi.receive, asgi.send)
    await trio.testing.wait_all_tasks_blocked()
    assert (b"content-type", b"text/event-stream; charset=utf-8") in asgi.sent[0]["headers"]
    records = asgi.body().decode().split("\n\n")
    assert records[0].splitlines()[:2] == ["id: 2", "event: prompt"]
    assert json.loads(records[0].splitlines()[2][len("data: "):]) == h.kept[1].to_json()
    assert records[1].startswith("id: 3\n") and records[2] == ""
    n = len(asgi.body())
    assert (await asgi.wait_body(n + 1))[n:] == b": keep-alive\n\n"
    assert trio.current_time() == KEEPALIVE


async def test_a_dropped_follower_s_stream_ends(nursery, autojump_clock):
    h = hub(buffer=1)
    asgi = FakeAsgi()
    blocked = trio.Event()

    async def stuck_send(message):  # a client that stops reading: the stream's writes block
        await asgi.send(message)
        if message.get("body"):
            await blocked.wait()

    nursery.start_soon(PromptStream(h, 1, sse=False), {"type": "http"}, asgi.receive, stuck_send)
    await trio.testing.wait_all_tasks_blocked()
    for i in range(3):
        h.publish("call", str(i))
    await trio.testing.wait_all_tasks_blocked()
    assert h.followers == 0  # dropped; the publisher never waited
    blocked.set()
    await trio.testing.wait_all_tasks_blocked()
    assert asgi.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
