"""The whole lab in one trio process on loopback (faultlab.lab.stack): caller -> embedded PBX -> push gateway ->
reference device, the device's SIP through faultlab's relay, all judged from the one shared timeline.
Virtual time (trio's autojump clock), so deadlines are exact and take no wall time; each test runs over real
loopback sockets and again on the in-memory network (faultlab.net.memnet), where opening a real socket fails the test.

Issue 5, item 7: a push-woken call connects; a held INVITE is cancelled with no SIP reaching the device (with and
without the cancel push); an answered-elsewhere CANCEL carries its Reason. Over UDP, TCP and TLS.
"""

from __future__ import annotations

import socket

import pytest
import trio

from faultlab.faults import parse_profile
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.push import PushFaults
from faultlab.lab.stack import open_lab_stack
from faultlab.sip import parse_datagram, push_params

TRANSPORTS = ["udp", "tcp", "tls"]
TOKEN = "a1b2c3d4e5f60718"
ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
REGISTER_DELAY_2S = parse_profile("""
name = "register-delay-2s"
summary = "Every REGISTER reaches the PBX 2 s late."
[[rules]]
name = "delay-register"
match = { direction = "to-pbx", method = "REGISTER" }
action = { delay = "2s" }
""")


NETWORKS = ["loopback", "memory"]


def lab_kwargs(transport: str, tmp_path, network: str, monkeypatch) -> dict:
    """open_lab_stack's keywords; on the memory network, any real socket opened from now on fails the test."""
    if network == "memory":
        def real_socket(*args, **kwargs):
            raise AssertionError("a real socket was opened by a lab on the memory network")
        monkeypatch.setattr(socket, "socket", real_socket)
    return {"network": network, **({"confdir": tmp_path} if transport == "tls" else {})}


def index(events, pred) -> int:
    """Index of the first event matching ``pred`` (fails the test if there is none)."""
    for i, e in enumerate(events):
        if pred(e):
            return i
    raise AssertionError("no such event on the timeline")


def crossed(e, method, direction, call_id=None) -> bool:
    """faultlab forwarded a ``method`` request (or a response to ``method`` when it is an int status) ``direction``."""
    if e.source != "proxy" or e.kind != "sent" or e.direction != direction:
        return False
    if call_id is not None and e.call_id != call_id:
        return False
    return e.status == method if isinstance(method, int) else e.method == method


@pytest.mark.parametrize(("network", "push"), [("loopback", "local"), ("loopback", "http"), ("memory", "local")])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_push_woken_call_connects_through_faultlab(transport, push, network, tmp_path, monkeypatch,
                                                         autojump_clock):
    async with open_lab_stack(transport, push=push, device_config=DeviceConfig(answer_after=1.5),
                              **lab_kwargs(transport, tmp_path, network, monkeypatch)) as lab:
        # the device registered at start, through faultlab, with its push parameters
        assert lab.device.initial_register == 200
        [binding] = lab.pbx.bindings("alice")
        assert binding.push["pn-prid"] == TOKEN and binding.push["pn-provider"] == "apns"
        start = lab.timeline.now()
        result = await lab.call(hang_up_after=2.0)
    events = list(lab.timeline.events)
    call_id = result.call_id
    assert result.final == 200 and result.handle.ended == "local-bye"

    # the initial REGISTER crossed faultlab with RFC 8599 Contact parameters
    first_register = events[index(events, lambda e: crossed(e, "REGISTER", "to-pbx"))]
    assert push_params(parse_datagram(first_register.raw).contacts[0]) == {
        "pn-provider": "apns", "pn-prid": TOKEN, "pn-param": "ABCDE12345.org.faultlab.device.voip"}

    # caller INVITE -> PBX holds and pushes -> gateway delivers -> device reports at once
    i_invite = index(events, lambda e: e.source == "pbx" and e.kind == "received" and e.method == "INVITE")
    i_push = index(events, lambda e: e.source == "pbx" and e.kind == "pbx" and e.detail.get("action") == "push-sent"
                   and e.call_id == call_id)
    i_delivered = index(events, lambda e: e.source == "push" and e.kind == "push" and e.call_id == call_id)
    assert events[i_delivered].detail["outcome"] == "delivered"
    assert events[i_delivered].detail["push_kind"] == "call"
    i_reported = index(events, lambda e: e.kind == "device" and e.detail["event"] == "reported")
    assert i_invite < i_push < i_delivered < i_reported
    assert events[i_reported].t == pytest.approx(events[i_push].t, abs=1e-6) == pytest.approx(start, abs=1e-6)

    # the device re-REGISTERs through faultlab; the PBX releases the INVITE on that flow, through faultlab
    i_refresh = index(events, lambda e: i_reported < events.index(e) and crossed(e, "REGISTER", "to-pbx"))
    i_release = index(events, lambda e: e.kind == "pbx" and e.detail.get("action") == "release")
    i_forward = index(events, lambda e: e.kind == "pbx" and e.detail.get("action") == "forward")
    i_invite_dev = index(events, lambda e: crossed(e, "INVITE", "to-device", call_id))
    assert i_reported < i_refresh < i_release < i_forward < i_invite_dev
    assert events[i_invite_dev].flow == events[i_refresh].flow  # the refresh REGISTER's flow
    assert events[i_invite_dev].transport == transport

    # the scripted user answers 1.5 s after the report: 200 through faultlab, the ACK and later the BYE cross it
    i_ok = index(events, lambda e: crossed(e, 200, "to-pbx", call_id) and e.cseq_method == "INVITE")
    assert events[i_ok].t == pytest.approx(start + 1.5, abs=1e-6)
    i_ack = index(events, lambda e: crossed(e, "ACK", "to-device", call_id))
    i_bye = index(events, lambda e: crossed(e, "BYE", "to-device", call_id))
    assert i_invite_dev < i_ok < i_ack < i_bye
    assert events[i_bye].t == pytest.approx(start + 3.5, abs=1e-6)

    # the device: reported, answered, fulfilled, ended remoteEnded exactly once
    assert [(round(t - start, 6), ev, reason) for t, ev, reason in result.device_events] == [
        (0.0, "reported", None), (1.5, "answer-tapped", None), (1.5, "answer-fulfilled", None),
        (3.5, "ended", "remoteEnded")]
    assert result.ended == "remoteEnded"
    # no SIP faultlab could not parse, no warnings from any actor
    assert not [e for e in events if e.kind == "warning"]


@pytest.mark.parametrize("faults", [PushFaults(), PushFaults(drop_cancel=True)], ids=["cancel-push", "no-cancel-push"])
@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_held_invite_cancelled_no_sip_reaches_the_device(transport, faults, network, tmp_path, monkeypatch,
                                                               autojump_clock):
    config = DeviceConfig()  # register 8 s, INVITE 5 s after the REGISTER 2xx, total 15 s
    async with open_lab_stack(transport, push_faults=faults, device_config=config,
                              **lab_kwargs(transport, tmp_path, network, monkeypatch)) as lab:
        assert lab.device.initial_register == 200
        # from now on faultlab holds every REGISTER 2 s (switched on after the REGISTER at start, so that none of
        # its retransmissions reaches the PBX late and passes for the refresh)
        lab.proxy.activate(REGISTER_DELAY_2S)
        start, before = lab.timeline.now(), len(lab.timeline.events)
        # the caller cancels 1 s after its INVITE (and the push): the refresh REGISTER is still held by faultlab
        result = await lab.call(cancel_at=1.0)
    events = list(lab.timeline.events)[before:]  # from the call on
    call_id = result.call_id
    assert result.final == 487 and result.handle.ended == "cancelled"

    cancel_held = events[index(events, lambda e: e.kind == "pbx" and e.detail.get("action") == "cancel-held")]
    assert cancel_held.t == pytest.approx(start + 1.0, abs=1e-6)
    # the refresh REGISTER reached the PBX only after the CANCEL (faultlab delayed it 2 s) and got its 200
    refresh = [e for e in events if crossed(e, "REGISTER", "to-pbx")]
    assert refresh and refresh[0].t == pytest.approx(start + 2.0, abs=1e-6)
    ok = [e for e in events if crossed(e, 200, "to-device") and e.cseq_method == "REGISTER"]
    assert ok and ok[0].t == pytest.approx(start + 2.0, abs=1e-6)
    assert [e.detail["action"] for e in events if e.kind == "pbx" and e.call_id == call_id
            and e.detail.get("action") in ("release", "forward")] == []

    # no SIP for that call (no INVITE, no CANCEL, nothing) went to the device through faultlab
    assert [e for e in events if e.source == "proxy" and e.direction == "to-device" and e.call_id == call_id] == []
    assert [e for e in events if e.source == "proxy" and e.direction == "to-device"
            and e.method in ("INVITE", "CANCEL")] == []

    # the cancel push: delivered or dropped by the gateway; the device's outcome is the same either way
    cancel_pushes = [e for e in events if e.source == "push" and e.kind == "push" and e.detail["push_kind"] == "cancel"]
    assert [e.detail["outcome"] for e in cancel_pushes] == ["dropped" if faults.drop_cancel else "delivered"]
    # ended unanswered at its INVITE deadline: D_invite after the REGISTER 2xx
    assert result.ended == "unanswered"
    assert [(round(t - start, 6), ev, reason) for t, ev, reason in result.device_events] == [
        (0.0, "reported", None), (2.0 + config.invite_deadline, "ended", "unanswered")]


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_answered_elsewhere_cancel_carries_its_reason(transport, network, tmp_path, monkeypatch,
                                                            autojump_clock):
    async with open_lab_stack(transport, device_config=DeviceConfig(),
                              **lab_kwargs(transport, tmp_path, network, monkeypatch)) as lab:
        start = lab.timeline.now()
        # the device rings (no answer); 0.5 s after the caller's 180 a second device answers
        result = await lab.call(answer_elsewhere=0.5)
        # the device answers the CANCEL 200 and the INVITE 487, both back through faultlab
        await lab.wait_for_event(lambda e: crossed(e, 487, "to-pbx", result.call_id))
    events = list(lab.timeline.events)
    call_id = result.call_id
    assert result.final == 487

    i_invite = index(events, lambda e: crossed(e, "INVITE", "to-device", call_id))
    i_ringing = index(events, lambda e: crossed(e, 180, "to-pbx", call_id))
    i_elsewhere = index(events, lambda e: e.kind == "pbx" and e.detail.get("action") == "elsewhere")
    i_cancel = index(events, lambda e: crossed(e, "CANCEL", "to-device", call_id))
    assert i_invite < i_ringing < i_elsewhere < i_cancel
    cancel = events[i_cancel]
    assert cancel.t == pytest.approx(start + 0.5, abs=1e-6)
    assert parse_datagram(cancel.raw).get_all("reason") == [ELSEWHERE]
    assert index(events, lambda e: crossed(e, 200, "to-pbx", call_id) and e.cseq_method == "CANCEL") > i_cancel
    assert index(events, lambda e: crossed(e, 487, "to-pbx", call_id)) > i_cancel
    assert result.ended == "answeredElsewhere"
    assert [(round(t - start, 6), ev, reason) for t, ev, reason in result.device_events] == [
        (0.0, "reported", None), (0.5, "ended", "answeredElsewhere")]
