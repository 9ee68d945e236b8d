"""The event collector's schema and its ASGI app (driven directly, no sockets)."""

from __future__ import annotations

import json

import pytest

from faultlab.lab.collector import DeviceEvent, DeviceEventError, create_collector_app, parse_device_events
from faultlab.lab.timeline import Timeline

ENDED = {"device": "alice-iphone", "event": "ended", "uuid": "6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10",
         "call_id": "c1@pbx", "reason": "remoteEnded", "client_time": 1764166500.125}


@pytest.mark.parametrize(("obj", "needle"), [
    ([], "empty array"),
    ("ended", "JSON object"),
    ({**ENDED, "colour": "red"}, "unknown field(s) colour"),
    ({**ENDED, "device": ""}, "device"),
    ({**ENDED, "device": "a b"}, "device"),
    ({**ENDED, "event": "rang"}, "event: 'rang'"),
    ({k: v for k, v in ENDED.items() if k not in ("uuid", "call_id")}, "uuid or call_id"),
    ({**ENDED, "uuid": 5}, "uuid: a non-empty string"),
    ({**ENDED, "reason": None}, "reason: None"),
    ({**ENDED, "reason": "hungUp"}, "reason: 'hungUp'"),
    ({**ENDED, "event": "reported"}, "only with event ended"),
    ({**ENDED, "client_time": "now"}, "client_time"),
    ({**ENDED, "client_time": True}, "client_time"),
    ({**ENDED, "detail": [1]}, "detail"),
    ([ENDED, {**ENDED, "event": "x"}], "event 1: event"),
])
def test_bad_events_are_refused_with_the_reason(obj, needle):
    with pytest.raises(DeviceEventError) as info:
        parse_device_events(json.dumps(obj).encode())
    assert needle in str(info.value)


def test_not_json_and_empty():
    for data, needle in ((b"", "empty body"), (b"{", "not valid JSON")):
        with pytest.raises(DeviceEventError, match=needle):
            parse_device_events(data)


def test_round_trip_and_batches():
    [event] = parse_device_events(json.dumps(ENDED).encode())
    assert event.reason == "remoteEnded" and event.client_time == 1764166500.125
    assert DeviceEvent.from_json(event.to_json()) == event
    batch = [{"device": "d1", "event": "reported", "uuid": "u", "client_time": 1},
             {"device": "d1", "event": "answer-tapped", "uuid": "u", "client_time": 2}]
    assert [e.event for e in parse_device_events(json.dumps(batch).encode())] == ["reported", "answer-tapped"]


async def _call(app, method, path, data=b"", *, raw=False):
    sent = []
    messages = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    if raw:
        return status, dict((k.decode(), v.decode()) for k, v in sent[0]["headers"]), body
    return status, json.loads(body)


async def test_app_puts_accepted_events_on_the_timeline():
    timeline = Timeline()
    app = create_collector_app(timeline)
    assert await _call(app, "POST", "/events", json.dumps(ENDED).encode()) == (200, {"accepted": 1})
    [event] = timeline.events
    assert (event.kind, event.source, event.call_id) == ("device", "device:alice-iphone", "c1@pbx")
    assert event.detail["event"] == "ended" and event.detail["reason"] == "remoteEnded"
    assert event.detail["uuid"] == ENDED["uuid"] and event.detail["origin"] == "collector"


async def test_app_refuses_bad_events_and_records_nothing():
    timeline = Timeline()
    app = create_collector_app(timeline)
    status, answer = await _call(app, "POST", "/events", json.dumps({**ENDED, "reason": "bye"}).encode())
    assert status == 422 and answer["field"] == "reason" and "index" not in answer
    assert answer["error"].startswith("reason: 'bye' is not one of failed")
    status, answer = await _call(app, "POST", "/events", json.dumps([ENDED, ENDED, {**ENDED, "device": ""}]).encode())
    assert (status, answer["field"], answer["index"]) == (422, "device", 2)
    huge = json.dumps({**ENDED, "client_time": 10**400}).encode()  # an integer no float can hold: not a crash
    assert await _call(app, "POST", "/events", huge) == (422, {
        "error": "client_time: required, the device clock in UNIX seconds (a number)", "field": "client_time"})
    status, answer = await _call(app, "POST", "/events", b'{"device": "a\xbd"}')
    assert status == 400 and "not UTF-8" in answer["error"] and set(answer) == {"error"}
    status, _ = await _call(app, "POST", "/events", b"x" * (70 * 1024))
    assert status == 413
    assert list(timeline.events) == []


async def test_app_serves_the_schemas_as_shipped():
    from faultlab.lab.schema import schema_bytes

    app = create_collector_app(Timeline())
    for name in ("events", "push-stream"):
        status, headers, body = await _call(app, "GET", f"/schema/{name}.json", raw=True)
        assert status == 200 and headers["content-type"] == "application/schema+json"
        assert body == schema_bytes(name) and json.loads(body)["title"].startswith("faultlab")
    status, answer = await _call(app, "GET", "/schema/events")
    assert status == 404 and "/schema/events.json, /schema/push-stream.json" in answer["error"]
    status, index = await _call(app, "GET", "/")
    assert index["schema"] == "/schema/events.json"
