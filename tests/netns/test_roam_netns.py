"""S26 in the namespace lab (root): the device leaves its first address while its call rings, and the call still
reaches it on the new one.

Every actor runs as its own process in the lab's namespaces (as in test_lab_actors_netns.py). The device has two
addresses on its link (the "Wi-Fi" .2 and the "cellular" .3); faultlab delays the call's first INVITE 3 s on its
way to the device. Once the device has reported the call, the test takes the .2 address away (off the device's
link and out of the air's routes: what was on its way there is lost, nothing leaves from it, the old flow dies
without a FIN) and tells the device (SIGUSR1, as the OS tells an app its network path changed). The device
REGISTERs from .3, the PBX sends the INVITE on that new flow, the user answers, the caller hangs up: the device
ends remoteEnded. The lab (its own name and subnet) is removed and every process stopped by its PID, also when the
test fails.
"""

from __future__ import annotations

import json
import re
import signal
from typing import Iterator

import pytest
import trio

from faultlab.labnet.roam import add_device_address, remove_device_address
from faultlab.labnet.topology import Lab, exec_argv
from faultlab.trace import read_jsonl
from tests.actors import actor_env, open_actors
from tests.netns import one_device_lab

pytestmark = pytest.mark.netns

SUBNET = "10.143.0.0/16"  # gateway 10.143.0.1 -- PBX 10.143.0.2; gateway 10.143.1.1 -- device1 .2 and .3
TOKEN = "c0ffee0123456789"
SLOW_INVITE = '''name = "slow-invite"
[[rules]]
name = "slow-invite"
match = { direction = "to-device", method = "INVITE", occurrence = { first = 1 } }
action = { delay = "3s" }
'''


@pytest.fixture
def lab() -> Iterator[Lab]:
    with one_device_lab("rm", SUBNET) as made:
        yield made


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_device_that_moves_while_ringing_gets_its_call_on_the_new_address(lab: Lab, tmp_path, transport):
    pbx_ip = lab.pbx.address
    wifi = lab.devices[0].address
    cellular = wifi.rsplit(".", 1)[0] + ".3"
    [gateway_ip] = [a.split("/")[0] for i in lab.gateway.interfaces for a in i.addresses
                    if a.startswith(wifi.rsplit(".", 1)[0] + ".")]
    await trio.to_thread.run_sync(add_device_address, lab.name, 1, cellular)
    profile = tmp_path / "slow-invite.toml"
    profile.write_text(SLOW_INVITE)

    def inside(role: str) -> list[str]:
        return exec_argv(lab.name, role, ["true"])[:-1]

    trace = tmp_path / "faultlab.jsonl"
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        with trio.fail_after(40):  # five interpreter start-ups, one after the other
            gateway = await actors.spawn("push-gateway", "push-gateway", "--listen", f"{pbx_ip}:0",
                                         prefix=inside("pbx"))
            p = int((await gateway.wait_line("stderr", rf"push gateway on http://{re.escape(pbx_ip)}:(\d+) "))
                    .group(1))
            listen = ["--listen", f"udp:{pbx_ip}:0"] + (["--listen", f"tcp:{pbx_ip}:0"] if transport == "tcp" else [])
            pbx = await actors.spawn("pbx", "pbx", *listen, "--push-url", f"http://{pbx_ip}:{p}", prefix=inside("pbx"))
            q = int((await pbx.wait_line("stderr", rf"^faultlab pbx: udp on {re.escape(pbx_ip)}:(\d+)$")).group(1))
            up = q if transport == "udp" else int(
                (await pbx.wait_line("stderr", rf"^faultlab pbx: tcp on {re.escape(pbx_ip)}:(\d+)$")).group(1))
            proxy = await actors.spawn("proxy", "proxy", "--listen", f"{transport}:{gateway_ip}:0",
                                       "--upstream", f"{transport}:{pbx_ip}:{up}", "--profile", str(profile),
                                       "--trace", str(trace), "-q", prefix=inside("gateway"))
            r = int((await proxy.wait_line(
                "stderr", rf"^faultlab: listening on {transport}:{re.escape(gateway_ip)}:(\d+) ")).group(1))
            device = await actors.spawn("device", "device", "--proxy", f"{transport}:{gateway_ip}:{r}",
                                        "--user", "alice", "--domain", "lab.test", "--token", TOKEN,
                                        "--push-url", f"http://{pbx_ip}:{p}", "--answer-after", "4s",
                                        "--host", wifi, "--move-to", cellular, prefix=inside("device1"))
            assert (await device.wait_line("stderr", r"initial REGISTER: (.*)$")).group(1) == "200", device.output()
            await gateway.wait_line("stdout", rf" device +connected token={TOKEN}")

        with trio.fail_after(30):
            caller = await actors.spawn("call", "call", "sip:alice@lab.test", "--pbx", f"udp:{pbx_ip}:{q}",
                                        "--from", "bob", "--domain", "lab.test", "--hang-up-after", "2s",
                                        "--timeout", "20s", "--json", prefix=inside("pbx"))
            await device.wait_line("stdout", r'"event": "reported"')  # ringing; the INVITE is 3 s away
            await trio.to_thread.run_sync(remove_device_address, lab.name, 1, wifi)  # Wi-Fi is gone ...
            device.process.send_signal(signal.SIGUSR1)  # ... and the app hears of it
            await device.wait_line("stderr", rf"moved to {re.escape(cellular)}$")
            assert await caller.wait_exit() == 0, caller.output()
            outcome = json.loads(caller.lines["stdout"][0])
            call_id = outcome["call_id"]
            assert outcome["final"] == 200 and outcome["bye_status"] == 200, (outcome, device.output())
            await device.wait_line("stdout", rf'"call_id": "{re.escape(call_id)}".*"event": "ended"')

        await actors.stop_lab(device, proxy, pbx, gateway)

    events = [json.loads(line) for line in device.lines["stdout"] if line.startswith("{")]
    assert [(e["event"], e.get("reason")) for e in events if e.get("call_id") == call_id] == [
        ("reported", None), ("answer-tapped", None), ("answer-fulfilled", None), ("ended", "remoteEnded")]

    # faultlab saw the device REGISTER from its new address, and sent the INVITE there; the device's 200 came
    # from there too; the INVITE it had delayed toward the old address never got an answer from it
    trace_events = list(read_jsonl(trace))

    def host(e) -> str:
        return (e.peer or "").rsplit(":", 1)[0]

    registers = [host(e) for e in trace_events if e.kind == "received" and e.method == "REGISTER"
                 and e.direction == "to-pbx"]
    assert registers[0] == wifi and cellular in registers, registers
    invites = [host(e) for e in trace_events if e.kind == "sent" and e.method == "INVITE" and e.call_id == call_id]
    assert cellular in invites, invites
    answers = [host(e) for e in trace_events if e.kind == "received" and e.call_id == call_id
               and e.cseq_method == "INVITE" and e.status is not None and e.direction == "to-pbx"]
    assert answers and set(answers) == {cellular}, answers
