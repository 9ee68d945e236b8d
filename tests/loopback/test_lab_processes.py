"""The lab with every actor in its own process on loopback (issue 5, item 6): a push-woken call end to end.

::

    caller (this test) --udp--> faultlab pbx <--udp-- faultlab proxy <--udp-- faultlab device
                                    |                                              ^
                                    +--HTTP/2--> faultlab push-gateway --stream----+

Each actor is its CLI, started as ``python -m faultlab ...`` on 127.0.0.1 with port 0 where it can bind one, its
address read from its banner. Readiness comes from the processes' own lines (banners, the gateway's "device
connected", the device's "initial REGISTER: 200"), never from sleeps. The same call as
tests/loopback/test_lab_stack.py's push-woken call, judged from what the processes print and from faultlab's trace.
"""

from __future__ import annotations

import json
import re

import trio

from faultlab.lab.caller import Caller
from faultlab.lab.timeline import Timeline
from faultlab.sip import parse_datagram, push_params
from faultlab.trace import read_jsonl
from tests.actors import actor_env, open_actors

HOST = "127.0.0.1"
TOKEN = "a1b2c3d4e5f60718"


async def test_push_woken_call_with_every_actor_in_its_own_process(tmp_path):
    trace = tmp_path / "faultlab.jsonl"
    started = trio.current_time()

    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(30):  # four interpreter start-ups, one after the other
            gateway = await actors.spawn("push-gateway", "push-gateway", "--listen", f"{HOST}:0")
            p = int((await gateway.wait_line("stderr", r"push gateway on http://127\.0\.0\.1:(\d+) ")).group(1))

            pbx = await actors.spawn("pbx", "pbx", "--listen", f"udp:{HOST}:0", "--push-url", f"http://{HOST}:{p}")
            q = int((await pbx.wait_line("stderr", r"^faultlab pbx: udp on 127\.0\.0\.1:(\d+)$")).group(1))

            proxy = await actors.spawn("proxy", "proxy", "--listen", f"udp:{HOST}:0", "--upstream",
                                       f"udp:{HOST}:{q}", "--trace", str(trace), "-q")
            r = int((await proxy.wait_line("stderr", r"^faultlab: listening on udp:127\.0\.0\.1:(\d+) ")).group(1))

            device = await actors.spawn("device", "device", "--proxy", f"udp:{HOST}:{r}", "--user", "alice",
                                        "--domain", "lab.test", "--token", TOKEN,
                                        "--push-url", f"http://{HOST}:{p}/devices/{TOKEN}/pushes",
                                        "--answer-after", "1s")
            # ready: registered through faultlab (with its push binding) and subscribed to its pushes
            await device.wait_line("stderr", r"initial REGISTER: 200$")
            await gateway.wait_line("stdout", rf" device +connected token={TOKEN}")
            ready = trio.current_time()

        with trio.fail_after(20):
            # the caller, in this process, straight to the PBX over UDP
            async with trio.open_nursery() as nursery:
                caller = Caller("udp", (HOST, q), "bob", Timeline(), domain="lab.test", timeout=15.0)
                await caller.start(nursery)
                call = await caller.call("sip:alice@lab.test")
                final = await call.wait_final()
                answered = trio.current_time()
                bye = await call.hang_up()
                await caller.close()
                nursery.cancel_scope.cancel()
            assert final.status == 200, call.statuses
            assert 180 in call.statuses and bye.status == 200 and call.ended == "local-bye"
            call_id = call.call_id

            # the device ends the call (remoteEnded) on the BYE
            await device.wait_line("stdout", rf'"call_id": "{re.escape(call_id)}".*"event": "ended"')
            await gateway.wait_line("stdout", rf" push +call +delivered .*call-id={re.escape(call_id)}")

        # stop: the device first (its push stream goes away), then faultlab (closing its trace), PBX, gateway
        await actors.stop_lab(device, proxy, pbx, gateway)
        stopped = trio.current_time()

    # the device, from its own stdout: reported, answered 1 s later, fulfilled, ended remoteEnded exactly once
    device_events = [json.loads(line) for line in device.lines["stdout"] if line.startswith("{")]
    mine = [e for e in device_events if e.get("call_id") == call_id]
    assert [(e["event"], e.get("reason")) for e in mine] == [
        ("reported", None), ("answer-tapped", None), ("answer-fulfilled", None), ("ended", "remoteEnded")], mine
    assert len({e["uuid"] for e in mine}) == 1
    assert 0.9 <= mine[1]["t"] - mine[0]["t"] <= 5.0
    assert [e for e in device_events if e.get("call_id") != call_id] == []  # nothing but this call

    # faultlab's trace (complete: the proxy stopped on SIGTERM and wrote its stop event)
    events = list(read_jsonl(trace))
    assert events[0].kind == "start" and events[-1].kind == "stop"
    sent = [e for e in events if e.kind == "sent"]

    def crossed(method, direction, cid=None) -> list[int]:
        return [i for i, e in enumerate(sent) if e.method == method and e.direction == direction
                and (cid is None or e.call_id == cid)]

    # the device's REGISTERs crossed faultlab to the PBX: the one at start and the refresh after the push,
    # with RFC 8599 Contact parameters
    registers = crossed("REGISTER", "to-pbx")
    assert len(registers) >= 2, [e.summary for e in sent]
    for i in registers:
        assert push_params(parse_datagram(sent[i].raw).contacts[0]) == {
            "pn-provider": "apns", "pn-prid": TOKEN, "pn-param": "ABCDE12345.org.faultlab.device.voip"}
    # INVITE and BYE crossed faultlab to the device, the INVITE after the refresh REGISTER and on its flow
    [invite] = crossed("INVITE", "to-device", call_id)
    [bye_to_device] = crossed("BYE", "to-device", call_id)
    assert registers[1] < invite < bye_to_device
    assert sent[invite].flow == sent[registers[1]].flow
    assert crossed("ACK", "to-device", call_id)
    oks = [e for e in sent if e.status == 200 and e.direction == "to-pbx" and e.call_id == call_id]
    assert sorted(e.cseq_method for e in oks) == ["BYE", "INVITE"]

    # timing (real time): about 4 s in all on an idle machine (mostly interpreter start-ups); the call itself
    # takes the 1 s answer delay
    print(f"lab processes: ready after {ready - started:.2f} s, answered {answered - ready:.2f} s later, "
          f"all stopped at {stopped - started:.2f} s")
    assert answered - ready < 10.0
