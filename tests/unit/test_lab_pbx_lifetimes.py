"""The embedded PBX forgets what is finished (sans-IO, explicit time): transactions after RFC 3261's Timer J/K
lifetimes, calls once ended, registrations once expired; retransmissions inside a lifetime are still absorbed."""

from __future__ import annotations

from faultlab.lab.pbx.logic import Flow, PbxLogic
from faultlab.sip import Message

from tests.unit.test_lab_pbx import CALLER, PBX_UDP, PHONE_NEW, invite, msg, register, reply, sends

PHONE_UDP = Flow("udp", ("127.0.0.1", 41002), PBX_UDP)
EMPTY = {"calls": 0, "client_transactions": 0, "server_transactions": 0, "retransmitting": 0, "timers": 0,
         "aors": 0, "bindings": 0, "pending": 0}


def run_timers(pbx: PbxLogic, until: float) -> None:
    """Fire every timer of the logic (pruning included) in order up to ``until``."""
    while (t := pbx.next_wakeup()) is not None and t <= until:
        pbx.on_timer(t)


def caller_bye(call_id: str, n: int, routes: list[str]) -> Message:
    return msg("\n".join([
        "BYE sip:bob@127.0.0.1:41002 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKbye{n}", "Max-Forwards: 70",
        *(f"Route: {r}" for r in routes),
        'From: "Alice" <sip:alice@127.0.0.1>;tag=atag', "To: <sip:bob@127.0.0.1>;tag=btag",
        f"Call-ID: {call_id}", "CSeq: 2 BYE", "Content-Length: 0"]))


def caller_ack(call_id: str, n: int) -> Message:
    return msg("\n".join([
        "ACK sip:bob@127.0.0.1:41002 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKack{n}", "Max-Forwards: 70",
        'From: "Alice" <sip:alice@127.0.0.1>;tag=atag', "To: <sip:bob@127.0.0.1>;tag=btag",
        f"Call-ID: {call_id}", "CSeq: 1 ACK", "Content-Length: 0"]))


def answered_call(pbx: PbxLogic, call_id: str, n: int, now: float, phone: Flow = PHONE_UDP) -> Message:
    """A call from the caller to the phone, answered and ACKed; returns the 200 the caller got."""
    out = pbx.receive(invite(call_id, branch=f"z9hG4bKinv{n}"), CALLER, now=now)
    [fwd] = [m for f, m in sends(out) if m.method == "INVITE"]
    [(_, ok)] = sends(pbx.receive(reply(fwd, 200), phone, now=now))
    assert sends(pbx.receive(caller_ack(call_id, n), CALLER, now=now))
    return ok


def hang_up(pbx: PbxLogic, call_id: str, n: int, ok: Message, now: float, phone: Flow = PHONE_UDP) -> Message:
    """The caller's BYE through the PBX and the phone's 200 back; returns the BYE as the caller sent it."""
    bye = caller_bye(call_id, n, ok.get_all("record-route")[::-1])
    [(f, fwd)] = sends(pbx.receive(bye, CALLER, now=now))
    assert f == phone and fwd.method == "BYE"
    [(f, r)] = sends(pbx.receive(reply(fwd, 200, to_tag="atag", contact=False), phone, now=now))
    assert f == CALLER and r.status == 200
    return bye


def test_a_finished_call_over_udp_is_forgotten_after_its_lifetimes_and_absorbs_retransmissions_until_then():
    pbx = PbxLogic()
    pbx.receive(register(port=41002, transport="udp", expires=300), PHONE_UDP, now=0.0)
    ok = answered_call(pbx, "c1", 1, now=1.0)
    bye = hang_up(pbx, "c1", 1, ok, now=2.0)
    assert pbx.call_state("c1") == "ended"
    # Timer J (64*T1 = 32 s over UDP): a retransmitted BYE gets the same 200 again, nothing goes to the phone
    run_timers(pbx, 33.0)
    [(f, again)] = sends(pbx.receive(bye, CALLER, now=33.0))
    assert f == CALLER and again.status == 200 and again.call_id == "c1"
    # ... and after every lifetime has passed only the registration is left
    run_timers(pbx, 200.0)
    assert pbx.call_state("c1") is None
    assert pbx.sizes() == {**EMPTY, "aors": 1, "bindings": 1, "pending": 1}
    # the BYE now belongs to no dialog the PBX knows
    [(f, gone)] = sends(pbx.receive(bye, CALLER, now=200.0))
    assert f == CALLER and gone.status == 481
    run_timers(pbx, 301.0)  # the registration expired
    assert pbx.sizes() == EMPTY


def test_a_request_relayed_over_tcp_is_forgotten_at_once_timer_j_0_while_the_call_lingers():
    pbx = PbxLogic()
    pbx.receive(register(port=41001), PHONE_NEW, now=0.0)
    out = pbx.receive(invite("c2", branch="z9hG4bKinv2"), CALLER, now=1.0)
    [fwd] = [m for f, m in sends(out) if m.method == "INVITE"]
    [(_, ok)] = sends(pbx.receive(reply(fwd, 200), PHONE_NEW, now=1.1))
    # the phone (TCP) hangs up
    bye = msg("\n".join([
        "BYE sip:alice@127.0.0.1:40000 SIP/2.0",
        "Via: SIP/2.0/TCP 127.0.0.1:41001;rport;branch=z9hG4bKbyeT", "Max-Forwards: 70",
        *(f"Route: {r}" for r in fwd.get_all("record-route")),
        "From: <sip:bob@127.0.0.1>;tag=btag", 'To: "Alice" <sip:alice@127.0.0.1>;tag=atag',
        "Call-ID: c2", "CSeq: 1 BYE", "Content-Length: 0"]))
    [(_, b)] = sends(pbx.receive(bye, PHONE_NEW, now=2.0))
    sends(pbx.receive(reply(b, 200, to_tag="atag", contact=False), CALLER, now=2.0))
    pbx.on_timer(2.0)
    sizes = pbx.sizes()
    assert sizes["server_transactions"] == 0  # came over TCP: nothing to absorb
    assert sizes["calls"] == 1 and pbx.call_state("c2") == "ended"  # RFC 6026: the INVITE lingers 64*T1
    run_timers(pbx, 2.0 + 3 * 64 * pbx.t1)
    assert pbx.sizes()["calls"] == 0 and pbx.sizes()["client_transactions"] == 0


def test_a_rejected_call_absorbs_the_retransmitted_invite_and_ack_then_is_forgotten():
    pbx = PbxLogic()
    pbx.receive(register(port=41002, transport="udp", expires=30), PHONE_UDP, now=0.0)
    inv = invite("c3", branch="z9hG4bKinv3")
    out = pbx.receive(inv, CALLER, now=1.0)
    [fwd] = [m for f, m in sends(out) if m.method == "INVITE"]
    out = pbx.receive(reply(fwd, 486), PHONE_UDP, now=1.1)
    assert [(f, m.method or m.status) for f, m in sends(out)] == [(PHONE_UDP, "ACK"), (CALLER, 486)]
    run_timers(pbx, 20.0)
    [(f, again)] = sends(pbx.receive(inv, CALLER, now=20.0))  # inside the lifetime: the 486 again
    assert f == CALLER and again.status == 486
    ack = msg(f"""
ACK sip:bob@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKinv3
Max-Forwards: 70
From: "Alice" <sip:alice@127.0.0.1>;tag=atag
To: <sip:bob@127.0.0.1>;tag=btag
Call-ID: c3
CSeq: 1 ACK
Content-Length: 0""")
    assert pbx.receive(ack, CALLER, now=20.1) == []  # absorbed, hop by hop
    run_timers(pbx, 200.0)
    assert pbx.sizes() == EMPTY


def test_expired_registrations_are_removed_with_their_aor():
    pbx = PbxLogic()
    for i in range(100):
        pbx.receive(register(f"u{i}", port=42000 + i, transport="udp", expires=60 + i),
                    Flow("udp", ("127.0.0.1", 42000 + i), PBX_UDP), now=0.0)
    assert pbx.sizes()["aors"] == 100
    run_timers(pbx, 100.0)
    assert pbx.sizes()["aors"] == 59 and pbx.sizes()["bindings"] == 59  # u41..u99 expire at 101..159 s
    run_timers(pbx, 160.0)
    assert pbx.sizes() == EMPTY


def test_refreshing_a_registration_costs_one_binding_and_one_timer():
    """A device that refreshes its registration keeps one binding and one pending look, not one per REGISTER."""
    pbx = PbxLogic()
    for i in range(5000):
        now = i * 0.01
        pbx.receive(register(port=41002, transport="udp", cseq=i + 1, expires=60), PHONE_UDP, now=now)
        run_timers(pbx, now)
    assert pbx.sizes() == {**EMPTY, "aors": 1, "bindings": 1, "pending": 1}


def test_many_register_and_call_cycles_keep_the_tables_bounded():
    """3,000 REGISTER + call cycles at 20 a second: what the PBX holds stops growing once the first calls'
    lifetimes have passed (about 2*64*T1 of traffic), and is empty when the traffic stops."""
    pbx = PbxLogic()
    peak: dict[str, int] = {}
    for n in range(3_000):
        now = n * 0.05
        pbx.receive(register(port=41002, transport="udp", cseq=n + 1, expires=60), PHONE_UDP, now=now)
        ok = answered_call(pbx, f"cyc{n}", n, now=now)
        hang_up(pbx, f"cyc{n}", n, ok, now=now + 0.01)
        run_timers(pbx, now + 0.01)
        for key, value in pbx.sizes().items():
            peak[key] = max(peak.get(key, 0), value)
    window = (2 * 64 * pbx.t1 + 1) / 0.05  # a finished call is forgotten 64*T1 to 2*64*T1 after it ended
    assert peak["calls"] <= window and peak["server_transactions"] <= window / 2  # Timer J: 64*T1
    assert peak["client_transactions"] <= window + 6 / 0.05 and peak["aors"] == 1  # + Timer K: T4
    run_timers(pbx, 3_000 * 0.05 + 200)
    assert pbx.sizes() == EMPTY


def test_a_new_call_reusing_an_ended_calls_call_id_leaves_nothing_of_the_old_one():
    pbx = PbxLogic()
    pbx.receive(register(port=41002, transport="udp", expires=30), PHONE_UDP, now=0.0)
    for n in range(3):  # the same Call-ID, a new branch each time: rejected by the phone each time
        out = pbx.receive(invite("same", branch=f"z9hG4bKre{n}"), CALLER, now=1.0 + n)
        [fwd] = [m for f, m in sends(out) if m.method == "INVITE"]
        pbx.receive(reply(fwd, 486), PHONE_UDP, now=1.0 + n)
        assert pbx.call_state("same") == "ended"
    assert pbx.sizes()["client_transactions"] == 1  # only the last call's forwarded INVITE
    run_timers(pbx, 200.0)
    assert pbx.sizes() == EMPTY
