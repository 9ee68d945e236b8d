"""The embedded PBX retransmits what it sends over UDP (RFC 3261 Timers A/E): a call through faultlab whose
first INVITE transmission to the device is dropped still connects. Virtual time, in-memory network."""

from __future__ import annotations

import pytest

from faultlab.faults import parse_profile
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.stack import open_lab_stack

DROP_FIRST_INVITE = parse_profile("""
name = "drop-first-invite"
summary = "The first transmission of an INVITE toward the device is lost."
[[rules]]
name = "drop-invite"
match = { direction = "to-device", method = "INVITE", count = "transmission", occurrence = { first = 1 } }
action = { drop = true }
""")


async def test_call_connects_when_the_first_invite_to_the_device_is_lost(autojump_clock):
    async with open_lab_stack("udp", network="memory", device_config=DeviceConfig(answer_after=1.5)) as lab:
        assert lab.device.initial_register == 200
        lab.proxy.activate(DROP_FIRST_INVITE)
        start = lab.timeline.now()
        result = await lab.call(hang_up_after=2.0)
    events = list(lab.timeline.events)
    call_id = result.call_id
    assert result.final == 200 and result.handle.ended == "local-bye"
    assert result.ended == "remoteEnded"

    # the PBX sent the INVITE toward the device twice: at once, and T1 = 0.5 s later as retransmission 1
    invites = [e for e in events if e.source == "pbx" and e.kind == "sent" and e.method == "INVITE"
               and e.call_id == call_id]
    assert [e.detail.get("retransmission") for e in invites] == [None, 1]
    assert invites[1].t - invites[0].t == pytest.approx(0.5, abs=1e-6)
    # faultlab dropped the first one and relayed the second
    dropped = [e for e in events if e.source == "proxy" and e.kind == "fault" and e.call_id == call_id]
    assert dropped and dropped[0].detail.get("rule") == "drop-invite"
    relayed = [e for e in events if e.source == "proxy" and e.kind == "sent" and e.direction == "to-device"
               and e.method == "INVITE" and e.call_id == call_id]
    assert len(relayed) == 1 and relayed[0].t == pytest.approx(invites[1].t, abs=1e-6)
    # the device answered 1.5 s after it saw the INVITE; no Timer B, no warning
    assert not [e for e in events if e.kind == "pbx" and e.detail.get("action") == "timeout"]
    assert not [e for e in events if e.kind == "warning"]
    assert start <= invites[0].t
