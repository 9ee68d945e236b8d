"""The checks (faultlab.lab.checks) on fabricated timelines: each verdict and the evidence behind it."""

from __future__ import annotations

from dataclasses import replace

from faultlab.lab.checks import anchors, check_cancel_push, check_early_answer, check_end, check_invariants
from faultlab.lab.scenario import load_scenario
from faultlab.lab.scenario_set import override
from faultlab.trace import Event

CALL = "c1@lab"


def push(t, kind="call", outcome="delivered"):
    return Event(t, "push", source="push", call_id=CALL, detail={"push_kind": kind, "outcome": outcome})


def dev(t, event, reason=None):
    detail = {"event": event} | ({"reason": reason} if reason else {})
    return Event(t, "device", source="device:alice", call_id=CALL, detail=detail)


def proxy(t, kind, direction, *, method=None, status=None, cseq_method=None, call_id=CALL, flow="u1"):
    return Event(t, kind, source="proxy", flow=flow, direction=direction, method=method, status=status,
                 cseq_method=cseq_method or method, call_id=call_id)


def register(t_sent, t_ok, status=200):
    return [proxy(t_sent, "received", "to-pbx", method="REGISTER", call_id="reg"),
            proxy(t_ok, "sent", "to-device", status=status, cseq_method="REGISTER", call_id="reg")]


def caller(t, method):
    return Event(t, "sent", source="caller", method=method, call_id=CALL)


S04 = load_scenario("S04")  # unanswered by min(register-ok + 5, push + 15)
S05 = load_scenario("S05")  # remoteEnded by cancel-at-device + 0.5
S17 = load_scenario("S17")  # early answer


def test_anchors_count_registers_from_the_push_on():
    events = register(0.0, 0.0) + [push(1.0), dev(1.0, "reported")] + register(1.0, 3.0)
    found = anchors(events, CALL)
    assert found["register-ok"].t == 3.0 and found["push"].t == 1.0


def test_end_in_time_with_the_right_reason_passes():
    events = [push(1.0), dev(1.0, "reported")] + register(1.0, 3.0) + [dev(8.0, "ended", "unanswered")]
    result = check_end(events, CALL, S04)
    assert result.passed and "by the deadline 8.000" in result.message
    assert result.times == {"register-ok": 2.0, "end": 7.0}


def test_end_late_fails_with_the_deadline_terms():
    events = [push(1.0)] + register(1.0, 3.0) + [dev(8.5, "ended", "unanswered")]
    result = check_end(events, CALL, S04)
    assert not result.passed and "0.500 s after the deadline 8.000" in result.message
    assert "deadline term: register-ok + 5 s = 8.000" in result.evidence
    assert "deadline term: push + 15 s = 16.000" in result.evidence


def test_end_deadline_falls_back_to_the_cap_when_the_register_never_succeeds():
    events = [push(1.0), dev(16.0, "ended", "unanswered")]
    assert check_end(events, CALL, S04).passed
    assert not check_end(events + [], CALL, override(S04, "expect.end", "failed")).passed


def test_wrong_reason_never_and_twice_fail():
    base = [push(1.0)] + register(1.0, 1.1) + [proxy(2.0, "sent", "to-device", method="CANCEL")]
    assert "expected remoteEnded" in check_end(base + [dev(2.1, "ended", "unanswered")], CALL, S05).message
    assert "never ended" in check_end(base, CALL, S05).message
    twice = base + [dev(2.1, "ended", "remoteEnded"), dev(2.2, "ended", "remoteEnded")]
    assert "2 times" in check_end(twice, CALL, S05).message
    assert check_end(base + [dev(2.5, "ended", "remoteEnded")], CALL, S05).passed


def early(answer=1.0, invite=3.0, ok=3.0, ack=3.0, fulfilled=3.0, end=None):
    events = [push(0.0), dev(0.0, "reported")] + register(0.0, 0.1) + [dev(answer, "answer-tapped")]
    if invite is not None:
        events.append(proxy(invite, "sent", "to-device", method="INVITE"))
    if ok is not None:
        events.append(proxy(ok, "received", "to-pbx", status=200, cseq_method="INVITE"))
    if ack is not None:
        events.append(proxy(ack, "sent", "to-device", method="ACK"))
    if fulfilled is not None:
        events.append(dev(fulfilled, "answer-fulfilled"))
    if end is not None:
        events.append(dev(end[0], end[1], end[2] if len(end) > 2 else None))
    return sorted(events, key=lambda e: e.t)


def test_early_answer_held_then_connected_passes():
    result = check_early_answer(early(), CALL, S17)
    assert result.passed and "answer held 2.000 s until the INVITE" in result.message


def test_early_answer_failures():
    assert "before the 200 OK" in check_early_answer(early(fulfilled=1.0), CALL, S17).message
    assert "before the call connected" in check_early_answer(
        early(ok=None, ack=None, fulfilled=None, end=(1.0, "ended", "failed")), CALL, S17).message
    assert "0.900 s after the INVITE" in check_early_answer(early(ok=3.9, ack=3.9, fulfilled=3.9), CALL, S17).message
    assert "never sent 200 OK" in check_early_answer(early(ok=None, ack=None, fulfilled=None), CALL, S17).message
    assert "did not exercise an early answer" in check_early_answer(early(answer=4.0, invite=3.0), CALL, S17).message


def test_no_invite_the_answer_must_fail_and_never_be_fulfilled():
    S18 = load_scenario("S18")
    failed = early(invite=None, ok=None, ack=None, fulfilled=None, end=(6.0, "answer-failed"))
    assert check_early_answer(failed, CALL, S18).passed
    ghost = early(invite=None, ok=None, ack=None, fulfilled=1.0)
    assert "no INVITE ever arrived" in check_early_answer(ghost, CALL, S18).message


def test_cancel_push_dependence():
    with_push = [push(1.0), push(2.0, "cancel")] + register(1.0, 3.0) + [dev(8.0, "ended", "unanswered")]
    without = [push(1.0), push(2.0, "cancel", "dropped")] + register(1.0, 3.0) + [dev(8.0, "ended", "unanswered")]
    assert check_cancel_push((with_push, CALL), (without, CALL), S04).passed
    dependent = [push(1.0), push(2.0, "cancel")] + register(1.0, 3.0) + [dev(8.0, "ended", "unanswered")]
    never = [push(1.0), push(2.0, "cancel", "dropped")] + register(1.0, 3.0)
    result = check_cancel_push((dependent, CALL), (never, CALL), S04)
    assert not result.passed and result.message.startswith("ends unanswered with the cancel push but never without")
    assert any("cancel pushes dropped: t=2.000 dropped" in line for line in result.evidence)
    # both in time but 0.6 s apart
    later = [push(1.0), push(2.0, "cancel", "dropped")] + register(1.0, 3.0) + [dev(7.4, "ended", "unanswered")]
    loose = override(S04, "expect.not_before", "")  # a team that accepts an earlier give-up
    assert "0.600 s apart" in check_cancel_push((with_push, CALL), (later, CALL), loose).message


def test_invariants():
    S22 = load_scenario("S22")
    once = [push(1.0, outcome="duplicated"), dev(1.0, "reported"), dev(5.0, "ended", "remoteEnded")]
    assert check_invariants(once, CALL, S22).passed
    twice = once + [dev(1.1, "reported")]
    assert "2 reports" in check_invariants(twice, CALL, S22).message
    S11 = load_scenario("S11")  # register-ok <= push + 4.5 s
    late = [push(1.0), dev(1.0, "reported")] + register(1.0, 6.0)
    assert "milestone register-ok ≤ push + 4.5 s: 5.000 s" in check_invariants(late, CALL, S11).message


def test_an_end_too_soon_or_before_its_cause_fails():
    # S04: unanswered no earlier than min(tR + 5, t0 + 15): giving up at tR + 1 is too impatient
    early = [push(1.0), dev(1.0, "reported")] + register(1.0, 3.0) + [dev(4.0, "ended", "unanswered")]
    result = check_end(early, CALL, S04)
    assert not result.passed and "gave up too soon" in result.message and "earliest term" in result.evidence[-2]
    assert check_end(early, CALL, override(S04, "expect.not_before", "")).passed
    # S19-like: ending on the BYE is right, ending before the BYE (on a late CANCEL) is not
    s19 = load_scenario("S19")
    base = [push(0.0), dev(0.0, "reported")] + register(0.0, 0.0) + [caller(4.0, "BYE")]
    assert check_end(base + [dev(4.1, "ended", "remoteEnded")], CALL, s19).passed
    before = check_end(sorted(base + [dev(3.0, "ended", "remoteEnded")], key=lambda e: e.t), CALL, s19)
    assert not before.passed and "before bye" in before.message


def test_an_early_answer_failed_before_the_invite_could_come_fails():
    S18 = load_scenario("S18")  # the INVITE could still come until min(tR + 5, t0 + 15)
    rushed = early(invite=None, ok=None, ack=None, fulfilled=None, end=(1.0, "answer-failed"))
    result = check_early_answer(rushed, CALL, S18)
    assert not result.passed and "the early answer was not held" in result.message


def test_a_late_report_breaks_the_invariants():
    S01 = load_scenario("S01")
    late = [push(1.0), dev(2.0, "reported"), dev(9.0, "ended", "remoteEnded")]
    result = check_invariants(late, CALL, S01)
    assert not result.passed and "reported 1.000 s after the push" in result.message
    assert check_invariants([push(1.0), dev(1.2, "reported")], CALL, S01).passed


def caller_got(t, status):
    return Event(t, "received", source="caller", status=status, cseq_method="INVITE", call_id=CALL)


def test_a_deadline_keeps_its_term_when_the_device_prevents_the_anchor():
    # S05: remoteEnded by cancel-at-device + 0.5; the caller cancels at INVITE + 2 s
    sent = [caller(0.0, "INVITE"), push(0.0), dev(0.0, "reported")] + register(0.0, 0.1)
    sent.append(proxy(0.2, "sent", "to-device", method="INVITE"))
    # the device rejects the INVITE at 1 s and ends: the caller never sends its CANCEL (the call is over)
    gave_up = check_end(sent + [dev(1.0, "ended", "remoteEnded")], CALL, S05)
    assert not gave_up.passed and "before cancel-at-device would have come (2.000, the scripted CANCEL" in gave_up.message
    assert ("deadline term: cancel-at-device + 0.5 s = 2.500: no cancel-at-device on the timeline; it would have "
            "come at 2.000 (the scripted CANCEL, call.cancel_at 2 s after the INVITE)") in gave_up.evidence
    # the caller did send its CANCEL but it never reached the device: that send time stands in
    lost = sent + [caller(2.0, "CANCEL"), dev(3.0, "ended", "remoteEnded")]
    late = check_end(lost, CALL, S05)
    assert not late.passed and "0.500 s after the deadline 2.500" in late.message
    assert any("it would have come at 2.000 (the caller's CANCEL, which never reached" in line for line in late.evidence)
    # without a stand-in (no script, no caller on the timeline), the term still drops: "no deadline"
    bare = [push(0.0)] + register(0.0, 0.1) + [dev(3.0, "ended", "remoteEnded")]
    assert "no deadline" in check_end(bare, CALL, S05).message


def test_an_early_end_another_cause_allows_passes_with_the_stand_in_in_the_evidence():
    # S24: remoteEnded or unanswered by min(push + 15, cancel-at-device + 0.5), not before min(tR + 5, push + 15);
    # the caller's CANCEL is scripted at 10 s: an app that ends unanswered at its INVITE deadline (tR + 5) is right
    s24 = load_scenario("S24")
    events = [caller(0.0, "INVITE"), push(0.0), dev(0.0, "reported")] + register(0.0, 0.1)
    result = check_end(events + [dev(5.1, "ended", "unanswered")], CALL, s24)
    assert result.passed, result.message
    assert any("it would have come at 10.000 (the scripted CANCEL" in line for line in result.evidence)
    # ... but not after the CANCEL would have ended it
    late = check_end(events + [dev(11.0, "ended", "unanswered")], CALL, s24)
    assert not late.passed and "after the deadline 10.500" in late.message
    # and never right after the re-REGISTER (the S24 lower bound)
    rushed = check_end(events + [dev(0.3, "ended", "unanswered")], CALL, s24)
    assert not rushed.passed and "gave up too soon" in rushed.message


def test_check_3_blames_the_cancel_push_only_when_the_runs_differ():
    late = [push(1.0)] + register(1.0, 3.0) + [dev(9.0, "ended", "unanswered")]  # both runs fail check 1 alike
    with_push = late + [push(2.0, "cancel")]
    without = late + [push(2.0, "cancel", "dropped")]
    assert not check_end(with_push, CALL, S04).passed
    result = check_cancel_push((with_push, CALL), (without, CALL), S04)
    assert result.passed and "both runs fail check 1 alike" in result.message
    other_reason = [push(1.0), push(2.0, "cancel", "dropped")] + register(1.0, 3.0) + [dev(9.0, "ended", "failed")]
    differ = check_cancel_push((with_push, CALL), (other_reason, CALL), S04)
    assert not differ.passed and differ.message.startswith("ends unanswered with the cancel push but failed")
    apart = [push(1.0), push(2.0, "cancel", "dropped")] + register(1.0, 3.0) + [dev(9.6, "ended", "unanswered")]
    assert "0.600 s apart" in check_cancel_push((with_push, CALL), (apart, CALL), S04).message


def test_check_2_covers_the_whole_answered_call():
    # S17 hangs up 2 s after the 200 (at 5.0): the end must follow the caller's BYE
    good = early(end=(5.1, "ended", "remoteEnded")) + [caller(5.0, "BYE")]
    assert check_early_answer(sorted(good, key=lambda e: e.t), CALL, S17).passed
    dropped = check_early_answer(early(end=(3.2, "ended", "failed")), CALL, S17)
    assert not dropped.passed
    assert dropped.message == ("ended failed at t=3.200, 0.200 s after the call connected and before the caller's "
                               "BYE (scripted at t=5.000): the answered call was dropped")
    # a script that never hangs up: no end within the settle time after connecting
    no_hang_up = override(S17, "call.duration", "30s")
    open_call = replace(no_hang_up, hang_up_after=None)
    assert "no end for 2 s" in check_early_answer(early(end=(4.0, "ended", "failed")), CALL, open_call).message
    assert check_early_answer(early(end=(5.5, "ended", "failed")), CALL, open_call).passed


def test_a_push_relayed_to_apns_is_the_calls_t0():
    """With --apns-url a real phone gets its push from APNs: the gateway's relay (APNs answered 200) is t0, so the
    deadlines counted from the push still apply; a push APNs refused is not."""
    s10 = load_scenario("S10")  # failed by push + 8 s
    relayed = Event(1.0, "push", source="push", call_id=CALL,
                    detail={"push_kind": "call", "outcome": "relayed", "status": 200})
    events = [relayed, dev(1.2, "reported"), dev(9.0, "ended", "failed")]
    result = check_end(events, CALL, s10)
    assert result.passed and "by the deadline 9.000" in result.message, result.message
    assert check_invariants(events, CALL, s10).passed
    refused = replace(relayed, detail={**relayed.detail, "status": 410})
    assert "push" not in anchors([refused, dev(1.2, "reported")], CALL)
