"""S21's deadline on fabricated timelines: ``media-stopped`` + 30 s, from the lab caller's RTP, or (no lab caller:
a softphone of one's own, a guided run) from its BYE as faultlab received it."""

from __future__ import annotations

from faultlab.lab.checks import anchors, check_end
from faultlab.lab.scenario import load_scenario
from faultlab.trace import Event

CALL = "c1@lab"
S21 = load_scenario("S21")


def dev(t, event, reason=None):
    return Event(t, "device", source="device:alice", call_id=CALL,
                 detail={"event": event} | ({"reason": reason} if reason else {}))


def answered() -> list[Event]:
    return [Event(1.0, "push", source="push", call_id=CALL, detail={"push_kind": "call", "outcome": "delivered"}),
            dev(1.0, "reported"), dev(2.0, "answer-tapped"), dev(2.0, "answer-fulfilled")]


def lab_caller(t_bye: float) -> list[Event]:
    return answered() + [
        Event(2.0, "media", source="caller", call_id=CALL, detail={"action": "started"}),
        Event(t_bye, "caller", source="caller", call_id=CALL, detail={"action": "hang-up"}),
        Event(t_bye, "media", source="caller", call_id=CALL, detail={"action": "stopped", "sent": 250}),
        Event(t_bye, "sent", source="caller", method="BYE", call_id=CALL),
        Event(t_bye, "dropped", source="proxy", direction="to-device", method="BYE", call_id=CALL)]


def own_softphone(t_bye: float) -> list[Event]:
    return answered() + [
        Event(t_bye, "received", source="proxy", direction="to-device", method="BYE", call_id=CALL),
        Event(t_bye, "dropped", source="proxy", direction="to-device", method="BYE", call_id=CALL)]


def test_the_media_silence_deadline_counts_from_the_callers_last_rtp():
    assert anchors(lab_caller(7.0), CALL)["media-stopped"].detail["action"] == "stopped"
    ok = check_end(lab_caller(7.0) + [dev(37.0, "ended", "failed")], CALL, S21)
    assert ok.passed and "by the deadline 37.000" in ok.message
    late = check_end(lab_caller(7.0) + [dev(37.5, "ended", "failed")], CALL, S21)
    assert not late.passed and "after the deadline 37.000" in late.message
    assert "deadline term: media-stopped + 30 s = 37.000" in late.evidence
    never = check_end(lab_caller(7.0), CALL, S21)
    assert not never.passed and "never ended" in never.message
    early = check_end(lab_caller(7.0) + [dev(5.0, "ended", "failed")], CALL, S21)
    assert not early.passed and "before media-stopped" in early.message  # ended while the media still flowed
    wrong = check_end(lab_caller(7.0) + [dev(37.0, "ended", "remoteEnded")], CALL, S21)
    assert not wrong.passed and "expected failed" in wrong.message


def test_without_a_lab_caller_the_bye_faultlab_received_stands_for_the_end_of_media():
    found = anchors(own_softphone(7.0), CALL)
    assert found["media-stopped"] is found["bye"] and found["bye"].t == 7.0
    assert check_end(own_softphone(7.0) + [dev(37.0, "ended", "failed")], CALL, S21).passed
