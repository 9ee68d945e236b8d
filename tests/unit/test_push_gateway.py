"""The push gateway's APNs semantics and push faults, without sockets (handle() and channels)."""

from __future__ import annotations

import json

import pytest
import trio

from faultlab.lab.push import MAX_PAYLOAD, Push, PushFaults, PushGateway, push_kind
from faultlab.lab.timeline import Timeline

TOKEN = "ab" * 32
GOOD = {"apns-push-type": "voip", "apns-topic": "com.example.app.voip", "apns-priority": "10",
        "apns-expiration": "0"}
CALL = {"aps": {}, "type": "call", "call-id": "c1@pbx", "uuid": "6f1c0a4e-0d0b-4c77-9b6e-2f3a0e5b1d10",
        "from-uri": "sip:bob@example.com", "display-name": "Bob", "send-time": 1764166500}
CANCEL = {**CALL, "type": "cancel"}


def body(payload=CALL) -> bytes:
    return json.dumps(payload).encode()


def headers(**changes):
    out = dict(GOOD)
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def gateway(faults=PushFaults(), **kw):
    gw = PushGateway(Timeline(), faults=faults, **kw)
    return gw, gw.channel(TOKEN)


BAD = [
    ("GET", f"/3/device/{TOKEN}", headers(), body(), 405, "MethodNotAllowed"),
    ("POST", f"/4/device/{TOKEN}", headers(), body(), 404, "BadPath"),
    ("POST", f"/3/device/{TOKEN}/x", headers(), body(), 404, "BadPath"),
    ("POST", "/3/device/", headers(), body(), 400, "MissingDeviceToken"),
    ("POST", "/3/device/abc", headers(), body(), 400, "BadDeviceToken"),
    ("POST", "/3/device/zz", headers(), body(), 400, "BadDeviceToken"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_push_type=None), body(), 400, "InvalidPushType"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_push_type="alert"), body(), 400, "InvalidPushType"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_topic=None), body(), 400, "MissingTopic"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_topic="com.example.app"), body(), 400, "BadTopic"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_priority="7"), body(), 400, "BadPriority"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_expiration="soon"), body(), 400, "BadExpirationDate"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_id="not-a-uuid"), body(), 400, "BadMessageId"),
    ("POST", f"/3/device/{TOKEN}", headers(apns_collapse_id="x" * 65), body(), 400, "BadCollapseId"),
    ("POST", f"/3/device/{TOKEN}", headers(), b"", 400, "PayloadEmpty"),
    ("POST", f"/3/device/{TOKEN}", headers(), b"not json", 400, "PayloadEmpty"),
    ("POST", f"/3/device/{TOKEN}", headers(), b"[1]", 400, "PayloadEmpty"),
    ("POST", f"/3/device/{TOKEN}", headers(), b"[" * 2000 + b"]" * 2000, 400, "PayloadEmpty"),  # too deep to parse
    ("POST", f"/3/device/{TOKEN}", headers(), b"{" + b" " * MAX_PAYLOAD + b"}", 413, "PayloadTooLarge"),
    ("POST", f"/3/device/{'cd' * 32}", headers(), body(), 410, "Unregistered"),
]


@pytest.mark.parametrize(("method", "path", "hdrs", "data", "status", "reason"), BAD,
                         ids=[f"{row[4]}-{row[5]}-{i}" for i, row in enumerate(BAD)])
async def test_malformed_requests_are_answered_as_apns_would(method, path, hdrs, data, status, reason):
    gw, channel = gateway()
    got_status, got_headers, got_body = await gw.handle(method, path, hdrs, data)
    assert (got_status, json.loads(got_body)["reason"]) == (status, reason)
    assert got_headers["content-type"] == "application/json"
    assert ("timestamp" in json.loads(got_body)) == (status == 410)
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    [event] = [e for e in gw.timeline.events if e.kind == "push"]
    assert event.detail["outcome"] == "rejected"
    assert (event.detail["status"], event.detail["reason"]) == (status, reason)


async def test_duplicate_headers_are_refused():
    gw, _ = gateway()
    pairs = [*GOOD.items(), ("apns-topic", "com.other.voip")]
    status, _, data = await gw.handle("POST", f"/3/device/{TOKEN}", pairs, body())
    assert (status, json.loads(data)["reason"]) == (400, "DuplicateHeaders")


async def test_token_registered_for_another_topic():
    gw = PushGateway(Timeline())
    gw.channel(TOKEN, topic="com.other.app.voip")
    status, _, data = await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body())
    assert (status, json.loads(data)["reason"]) == (400, "DeviceTokenNotForTopic")


async def test_a_good_push_is_delivered_with_its_apns_id():
    gw, channel = gateway()
    apns_id = "8F2E5F5A-1B2C-4D3E-8F90-0123456789AB"
    status, hdrs, data = await gw.handle("POST", f"/3/device/{TOKEN.upper()}", headers(apns_id=apns_id), body())
    assert (status, data) == (200, b"")
    assert hdrs["apns-id"] == apns_id.lower()
    push = channel.receive_nowait()
    assert (push.token, push.kind, push.payload, push.apns_id) == (TOKEN, "call", CALL, apns_id.lower())
    assert push.call_id == "c1@pbx"
    assert Push.from_json(json.loads(json.dumps(push.to_json()))) == push
    [event] = gw.timeline.events
    assert (event.kind, event.source, event.call_id) == ("push", "push", "c1@pbx")
    assert event.detail["outcome"] == "delivered" and event.detail["push_kind"] == "call"
    assert event.detail["lint"] == []


async def test_an_absent_apns_id_is_generated():
    gw, channel = gateway()
    status, hdrs, _ = await gw.handle("POST", f"/3/device/{TOKEN}", headers(apns_id=None), body())
    assert status == 200 and hdrs["apns-id"] == channel.receive_nowait().apns_id


@pytest.mark.parametrize(("changes", "needle"), [
    ({"apns_expiration": "1764166590"}, "apns-expiration is 1764166590"),
    ({"apns_expiration": None}, "apns-expiration is missing"),
    ({"apns_priority": "5"}, "apns-priority is 5"),
])
async def test_lints_are_timeline_warnings_and_the_push_still_goes(changes, needle):
    gw, channel = gateway()
    status, _, _ = await gw.handle("POST", f"/3/device/{TOKEN}", headers(**changes), body())
    assert status == 200
    channel.receive_nowait()
    [warning] = [e for e in gw.timeline.events if e.kind == "warning"]
    assert warning.source == "push" and needle in warning.detail["message"]
    [push] = [e for e in gw.timeline.events if e.kind == "push"]
    assert push.detail["lint"] == [warning.detail["message"]]


def test_push_kind():
    assert push_kind(CALL) == "call"
    assert push_kind(CANCEL) == "cancel"
    assert push_kind({"cancel": True, "call-id": "x"}) == "cancel"
    assert push_kind({"aps": {"alert": "hi"}}) == "call"


async def test_drop_cancel_drops_only_cancel_pushes():
    gw, channel = gateway(PushFaults(drop_cancel=True))
    for payload in (CALL, CANCEL):
        status, _, _ = await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body(payload))
        assert status == 200  # the sender cannot tell
    assert channel.receive_nowait().kind == "call"
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    outcomes = [(e.detail["push_kind"], e.detail["outcome"]) for e in gw.timeline.events if e.kind == "push"]
    assert outcomes == [("call", "delivered"), ("cancel", "dropped")]


async def test_drop_all():
    gw, channel = gateway(PushFaults(drop_all=True))
    for payload in (CALL, CANCEL):
        assert (await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body(payload)))[0] == 200
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    assert [e.detail["outcome"] for e in gw.timeline.events if e.kind == "push"] == ["dropped", "dropped"]


async def test_duplicate_delivers_extra_copies():
    gw, channel = gateway(PushFaults(duplicate=2))
    await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body())
    copies = [channel.receive_nowait() for _ in range(3)]
    assert len({p.apns_id for p in copies}) == 1
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    [event] = gw.timeline.events
    assert event.detail["outcome"] == "duplicated" and event.detail["copies"] == 3


async def test_delay_delivers_exactly_later_in_virtual_time(autojump_clock):
    gw = PushGateway(Timeline(), faults=PushFaults(delay=2.5))
    channel = gw.channel(TOKEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.run)
        start = trio.current_time()
        status, _, _ = await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body())
        assert status == 200 and trio.current_time() == start  # answered at once
        push = await channel.receive()
        assert trio.current_time() - start == pytest.approx(2.5, abs=1e-9)
        assert push.received_at == pytest.approx(start - gw.timeline.t0)
        nursery.cancel_scope.cancel()
    kinds = [(e.kind, e.detail.get("outcome")) for e in gw.timeline.events]
    assert kinds == [("push", "delayed"), ("push-delivered", None)]
    assert gw.timeline.events[1].t - gw.timeline.events[0].t == pytest.approx(2.5)


NOW = 1_800_000_000.0  # the gateway's wall clock in the tests below (UNIX seconds)


@pytest.mark.parametrize(("expiration", "outcome", "delivered"), [
    (str(int(NOW) + 60), "stored", True),  # APNs keeps it until then: delivered when the device is back
    (None, "stored", True),  # no header: APNs's own storage
    ("0", "discarded", False),  # deliver now or never
    (str(int(NOW) + 30), "discarded", False),  # expired before the device came back
])
async def test_offline_stores_only_what_apns_stores(autojump_clock, expiration, outcome, delivered):
    gw = PushGateway(Timeline(), faults=PushFaults(offline=45.0), wall_clock=lambda: NOW)
    channel = gw.channel(TOKEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.run)
        start = trio.current_time()
        status, _, _ = await gw.handle("POST", f"/3/device/{TOKEN}", headers(apns_expiration=expiration), body())
        assert status == 200  # the sender cannot tell
        with trio.move_on_after(60):
            await channel.receive()
            assert trio.current_time() - start == pytest.approx(45.0)
        nursery.cancel_scope.cancel()
    first = gw.timeline.events[-2 if delivered else -1]
    assert (first.detail["outcome"], first.detail["expiration"]) == (outcome, expiration)
    late = [e for e in gw.timeline.events if e.kind == "push-delivered"]
    assert bool(late) == delivered and all(e.detail["status"] == 200 for e in late)


@pytest.mark.parametrize(("refusal", "extra"), [((410, "Unregistered"), {"timestamp"}), ((400, "BadDeviceToken"), set()),
                                                ((413, "PayloadTooLarge"), set())])
async def test_refuse_answers_every_push_as_apns_would(refusal, extra):
    gw, channel = gateway(PushFaults(refuse=refusal))
    status, _, data = await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body())
    answer = json.loads(data)
    assert (status, answer["reason"]) == refusal and set(answer) - {"reason"} == extra
    with pytest.raises(trio.WouldBlock):
        channel.receive_nowait()
    [event] = [e for e in gw.timeline.events if e.kind == "push"]
    assert (event.detail["status"], event.detail["outcome"], event.call_id) == (refusal[0], "rejected", "c1@pbx")


async def test_an_oversize_push_is_refused_and_still_names_its_call():
    gw, _ = gateway()
    big = {**CALL, "pad": "x" * MAX_PAYLOAD}
    status, _, data = await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body(big))
    assert (status, json.loads(data)["reason"]) == (413, "PayloadTooLarge")
    [event] = [e for e in gw.timeline.events if e.kind == "push"]
    assert (event.call_id, event.detail["push_kind"], event.detail["size"]) == ("c1@pbx", "call", len(body(big)))


async def test_delay_without_the_gateway_nursery_says_so():
    gw, _ = gateway(PushFaults(delay=1.0))
    with pytest.raises(RuntimeError, match="PushGateway.run"):
        await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body())


async def test_a_closed_channel_makes_the_token_unregistered():
    gw, channel = gateway()
    channel.close()
    status, _, data = await gw.handle("POST", f"/3/device/{TOKEN}", headers(), body())
    assert (status, json.loads(data)["reason"]) == (410, "Unregistered")
    assert TOKEN not in gw.tokens


def test_fault_values_are_checked():
    with pytest.raises(ValueError):
        PushFaults(delay=-1)
    with pytest.raises(ValueError):
        PushFaults(duplicate=-1)
    with pytest.raises(ValueError):
        PushFaults(offline=float("inf"))
    with pytest.raises(ValueError):
        PushFaults(refuse=(200, "OK"))


async def test_local_sender_for_a_pbx_in_the_same_process():
    from faultlab.lab.push import PushRejected

    gw, channel = gateway()
    send_push = gw.local_sender(topic="com.example.app.voip")
    await send_push(TOKEN, CANCEL)
    assert channel.receive_nowait().kind == "cancel"
    with pytest.raises(PushRejected) as info:
        await send_push("cd" * 32, CALL)
    assert (info.value.status, info.value.reason) == (410, "Unregistered")
