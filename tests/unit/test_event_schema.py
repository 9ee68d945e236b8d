"""The published JSON Schemas (faultlab/lab/schema): valid Draft 2020-12 schemas, in agreement with the collector's
hand validation event for event (a corpus of every rule, and random events), and true to the push-stream lines
the gateway writes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from faultlab.lab.collector import DeviceEvent, DeviceEventError, parse_device_events
from faultlab.lab.push import PushGateway
from faultlab.lab.schema import SCHEMAS, event_problems, load_schema, validator
from faultlab.lab.timeline import Timeline

U = "6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10"
BASE = {"device": "alice-iphone", "event": "reported", "uuid": U, "call_id": "a84b@pbx", "client_time": 1764166500.125}
ENDED = {**BASE, "event": "ended", "reason": "remoteEnded"}


def without(obj, *keys):
    return {k: v for k, v in obj.items() if k not in keys}


VALID = [
    BASE, ENDED, without(BASE, "call_id"), without(BASE, "uuid"), {**without(BASE, "call_id"), "call_id": None},
    {**BASE, "uuid": None}, {**BASE, "reason": None}, {**BASE, "client_time": 0}, {**BASE, "client_time": 1764166500},
    {**BASE, "detail": {}}, {**BASE, "detail": {"local": "user-hung-up", "n": [1, {"x": None}]}},
    {**BASE, "device": "A.b_c-9" * 9 + "x"}, {**BASE, "uuid": "x"},
    *({**BASE, "event": e} for e in ("reported", "answer-tapped", "answer-fulfilled", "answer-failed")),
    *({**ENDED, "reason": r} for r in ("failed", "remoteEnded", "unanswered", "answeredElsewhere",
                                        "declinedElsewhere", "declined")),
]

# (event, the field the refusal is about: None for the event as a whole)
INVALID = [
    ("reported", None), (5, None), ([], None), (None, None), ([BASE], None),
    ({**BASE, "colour": "red"}, "colour"), ({**BASE, "Device": "x"}, "Device"),
    (without(BASE, "device"), "device"), ({**BASE, "device": ""}, "device"), ({**BASE, "device": "x" * 65}, "device"),
    ({**BASE, "device": "a b"}, "device"), ({**BASE, "device": "caf\u00e9"}, "device"), ({**BASE, "device": 5}, "device"),
    ({**BASE, "device": None}, "device"), ({**BASE, "device": "a\n"}, "device"),
    (without(BASE, "event"), "event"), ({**BASE, "event": "rang"}, "event"), ({**BASE, "event": None}, "event"),
    ({**BASE, "event": 5}, "event"), ({**BASE, "event": "Ended"}, "event"),
    ({**BASE, "uuid": 5}, "uuid"), ({**BASE, "uuid": ""}, "uuid"), ({**BASE, "uuid": [U]}, "uuid"),
    ({**BASE, "call_id": 5}, "call_id"), ({**BASE, "call_id": ""}, "call_id"),
    (without(BASE, "uuid", "call_id"), "uuid"), ({**BASE, "uuid": None, "call_id": None}, "uuid"),
    (without(ENDED, "reason"), "reason"), ({**ENDED, "reason": None}, "reason"), ({**ENDED, "reason": "hungUp"}, "reason"),
    ({**ENDED, "reason": 5}, "reason"), ({**BASE, "reason": "remoteEnded"}, "reason"),
    ({**BASE, "event": "answer-failed", "reason": "failed"}, "reason"),
    (without(BASE, "client_time"), "client_time"), ({**BASE, "client_time": "now"}, "client_time"),
    ({**BASE, "client_time": True}, "client_time"), ({**BASE, "client_time": -1}, "client_time"),
    ({**BASE, "client_time": None}, "client_time"), ({**BASE, "client_time": math.inf}, "client_time"),
    ({**BASE, "client_time": "1764166500"}, "client_time"), ({**BASE, "client_time": 10**400}, "client_time"),
    ({**BASE, "detail": [1]}, "detail"), ({**BASE, "detail": None}, "detail"), ({**BASE, "detail": "x"}, "detail"),
]


def hand(obj):
    """The collector's verdict: None (accepted) or the field it names."""
    try:
        DeviceEvent.from_json(obj)
    except DeviceEventError as exc:
        return exc.field or "(event)"
    return None


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_schemas_are_valid_draft_2020_12_and_document_every_field(name):
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for definition in schema["$defs"].values():
        assert definition["title"] and definition["description"]
        for field, spec in definition["properties"].items():
            assert spec.get("title") and len(spec.get("description", "")) > 15, (name, field)


@pytest.mark.parametrize("event", VALID)
def test_valid_events_pass_both(event):
    assert hand(event) is None
    assert event_problems(event) == []
    assert not list(validator("events").iter_errors(event))
    assert not list(validator("events").iter_errors([event, event]))  # and as a batch


@pytest.mark.parametrize(("event", "field"), INVALID)
def test_invalid_events_fail_both_naming_the_same_field(event, field):
    problems = event_problems(event)
    assert hand(event) == (field or "(event)")
    assert problems, "the schema accepts what the collector refuses"
    assert field in {p.field for p in problems}, problems
    assert list(validator("events").iter_errors([BASE, event]))


def test_batches_agree_and_name_the_index():
    assert not list(validator("events").iter_errors([BASE, ENDED]))
    for body, index in (([BASE, ENDED, {**BASE, "device": ""}], 2), ([{**ENDED, "reason": None}], 0)):
        assert list(validator("events").iter_errors(body))
        with pytest.raises(DeviceEventError) as info:
            parse_device_events(json.dumps(body).encode())
        assert info.value.index == index and info.value.status == 422
    assert list(validator("events").iter_errors([]))  # an empty batch records nothing: refused by both
    with pytest.raises(DeviceEventError):
        parse_device_events(b"[]")


_VALUES = st.sampled_from([None, "", "x", "a b", "alice-iphone", "reported", "answer-tapped", "ended", "remoteEnded",
                           "declined", "hungUp", 0, -1, 1.5, 1764166500, True, math.inf, 10**400, {}, {"a": 1}, [], [1]])
_KEYS = st.sampled_from(["device", "event", "uuid", "call_id", "reason", "client_time", "detail", "colour"])


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from([BASE, ENDED, {}]), changes=st.dictionaries(_KEYS, _VALUES, max_size=4),
       dropped=st.sets(_KEYS, max_size=2))
def test_random_events_get_the_same_verdict_from_both(base, changes, dropped):
    event = {**without(base, *dropped), **changes}
    field = hand(event)
    problems = event_problems(event)
    assert (field is None) == (not problems), (event, field, problems)
    if field is not None:
        assert (None if field == "(event)" else field) in {p.field for p in problems}, (event, field, problems)


# -- push-stream lines ---------------------------------------------------------------------------------------------

PROMPT = {"kind": "prompt", "seq": 1, "action": "answer", "scenario": "S17", "transport": "udp",
          "uuid": "0b6f2c1e-8a57-4a8e-9c1d-3f0e5b1d1e2f", "call_id": "a84b4c76e66710", "at": 1764166500.125,
          "deadline": 1764166502.125, "text": "S17: tap Answer now on the device"}


async def test_a_push_as_the_gateway_streams_it_follows_the_schema():
    gw = PushGateway(Timeline())
    token = "AB" * 32
    channel = gw.channel(token.lower())
    payload = {"aps": {}, "type": "cancel", "call-id": "c1@pbx", "uuid": U, "from-uri": "sip:bob@example.com"}
    headers = {"apns-push-type": "voip", "apns-topic": "com.example.app.voip", "apns-expiration": "0",
               "apns-id": "0B6F2C1E-8A57-4A8E-9C1D-3F0E5B1D1E2F", "authorization": "bearer x"}
    status, _, _ = await gw.handle("POST", f"/3/device/{token}", headers, json.dumps(payload).encode())
    assert status == 200
    line = json.loads(json.dumps(channel.receive_nowait().to_json()))  # as _stream writes it
    assert line["kind"] == "cancel"
    assert not list(validator("push-stream").iter_errors(line))
    for bad in ({**line, "kind": "voip"}, {**line, "token": token}, without(line, "apns_id"), {**line, "extra": 1},
                {**line, "headers": {"Apns-Topic": "x"}}, {**line, "payload": []}):
        assert list(validator("push-stream").iter_errors(bad)), bad


def test_a_prompt_line_follows_the_schema():
    assert not list(validator("push-stream").iter_errors(PROMPT))
    call = {**PROMPT, "action": "call", "uuid": None, "call_id": None, "scenario": None, "transport": None}
    assert not list(validator("push-stream").iter_errors(call))
    for bad in ({**PROMPT, "action": "tap"}, {**PROMPT, "seq": 0}, without(PROMPT, "deadline"),
                {**PROMPT, "kind": "prompts"}, {**PROMPT, "transport": "sctp"}):
        assert list(validator("push-stream").iter_errors(bad)), bad


def test_the_prompts_the_lab_publishes_follow_the_schema():
    from faultlab.lab.prompts import PromptHub

    hub = PromptHub(wall_clock=lambda: 1764166500.125)
    answer = hub.publish("answer", "S17: tap Answer now on the device", deadline=1764166502.125, scenario="S17",
                         transport="tls", uuid=U, call_id="a84b@pbx")
    call = hub.publish("call", "Call sip:alice@lab.test from another phone now")
    for prompt in (answer, call):
        line = json.loads(prompt.line())  # as GET /prompts and the push stream write it
        assert not list(validator("push-stream").iter_errors(line)), line
