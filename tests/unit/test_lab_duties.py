"""The SIP duties (faultlab.lab.duties) on fabricated timelines: where each applies, and what it says when broken.

The catalogue runs (tests/lab/test_catalogue.py) show each duty catching its known-bad device; these pin the edges
that a run of the reference device does not reach: glare, retransmissions, a device of one's own, a duty turned off.
"""

from __future__ import annotations

import pytest

from faultlab.lab.duties import check_duties, duties
from faultlab.lab.scenario import ScenarioError, load_scenario, parse_scenario
from faultlab.lab.scenario_set import override
from faultlab.trace import Event

CALL = "c1@lab"
S05 = load_scenario("S05")


def push(t):
    return Event(t, "push", source="push", call_id=CALL, detail={"push_kind": "call", "outcome": "delivered"})


def dev(t, event, reason=None):
    detail = {"event": event} | ({"reason": reason} if reason else {})
    return Event(t, "device", source="device:alice", call_id=CALL, detail=detail)


def to_device(t, method=None, status=None, cseq_method=None, call_id=CALL, cseq=1, raw=None, kind="sent"):
    return Event(t, kind, source="proxy", flow="u1", direction="to-device", method=method, status=status,
                 cseq_method=cseq_method or method, call_id=call_id, cseq=cseq, raw=raw)


def from_device(t, method=None, status=None, cseq_method=None, call_id=CALL, cseq=1):
    return Event(t, "received", source="proxy", flow="u1", direction="to-pbx", method=method, status=status,
                 cseq_method=cseq_method or method, call_id=call_id, cseq=cseq)


def ringing(t_push=1.0, t_invite=1.0):
    return [push(t_push), dev(t_push, "reported"), from_device(t_push, "REGISTER", call_id="reg"),
            to_device(t_push, status=200, cseq_method="REGISTER", call_id="reg"), to_device(t_invite, "INVITE"),
            from_device(t_invite, status=180, cseq_method="INVITE")]


def duty(events, scenario=S05, name="cancel", **kw):
    return next(d for d in duties(events, CALL, scenario, **kw) if d.name == name)


def test_cancel_met_with_200_and_487():
    events = ringing() + [to_device(3.0, "CANCEL"), from_device(3.0, status=200, cseq_method="CANCEL"),
                          from_device(3.1, status=487, cseq_method="INVITE"), dev(3.0, "ended", "remoteEnded")]
    d = duty(events)
    assert d.applies and d.met
    assert "t=3.000 CANCEL reached the device, the INVITE not answered yet" in d.evidence


def test_cancel_answered_481_and_a_late_487_both_named():
    events = ringing() + [to_device(3.0, "CANCEL"), from_device(3.0, status=481, cseq_method="CANCEL"),
                          from_device(4.0, status=487, cseq_method="INVITE")]
    result = check_duties(events, CALL, S05)
    assert not result.passed
    assert "481 to the CANCEL and 487 to the INVITE only at t=4.000" in result.message
    assert "cancel: t=4.000 the device answered the INVITE 487" in result.evidence


def test_a_2xx_that_crossed_the_cancel_is_glare_not_a_broken_duty():
    events = ringing() + [to_device(3.0, "CANCEL"), from_device(3.05, status=200, cseq_method="INVITE"),
                          from_device(3.06, status=200, cseq_method="CANCEL")]
    assert not duty(events).applies
    # an answer well after the CANCEL reached the device did not cross it
    late = ringing() + [to_device(3.0, "CANCEL"), from_device(5.0, status=200, cseq_method="INVITE")]
    d = duty(late)
    assert d.applies and not d.met and "200 to the INVITE instead of 487" in d.message


def test_a_cancel_that_never_reached_the_device_is_not_judged():
    events = ringing() + [Event(3.0, "dropped", source="proxy", direction="to-device", method="CANCEL",
                                call_id=CALL)]
    assert not duty(events).applies


def test_ring_timeout_judges_only_the_code_for_a_device_of_ones_own():
    rang_out = ringing() + [from_device(31.0, status=486, cseq_method="INVITE"), dev(31.0, "ended", "unanswered")]
    d = duty(rang_out, name="ring-timeout", known_device=False)
    assert d.applies and not d.met and "rang out with 486" in d.message and "when it gives up ringing" in d.message
    ok = ringing() + [from_device(31.0, status=480, cseq_method="INVITE"), dev(31.0, "ended", "unanswered")]
    assert duty(ok, name="ring-timeout", known_device=False).met
    # the reference device's ring timeout is known (45 s): a run that ended before it is not judged
    assert not duty(ringing() + [dev(20.0, "device")], name="ring-timeout").applies


def test_late_invite_codes_are_a_scenario_setting():
    s03 = load_scenario("S03")
    events = ringing(t_invite=8.0)[:4] + [dev(6.0, "ended", "unanswered"), to_device(8.0, "INVITE"),
                                          from_device(8.0, status=410, cseq_method="INVITE")]
    events.sort(key=lambda e: e.t)
    assert duty(events, s03, "late-invite").met
    only_480 = override(s03, "expect.late_invite", "480")
    d = duty(events, only_480, "late-invite")
    assert not d.met and "got 410 at t=8.000: expected 480" in d.message
    assert not duty(events, override(s03, "expect.late_invite", ""), "late-invite").applies  # turned off


def test_register_403_a_retransmission_is_not_a_retry():
    s13 = load_scenario("S13")
    base = [push(1.0), dev(1.0, "reported"), from_device(1.0, "REGISTER", call_id="reg", cseq=2),
            to_device(1.0, status=403, cseq_method="REGISTER", call_id="reg", cseq=2, kind="responded")]
    retransmitted = base + [from_device(1.5, "REGISTER", call_id="reg", cseq=2)]
    assert duty(retransmitted, s13, "register-403").met
    retried = base + [from_device(1.5, "REGISTER", call_id="reg", cseq=3)]
    d = duty(retried, s13, "register-403")
    assert not d.met and "retried its REGISTER at t=1.500 after the 403 at t=1.000" in d.message


def test_retry_after_read_from_the_response():
    s12b = load_scenario("S12b")
    raw = (b"SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\nCall-ID: reg\r\n"
           b"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCSeq: 2 REGISTER\r\nRetry-After: 2\r\n"
           b"Content-Length: 0\r\n\r\n")
    base = [push(1.0), dev(1.0, "reported"), from_device(1.0, "REGISTER", call_id="reg", cseq=2),
            to_device(1.0, status=503, cseq_method="REGISTER", call_id="reg", cseq=2, raw=raw)]
    assert duty(base + [from_device(3.0, "REGISTER", call_id="reg", cseq=3)], s12b, "retry-after").met
    d = duty(base + [from_device(2.0, "REGISTER", call_id="reg", cseq=3)], s12b, "retry-after")
    assert not d.met and "1.000 s before the 503's Retry-After: 2 allowed" in d.message
    # a response faultlab cannot read has no Retry-After to honour
    garbled = base[:3] + [to_device(1.0, status=503, cseq_method="REGISTER", call_id="reg", cseq=2, raw=b"\xff\x00")]
    assert not duty(garbled + [from_device(1.1, "REGISTER", call_id="reg", cseq=3)], s12b, "retry-after").applies


def test_no_push_gateway_no_register_on_push_duty():
    events = [dev(1.0, "reported"), to_device(1.0, "INVITE"), from_device(1.0, status=180, cseq_method="INVITE")]
    assert not duty(events, name="register-on-push").applies
    result = check_duties([], CALL, S05)
    assert result.passed and result.message == "no SIP duty applied in this run"


@pytest.mark.parametrize("value", ["[480, true]", "[200]", '"480"', "[480, 700]"])
def test_late_invite_setting_is_validated(value):
    with pytest.raises(ScenarioError, match="expect.late_invite"):
        parse_scenario(f'id = "S90"\nslug = "x"\ntitle = "x"\n[expect]\nlate_invite = {value}\n')
    with pytest.raises(ScenarioError, match="final response codes"):
        override(S05, "expect.late_invite", "48x")


def test_an_invite_that_died_with_its_connection_is_not_the_devices_to_answer():
    lost = ringing()[:4] + [to_device(1.0, "INVITE"), Event(1.01, "flow-close", source="proxy", flow="u1",
                                                            detail={"how": "reset"}),
                            to_device(10.0, "CANCEL"), from_device(10.0, status=481, cseq_method="CANCEL")]
    assert not duty(lost).applies
    # the device answered it (180) before the connection died: the CANCEL is owed its 487
    answered = lost[:5] + [from_device(1.0, status=180, cseq_method="INVITE")] + lost[5:]
    d = duty(answered)
    assert d.applies and not d.met and "481 to the CANCEL and no 487 to the INVITE" in d.message


def test_register_on_push_applies_to_a_push_relayed_to_apns():
    from faultlab.lab.duties import duties
    from faultlab.lab.scenario import load_scenario
    from faultlab.trace import Event

    relayed = Event(1.0, "push", source="push", call_id="c9@lab",
                    detail={"push_kind": "call", "outcome": "relayed", "status": 200})
    found = {d.name: d for d in duties([relayed], "c9@lab", load_scenario("S01"), known_device=False)}
    assert found["register-on-push"].applies and not found["register-on-push"].met
