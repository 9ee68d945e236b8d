"""Guided runs (faultlab.lab.guided) and the checks' anchors on a timeline with faultlab and device events only:
fabricated timelines, no sockets."""

from __future__ import annotations

from faultlab.lab.guided import GuidedRun, attribute, device_aor, due_prompts, pick_call, status
from faultlab.lab.checks import anchors, check_end
from faultlab.lab.scenario import load_scenario
from faultlab.trace import Event

REGISTER = (b"REGISTER sip:lab.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr1;rport\r\n"
            b"From: <sip:alice@lab.test>;tag=a\r\nTo: <sip:alice@lab.test>\r\nCall-ID: reg1\r\n"
            b"CSeq: 1 REGISTER\r\nContact: <sip:alice@10.0.0.2:5060>\r\nContent-Length: 0\r\n\r\n")
DEV = "10.0.0.2:5060"


def relay(t, kind, direction, *, method=None, status=None, cseq_method=None, call_id="c1", raw=None):
    return Event(t, kind, flow="u1", direction=direction, transport="udp", peer=DEV if direction == "to-pbx"
                 else "10.0.0.9:5060", method=method, status=status, cseq_method=cseq_method or method,
                 call_id=call_id, raw=raw)


def device(t, event, *, call_id="c1", uuid="U1", reason=None):
    detail = {"event": event, "uuid": uuid, "client_time": 1.0, "origin": "collector", "extra": {}}
    if reason:
        detail["reason"] = reason
    return Event(t, "device", source="device:alice", call_id=call_id, detail=detail)


def baseline_call(*, call_id="c1", device_call_id="c1"):
    """S01 through faultlab alone: REGISTER, INVITE to the device, report, answer 1 s later, BYE, end."""
    d = dict(call_id=device_call_id)
    return [
        relay(0.5, "received", "to-pbx", method="REGISTER", call_id="reg1", raw=REGISTER),
        relay(0.5, "sent", "to-pbx", method="REGISTER", call_id="reg1", raw=REGISTER),
        relay(2.0, "received", "to-device", method="INVITE", call_id=call_id),
        relay(2.0, "sent", "to-device", method="INVITE", call_id=call_id),
        device(2.1, "reported", **d),
        device(3.1, "answer-tapped", **d),
        relay(3.15, "received", "to-pbx", status=200, cseq_method="INVITE", call_id=call_id),
        relay(3.15, "sent", "to-pbx", status=200, cseq_method="INVITE", call_id=call_id),
        relay(3.2, "sent", "to-device", method="ACK", call_id=call_id),
        device(3.2, "answer-fulfilled", **d),
        relay(5.0, "received", "to-device", method="BYE", call_id=call_id),
        relay(5.0, "sent", "to-device", method="BYE", call_id=call_id),
        device(5.1, "ended", reason="remoteEnded", **d),
    ]


def test_anchors_without_a_push_gateway_or_caller_use_the_report_and_faultlabs_bye():
    found = anchors(baseline_call(), "c1")
    assert found["push"] is found["reported"] and found["push"].t == 2.1
    assert found["bye"].source == "proxy" and found["bye"].kind == "received" and found["bye"].t == 5.0
    assert found["invite"].t == 2.0  # before the report: the app was in the foreground, no push woke it
    result = check_end(baseline_call(), "c1", load_scenario("S01"))
    assert result.passed, result
    assert result.evidence[0] == "t=2.100 device reported (no push gateway: t0)"


def test_anchors_with_a_push_gateway_and_a_caller_are_unchanged():
    push = Event(1.9, "push", source="push", call_id="c1", detail={"push_kind": "call", "outcome": "delivered"})
    bye = Event(4.9, "sent", source="caller", method="BYE", call_id="c1")
    found = anchors([push, bye, *baseline_call()], "c1")
    assert found["push"] is push and found["bye"] is bye
    # a push gateway that dropped the call push: no push, and the report does not stand in for it
    dropped = Event(1.9, "push", source="push", call_id="c1", detail={"push_kind": "call", "outcome": "dropped"})
    assert "push" not in anchors([dropped, *baseline_call()], "c1")


def test_aor_and_call_come_from_what_faultlab_relayed():
    events = baseline_call()
    assert device_aor(events) == {"aor": "sip:alice@lab.test", "user": "alice", "from": DEV}
    assert device_aor(events, "10.0.0.3") is None
    assert pick_call(events, 1.0) == ("c1", "the INVITE faultlab delivered to the device")
    assert pick_call(events, 2.5)[0] == "c1"  # no INVITE since then: the device's first event names it
    uuid_only = [device(3.0, "reported", call_id=None, uuid="U9")]
    assert pick_call(uuid_only, 0.0)[0] == "uuid:U9"
    assert pick_call([], 0.0) == (None, "no call yet")


def test_device_events_with_only_a_uuid_or_another_call_id():
    events = baseline_call(device_call_id=None) + [device(5.2, "ended", call_id="other", uuid="U7",
                                                          reason="failed")]
    mine, others = attribute(events, 0.0, "c1")
    assert [e.call_id for e in mine if e.kind == "device"] == ["c1"] * 4 + ["other"]
    assert others == ["other"]


def test_status_walks_through_the_script_then_keeps_the_verdict():
    s01 = load_scenario("S01")
    events = baseline_call(device_call_id=None)  # the app posts the CallKit uuid only
    run = GuidedRun(s01, started_at=1.0)
    waiting = status(run, events[:2], 1.5)
    assert waiting["phase"] == "waiting" and waiting["prompt"] == "Call sip:alice@lab.test from another phone now"
    ringing = status(run, events[:5], 2.5)
    assert ringing["phase"] == "ringing" and ringing["prompt"] == "Let it ring: do not answer yet"
    assert ringing["next"] == {"text": "Tap Answer on the iPhone now", "in": 0.6}
    assert status(run, events[:5], 3.1)["prompt"] == "Tap Answer on the iPhone now"
    in_call = status(run, events[:10], 4.0)
    assert in_call["phase"] == "in-call" and in_call["prompt"] == "Stay in the call"
    assert in_call["next"]["text"] == "Now hang up the caller"
    assert status(run, events[:10], 13.2)["prompt"] == "Now hang up the caller"
    done = status(run, events, 5.2)
    assert done["phase"] == "done" and done["prompt"] == "Done: the iPhone ended the call (remoteEnded)"
    verdict = done["verdict"]
    assert verdict["passed"] is True and verdict["call_id"] == "c1"
    assert [(c["check"], c["passed"]) for c in verdict["checks"]] == [("ends-right", True), ("invariants", True),
                                                                      ("sip-duties", True)]
    assert run.result is verdict
    assert status(run, events + [device(9.0, "ended", call_id=None, reason="failed")], 9.5)["verdict"] is verdict


def test_prompts_for_programs_come_once_each_when_due():
    run = GuidedRun(load_scenario("S01"), started_at=1.0)
    events = baseline_call(device_call_id=None)  # the app posts the CallKit uuid only

    def due(n: int, now: float) -> list[tuple]:
        found = due_prompts(run, status(run, events[:n], now))
        return [(p["action"], p["due"], p["call_id"], p["uuid"]) for p in found]

    assert due(2, 1.5) == [("call", None, None, None)]
    assert due(2, 1.6) == []  # once
    assert due(5, 2.5) == []  # reported at 2.1: the answer is due at 3.1
    assert due(5, 3.2) == [("answer", 3.1, "c1", "U1")]
    assert due(10, 4.0) == []  # connected at 3.15: the hang-up is due 10 s later
    assert due(10, 13.2) == [("hang-up", 13.15, "c1", "U1")]
    assert due(len(events), 20.0) == []  # done
    # the caller's CANCEL (S05, 2 s after the report) is the caller's phone hanging up; nothing after the end
    run = GuidedRun(load_scenario("S05"), started_at=0.0, prompted={"call"})
    assert [p["action"] for p in due_prompts(run, status(run, events[:5], 4.2))] == ["hang-up"]
    run = GuidedRun(load_scenario("S05"), started_at=0.0)
    assert due_prompts(run, status(run, events[:5], 2.1 + 30.0)) == []


def test_duration_ends_a_run_without_an_end_and_the_verdict_says_so():
    run = GuidedRun(load_scenario("S05"), started_at=0.0)  # cancel after the INVITE; check 3 applies
    events = baseline_call()[:5]
    assert status(run, events, 3.0)["prompt"] == "Keep the caller ringing"
    assert status(run, events, 4.2)["prompt"] == "Now hang up the caller (before anyone answers)"
    done = status(run, events, 2.1 + 30.0)
    assert done["phase"] == "done" and "30 s passed" in done["prompt"]
    checks = {c["check"]: c for c in done["verdict"]["checks"]}
    assert done["verdict"]["passed"] is False
    assert checks["ends-right"]["message"].startswith("the device never ended the call")
    assert checks["cancel-push"]["judged"] is False and "not judged" in checks["cancel-push"]["message"]


def test_the_sip_the_iphone_owes_is_judged_on_what_faultlab_relayed():
    cancelled = baseline_call()[:5] + [
        relay(4.0, "sent", "to-device", method="CANCEL"),
        relay(4.0, "received", "to-pbx", status=200, cseq_method="CANCEL"),
        relay(4.1, "received", "to-pbx", status=480, cseq_method="INVITE"),  # not 487
        device(4.1, "ended", reason="remoteEnded")]
    done = status(GuidedRun(load_scenario("S05"), started_at=0.0), cancelled, 4.2)
    checks = {c["check"]: c for c in done["verdict"]["checks"]}
    assert checks["ends-right"]["passed"] and done["verdict"]["passed"] is False
    duties = checks["sip-duties"]
    assert duties["judged"] and not duties["passed"]
    assert duties["message"].startswith("cancel: 480 to the INVITE instead of 487 after the CANCEL reached the device")
    assert "cancel: t=4.100 the device answered the INVITE 480" in duties["evidence"]


def test_early_answer_is_judged_when_the_scenario_asks_for_it():
    s17 = load_scenario("S17")
    events = [device(1.0, "reported"), device(2.0, "answer-tapped"),
              relay(3.0, "received", "to-device", method="INVITE"), relay(5.0, "sent", "to-device", method="INVITE"),
              relay(5.1, "received", "to-pbx", status=200, cseq_method="INVITE"),
              relay(5.2, "sent", "to-device", method="ACK"), device(5.25, "answer-fulfilled"),
              relay(7.0, "received", "to-device", method="BYE"), device(7.1, "ended", reason="remoteEnded")]
    done = status(GuidedRun(s17, started_at=0.5), events, 7.2)
    assert [(c["check"], c["passed"]) for c in done["verdict"]["checks"]] == [
        ("ends-right", True), ("early-answer", True), ("invariants", True), ("sip-duties", True)]


# -- which call: one device's run among several phones ------------------------------------------------------------

PHONE_A, PHONE_B = "192.168.50.23", "192.168.50.24"


def to_phone(t, host, call_id):
    """faultlab's INVITE delivered to the phone at ``host`` (the hop's peer is that phone)."""
    return Event(t, "sent", flow="u-" + host, direction="to-device", transport="udp", peer=f"{host}:5060",
                 method="INVITE", cseq_method="INVITE", call_id=call_id)


def two_phones():
    """A run for phone A (.23); phone B (.24) got an INVITE first and posts its events with a uuid only."""
    return [to_phone(1.0, PHONE_B, "callB"), device(1.1, "reported", call_id=None, uuid="UB"),
            to_phone(1.5, PHONE_A, "callA"), device(1.6, "reported", call_id="callA", uuid="UA"),
            device(1.8, "ended", call_id=None, uuid="UB", reason="failed")]


def test_a_device_run_picks_the_invite_to_its_device_not_the_first_to_any_device():
    events = two_phones()
    assert pick_call(events, 0.5, PHONE_A)[0] == "callA"
    assert pick_call(events, 0.5, PHONE_A + ":5060")[0] == "callA"
    assert pick_call(events, 0.5, PHONE_B)[0] == "callB"
    assert pick_call(events, 0.5)[0] == "callB"  # no device: the first INVITE to any device, as before


def test_another_phones_uuid_only_events_are_not_the_guided_calls():
    run = GuidedRun(load_scenario("S01"), started_at=0.5, device=PHONE_A)
    now = status(run, two_phones(), 2.0)
    assert now["call"]["call_id"] == "callA" and now["call"]["t0"] == 1.6
    assert now["phase"] == "ringing" and run.result is None  # phone B's "ended" does not end phone A's call
    assert now["call"]["other_calls_ignored"] == ["uuid:UB"]
    # phone A's later uuid-only events are its own: their uuid came with its Call-ID
    mine, _ = attribute(two_phones() + [device(2.5, "ended", call_id=None, uuid="UA", reason="remoteEnded")],
                        0.5, "callA")
    assert [(e.detail["uuid"], e.call_id) for e in mine if e.kind == "device"] == [
        ("UB", None), ("UA", "callA"), ("UB", None), ("UA", "callA")]


def test_uuid_only_events_are_the_single_phones_until_a_call_id_or_another_call_shows_up():
    # one phone, uuid only: its events are the guided call's (the single-phone flow)
    events = [to_phone(1.0, PHONE_A, "callA"), device(1.1, "reported", call_id=None, uuid="UA"),
              device(1.3, "answer-tapped", call_id=None, uuid="UA")]
    mine, others = attribute(events, 0.5, "callA")
    assert [e.call_id for e in mine if e.kind == "device"] == ["callA", "callA"] and others == []
    # once a device event named another Call-ID, an unknown uuid is not taken as the guided call's
    named = events + [device(1.4, "reported", call_id="callX", uuid="UX"),
                      device(1.5, "ended", call_id=None, uuid="UZ", reason="failed"),
                      device(1.6, "ended", call_id=None, uuid="UX", reason="failed"),
                      device(1.7, "ended", call_id=None, uuid="UA", reason="remoteEnded")]
    mine, others = attribute(named, 0.5, "callA")
    assert [e.call_id for e in mine if e.kind == "device"] == ["callA", "callA", "callX", None, None, "callA"]
    assert sorted(set(others)) == ["callX", "uuid:UZ"]
    # an INVITE to another phone before a uuid-only event: which phone sent it is unknown, so it is not taken
    busy = [to_phone(1.0, PHONE_B, "callB"), to_phone(1.2, PHONE_A, "callA"),
            device(1.3, "reported", call_id=None, uuid="U?")]
    assert attribute(busy, 0.5, "callA")[1] == ["uuid:U?"]
