"""The lean message path: what nobody reads is not built, what someone reads is complete, and the fast
paths (rules that cannot match, the one pass over a head) decide exactly as the full ones."""

from __future__ import annotations

import random

import pytest

import faultlab.relay.core as core
from faultlab.addr import parse_endpoint
from faultlab.faults import Engine
from faultlab.proxy import ProxyConfig
from faultlab.relay import Hop, Relay, Side
from faultlab.sip import SipError, build_response, parse_datagram, parse_message
from faultlab.trace import Trace

from .test_faults_support import profile, request, response, rule_profile, view

DEVICE = ("192.0.2.10", 5060)
PBX = ("192.0.2.1", 5060)
SIDE = Side("udp", device=("192.0.2.5", 5060), pbx=("192.0.2.5", 40000))
TO_PBX = Hop("u1", "to-pbx", "udp", DEVICE, SIDE, DEVICE)
TO_DEVICE = Hop("u1", "to-device", "udp", PBX, SIDE, DEVICE)


def relay(trace: Trace, prof=None) -> Relay:
    config = ProxyConfig(listen=[parse_endpoint("udp:192.0.2.5:5060")], upstream=[parse_endpoint("udp:192.0.2.1:5060")],
                         trace=trace, profile=prof, seed=1)
    return Relay(config, clock=lambda: 0.0)


def transaction(r: Relay) -> tuple[bytes, bytes]:
    """A MESSAGE to the PBX and its 200 back, through ``r``: the bytes it sends each way."""
    plan = r.plan(parse_datagram(request("MESSAGE").raw), TO_PBX)
    r.sent(plan.forward, PBX)
    sent = parse_message(plan.forward.data)
    answer = r.plan(parse_datagram(build_response(sent, 200)), TO_DEVICE)
    r.sent(answer.forward, DEVICE)
    return plan.forward.data, answer.forward.data


def test_a_trace_nobody_reads_builds_no_event(monkeypatch) -> None:
    built = []
    monkeypatch.setattr(core, "Event", lambda *a, **k: built.append(a))
    trace = Trace(keep=0)
    trace.add_sink(lambda e: None, kinds=("stopping",))  # a sink of another kind of event
    r = relay(trace)
    transaction(r)
    assert built == []
    assert r.open_requests == {}  # the request was still tracked, and its final response closed it


def test_a_trace_someone_reads_is_complete() -> None:
    seen = []
    trace = Trace(keep=0)
    trace.add_sink(seen.append)
    r = relay(trace)
    transaction(r)
    assert [e.kind for e in seen] == ["received", "sent", "received", "sent"]
    first = seen[0]
    msg = request("MESSAGE")
    assert (first.method, first.call_id, first.cseq, first.cseq_method, first.parsed) == (
        "MESSAGE", msg.call_id, msg.cseq.number, "MESSAGE", True)
    assert first.summary == msg.summary() and first.raw == msg.raw
    assert seen[3].status == 200 and seen[3].call_id == msg.call_id and seen[3].direction == "to-device"


def test_a_sink_of_some_kinds_sees_only_those() -> None:
    stops, all_events = [], []
    trace = Trace(keep=None)
    trace.add_sink(stops.append, kinds=("stopping",))
    trace.add_sink(all_events.append)
    transaction(relay(trace))
    assert stops == [] and len(all_events) == 4 == len(trace.events)


def test_rules_that_cannot_match_relay_as_no_profile_does() -> None:
    bytes_clean = transaction(relay(Trace(keep=0)))
    unmatched = profile('[[rules]]\nname = "inv"\nmatch = { method = "INVITE" }\naction = { drop = true }\n'
                        '[[rules]]\nname = "to-dev"\nmatch = { direction = "to-device", status = "4xx" }\n'
                        'action = { drop = true }\n')
    assert transaction(relay(Trace(keep=0), unmatched)) == bytes_clean


@pytest.mark.parametrize("match", ['method = "INVITE"', 'direction = "to-device"', 'status = "2xx"',
                                   'transport = ["tcp"]', ""])
def test_the_engine_decides_the_same_with_and_without_its_shortcut(match: str) -> None:
    prof = rule_profile(match, 'delay = "1s"')
    for msg in (request("MESSAGE"), request("INVITE"), response(200, method="MESSAGE")):
        for direction in ("to-pbx", "to-device"):
            v = view(msg, direction=direction)
            fast = Engine(prof, random.Random(1), activated_at=0.0)
            slow = Engine(prof, random.Random(1), activated_at=0.0)
            slow._message_rules = lambda view, msg, states=slow._states: tuple(states)  # every rule tried
            assert fast.decide(v, 0.0) == slow.decide(v, 0.0)


def test_a_datagram_s_trailing_octets_go_on_under_a_profile() -> None:
    """RFC 3261 §18.3: octets after the Content-Length body are ignored, and a relay passes them on as they came,
    with a profile active as without one."""
    raw = request("MESSAGE", body=b"hello").raw + b"tail"
    prof = rule_profile('method = "INVITE"', "drop = true")
    for p in (None, prof):
        r = relay(Trace(keep=0), p)
        out = r.plan(parse_datagram(raw), TO_PBX).forward.data
        assert out.endswith(b"\r\n\r\nhellotail") and parse_datagram(out).body == b"hello"


@pytest.mark.parametrize("head", [
    b"MESSAGE sip:b@x SIP/2.0\r\nVia: a\rb\r\nContent-Length: 0\r\n\r\n",  # a bare CR
    b"MESSAGE sip:b@x SIP/2.0\r\nVia: a\r\nno colon here\r\n\r\n",
    b"MESSAGE sip:b@x SIP/2.0\r\nVia: a\nCall-ID: x\r\n\r\n",  # a bare LF
    b"MESSAGE sip:b@x SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab",
])
def test_the_one_pass_rejects_what_the_shape_check_rejects(head: bytes) -> None:
    with pytest.raises(SipError):
        parse_message(head)
    with pytest.raises(SipError):
        parse_datagram(head)


def test_the_one_pass_finds_folded_and_compact_fields() -> None:
    msg = parse_message(b"MESSAGE sip:b@x SIP/2.0\r\nv: a\r\n  ;rport\r\nVia: b\r\nl: 2\r\ni: c1\r\n\r\nab")
    assert msg.get_all("via") == ["a ;rport", "b"] and msg.call_id == "c1" and msg.content_length == 2
    assert [(h.name, msg.raw[h.start:h.end]) for h in msg.headers] == [
        ("v", b"v: a\r\n  ;rport\r\n"), ("Via", b"Via: b\r\n"), ("l", b"l: 2\r\n"), ("i", b"i: c1\r\n")]
