"""The reference device's TCP/TLS connection under network faults, through the whole lab (faultlab.lab.stack) on
the in-memory network, in virtual time (trio's autojump clock): times are exact.

* S14: with ``new_connection_on_push`` the push's REGISTER opens a new TLS connection; faultlab stalls the handshake
  (profile tls-handshake-stall): the call ends ``failed`` at the register deadline, t0 + 8 s.
* S15: faultlab resets every new connection (a connect rule): the call ends ``failed`` at once (no Timer F wait).
* S24: faultlab resets the connection right after the refresh REGISTER's 200 (profile tcp-reset-after-register):
  the device re-REGISTERs on a new connection at once; the INVITE deadline runs from the new REGISTER 2xx.
* A flow lost with the REGISTER in flight fails it at once; lost after the INVITE, or with no call, it ends
  nothing (the next REGISTER connects anew).
"""

from __future__ import annotations

import pytest
import trio

from faultlab.faults import load_profile, parse_profile
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.stack import open_lab_stack

RESET_ON_CONNECT = parse_profile("""
name = "reset-on-connect"
summary = "Every new TCP/TLS connection from a device is reset at once."
[[rules]]
name = "reset-connect"
match = { on = "connect" }
action = { reset = true }
""")


def lab_kwargs(transport: str, tmp_path) -> dict:
    return {"network": "memory", **({"confdir": tmp_path} if transport == "tls" else {})}


def registers_to_pbx(lab, since: int) -> list:
    return [e for e in list(lab.timeline.events)[since:] if e.source == "proxy" and e.kind == "sent"
            and e.direction == "to-pbx" and e.method == "REGISTER"]


def rel(events, start) -> list:
    return [(round(t - start, 6), ev, reason) for t, ev, reason in events]


async def test_s14_tls_handshake_stall_on_a_new_connection_fails_at_the_register_deadline(tmp_path, autojump_clock):
    config = DeviceConfig()
    async with open_lab_stack("tls", device_config=config, new_connection_on_push=True,
                              **lab_kwargs("tls", tmp_path)) as lab:
        assert lab.device.initial_register == 200 and lab.device.connections == 1
        lab.proxy.activate(load_profile("tls-handshake-stall"))
        start, before = lab.timeline.now(), len(lab.timeline.events)
        result = await lab.call()
        connections = lab.device.connections
    assert rel(result.device_events, start) == [(0.0, "reported", None),
                                                 (config.register_deadline, "ended", "failed")]
    assert result.ended == "failed" and result.final == 480  # the PBX's hold (8 s) ran out too
    assert registers_to_pbx(lab, before) == []  # the REGISTER never got past the handshake
    assert connections == 1  # the second connection never completed its handshake


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_s15_connection_reset_at_connect_fails_at_once(transport, tmp_path, autojump_clock):
    async with open_lab_stack(transport, device_config=DeviceConfig(), new_connection_on_push=True,
                              **lab_kwargs(transport, tmp_path)) as lab:
        assert lab.device.initial_register == 200
        lab.proxy.activate(RESET_ON_CONNECT)
        start, before = lab.timeline.now(), len(lab.timeline.events)
        result = await lab.call()
    assert rel(result.device_events, start) == [(0.0, "reported", None), (0.0, "ended", "failed")]
    assert registers_to_pbx(lab, before) == []


async def test_without_new_connection_on_push_the_old_connection_carries_the_register(tmp_path, autojump_clock):
    async with open_lab_stack("tls", device_config=DeviceConfig(answer_after=1.0),
                              **lab_kwargs("tls", tmp_path)) as lab:
        lab.proxy.activate(load_profile("tls-handshake-stall"))  # only new connections stall
        start = lab.timeline.now()
        result = await lab.call(hang_up_after=1.0)
        assert lab.device.connections == 1
    assert result.final == 200 and result.ended == "remoteEnded"
    assert rel(result.device_events, start) == [(0.0, "reported", None), (1.0, "answer-tapped", None),
                                                 (1.0, "answer-fulfilled", None), (2.0, "ended", "remoteEnded")]


RESET_AFTER_REGISTER_THEN_DELAY = parse_profile("""
name = "reset-after-register-then-delay"
summary = "The first REGISTER 2xx is followed by a reset; the next REGISTER reaches the PBX 2 s late."
[[rules]]
name = "reset-after-register"
match = { direction = "to-device", status = "2xx", cseq_method = "REGISTER", occurrence = { first = 1 } }
action = { reset = true, when = "after" }
[[rules]]
name = "delay-second-register"
match = { direction = "to-pbx", method = "REGISTER", occurrence = { after = 1 } }
action = { delay = "2s" }
[[rules]]
name = "no-invite"
match = { direction = "to-device", method = "INVITE" }
action = { drop = true }
""")


def proxy_events(lab, since: int, kind: str) -> list:
    return [e for e in list(lab.timeline.events)[since:] if e.source == "proxy" and e.kind == kind]


def register_oks_to_device(lab, since: int) -> list:
    return [e for e in list(lab.timeline.events)[since:] if e.source == "proxy" and e.kind == "sent"
            and e.direction == "to-device" and e.status == 200 and e.cseq_method == "REGISTER"]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_s24_flow_reset_after_register_re_registers_at_once(transport, tmp_path, autojump_clock):
    config = DeviceConfig()
    async with open_lab_stack(transport, device_config=config, **lab_kwargs(transport, tmp_path)) as lab:
        assert lab.device.initial_register == 200 and lab.device.connections == 1
        lab.proxy.activate(load_profile("tcp-reset-after-register"))
        start, before = lab.timeline.now(), len(lab.timeline.events)
        result = await lab.call()
        connections, lost = lab.device.connections, lab.device.flows_lost
    # the refresh REGISTER's 200 reaches the device, then faultlab resets the flow (the INVITE the PBX released
    # on it right after the refresh is lost with it)
    [reset] = [e for e in proxy_events(lab, before, "flow-close") if e.detail.get("how") == "reset"]
    assert reset.t == pytest.approx(start, abs=1e-6)
    # the device re-REGISTERs at once, on a new connection (new flow), and is registered again
    refresh, again = registers_to_pbx(lab, before)
    assert refresh.t == pytest.approx(start, abs=1e-6) and again.t == pytest.approx(reset.t, abs=1e-6)
    assert again.flow != refresh.flow
    assert [e.t for e in register_oks_to_device(lab, before)] == pytest.approx([start, start], abs=1e-6)
    assert (connections, lost) == (2, 1)
    # the INVITE the PBX forwarded on the dead flow got no answer: the PBX holds it again and sends it on the
    # device's new flow, where the device rings it out (no user action): unanswered at its ring timeout
    invites = [e for e in proxy_events(lab, before, "sent") if e.direction == "to-device" and e.method == "INVITE"]
    assert [e.flow for e in invites] == [again.flow]
    assert [e.detail.get("action") for e in list(lab.timeline.events)[before:]
            if e.source == "pbx" and e.kind == "pbx" and e.detail.get("action") in ("forward", "rehold")] == [
        "forward", "rehold", "forward"]
    assert rel(result.device_events, start) == [(0.0, "reported", None),
                                                 (config.ring_timeout, "ended", "unanswered")]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_s24_the_invite_deadline_runs_from_the_second_register_2xx(transport, tmp_path, autojump_clock):
    config = DeviceConfig()
    async with open_lab_stack(transport, device_config=config, **lab_kwargs(transport, tmp_path)) as lab:
        lab.proxy.activate(RESET_AFTER_REGISTER_THEN_DELAY)
        start, before = lab.timeline.now(), len(lab.timeline.events)
        result = await lab.call()
    refresh, again = registers_to_pbx(lab, before)
    assert (round(refresh.t - start, 6), round(again.t - start, 6)) == (0.0, 2.0)  # sent at 0, held 2 s
    assert [round(e.t - start, 6) for e in register_oks_to_device(lab, before)] == [0.0, 2.0]
    # no INVITE reaches the device (dropped), and tR moved to the second 2xx (t0 + 2): the call ends at
    # tR2 + D_invite = t0 + 7, not tR1 + D_invite = t0 + 5
    assert rel(result.device_events, start) == [(0.0, "reported", None),
                                                 (2.0 + config.invite_deadline, "ended", "unanswered")]


async def test_flow_lost_after_the_invite_ends_nothing(tmp_path, autojump_clock):
    reset_after_180 = parse_profile("""
name = "reset-after-180"
summary = "The connection is reset once the device's 180 has reached the PBX."
[[rules]]
name = "reset-after-180"
match = { direction = "to-pbx", status = 180 }
action = { reset = true, when = "after" }
""")
    async with open_lab_stack("tcp", device_config=DeviceConfig(), **lab_kwargs("tcp", tmp_path)) as lab:
        lab.proxy.activate(reset_after_180)
        start = lab.timeline.now()
        result = await lab.call()
        lost = lab.device.flows_lost
    # the reset at t0 ends nothing: the device rings until its own ring timeout (its 480 has no way out)
    assert lost == 1
    assert rel(result.device_events, start) == [(0.0, "reported", None), (45.0, "ended", "unanswered")]


async def test_flow_lost_with_no_call_reconnects_for_the_next_register(tmp_path, autojump_clock):
    reset_after_bye = parse_profile("""
name = "reset-after-bye"
summary = "The connection is reset once the device's 200 to the BYE has reached the PBX."
[[rules]]
name = "reset-after-bye"
match = { direction = "to-pbx", status = "2xx", cseq_method = "BYE" }
action = { reset = true, when = "after" }
""")
    async with open_lab_stack("tls", device_config=DeviceConfig(answer_after=1.0),
                              **lab_kwargs("tls", tmp_path)) as lab:
        lab.proxy.activate(reset_after_bye)
        first = await lab.call(hang_up_after=1.0)
        await trio.sleep(10)
        assert (lab.device.connections, lab.device.flows_lost) == (1, 1)  # lost with no call: nothing sent
        before = len(lab.timeline.events)
        start = lab.timeline.now()
        second = await lab.call(hang_up_after=1.0)
        assert lab.device.connections == 2
    assert first.ended == second.ended == "remoteEnded"
    [register] = registers_to_pbx(lab, before)
    assert register.t == pytest.approx(start, abs=1e-6)
    assert rel(second.device_events, start) == [(0.0, "reported", None), (1.0, "answer-tapped", None),
                                                 (1.0, "answer-fulfilled", None), (2.0, "ended", "remoteEnded")]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_flow_lost_with_the_register_in_flight_fails_at_once(transport, tmp_path, autojump_clock):
    reset_on_register = parse_profile("""
name = "reset-on-register"
summary = "The connection is reset when a REGISTER arrives (it never reaches the PBX)."
[[rules]]
name = "reset-on-register"
match = { direction = "to-pbx", method = "REGISTER" }
action = { reset = true, when = "before" }
""")
    async with open_lab_stack(transport, device_config=DeviceConfig(), **lab_kwargs(transport, tmp_path)) as lab:
        lab.proxy.activate(reset_on_register)
        start, before = lab.timeline.now(), len(lab.timeline.events)
        result = await lab.call()
    # the REGISTER on the reset flow fails as a transport failure: failed at once, not at t0 + 8 or Timer F
    assert registers_to_pbx(lab, before) == []
    assert rel(result.device_events, start) == [(0.0, "reported", None), (0.0, "ended", "failed")]
