"""The embedded PBX over loopback sockets: a plain softphone (no push parameters) and the lab Caller."""

from __future__ import annotations

import pytest
import trio

from faultlab.lab.caller import Caller
from faultlab.lab.pbx import PBX
from faultlab.lab.timeline import Timeline
from faultlab.lab.ua import SipUA


async def _pbx(nursery, listen, timeline, **kwargs) -> PBX:
    pbx = PBX(listen, timeline=timeline, **kwargs)
    await nursery.start(pbx.run)
    return pbx


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_plain_softphone_receives_call_through_pbx(transport):
    timeline = Timeline()
    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            pbx = await _pbx(nursery, [f"{transport}:127.0.0.1:0"], timeline)
            addr = pbx.address(transport)
            bob = SipUA("bob", transport, addr)
            await bob.start(nursery)
            ok = await bob.register()
            assert ok.status == 200 and ok.get_all("contact")[0].startswith(bob.contact)
            assert [b.push for b in pbx.bindings("bob")] == [{}]

            caller = Caller(transport, addr, "alice", timeline)
            await caller.start(nursery)
            call = await caller.call(f"sip:bob@127.0.0.1:{addr[1]}")

            dialog = await bob.answer()
            # the INVITE came through the PBX: its Via above the caller's, its Record-Route
            assert len(dialog.invite.vias) == 2
            assert dialog.invite.get_all("record-route") == [
                f"<sip:faultlab-pbx@127.0.0.1:{addr[1]}{'' if transport == 'udp' else ';transport=tcp'};lr>"]
            assert (await call.wait_for(180)).status == 180
            assert (await call.wait_final()).status == 200
            assert pbx.call_state(call.call_id) == "confirmed"

            # the callee hangs up: BYE through the PBX to the caller, 200 back
            bye_ok = await dialog.bye()
            assert bye_ok.status == 200
            assert await call.wait_ended() == "remote-bye"
            assert pbx.call_state(call.call_id) == "ended"
            nursery.cancel_scope.cancel()

    # every message of the call went through the PBX, in order
    seen = [(e.kind, e.method or e.status) for e in timeline.events if e.source == "pbx"
            and e.kind in ("received", "sent") and e.call_id == call.call_id]
    assert seen == [
        ("received", "INVITE"), ("sent", 100), ("sent", "INVITE"),
        ("received", 180), ("sent", 180), ("received", 200), ("sent", 200),
        ("received", "ACK"), ("sent", "ACK"),
        ("received", "BYE"), ("sent", "BYE"), ("received", 200), ("sent", 200),
    ]
    assert [b.summary for b in bob.received()] == ["200 REGISTER", "INVITE", "ACK", "200 BYE"]


async def test_caller_hangs_up_and_cancel_while_held_reaches_no_device():
    timeline = Timeline()
    pushed = []
    two_pushes = trio.Event()

    async def send_push(token, payload):
        pushed.append((token, payload["type"]))
        if len(pushed) == 2:
            two_pushes.set()

    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            pbx = await _pbx(nursery, ["udp:127.0.0.1:0"], timeline, send_push=send_push)
            addr = pbx.address("udp")
            bob = SipUA("bob", "udp", addr)
            await bob.start(nursery)
            await bob.register()
            caller = Caller("udp", addr, "alice", timeline)
            await caller.start(nursery)

            # a plain call, hung up by the caller
            call = await caller.call(f"sip:bob@127.0.0.1:{addr[1]}")
            dialog = await bob.answer()
            await call.wait_final()
            async with trio.open_nursery() as inner:
                inner.start_soon(dialog.expect_bye)
                assert (await call.hang_up()).status == 200
            assert call.ended == "local-bye"

            # a pushed device: the INVITE is held; CANCEL -> 200 + 487, nothing reaches the device
            carol = SipUA("carol", "udp", addr)
            await carol.start(nursery)
            await carol.register(contact=f"<sip:carol@127.0.0.1:{carol.address[1]};pn-provider=apns;pn-prid=TOK;"
                                         "pn-param=T.com.example.voip>")
            held = await caller.call(f"sip:carol@127.0.0.1:{addr[1]}")
            await held.wait_for(100)
            assert pbx.call_state(held.call_id) == "held"
            await held.cancel(reason='SIP;cause=487;text="Caller hung up"')
            assert (await held.wait_final()).status == 487
            assert held.ended == "cancelled"
            await two_pushes.wait()
            nursery.cancel_scope.cancel()
    assert pushed == [("TOK", "call"), ("TOK", "cancel")]
    assert [r.summary for r in carol.received()] == ["200 REGISTER"]


async def test_push_woken_call_over_tls_goes_down_the_new_connection(tmp_path):
    """RFC 8599 over TLS: push, the device registers again on a new connection, the INVITE follows it."""
    from faultlab.ca import LabCA

    ca = LabCA.load_or_init(tmp_path)
    timeline = Timeline()
    pushed = trio.Event()

    async def send_push(token, payload):
        assert token == "TOKEN-TLS" and payload["type"] == "call"
        pushed.set()

    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            pbx = await _pbx(nursery, ["tls:127.0.0.1:0", "udp:127.0.0.1:0"], timeline, send_push=send_push,
                             confdir=tmp_path)
            tls, udp = pbx.address("tls"), pbx.address("udp")
            pn = ";pn-provider=apns;pn-prid=TOKEN-TLS;pn-param=T.com.example.voip"
            asleep = SipUA("bob", "tls", tls, ca_file=ca.cert_path, tls_server_name="localhost")
            await asleep.start(nursery)
            await asleep.register(contact=asleep.contact[:-1] + pn + ">")

            caller = Caller("udp", udp, "alice", timeline)
            await caller.start(nursery)
            call = await caller.call(f"sip:bob@127.0.0.1:{udp[1]}")
            await pushed.wait()
            assert pbx.call_state(call.call_id) == "held"

            awake = SipUA("bob", "tls", tls, ca_file=ca.cert_path, tls_server_name="localhost")
            await awake.start(nursery)
            assert (await awake.register(contact=awake.contact[:-1] + pn + ">")).status == 200
            dialog = await awake.answer()
            assert (await call.wait_final()).status == 200
            # caller on UDP, device on TLS: the PBX Record-Routes twice, one entry per transport
            assert dialog.invite.get_all("record-route") == [
                f"<sip:faultlab-pbx@127.0.0.1:{tls[1]};transport=tls;lr>",
                f"<sip:faultlab-pbx@127.0.0.1:{udp[1]};lr>"]
            async with trio.open_nursery() as inner:
                inner.start_soon(dialog.expect_bye)
                assert (await call.hang_up()).status == 200
            nursery.cancel_scope.cancel()
    assert [r.summary for r in asleep.received()] == ["200 REGISTER"]
    release = [e for e in timeline.events if e.kind == "pbx" and e.detail.get("action") == "release"]
    assert len(release) == 1 and release[0].call_id == call.call_id


async def test_cancel_after_forwarding_and_elsewhere_reach_the_device_with_their_reason():
    timeline = Timeline()
    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            pbx = await _pbx(nursery, ["udp:127.0.0.1:0"], timeline)
            addr = pbx.address("udp")
            bob = SipUA("bob", "udp", addr)
            await bob.start(nursery)
            await bob.register()
            caller = Caller("udp", addr, "alice", timeline)
            await caller.start(nursery)
            got = []
            for how, reason in [("caller", 'SIP ;cause=200 ;text="Call completed elsewhere"'),
                                ("declined", 'SIP;cause=600;text="Busy Everywhere"')]:
                call = await caller.call(f"sip:bob@127.0.0.1:{addr[1]}")
                invite = await bob.expect_request("INVITE", call_id=call.call_id)
                await bob.reply(invite, 180, to_tag="bobtag")
                await call.wait_for(180)
                if how == "caller":
                    await call.cancel(reason=reason)
                else:
                    await pbx.cancel_elsewhere(call.call_id, how)
                cancel = await bob.expect_request("CANCEL", call_id=call.call_id)
                got.append(cancel.message.get_all("reason"))
                await bob.reply(cancel, 200)
                await bob.reply(invite, 487, to_tag="bobtag")
                await bob.expect_request("ACK", call_id=call.call_id)  # the PBX ACKs the 487 hop by hop
                assert (await call.wait_final()).status == 487
            nursery.cancel_scope.cancel()
    assert got == [['SIP ;cause=200 ;text="Call completed elsewhere"'], ['SIP;cause=600;text="Busy Everywhere"']]


async def test_a_connection_that_stops_framing_is_given_up_with_a_warning():
    timeline = Timeline()
    options = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKgarbage\r\n"
               b"From: <sip:x@lab>;tag=1\r\nTo: <sip:pbx@lab>\r\nCall-ID: garbage-1\r\nCSeq: 1 OPTIONS\r\n"
               b"Content-Length: 0\r\n\r\n")
    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            pbx = await _pbx(nursery, ["tcp:127.0.0.1:0"], timeline)
            stream = await trio.open_tcp_stream(*pbx.address("tcp"))
            async with stream:
                await stream.send_all(options + b"\x00\x01 not SIP at all\r\n\r\n")
                while await stream.receive_some(65536):  # the answer to OPTIONS, then the PBX closes
                    pass
            nursery.cancel_scope.cancel()
    received = [e for e in timeline.events if e.source == "pbx" and e.kind == "received"]
    assert [e.call_id for e in received] == ["garbage-1"]  # what framed before the garbage was handled
    [warning] = [e for e in timeline.events if e.kind == "warning"]
    assert warning.summary.startswith("unframeable: ") and warning.transport == "tcp"
