"""The push-side check against a real PBX without push: Kamailio with shared/pbx/kamailio.cfg (a registrar and
record-routing proxy; it does not speak RFC 8599 push).

`faultlab lab run --pbx HOST:PORT --push-listen ...` with the reference device: Kamailio passes each INVITE
straight to the device's registered flow and never calls the push gateway. The report must say so plainly: the
push-side check fails with "this PBX sent no VoIP push at all", and S27/S28 (APNs refusing a push) fail as not
exercised, with the INVITE reaching the device as evidence. Real time, loopback, one Kamailio per test.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from faultlab.lab.runner import run_case
from faultlab.lab.scenario import load_scenario
from tests.integration.conftest import Kamailio

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def own_pbx(kam: Kamailio) -> dict:
    return {"pbx": {"udp": (kam.host, kam.sip_port), "tcp": (kam.host, kam.sip_port), "tls": (kam.host, kam.tls_port)},
            "push_listen": (HOST, free_port()), "pbx_ca": kam.ca_file}


def push_side(case):
    return next(c for c in case.checks if c.check == "push-side")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_pbx_without_push_is_told_it_sent_none(kamailio, transport):
    s01 = replace(load_scenario("S01"), hang_up_after=0.5, duration=6.0)
    case = run_case(s01, transport=transport, seed=1, virtual=False, **own_pbx(kamailio))
    events = case.runs[0].events
    assert not [e for e in events if e.source == "push" and e.kind == "push"]  # Kamailio never pushed
    result = push_side(case)
    assert not result.passed
    assert result.message.startswith("this PBX sent no VoIP push at all (1 INVITE(s)): the push-side rules cannot be met")
    assert "straight to the device's registered flow" in result.message and "does not push (RFC 8599)" in result.message
    assert any("caller INVITE" in line for line in result.evidence)
    assert any("INVITE on its way to the device" in line for line in result.evidence)
    # the device's own checks still judge the device: it answered and ended remoteEnded as it should
    assert next(c for c in case.checks if c.check == "ends-right").passed


def test_apns_refusals_are_not_exercised_by_a_pbx_that_does_not_push(kamailio):
    pbx = own_pbx(kamailio)
    for sid in ("S27", "S28"):
        scenario = replace(load_scenario(sid), pbx_hold=1.0)  # Kamailio's ringing call: do not wait 8 s for it
        result = push_side(run_case(scenario, seed=1, virtual=False, **pbx))
        assert not result.passed, sid
        assert "no push was refused (none was sent?): not exercised" in result.message, result.message
