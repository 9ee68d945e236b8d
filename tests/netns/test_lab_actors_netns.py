"""Every lab actor as its own process inside the lab's network namespaces (root): a push-woken call end to end.

::

    device1 ns                 gateway ns                          pbx ns
    faultlab device --udp-->   faultlab proxy (relay) --udp-->     faultlab pbx <-- faultlab call
         ^                     on the device-side .1,              |
         |                     upstream the PBX                    +--HTTP/2--> faultlab push-gateway
         +------------- push stream (HTTP, routed through the gateway) ----------------+

The same call as tests/loopback/test_lab_processes.py, but each actor runs with ``ip netns exec <ns> python -m
faultlab ...`` on its namespace's address (faultlab.labnet.topology's plan), so every packet between the device
and the PBX side crosses the gateway. Readiness comes from the processes' own lines, never from sleeps. The lab
(its own name and subnet) is removed and every process stopped by its PID, also when the test fails.
"""

from __future__ import annotations

import json
import re
from typing import Iterator

import pytest
import trio

from faultlab.labnet.topology import Lab, exec_argv
from tests.netns import one_device_lab
from faultlab.trace import read_jsonl
from tests.actors import actor_env, open_actors

pytestmark = pytest.mark.netns

SUBNET = "10.142.0.0/16"  # gateway 10.142.0.1 -- PBX 10.142.0.2; gateway 10.142.1.1 -- device1 10.142.1.2
TOKEN = "c0ffee0123456789"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with one_device_lab("la", SUBNET) as made:
        yield made


async def test_push_woken_call_with_every_actor_in_its_namespace(lab: Lab, tmp_path):
    pbx_ip = lab.pbx.address
    device_ip = lab.devices[0].address
    [gateway_ip] = [a.split("/")[0] for i in lab.gateway.interfaces for a in i.addresses
                    if a.startswith(device_ip.rsplit(".", 1)[0] + ".")]  # the gateway on the device's link

    def inside(role: str) -> list[str]:
        return exec_argv(lab.name, role, ["true"])[:-1]  # ip netns exec fl-<lab>-<role>

    def quoted(ip: str) -> str:
        return re.escape(ip)

    trace = tmp_path / "faultlab.jsonl"
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(40):  # five interpreter start-ups, one after the other
            gateway = await actors.spawn("push-gateway", "push-gateway", "--listen", f"{pbx_ip}:0",
                                         prefix=inside("pbx"))
            p = int((await gateway.wait_line("stderr", rf"push gateway on http://{quoted(pbx_ip)}:(\d+) ")).group(1))

            pbx = await actors.spawn("pbx", "pbx", "--listen", f"udp:{pbx_ip}:0", "--push-url", f"http://{pbx_ip}:{p}",
                                     prefix=inside("pbx"))
            q = int((await pbx.wait_line("stderr", rf"^faultlab pbx: udp on {quoted(pbx_ip)}:(\d+)$")).group(1))

            proxy = await actors.spawn("proxy", "proxy", "--listen", f"udp:{gateway_ip}:0",
                                       "--upstream", f"udp:{pbx_ip}:{q}", "--trace", str(trace), "-q",
                                       prefix=inside("gateway"))
            r = int((await proxy.wait_line("stderr", rf"^faultlab: listening on udp:{quoted(gateway_ip)}:(\d+) "))
                    .group(1))

            device = await actors.spawn("device", "device", "--proxy", f"udp:{gateway_ip}:{r}", "--user", "alice",
                                        "--domain", "lab.test", "--token", TOKEN, "--push-url", f"http://{pbx_ip}:{p}",
                                        "--answer-after", "1s", prefix=inside("device1"))
            # ready: registered through faultlab (with its push binding) and subscribed to its pushes across
            # the gateway
            registered = (await device.wait_line("stderr", r"initial REGISTER: (.*)$")).group(1)
            assert registered == "200", device.output()
            await gateway.wait_line("stdout", rf" device +connected token={TOKEN}")

        with trio.fail_after(30):
            caller = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{pbx_ip}:{q}",
                                        "--from", "bob", "--domain", "lab.test", "--hang-up-after", "200ms",
                                        "--timeout", "20s", "--json", prefix=inside("pbx"))
            assert await caller.wait_exit() == 0, caller.output()
            [line] = caller.lines["stdout"]
            outcome = json.loads(line)
            call_id = outcome["call_id"]
            assert outcome["final"] == 200 and 180 in outcome["statuses"], outcome
            assert outcome["ended"] == "local-bye" and outcome["bye_status"] == 200, outcome
            # the device ends the call (remoteEnded) on the BYE
            await device.wait_line("stdout", rf'"call_id": "{re.escape(call_id)}".*"event": "ended"')
            await gateway.wait_line("stdout", rf" push +call +delivered .*call-id={re.escape(call_id)}")

        await actors.stop_lab(device, proxy, pbx, gateway)

    # the device, from its own stdout: reported, answered, fulfilled, ended remoteEnded exactly once
    device_events = [json.loads(line) for line in device.lines["stdout"] if line.startswith("{")]
    mine = [e for e in device_events if e.get("call_id") == call_id]
    assert [(e["event"], e.get("reason")) for e in mine] == [
        ("reported", None), ("answer-tapped", None), ("answer-fulfilled", None), ("ended", "remoteEnded")], mine
    assert [e for e in device_events if e.get("call_id") != call_id] == []

    # faultlab's trace: INVITE, 200, ACK and BYE of the call crossed the gateway, the device's side of each
    # with the device's namespace address as the peer
    events = list(read_jsonl(trace))
    assert events[0].kind == "start" and events[-1].kind == "stop"
    call = [e for e in events if e.call_id == call_id and e.kind in ("received", "sent")]

    def device_side(kind: str, what) -> list:
        return [e for e in call if e.kind == kind and (e.method or e.status) == what
                and (e.peer or "").rsplit(":", 1)[0] == device_ip]

    assert device_side("sent", "INVITE"), [(e.kind, e.summary, e.peer) for e in call]
    assert [e for e in device_side("received", 200) if e.cseq_method == "INVITE"], [(e.kind, e.summary, e.peer) for e in call]
    assert device_side("sent", "ACK") and device_side("sent", "BYE")
    assert [e for e in device_side("received", 200) if e.cseq_method == "BYE"]
    # and each went on to the other side
    for method in ("INVITE", "ACK", "BYE"):
        assert [e for e in call if e.kind == "received" and e.method == method
                and (e.peer or "").rsplit(":", 1)[0] != device_ip], method
