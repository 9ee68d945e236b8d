"""RTP across the lab's namespaces (root): S21, a BYE lost mid-call, with every actor its own process.

::

    device1 ns                 gateway ns                           pbx ns
    faultlab device --SIP-->   faultlab proxy (drops the BYE) --->  faultlab pbx <-- faultlab call --media
         ^    \\                                                                         ^
         |     +------------- RTP, routed by the gateway's kernel, beside faultlab --------+
         +------------- push stream (HTTP, routed through the gateway) ----------------+

faultlab relays SIP only; the RTP the caller and the device send each other (to the addresses their SDP names)
is forwarded by the gateway namespace like any other packet, as media beside a SIP proxy in a real deployment.
The caller hangs up 2 s after the answer; faultlab drops its BYE on the way to the device; the device hears the
caller's RTP stop and ends the call ``failed`` after its media-silence timeout (3 s here), hanging up with a BYE
of its own. The lab (its own name
and subnet) is removed and every process stopped by its PID, also when the test fails.
"""

from __future__ import annotations

import json
import re
from typing import Iterator

import pytest
import trio

from faultlab.labnet.topology import Lab, exec_argv
from faultlab.trace import read_jsonl
from tests.actors import actor_env, open_actors
from tests.netns import one_device_lab

pytestmark = pytest.mark.netns

SUBNET = "10.171.0.0/16"  # gateway 10.171.0.1 -- PBX 10.171.0.2; gateway 10.171.1.1 -- device1 10.171.1.2
TOKEN = "feedface01234567"
HANG_UP_AFTER, MEDIA_TIMEOUT = 2.0, 3.0

BYE_DROP = """name = "bye-drop"
[[rules]]
name = "drop-bye"
match = { direction = "to-device", method = "BYE" }
action = { drop = true }
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with one_device_lab("lm", SUBNET) as made:
        yield made


async def test_s21_rtp_crosses_the_namespaces_and_the_device_ends_failed_on_silence(lab: Lab, tmp_path):
    pbx_ip, device_ip = lab.pbx.address, lab.devices[0].address
    [gateway_ip] = [a.split("/")[0] for i in lab.gateway.interfaces for a in i.addresses
                    if a.startswith(device_ip.rsplit(".", 1)[0] + ".")]

    def inside(role: str) -> list[str]:
        return exec_argv(lab.name, role, ["true"])[:-1]

    q_pbx, q_gw = re.escape(pbx_ip), re.escape(gateway_ip)
    trace, profile = tmp_path / "faultlab.jsonl", tmp_path / "bye-drop.toml"
    profile.write_text(BYE_DROP)
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(40):
            gateway = await actors.spawn("push-gateway", "push-gateway", "--listen", f"{pbx_ip}:0",
                                         prefix=inside("pbx"))
            p = int((await gateway.wait_line("stderr", rf"push gateway on http://{q_pbx}:(\d+) ")).group(1))
            pbx = await actors.spawn("pbx", "pbx", "--listen", f"udp:{pbx_ip}:0", "--push-url", f"http://{pbx_ip}:{p}",
                                     prefix=inside("pbx"))
            q = int((await pbx.wait_line("stderr", rf"^faultlab pbx: udp on {q_pbx}:(\d+)$")).group(1))
            proxy = await actors.spawn("proxy", "proxy", "--listen", f"udp:{gateway_ip}:0", "--upstream",
                                       f"udp:{pbx_ip}:{q}", "--profile", str(profile), "--trace", str(trace), "-q",
                                       prefix=inside("gateway"))
            r = int((await proxy.wait_line("stderr", rf"^faultlab: listening on udp:{q_gw}:(\d+) ")).group(1))
            device = await actors.spawn("device", "device", "--proxy", f"udp:{gateway_ip}:{r}", "--user", "alice",
                                        "--domain", "lab.test", "--token", TOKEN, "--push-url", f"http://{pbx_ip}:{p}",
                                        "--answer-after", "1s", "--media-timeout", f"{MEDIA_TIMEOUT:g}s",
                                        prefix=inside("device1"))
            assert (await device.wait_line("stderr", r"initial REGISTER: (.*)$")).group(1) == "200", device.output()
            await gateway.wait_line("stdout", rf" device +connected token={TOKEN}")

        with trio.fail_after(30):
            caller = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{pbx_ip}:{q}",
                                        "--from", "bob", "--domain", "lab.test", "--media",
                                        "--hang-up-after", f"{HANG_UP_AFTER:g}s", "--timeout", "6s", "--json",
                                        prefix=inside("pbx"))
            assert await caller.wait_exit() == 1, caller.output()  # its BYE got no answer: lost, as scripted
            [line] = caller.lines["stdout"]
            outcome = json.loads(line)
            call_id = outcome["call_id"]
            assert outcome["final"] == 200 and outcome["bye_status"] is None, outcome
            assert "no response to the BYE" in outcome["reason"], outcome
            await device.wait_line("stdout", rf'"call_id": "{re.escape(call_id)}".*"event": "ended"')

        await actors.stop_lab(device, proxy, pbx, gateway)

    # RTP both ways, each from the other namespace's address (the only way between them is the gateway)
    media = outcome["media"]
    assert media["sent"] > 0 and media["received"] > 0, media
    assert media["from"].rsplit(":", 1)[0] == device_ip, media
    heard = [ln for ln in device.lines["stderr"] if "RTP from" in ln]
    assert heard and heard[0].split("RTP from ", 1)[1].split(":", 1)[0] == pbx_ip, device.lines["stderr"]

    # the device ended the call failed, on its silence timeout: after the caller's 2 s of RTP and 3 s of silence
    events = [json.loads(ln) for ln in device.lines["stdout"] if ln.startswith("{")]
    mine = {e["event"]: e for e in events if e.get("call_id") == call_id}
    assert mine["ended"]["reason"] == "failed", mine
    assert mine["ended"]["t"] - mine["answer-fulfilled"]["t"] >= HANG_UP_AFTER + MEDIA_TIMEOUT - 0.1, mine

    # faultlab saw the SIP only: the BYE dropped on its way to the device, no RTP on its timeline
    relayed = [e for e in read_jsonl(trace) if e.call_id == call_id]
    assert [e for e in relayed if e.kind == "dropped" and e.method == "BYE"], [(e.kind, e.summary) for e in relayed]
    assert not [e for e in relayed if e.kind == "sent" and e.method == "BYE" and e.direction == "to-device"]
    # the device hung up itself when its timeout fired: its BYE went to the PBX (and on to the caller)
    assert [e for e in relayed if e.kind == "sent" and e.method == "BYE" and e.direction == "to-pbx"]
    assert {e.transport for e in relayed if e.transport} == {"udp"} and all(e.method or e.status for e in relayed
                                                                             if e.kind in ("received", "sent"))
