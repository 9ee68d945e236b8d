"""The embedded PBX's SIP logic without sockets: registrar, held INVITEs and pushes, CANCEL, timers."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from faultlab.lab.pbx import PBX
from faultlab.lab.pbx.logic import Flow, Note, PbxLogic, RequestPush, SendBytes
from faultlab.lab.timeline import Timeline
from faultlab.sip import Message, parse_datagram

PBX_UDP = ("127.0.0.1", 5060)
CALLER = Flow("udp", ("127.0.0.1", 40000), PBX_UDP)
PHONE_OLD = Flow("tcp", ("127.0.0.1", 41000), ("127.0.0.1", 5060), conn=1)
PHONE_NEW = Flow("tcp", ("127.0.0.1", 41001), ("127.0.0.1", 5060), conn=2)
PN = ";pn-provider=apns;pn-prid=TOKEN1;pn-param=ABCD.com.example.app.voip"


def msg(text: str) -> Message:
    data = text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n\r\n"
    m = parse_datagram(data)
    assert isinstance(m, Message)
    return m


def register(user="bob", port=41000, *, contact_params="", expires=60, transport="tcp", cseq=1, contact=None):
    contact = contact or f"<sip:{user}@127.0.0.1:{port};transport={transport}{contact_params}>"
    return msg(f"""
REGISTER sip:127.0.0.1 SIP/2.0
Via: SIP/2.0/{transport.upper()} 127.0.0.1:{port};rport;branch=z9hG4bKreg{cseq}{port}
Max-Forwards: 70
From: <sip:{user}@127.0.0.1>;tag=r{port}
To: <sip:{user}@127.0.0.1>
Call-ID: reg-{user}-{port}
CSeq: {cseq} REGISTER
Contact: {contact}
Expires: {expires}
Content-Length: 0""")


def invite(call_id="call1", branch="z9hG4bKinv1"):
    return msg(f"""
INVITE sip:bob@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch={branch}
Max-Forwards: 70
From: "Alice" <sip:alice@127.0.0.1>;tag=atag
To: <sip:bob@127.0.0.1>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:40000>
Content-Length: 0""")


def cancel(call_id="call1", branch="z9hG4bKinv1", reason=None):
    extra = f"\nReason: {reason}" if reason else ""
    return msg(f"""
CANCEL sip:bob@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch={branch}
Max-Forwards: 70
From: "Alice" <sip:alice@127.0.0.1>;tag=atag
To: <sip:bob@127.0.0.1>
Call-ID: {call_id}
CSeq: 1 CANCEL{extra}
Content-Length: 0""")


def reply(request: Message, status: int, to_tag="btag", contact=True) -> Message:
    """The device's response to a request the PBX forwarded (Vias and Record-Route copied)."""
    lines = [f"SIP/2.0 {status} X"]
    lines += [f"Via: {v}" for v in request.get_all("via")]
    if request.method == "INVITE" and 100 < status < 300:
        lines += [f"Record-Route: {r}" for r in request.get_all("record-route")]
    lines += [f"From: {request.get('from')}", f"To: {request.get('to')};tag={to_tag}",
              f"Call-ID: {request.call_id}", f"CSeq: {request.get('cseq')}"]
    if contact:
        lines.append("Contact: <sip:bob@127.0.0.1:41001;transport=tcp>")
    lines.append("Content-Length: 0")
    return msg("\n".join(lines))


def sends(actions) -> list[tuple[Flow, Message]]:
    return [(a.flow, parse_datagram(a.data)) for a in actions if isinstance(a, SendBytes)]


def pushes(actions) -> list[RequestPush]:
    return [a for a in actions if isinstance(a, RequestPush)]


def notes(actions) -> list[str]:
    return [a.detail["action"] for a in actions if isinstance(a, Note)]


# ---------------------------------------------------------------------- registrar


def test_register_with_push_params_lists_binding():
    pbx = PbxLogic()
    out = pbx.receive(register(contact_params=PN, expires=120), PHONE_OLD, now=10.0)
    [(flow, ok)] = sends(out)
    assert flow == PHONE_OLD and ok.status == 200
    assert ok.get_all("contact") == [f"<sip:bob@127.0.0.1:41000;transport=tcp{PN}>;expires=120"]
    [b] = pbx.bindings("bob", now=10.0)
    assert b.token == "TOKEN1" and b.push["pn-provider"] == "apns"
    assert b.push["pn-param"] == "ABCD.com.example.app.voip" and b.flow == PHONE_OLD
    assert pbx.bindings("bob", now=129.9) and not pbx.bindings("bob", now=130.0)


def test_register_expires_param_removal_and_star():
    pbx = PbxLogic(default_expires=300)
    c1 = "<sip:bob@127.0.0.1:41000;transport=tcp>;expires=30"
    pbx.receive(register(contact=c1), PHONE_OLD, now=0.0)
    out = pbx.receive(register(port=41001, expires=90), PHONE_NEW, now=10.0)
    [(_, ok)] = sends(out)
    assert ok.get_all("contact") == ["<sip:bob@127.0.0.1:41000;transport=tcp>;expires=20",
                                     "<sip:bob@127.0.0.1:41001;transport=tcp>;expires=90"]
    out = pbx.receive(register(port=41001, expires=0, cseq=2), PHONE_NEW, now=11.0)
    assert [b.contact for b in pbx.bindings("bob", 11.0)] == ["sip:bob@127.0.0.1:41000;transport=tcp"]
    assert "unregister" in notes(out)
    out = pbx.receive(register(contact="*", expires=0, cseq=3), PHONE_OLD, now=12.0)
    assert sends(out)[0][1].status == 200 and pbx.bindings("bob", 12.0) == []


def test_push_refresh_with_new_port_replaces_binding():
    pbx = PbxLogic()
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    pbx.receive(register(port=41001, contact_params=PN, cseq=2), PHONE_NEW, now=5.0)
    [b] = pbx.bindings("bob", 5.0)
    assert b.flow == PHONE_NEW and b.contact.startswith("sip:bob@127.0.0.1:41001")


# ---------------------------------------------------------------------- calls


def test_invite_to_plain_softphone_forwarded_at_once_with_via_and_record_route():
    pbx = PbxLogic()
    pbx.receive(register(), PHONE_OLD, now=0.0)
    out = pbx.receive(invite(), CALLER, now=1.0)
    assert not pushes(out)
    (f1, trying), (f2, fwd) = sends(out)
    assert f1 == CALLER and trying.status == 100
    assert f2 == PHONE_OLD and fwd.method == "INVITE"
    assert fwd.request_uri == "sip:bob@127.0.0.1:41000;transport=tcp"
    assert fwd.top_via.transport == "TCP" and fwd.top_via.branch.startswith("z9hG4bK")
    assert len(fwd.vias) == 2 and fwd.get("max-forwards") == "69"
    # caller on UDP, device on TCP: two Record-Route entries (RFC 5658 style)
    assert fwd.get_all("record-route") == ["<sip:faultlab-pbx@127.0.0.1:5060;transport=tcp;lr>",
                                           "<sip:faultlab-pbx@127.0.0.1:5060;lr>"]
    assert pbx.call_state("call1") == "forwarded"


def test_invite_unknown_user_404():
    pbx = PbxLogic()
    [(_, r)] = sends(pbx.receive(invite(), CALLER, now=0.0))
    assert r.status == 404


def test_pushed_user_invite_held_then_forwarded_on_refresh_flow():
    pbx = PbxLogic(wall_clock=lambda: 1700000000.0)
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    out = pbx.receive(invite(), CALLER, now=30.0)
    [(flow, trying)] = sends(out)
    assert flow == CALLER and trying.status == 100
    [push] = pushes(out)
    assert push.token == "TOKEN1"
    assert push.payload == {
        "aps": {}, "type": "call", "call-id": "call1", "uuid": push.payload["uuid"],
        "from-uri": "sip:alice@127.0.0.1", "display-name": "Alice", "send-time": 1700000000.0,
    }
    assert "hold" in notes(out) and pbx.call_state("call1") == "held"
    assert pbx.next_deadline() == 38.0
    # the device wakes and registers on a new connection
    out = pbx.receive(register(port=41001, contact_params=PN, cseq=2), PHONE_NEW, now=31.5)
    (f1, ok), (f2, fwd) = sends(out)
    assert f1 == PHONE_NEW and ok.status == 200
    assert f2 == PHONE_NEW and fwd.method == "INVITE" and fwd.request_uri.startswith("sip:bob@127.0.0.1:41001")
    assert "release" in notes(out) and pbx.call_state("call1") == "forwarded"
    # the device rings and answers: relayed to the caller without the PBX's Via
    [(f, ringing)] = sends(pbx.receive(reply(fwd, 180), PHONE_NEW, now=31.6))
    assert f == CALLER and ringing.status == 180 and len(ringing.vias) == 1
    [(f, ok)] = sends(pbx.receive(reply(fwd, 200), PHONE_NEW, now=32.0))
    assert f == CALLER and ok.status == 200 and pbx.call_state("call1") == "confirmed"
    assert pbx.on_timer(200.0) == []  # no hold or ring timer left


def test_hold_timeout_480():
    pbx = PbxLogic(hold=8.0)
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    pbx.receive(invite(), CALLER, now=10.0)
    assert pbx.on_timer(17.999) == []
    out = pbx.receive(invite(), CALLER, now=12.0)  # a retransmission: the 100 again
    assert [(f, m.status) for f, m in sends(out)] == [(CALLER, 100)]
    out = pbx.on_timer(18.0)
    assert "hold-timeout" in notes(out)
    [(f, r)] = sends(out)
    assert f == CALLER and r.status == 480
    assert pbx.call_state("call1") == "ended"


def test_cancel_while_held_200_487_nothing_forwarded_cancel_push():
    pbx = PbxLogic()
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    pbx.receive(invite(), CALLER, now=10.0)
    out = pbx.receive(cancel(reason='SIP;cause=487;text="Caller hung up"'), CALLER, now=11.0)
    sent = sends(out)
    assert [(f, m.status, m.cseq.method) for f, m in sent] == [(CALLER, 200, "CANCEL"), (CALLER, 487, "INVITE")]
    [push] = pushes(out)
    assert push.token == "TOKEN1" and push.payload["type"] == "cancel" and push.payload["call-id"] == "call1"
    assert {"cancel-held", "cancel-push"} <= set(notes(out))
    # a late REGISTER forwards nothing; the caller's ACK for the 487 is absorbed
    out = pbx.receive(register(port=41001, contact_params=PN, cseq=2), PHONE_NEW, now=12.0)
    assert [m.status for _, m in sends(out)] == [200]
    ack = msg(sent[1][1].raw.decode().replace("SIP/2.0 487 Request Terminated", "ACK sip:bob@127.0.0.1 SIP/2.0")
              .replace("CSeq: 1 INVITE", "CSeq: 1 ACK").replace("\r\n", "\n").strip())
    assert pbx.receive(ack, CALLER, now=12.1) == []
    assert pbx.on_timer(100.0) == []


def test_cancel_while_held_without_cancel_push():
    pbx = PbxLogic(cancel_push=False)
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    pbx.receive(invite(), CALLER, now=1.0)
    out = pbx.receive(cancel(), CALLER, now=2.0)
    assert not pushes(out) and [m.status for _, m in sends(out)] == [200, 487]


def _forwarded(pbx: PbxLogic) -> Message:
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    pbx.receive(invite(), CALLER, now=10.0)
    out = pbx.receive(register(port=41001, contact_params=PN, cseq=2), PHONE_NEW, now=11.0)
    return sends(out)[1][1]


def test_cancel_after_forwarding_keeps_reason():
    pbx = PbxLogic()
    fwd = _forwarded(pbx)
    pbx.receive(reply(fwd, 180), PHONE_NEW, now=11.5)
    reason = 'SIP ;cause=200 ;text="Call completed elsewhere"'
    out = pbx.receive(cancel(reason=reason), CALLER, now=12.0)
    assert not pushes(out)
    (f1, ok), (f2, c) = sends(out)
    assert f1 == CALLER and ok.status == 200
    assert f2 == PHONE_NEW and c.method == "CANCEL" and c.get_all("reason") == [reason]
    assert c.top_via.branch == fwd.top_via.branch and c.request_uri == fwd.request_uri
    # the device's 200 to that CANCEL stays in the PBX; its 487 is relayed to the caller, ACKed by the PBX
    assert sends(pbx.receive(reply(c, 200, contact=False), PHONE_NEW, now=12.05)) == []
    (fa, ack), (fb, r487) = sends(pbx.receive(reply(fwd, 487), PHONE_NEW, now=12.1))
    assert fa == PHONE_NEW and ack.method == "ACK" and ack.top_via.branch == fwd.top_via.branch
    assert fb == CALLER and r487.status == 487


@pytest.mark.parametrize("reason,header", [
    ("answered", 'SIP;cause=200;text="Call completed elsewhere"'),
    ("declined", 'SIP;cause=600;text="Busy Everywhere"'),
])
def test_cancel_elsewhere(reason, header):
    pbx = PbxLogic()
    fwd = _forwarded(pbx)
    out = pbx.cancel_elsewhere("call1", reason, now=12.0)
    (f1, c), (f2, r) = sends(out)
    assert f1 == PHONE_NEW and c.method == "CANCEL" and c.get("reason") == header
    assert f2 == CALLER and r.status == 487
    # the device's 487 is ACKed and not relayed again
    assert [(f, m.method) for f, m in sends(pbx.receive(reply(fwd, 487), PHONE_NEW, now=12.1))] == [(PHONE_NEW, "ACK")]
    with pytest.raises(ValueError):
        pbx.cancel_elsewhere("call1", reason, now=13.0)


def test_device_answers_as_elsewhere_cancel_crosses_it_gets_ack_and_bye():
    pbx = PbxLogic()
    fwd = _forwarded(pbx)
    pbx.cancel_elsewhere("call1", "answered", now=12.0)
    out = pbx.receive(reply(fwd, 200), PHONE_NEW, now=12.01)
    assert "late-answer" in notes(out)
    (f1, ack), (f2, bye) = sends(out)
    assert f1 == f2 == PHONE_NEW
    assert ack.method == "ACK" and ack.request_uri == "sip:bob@127.0.0.1:41001;transport=tcp"
    assert ack.to_tag == "btag" and ack.cseq.number == 1
    assert bye.method == "BYE" and bye.to_tag == "btag" and bye.cseq.number == 2
    assert pbx.call_state("call1") == "late-answer"
    assert sends(pbx.receive(reply(bye, 200, contact=False), PHONE_NEW, now=12.02)) == []
    assert pbx.call_state("call1") == "ended"


def test_cancel_elsewhere_bad_reason_and_unknown_call():
    pbx = PbxLogic()
    _forwarded(pbx)
    with pytest.raises(ValueError):
        pbx.cancel_elsewhere("call1", "maybe", now=12.0)
    with pytest.raises(KeyError):
        pbx.cancel_elsewhere("nope", "answered", now=12.0)


def test_ring_timeout_cancels_device_480_to_caller():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded(pbx)
    assert pbx.next_deadline() == 56.0
    out = pbx.on_timer(56.0)
    (f1, c), (f2, r) = sends(out)
    assert f1 == PHONE_NEW and c.method == "CANCEL" and c.get("reason") is None
    assert f2 == CALLER and r.status == 480
    assert "ring-timeout" in notes(out)
    assert [m.method for _, m in sends(pbx.receive(reply(fwd, 487), PHONE_NEW, now=56.1))] == ["ACK"]


def test_in_dialog_bye_both_directions_and_ack():
    pbx = PbxLogic()
    fwd = _forwarded(pbx)
    ok = sends(pbx.receive(reply(fwd, 200), PHONE_NEW, now=12.0))[0][1]
    routes = ok.get_all("record-route")[::-1]
    ack = msg("\n".join([
        "ACK sip:bob@127.0.0.1:41001;transport=tcp SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKack1", "Max-Forwards: 70",
        *(f"Route: {r}" for r in routes),
        'From: "Alice" <sip:alice@127.0.0.1>;tag=atag', "To: <sip:bob@127.0.0.1>;tag=btag",
        "Call-ID: call1", "CSeq: 1 ACK", "Content-Length: 0"]))
    [(f, a)] = sends(pbx.receive(ack, CALLER, now=12.1))
    assert f == PHONE_NEW and a.method == "ACK" and a.get_all("route") == [] and len(a.vias) == 2
    # the device hangs up: BYE to the caller's flow, 200 back to the device
    bye = msg("\n".join([
        "BYE sip:alice@127.0.0.1:40000 SIP/2.0",
        "Via: SIP/2.0/TCP 127.0.0.1:41001;rport;branch=z9hG4bKbye1", "Max-Forwards: 70",
        *(f"Route: {r}" for r in fwd.get_all("record-route")),
        "From: <sip:bob@127.0.0.1>;tag=btag", 'To: "Alice" <sip:alice@127.0.0.1>;tag=atag',
        "Call-ID: call1", "CSeq: 1 BYE", "Content-Length: 0"]))
    [(f, b)] = sends(pbx.receive(bye, PHONE_NEW, now=20.0))
    assert f == CALLER and b.method == "BYE" and b.get_all("route") == []
    [(f, r)] = sends(pbx.receive(reply(b, 200, to_tag="atag", contact=False), CALLER, now=20.1))
    assert f == PHONE_NEW and r.status == 200 and len(r.vias) == 1
    assert pbx.call_state("call1") == "ended"


# ---------------------------------------------------------------------- the trio driver, virtual time


async def test_driver_hold_timeout_exact_under_mock_clock(autojump_clock):
    timeline = Timeline()
    wire: list[tuple[float, Flow, Message]] = []
    pushed: list[tuple[float, str, dict]] = []

    async def transmit(flow, data):
        wire.append((trio.current_time(), flow, parse_datagram(data)))

    async def send_push(token, payload):
        pushed.append((trio.current_time(), token, payload))

    pbx = PBX(timeline=timeline, send_push=send_push, transmit=transmit, hold=8.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pbx.run)
        await pbx.receive(register(contact_params=PN), PHONE_OLD)
        await trio.sleep(1.0)
        t_invite = trio.current_time()
        await pbx.receive(invite(), CALLER)
        await trio.sleep(30.0)
        pbx.stop()
    assert [(t - t_invite, tok, p["type"]) for t, tok, p in pushed] == [(0.0, "TOKEN1", "call")]
    finals = [(t - t_invite, m.status) for t, f, m in wire if f == CALLER]
    assert finals == [(0.0, 100), (8.0, 480)]
    kinds = [(e.kind, e.detail.get("action")) for e in timeline.events if e.source == "pbx"]
    assert ("pbx", "hold") in kinds and ("pbx", "hold-timeout") in kinds and ("pbx", "push-sent") in kinds
    assert any(e.kind == "sent" and e.status == 480 for e in timeline.events)


async def test_driver_push_failure_480(autojump_clock):
    wire = []

    async def transmit(flow, data):
        wire.append(parse_datagram(data))

    async def send_push(token, payload):
        raise RuntimeError("gateway says BadDeviceToken")

    pbx = PBX(timeline=Timeline(), send_push=send_push, transmit=transmit)
    async with trio.open_nursery() as nursery:
        await nursery.start(pbx.run)
        await pbx.receive(register(contact_params=PN), PHONE_OLD)
        await pbx.receive(invite(), CALLER)
        await trio.sleep(0.1)
        pbx.stop()
    assert [m.status for m in wire] == [200, 100, 480]


@pytest.mark.parametrize(("reason", "dropped"), [("Unregistered", True), ("BadDeviceToken", True),
                                                ("PayloadTooLarge", False), ("TooManyRequests", False)])
async def test_driver_drops_a_token_apns_says_is_gone(autojump_clock, reason, dropped):
    from faultlab.lab.push import PushRejected

    wire, tries = [], []

    async def transmit(flow, data):
        wire.append(parse_datagram(data))

    async def send_push(token, payload):
        tries.append(token)
        raise PushRejected(410 if reason == "Unregistered" else 400, reason)

    timeline = Timeline()
    pbx = PBX(timeline=timeline, send_push=send_push, transmit=transmit)
    async with trio.open_nursery() as nursery:
        await nursery.start(pbx.run)
        await pbx.receive(register(contact_params=PN), PHONE_OLD)
        await pbx.receive(invite(), CALLER)
        await trio.sleep(0.1)
        await pbx.receive(invite(call_id="call2", branch="z9hG4bKinv2"), CALLER)  # the user calls again
        await trio.sleep(0.1)
        pbx.stop()
    actions = [e.detail["action"] for e in timeline.events if e.kind == "pbx"]
    assert ("token-dropped" in actions) is dropped and len(tries) == (1 if dropped else 2)  # never retried
    # the first call: 480 at once; the second: 404 without a push (no binding left), or 480 after its own push
    assert [m.status for m in wire] == [200, 100, 480] + ([404] if dropped else [100, 480])


def test_payload_padded_to_the_size_asked():
    pbx = PbxLogic(payload_size=5121)
    pbx.receive(register(contact_params=PN), PHONE_OLD, now=0.0)
    [push] = pushes(pbx.receive(invite(), CALLER, now=1.0))
    assert len(json.dumps(push.payload, separators=(",", ":"))) == 5121 and push.payload["call-id"] == "call1"


# ---------------------------------------------------------------------- retransmissions (RFC 3261 §17.1)

PHONE_UDP = Flow("udp", ("127.0.0.1", 41002), PBX_UDP)


def _forwarded_udp(pbx: PbxLogic, now: float = 0.0) -> Message:
    """A plain softphone registered over UDP; the caller's INVITE forwarded to it at ``now``."""
    pbx.receive(register(port=41002, transport="udp"), PHONE_UDP, now=now)
    out = pbx.receive(invite(), CALLER, now=now)
    [(f, fwd)] = [(f, m) for f, m in sends(out) if m.method == "INVITE"]
    assert f == PHONE_UDP
    return fwd


def _retransmissions(out) -> list[tuple[Flow, str, int]]:
    return [(a.flow, parse_datagram(a.data).method, a.retransmission) for a in out
            if isinstance(a, SendBytes) and a.retransmission]


def _run_timers(pbx: PbxLogic, until: float) -> list[tuple[float, list]]:
    """Fire the logic's timers in deadline order up to ``until``: [(time, actions)]."""
    fired = []
    while (t := pbx.next_deadline()) is not None and t <= until:
        fired.append((t, pbx.on_timer(t)))
    return fired


def test_udp_invite_retransmitted_per_timer_a_then_timer_b_408():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    assert pbx.retransmitting() == [(fwd.top_via.branch, "INVITE")]
    fired = _run_timers(pbx, 40.0)
    resent = [(t, n) for t, out in fired for (f, m, n) in _retransmissions(out)]
    assert resent == [(0.5, 1), (1.5, 2), (3.5, 3), (7.5, 4), (15.5, 5), (31.5, 6)]
    for t, out in fired:
        for a in out:
            if isinstance(a, SendBytes) and a.retransmission:
                assert a.flow == PHONE_UDP and a.data == fwd.raw  # the same bytes, same branch
    [(t, out)] = [(t, out) for t, out in fired if "timeout" in notes(out)]
    assert t == 32.0
    [note] = [a for a in out if isinstance(a, Note)]
    assert note.detail["timer"] == "B" and note.detail["method"] == "INVITE" and note.detail["retransmissions"] == 6
    assert [(f, m.status) for f, m in sends(out)] == [(CALLER, 408)]
    assert pbx.call_state("call1") == "ended" and pbx.retransmitting() == []
    assert pbx.next_deadline() is None  # the ring timer went with the call
    # a retransmitted INVITE from the caller gets that 408 again
    assert [(f, m.status) for f, m in sends(pbx.receive(invite(), CALLER, now=33.0))] == [(CALLER, 408)]


@pytest.mark.parametrize("status", [100, 180])
def test_udp_invite_retransmissions_stop_at_first_provisional(status):
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    assert _retransmissions(pbx.on_timer(0.5)) == [(PHONE_UDP, "INVITE", 1)]
    out = pbx.receive(reply(fwd, status), PHONE_UDP, now=1.0)
    assert [m.status for _, m in sends(out)] == ([] if status == 100 else [180])
    assert pbx.retransmitting() == []
    assert pbx.next_deadline() == 45.0  # only the ring timer is left


def test_tcp_nothing_retransmitted():
    pbx = PbxLogic(ring_timeout=45.0)
    _forwarded(pbx)  # the device is on TCP
    assert pbx.retransmitting() == []
    assert pbx.next_deadline() == 56.0  # forwarded at 11: only the ring timer
    assert all(not _retransmissions(out) for _, out in _run_timers(pbx, 55.9))


def _bye_from_caller(ok: Message, branch="z9hG4bKbye9") -> Message:
    return msg("\n".join([
        "BYE sip:bob@127.0.0.1:41002 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch={branch}", "Max-Forwards: 70",
        *(f"Route: {r}" for r in ok.get_all("record-route")[::-1]),
        'From: "Alice" <sip:alice@127.0.0.1>;tag=atag', "To: <sip:bob@127.0.0.1>;tag=btag",
        "Call-ID: call1", "CSeq: 2 BYE", "Content-Length: 0"]))


def test_udp_bye_retransmitted_per_timer_e_until_its_200_and_retransmissions_absorbed():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    pbx.receive(reply(fwd, 180), PHONE_UDP, now=0.2)
    [(_, ok)] = sends(pbx.receive(reply(fwd, 200), PHONE_UDP, now=1.0))
    assert pbx.next_deadline() is None
    # a 2xx retransmission from the device is still relayed to the caller (RFC 3261 §13.3.1.4)
    assert [(f, m.status) for f, m in sends(pbx.receive(reply(fwd, 200), PHONE_UDP, now=1.5))] == [(CALLER, 200)]
    bye = _bye_from_caller(ok)
    [(f, fbye)] = sends(pbx.receive(bye, CALLER, now=10.0))
    assert f == PHONE_UDP and fbye.method == "BYE"
    fired = _run_timers(pbx, 24.0)
    resent = [(t - 10.0, n) for t, out in fired for (_, m, n) in _retransmissions(out)]
    assert resent == [(0.5, 1), (1.5, 2), (3.5, 3), (7.5, 4), (11.5, 5)]  # T1 doubling, capped at T2 = 4 s
    # the caller retransmits its BYE meanwhile: absorbed (the PBX retransmits its own copy)
    assert pbx.receive(bye, CALLER, now=22.0) == []
    [(f, r)] = sends(pbx.receive(reply(fbye, 200, to_tag="btag", contact=False), PHONE_UDP, now=22.5))
    assert f == CALLER and r.status == 200 and pbx.call_state("call1") == "ended"
    assert pbx.retransmitting() == [] and pbx.next_deadline() is None
    # the device retransmits its 200: absorbed; the caller retransmits the BYE: it gets the 200 again
    assert pbx.receive(reply(fbye, 200, to_tag="btag", contact=False), PHONE_UDP, now=23.0) == []
    [(f, again)] = sends(pbx.receive(bye, CALLER, now=23.5))
    assert f == CALLER and again.raw == r.raw


def test_udp_bye_provisional_slows_to_t2_and_timer_f_408():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    [(_, ok)] = sends(pbx.receive(reply(fwd, 200), PHONE_UDP, now=1.0))
    [(_, fbye)] = sends(pbx.receive(_bye_from_caller(ok), CALLER, now=10.0))
    pbx.on_timer(10.5)
    # a provisional response: Timer E now fires every T2 (RFC 3261 §17.1.2.2)
    assert [m.status for _, m in sends(pbx.receive(reply(fbye, 100, contact=False), PHONE_UDP, now=10.6))] == [100]
    fired = _run_timers(pbx, 60.0)
    resent = [t - 10.0 for t, out in fired for _ in _retransmissions(out)]
    assert resent[:3] == [1.5, 5.5, 9.5] and resent[-1] == 29.5
    [(t, out)] = [(t, out) for t, out in fired if "timeout" in notes(out)]
    assert t == 42.0 and [a.detail["timer"] for a in out if isinstance(a, Note)] == ["F"]
    assert [(f, m.status, m.cseq.method) for f, m in sends(out)] == [(CALLER, 408, "BYE")]
    assert pbx.call_state("call1") == "ended" and pbx.next_deadline() is None


def test_udp_cancel_retransmitted_and_retransmitted_cancel_absorbed():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    pbx.receive(reply(fwd, 180), PHONE_UDP, now=0.2)
    out = pbx.receive(cancel(), CALLER, now=1.0)
    (f1, ok), (f2, c) = sends(out)
    assert ok.status == 200 and f2 == PHONE_UDP and c.method == "CANCEL"
    assert pbx.retransmitting() == [(fwd.top_via.branch, "CANCEL")]
    assert _retransmissions(pbx.on_timer(1.5)) == [(PHONE_UDP, "CANCEL", 1)]
    # the caller retransmits its CANCEL: 200 again, no second CANCEL toward the device
    assert [(f, m.status) for f, m in sends(pbx.receive(cancel(), CALLER, now=1.6))] == [(CALLER, 200)]
    assert pbx.receive(reply(c, 200, contact=False), PHONE_UDP, now=1.7) == []
    assert pbx.retransmitting() == []
    (fa, ack), (fb, r487) = sends(pbx.receive(reply(fwd, 487), PHONE_UDP, now=1.8))
    assert ack.method == "ACK" and r487.status == 487 and fb == CALLER
    # the device retransmits its 487 (our ACK was lost): ACKed again, not relayed
    assert [(f, m.method) for f, m in sends(pbx.receive(reply(fwd, 487), PHONE_UDP, now=2.3))] == [(PHONE_UDP, "ACK")]


def test_udp_cancel_waits_for_a_provisional_response():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    out = pbx.receive(cancel(), CALLER, now=0.2)
    assert [(f, m.status) for f, m in sends(out)] == [(CALLER, 200)] and "cancel-deferred" in notes(out)
    assert _retransmissions(pbx.on_timer(0.5)) == [(PHONE_UDP, "INVITE", 1)]
    out = pbx.receive(reply(fwd, 180), PHONE_UDP, now=0.6)
    assert [(f, m.method or m.status) for f, m in sends(out)] == [(PHONE_UDP, "CANCEL"), (CALLER, 180)]
    assert pbx.retransmitting() == [(fwd.top_via.branch, "CANCEL")]


def test_udp_cancel_before_any_response_then_timer_b_487():
    pbx = PbxLogic(ring_timeout=45.0)
    _forwarded_udp(pbx)
    pbx.receive(cancel(), CALLER, now=0.2)
    fired = _run_timers(pbx, 40.0)
    assert [a.detail["action"] for _, out in fired for a in out if isinstance(a, Note)] == ["timeout"]
    assert [(t, m.status) for t, out in fired for _, m in sends(out) if m.status] == [(32.0, 487)]


def test_late_2xx_retransmission_acked_again_bye_retransmitted():
    pbx = PbxLogic(ring_timeout=45.0)
    fwd = _forwarded_udp(pbx)
    pbx.receive(reply(fwd, 180), PHONE_UDP, now=0.2)
    pbx.cancel_elsewhere("call1", "answered", now=1.0)
    (_, ack), (_, bye) = sends(pbx.receive(reply(fwd, 200), PHONE_UDP, now=1.1))
    assert _retransmissions(pbx.on_timer(1.5)) == [(PHONE_UDP, "CANCEL", 1)]
    assert _retransmissions(pbx.on_timer(1.6)) == [(PHONE_UDP, "BYE", 1)]
    # the device did not get the ACK: it retransmits the 200, the PBX ACKs it again (no new BYE)
    again = sends(pbx.receive(reply(fwd, 200), PHONE_UDP, now=1.7))
    assert [(f, m.method) for f, m in again] == [(PHONE_UDP, "ACK")] and again[0][1].raw == ack.raw
    pbx.receive(reply(bye, 200, contact=False), PHONE_UDP, now=1.8)
    assert pbx.call_state("call1") == "ended"
    assert [m.method for _, m in sends(pbx.receive(reply(fwd, 200), PHONE_UDP, now=2.0))] == ["ACK"]


async def test_driver_retransmits_on_mock_clock_with_sent_events(autojump_clock):
    timeline = Timeline()
    wire: list[tuple[float, Flow, Message]] = []

    async def transmit(flow, data):
        wire.append((trio.current_time(), flow, parse_datagram(data)))

    pbx = PBX(timeline=timeline, transmit=transmit, ring_timeout=45.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pbx.run)
        await pbx.receive(register(port=41002, transport="udp"), PHONE_UDP)
        t0 = trio.current_time()
        await pbx.receive(invite(), CALLER)
        await trio.sleep(60.0)
        pbx.stop()
    to_device = [(t - t0, m.method) for t, f, m in wire if f == PHONE_UDP and m.method]
    assert to_device == [(t, "INVITE") for t in (0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5)]
    assert [(t - t0, m.status) for t, f, m in wire if f == CALLER] == [(0.0, 100), (32.0, 408)]
    sent = [e for e in timeline.events if e.kind == "sent" and e.method == "INVITE"]
    assert [e.detail.get("retransmission") for e in sent] == [None, 1, 2, 3, 4, 5, 6]
    [timeout] = [e for e in timeline.events if e.kind == "pbx" and e.detail.get("action") == "timeout"]
    assert timeout.detail["timer"] == "B" and timeout.call_id == "call1"
    assert timeout.t == pytest.approx(sent[0].t + 32.0)


def test_invite_whose_flow_dies_unanswered_is_held_again_and_sent_on_the_next_register():
    pbx = PbxLogic(wall_clock=lambda: 1700000000.0)
    first = _forwarded(pbx)  # forwarded on PHONE_NEW (TCP) at 11.0
    assert pbx.call_state("call1") == "forwarded"
    out = pbx.flow_closed(PHONE_NEW, now=11.2)  # the connection died before any response
    assert notes(out) == ["rehold"] and sends(out) == [] and pbx.call_state("call1") == "held"
    assert pbx.next_deadline() == pytest.approx(11.2 + pbx.hold)  # held again for the hold time
    third = Flow("tcp", ("127.0.0.1", 41003), ("127.0.0.1", 5060), conn=3)
    out = pbx.receive(register(port=41003, contact_params=PN, cseq=3), third, now=11.3)
    (f1, ok), (f2, again) = sends(out)
    assert f1 == third and ok.status == 200 and f2 == third and again.method == "INVITE"
    assert again.top_via.branch != first.top_via.branch and pbx.call_state("call1") == "forwarded"
    # a flow that dies after the device answered something cannot carry its final response: 480 to the caller
    pbx.receive(reply(again, 180), third, now=11.4)
    out = pbx.flow_closed(third, now=11.5)
    assert "flow-lost" in notes(out) and [m.status for f, m in sends(out) if f == CALLER] == [480]
    assert pbx.call_state("call1") == "ended"


def test_a_cancelled_invite_the_device_never_finishes_ends_with_487_after_64_t1():
    pbx = PbxLogic(wall_clock=lambda: 1700000000.0)
    fwd = _forwarded(pbx)  # TCP: no retransmissions
    pbx.receive(reply(fwd, 180), PHONE_NEW, now=11.1)
    out = pbx.receive(cancel(), CALLER, now=12.0)
    assert [m.status for f, m in sends(out) if f == CALLER] == [200]
    assert pbx.next_deadline() == pytest.approx(12.0 + 64 * pbx.t1)
    out = pbx.on_timer(12.0 + 64 * pbx.t1)  # the device never answers the CANCEL nor the INVITE
    assert "cancel-timeout" in notes(out) and [m.status for f, m in sends(out) if f == CALLER] == [487]
    assert pbx.call_state("call1") == "ended"


def test_a_flow_lost_after_the_device_answered_ends_the_call_for_the_caller():
    pbx = PbxLogic(wall_clock=lambda: 1700000000.0)
    fwd = _forwarded(pbx)
    pbx.receive(reply(fwd, 180), PHONE_NEW, now=11.1)
    out = pbx.flow_closed(PHONE_NEW, now=11.5)
    assert "flow-lost" in notes(out) and [m.status for f, m in sends(out) if f == CALLER] == [480]


def test_a_register_on_a_new_connection_takes_an_unanswered_invite_along():
    pbx = PbxLogic(wall_clock=lambda: 1700000000.0)
    first = _forwarded(pbx)  # on PHONE_NEW; the PBX has not noticed that connection died
    third = Flow("tcp", ("127.0.0.1", 41003), ("127.0.0.1", 5060), conn=3)
    out = pbx.receive(register(port=41003, contact_params=PN, cseq=3), third, now=11.2)
    assert "reforward" in notes(out)
    [(f, again)] = [(f, m) for f, m in sends(out) if m.method == "INVITE"]
    assert f == third and again.top_via.branch != first.top_via.branch
    # the old connection's close comes later: nothing more happens
    assert pbx.flow_closed(PHONE_NEW, now=11.3) == []
    # a late answer on the forgotten branch is dropped, not relayed
    assert sends(pbx.receive(reply(first, 486), PHONE_NEW, now=11.4)) == []
    assert pbx.call_state("call1") == "forwarded"
