"""``faultlab call`` as a process against an in-process PBX with a scripted callee, on loopback.

The callee (faultlab/lab/ua) registers with the embedded PBX as a plain softphone; each test runs
``python -m faultlab call ...`` and plays the far end of the script, waiting on the process's own lines and on
the messages it receives, never sleeping.
"""

from __future__ import annotations

import json
import signal

import pytest
import trio

from faultlab.lab.pbx import PBX
from faultlab.lab.timeline import Timeline
from faultlab.lab.ua import SipUA
from tests.actors import Actor, actor_env, open_actors

HOST = "127.0.0.1"


async def _lab(nursery: trio.Nursery) -> tuple[int, SipUA]:
    pbx = PBX([f"udp:{HOST}:0"], timeline=Timeline())
    await nursery.start(pbx.run)
    port = pbx.address("udp")[1]
    alice = SipUA("alice", "udp", (HOST, port), domain="lab.test", timeout=15.0)
    await alice.start(nursery)
    assert (await alice.register()).status == 200
    return port, alice


def _outcome(actor: Actor) -> dict:
    [line] = [line for line in actor.lines["stdout"] if line.startswith("{")]
    return json.loads(line)


async def test_answered_call_is_hung_up_after_the_given_time(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_actors(actor_env(tmp_path)) as actors:
            port, alice = await _lab(nursery)
            call = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{HOST}:{port}",
                                      "--from", "bob", "--domain", "lab.test", "--hang-up-after", "300ms",
                                      "--json")
            dialog = await alice.answer()
            assert dialog.invite.get("from").startswith('"bob" <sip:bob@lab.test>')
            bye = await dialog.expect_bye()
            assert bye.call_id == dialog.call_id
            assert await call.wait_exit() == 0, call.output()
            nursery.cancel_scope.cancel()

    outcome = _outcome(call)
    assert outcome["call_id"] == dialog.call_id
    assert outcome["statuses"][-2:] == [180, 200] and outcome["final"] == 200
    assert outcome["ended"] == "local-bye" and outcome["bye_status"] == 200 and outcome["ok"] is True
    times = outcome["times"]
    assert times["invite"] == 0 <= times["180"] <= times["200"] <= times["bye"] <= times["bye_response"]
    assert times["bye"] - times["200"] >= 0.3
    progress = [line.removeprefix("faultlab call: ") for line in call.lines["stderr"]]
    for expected in ("INVITE sent to", "180 Ringing", "200 OK", "ACK sent to", "BYE sent to", "BYE: 200",
                     "ended: local-bye"):
        assert any(line.startswith(expected) for line in progress), (expected, progress)


async def test_ringing_call_is_cancelled_with_a_reason(tmp_path):
    reason = 'SIP;cause=200;text="Call completed elsewhere"'
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_actors(actor_env(tmp_path)) as actors:
            port, alice = await _lab(nursery)
            call = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{HOST}:{port}",
                                      "--from", "bob", "--cancel-after", "500ms", "--cancel-reason", reason,
                                      "--json")
            invite = await alice.expect_request("INVITE")
            await alice.reply(invite, 180, to_tag="alicetag", contact=True)
            await call.wait_line("stderr", r"^faultlab call: 180 Ringing$")
            cancel = await alice.expect_request("CANCEL", call_id=invite.message.call_id)
            assert cancel.message.get("reason") == reason
            await alice.reply(cancel, 200)
            await alice.reply(invite, 487, to_tag="alicetag")
            await alice.expect_request("ACK", call_id=invite.message.call_id)
            assert await call.wait_exit() == 0, call.output()
            nursery.cancel_scope.cancel()

    outcome = _outcome(call)
    assert outcome["final"] == 487 and outcome["ended"] == "cancelled" and outcome["cancel_status"] == 200
    assert outcome["ok"] is True and outcome["bye_status"] is None
    assert outcome["times"]["cancel"] >= 0.5
    assert any(line == "faultlab call: CANCEL: 200" for line in call.lines["stderr"]), call.output()


async def test_unexpected_final_response_exits_1(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_actors(actor_env(tmp_path)) as actors:
            port, alice = await _lab(nursery)
            call = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{HOST}:{port}")
            invite = await alice.expect_request("INVITE")
            await alice.reply(invite, 486, to_tag="busy")
            await alice.expect_request("ACK", call_id=invite.message.call_id)
            assert await call.wait_exit() == 1, call.output()
            nursery.cancel_scope.cancel()
    [line] = call.lines["stdout"]
    assert "responses" in line and "486" in line and "NOT as scripted: final response 486, expected 200" in line
    assert "faultlab call: not as scripted: final response 486, expected 200" in call.lines["stderr"]


async def test_sigterm_while_ringing_cancels_the_call(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_actors(actor_env(tmp_path)) as actors:
            port, alice = await _lab(nursery)
            call = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{HOST}:{port}",
                                      "--json")
            invite = await alice.expect_request("INVITE")
            await alice.reply(invite, 180, to_tag="t")
            await call.wait_line("stderr", r"^faultlab call: 180 Ringing$")
            call.process.send_signal(signal.SIGTERM)  # by its PID
            cancel = await alice.expect_request("CANCEL", call_id=invite.message.call_id)
            await alice.reply(cancel, 200)
            await alice.reply(invite, 487, to_tag="t")
            assert await call.wait_exit() == 1, call.output()
            nursery.cancel_scope.cancel()
    outcome = _outcome(call)
    assert outcome["final"] == 487 and outcome["ended"] == "cancelled" and outcome["reason"] == "interrupted"


@pytest.mark.parametrize("stop", ["timeout", "sigterm"])
async def test_answer_crossing_the_tidy_up_cancel_is_hung_up(tmp_path, stop):
    # No PBX: the callee answers the caller directly, with a 200 sent right after the CANCEL reaches it.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_actors(actor_env(tmp_path)) as actors:
            alice = SipUA("alice", "udp", (HOST, 9), domain="lab.test", timeout=15.0)
            await alice.start(nursery)
            timeout = "1s" if stop == "timeout" else "60s"
            pbx = f"udp:{HOST}:{alice.address[1]}"  # the callee itself
            call = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", pbx, "--timeout", timeout,
                                      "--json")
            invite = await alice.expect_request("INVITE")
            await alice.reply(invite, 180, to_tag="late", contact=True)
            if stop == "sigterm":
                await call.wait_line("stderr", r"^faultlab call: 180 Ringing$")
                call.process.send_signal(signal.SIGTERM)
            cancel = await alice.expect_request("CANCEL", call_id=invite.message.call_id)
            await alice.reply(invite, 200, to_tag="late", contact=True, body=alice.sdp(),
                              content_type="application/sdp")
            await alice.reply(cancel, 200)  # the INVITE transaction is already answered: the CANCEL has no effect
            await alice.expect_request("ACK", call_id=invite.message.call_id)
            bye = await alice.expect_request("BYE", call_id=invite.message.call_id)
            await alice.reply(bye, 200)
            assert await call.wait_exit() == 1, call.output()
            nursery.cancel_scope.cancel()
    outcome = _outcome(call)
    assert outcome["final"] == 200 and outcome["ended"] == "local-bye" and outcome["bye_status"] == 200
    assert outcome["ok"] is False
    expected = "answered 200 after the CANCEL (hung up: BYE 200)"
    assert outcome["reason"] == (expected if stop == "timeout" else f"interrupted: {expected}"), outcome


async def test_sigterm_during_a_stalled_tls_handshake_stops_the_call(tmp_path):
    # A listener that accepts the TCP connection and never answers the TLS ClientHello.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_actors(actor_env(tmp_path)) as actors:
            [listener] = await trio.open_tcp_listeners(0, host=HOST)
            port = listener.socket.getsockname()[1]
            call = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"tls:{HOST}:{port}",
                                      "--timeout", "60s", "--json")
            connection = await listener.accept()  # the caller is connected and handshaking
            call.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):  # not --timeout later
                assert await call.wait_exit() == 1, call.output()
            await connection.aclose()
            await listener.aclose()
            nursery.cancel_scope.cancel()
    outcome = _outcome(call)
    assert outcome["reason"] == "interrupted" and outcome["ok"] is False and outcome["call_id"] is None
    assert "faultlab call: SIGTERM: stopping" in call.lines["stderr"], call.output()
