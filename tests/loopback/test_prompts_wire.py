"""``GET /prompts`` on the event collector and the ``"kind": "prompt"`` line of the push stream, with a real HTTP
client (httpx) on 127.0.0.1."""

from __future__ import annotations

import json

import httpx
import trio

from faultlab.lab.collector import serve_collector
from faultlab.lab.prompts import PromptHub
from faultlab.lab.push import PushClient, PushGateway, serve_push_gateway
from faultlab.lab.timeline import Timeline

TOKEN = "ab" * 32
CALL = {"aps": {}, "type": "call", "call-id": "c1@pbx", "uuid": "6f1c0a4e-0d0b-4c77-9b6e-2f3a0e5b1d10",
        "from-uri": "sip:bob@example.com", "display-name": "Bob", "send-time": 1764166500}


async def _lines(response: httpx.Response, n: int) -> list[str]:
    out: list[str] = []
    async for line in response.aiter_lines():
        out.append(line)
        if len(out) == n:
            break
    return out


async def test_the_collector_streams_prompts_as_ndjson_and_sse():
    hub = PromptHub()
    first = hub.publish("answer", "S17: tap Answer now on the device", scenario="S17", call_id="c1@pbx",
                        uuid="6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: serve_collector(
                Timeline(), "127.0.0.1", 0, prompts=hub, task_status=task_status))
            url = f"http://{host}:{port}/prompts"
            async with httpx.AsyncClient(timeout=None) as client:
                # NDJSON: the prompts published so far, then the new ones, on a connection that stays open
                async with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
                    lines = response.aiter_lines()
                    assert json.loads(await lines.__anext__()) == first.to_json()
                    second = hub.publish("decline", "S29: tap Decline now on the device")
                    assert json.loads(await lines.__anext__()) == second.to_json()
                # ?since=2: from seq 2 on
                async with client.stream("GET", url, params={"since": "2"}) as response:
                    assert [json.loads(x)["seq"] for x in await _lines(response, 1)] == [2]
                # SSE (?format=sse or Accept), resumed after Last-Event-ID
                async with client.stream("GET", url, params={"format": "sse"}) as response:
                    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                    assert await _lines(response, 4) == ["id: 1", "event: prompt",
                                                         "data: " + first.line().decode().rstrip("\n"), ""]
                async with client.stream("GET", url, headers={"accept": "text/event-stream",
                                                              "last-event-id": "1"}) as response:
                    assert (await _lines(response, 1)) == ["id: 2"]
                bad = await client.get(url, params={"since": "soon"})
                assert bad.status_code == 400 and "since='soon'" in bad.json()["error"]
            nursery.cancel_scope.cancel()
    assert hub.followers == 0  # the clients that left are no followers any more


async def test_a_prompt_goes_on_the_device_push_stream_as_a_prompt_line():
    gw = PushGateway(Timeline())
    hub = PromptHub()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_push_gateway, gw, "127.0.0.1", 0)
            url = f"http://{host}:{port}"
            async with httpx.AsyncClient(timeout=None) as client:
                async with client.stream("GET", f"{url}/devices/{TOKEN}/pushes") as response:
                    async with PushClient(url) as sender:
                        assert (await sender.send(TOKEN, CALL, topic="com.example.app.voip"))[0] == 200
                    prompt = hub.publish("answer", "S17: tap Answer now on the device", call_id="c1@pbx",
                                         uuid=CALL["uuid"])
                    assert gw.send_prompt(TOKEN.upper(), prompt)  # tokens match whatever their case
                    assert not gw.send_prompt("cd" * 32, prompt)  # no such device: nowhere to put it
                    push, line = [json.loads(x) for x in await _lines(response, 2)]
            nursery.cancel_scope.cancel()
    assert (push["kind"], push["payload"]["call-id"]) == ("call", "c1@pbx")
    assert line == prompt.to_json() and line["kind"] == "prompt"


async def test_prompts_are_not_pushes_for_an_in_process_device():
    gw = PushGateway(Timeline())
    channel = gw.channel(TOKEN)
    assert not gw.send_prompt(TOKEN, PromptHub().publish("answer", "tap Answer"))
    assert channel.statistics().current_buffer_used == 0


async def test_faultlab_s_own_stream_reader_passes_over_prompt_lines():
    from faultlab.lab.push import open_push_stream

    gw = PushGateway(Timeline())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_push_gateway, gw, "127.0.0.1", 0)
            url = f"http://{host}:{port}"
            async with open_push_stream(url, TOKEN) as pushes:
                assert gw.send_prompt(TOKEN, PromptHub().publish("answer", "tap Answer"))
                async with PushClient(url) as sender:
                    assert (await sender.send(TOKEN, CALL, topic="com.example.app.voip"))[0] == 200
                push = await pushes.__anext__()
            nursery.cancel_scope.cancel()
    assert (push.kind, push.call_id) == ("call", "c1@pbx")
