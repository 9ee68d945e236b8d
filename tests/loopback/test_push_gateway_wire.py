"""The push gateway on loopback: PushClient over h2c and h2/TLS, relay mode to a mock APNs, the NDJSON
stream for devices in other processes, and the event collector over HTTP."""

from __future__ import annotations

import json

import h11
import pytest
import trio
import trustme

from faultlab.lab.collector import serve_collector
from faultlab.lab.push import (
    PushClient,
    PushError,
    PushFaults,
    PushGateway,
    PushRejected,
    open_push_stream,
    serve_push_gateway,
)
from faultlab.lab.timeline import Timeline

TOKEN = "ab" * 32
TOPIC = "com.example.app.voip"
CALL = {"aps": {}, "type": "call", "call-id": "c1@pbx", "uuid": "6f1c0a4e-0d0b-4c77-9b6e-2f3a0e5b1d10",
        "from-uri": "sip:bob@example.com", "display-name": "Bob", "send-time": 1764166500}
CANCEL = {**CALL, "type": "cancel"}


async def test_client_delivers_over_h2c_on_one_connection():
    gw = PushGateway(Timeline())
    channel = gw.channel(TOKEN)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_push_gateway, gw, "127.0.0.1", 0)
            async with PushClient(f"http://{host}:{port}") as client:
                status, answer = await client.send(TOKEN, CALL, topic=TOPIC)
                assert status == 200
                push = await channel.receive()
                assert push.payload == CALL and push.apns_id == answer["apns-id"]
                assert push.headers["apns-topic"] == TOPIC
                status, answer = await client.send("cd" * 32, CALL, topic=TOPIC)
                assert status == 410 and answer["reason"] == "Unregistered" and isinstance(answer["timestamp"], int)
                assert await client.send(TOKEN, CALL, topic="com.example.app") == (400, {"reason": "BadTopic"})
                assert client.connections == 1  # one connection, reused
            nursery.cancel_scope.cancel()


async def test_client_delivers_over_tls_with_alpn_h2(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "gw.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    gw = PushGateway(Timeline())
    channel = gw.channel(TOKEN)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                lambda task_status: serve_push_gateway(gw, "127.0.0.1", 0, tls=True, certfile=str(tmp_path / "gw.pem"),
                                                       keyfile=str(tmp_path / "gw.pem"), task_status=task_status))
            async with PushClient(f"https://{host}:{port}", ca=str(tmp_path / "ca.pem")) as client:
                assert (await client.send(TOKEN, CANCEL, topic=TOPIC))[0] == 200
            assert (await channel.receive()).kind == "cancel"
            nursery.cancel_scope.cancel()


async def test_client_reports_a_refused_connection():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(5):
        async with PushClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(PushError, match="cannot connect"):
                await client.send(TOKEN, CALL, topic=TOPIC)


async def test_faults_apply_on_the_wire():
    gw = PushGateway(Timeline(), faults=PushFaults(drop_cancel=True, duplicate=1))
    channel = gw.channel(TOKEN)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_push_gateway, gw, "127.0.0.1", 0)
            async with PushClient(f"http://{host}:{port}") as client:
                assert (await client.send(TOKEN, CANCEL, topic=TOPIC))[0] == 200
                assert (await client.send(TOKEN, CALL, topic=TOPIC))[0] == 200
            assert [(await channel.receive()).kind for _ in range(2)] == ["call", "call"]
            with pytest.raises(trio.WouldBlock):
                channel.receive_nowait()
            nursery.cancel_scope.cancel()
    assert [e.detail["outcome"] for e in gw.timeline.events if e.kind == "push"] == ["dropped", "duplicated"]


async def test_relay_mode_forwards_to_a_mock_apns():
    timeline = Timeline()
    apns = PushGateway(timeline)  # the mock APNs, with the device's channel
    channel = apns.channel(TOKEN)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ahost, aport = await nursery.start(serve_push_gateway, apns, "127.0.0.1", 0)
            relay = PushGateway(timeline, faults=PushFaults(drop_cancel=True), relay_url=f"http://{ahost}:{aport}")
            rhost, rport = await nursery.start(serve_push_gateway, relay, "127.0.0.1", 0)
            async with PushClient(f"http://{rhost}:{rport}", authorization="bearer test-jwt") as client:
                status, answer = await client.send(TOKEN, CALL, topic=TOPIC, expiration=30)
                assert status == 200
                push = await channel.receive()
                assert push.apns_id == answer["apns-id"]  # the relay passes the apns-id through
                assert push.headers["authorization"] == "bearer test-jwt"
                assert push.headers["apns-expiration"] == "30"
                assert (await client.send(TOKEN, CANCEL, topic=TOPIC))[0] == 200  # dropped by the relay
                status, answer = await client.send("cd" * 32, CALL, topic=TOPIC)  # APNs's refusal comes back
                assert status == 410 and answer["reason"] == "Unregistered" and "timestamp" in answer
            with pytest.raises(trio.WouldBlock):
                channel.receive_nowait()
            nursery.cancel_scope.cancel()
    relayed = [e.detail for e in timeline.events if e.kind == "push" and e.detail.get("relay")]
    assert [(d["outcome"], d["status"]) for d in relayed] == [("relayed", 200), ("relayed", 410)]
    warnings = [e.detail["message"] for e in timeline.events if e.kind == "warning"]
    assert any("apns-expiration is 30" in w for w in warnings)


async def test_ndjson_stream_delivers_to_a_device_elsewhere():
    gw = PushGateway(Timeline())
    gone = trio.Event()
    gw.timeline.trace.add_sink(lambda e: gone.set() if e.kind == "push-unsubscribe" else None)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_push_gateway, gw, "127.0.0.1", 0)
            url = f"http://{host}:{port}"
            async with open_push_stream(url, TOKEN) as pushes:
                assert TOKEN in gw.tokens  # registered as soon as the headers are in
                async with PushClient(url) as client:
                    assert (await client.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                    assert (await client.send(TOKEN, CANCEL, topic=TOPIC))[0] == 200
                got = [await pushes.__anext__(), await pushes.__anext__()]
                assert [(p.kind, p.call_id) for p in got] == [("call", "c1@pbx"), ("cancel", "c1@pbx")]
            # the device hung up: the gateway notices and forgets the token
            await gone.wait()
            assert TOKEN not in gw.tokens
            nursery.cancel_scope.cancel()


async def _post(host, port, path, body):
    stream = await trio.open_tcp_stream(host, port)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="POST", target=path, headers=[
            ("host", f"{host}:{port}"), ("content-type", "application/json"), ("content-length", str(len(body)))])))
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, data = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                data += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, json.loads(data)


async def test_collector_over_http():
    timeline = Timeline()
    good = {"device": "alice", "event": "reported", "uuid": "u1", "call_id": "c1@pbx", "client_time": 1764166500}
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_collector, timeline, "127.0.0.1", 0)
            assert await _post(host, port, "/events", json.dumps(good).encode()) == (200, {"accepted": 1})
            status, answer = await _post(host, port, "/events", json.dumps({**good, "event": "rang"}).encode())
            assert status == 422 and answer["field"] == "event" and "event: 'rang'" in answer["error"]
            nursery.cancel_scope.cancel()
    [event] = timeline.events
    assert (event.kind, event.source, event.call_id, event.detail["event"]) == (
        "device", "device:alice", "c1@pbx", "reported")


async def test_sender_is_the_pbx_send_push_callable():
    gw = PushGateway(Timeline())
    channel = gw.channel(TOKEN)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_push_gateway, gw, "127.0.0.1", 0)
            async with PushClient(f"http://{host}:{port}") as client:
                send_push = client.sender(topic=TOPIC)
                await send_push(TOKEN, CALL)
                assert (await channel.receive()).payload == CALL
                with pytest.raises(PushRejected) as info:
                    await send_push("cd" * 32, CALL)
                assert (info.value.status, info.value.reason) == (410, "Unregistered")
            nursery.cancel_scope.cancel()


async def test_client_reconnects_when_its_connection_is_gone():
    gw = PushGateway(Timeline())
    channel = gw.channel(TOKEN)
    with trio.fail_after(5):
        async with trio.open_nursery() as outer:
            # the gateway restarts on the same port: the client's connection is gone under it
            async with trio.open_nursery() as first:
                host, port = await first.start(serve_push_gateway, gw, "127.0.0.1", 0)
                client = PushClient(f"http://{host}:{port}")
                assert (await client.send(TOKEN, CALL, topic=TOPIC))[0] == 200
                first.cancel_scope.cancel()
            await outer.start(serve_push_gateway, gw, "127.0.0.1", port)
            async with client:
                assert (await client.send(TOKEN, CANCEL, topic=TOPIC))[0] == 200
                assert client.connections == 2
            assert [(await channel.receive()).kind for _ in range(2)] == ["call", "cancel"]
            outer.cancel_scope.cancel()
