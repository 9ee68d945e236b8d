"""The checks that cannot be fooled, on whole lab runs: check 3 not exercised is a failure, and a device that
gives up before the script's anchor is judged against the time that anchor would have come."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from faultlab.lab.runner import run_case
from faultlab.lab.scenario import load_scenario
from faultlab.lab.scenario_set import override


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_check_3_that_sent_no_cancel_push_fails_as_not_exercised(transport):
    quiet_pbx = replace(load_scenario("S04"), pbx_cancel_push=False)  # a PBX that never sends a cancel push
    case = run_case(quiet_pbx, transport=transport, seed=1)
    result = next(c for c in case.checks if c.check == "cancel-push")
    assert not result.passed and len(case.runs) == 1
    assert re.search(r"the caller cancelled at t=2\.\d+ but the PBX sent no cancel push", result.message)
    assert "cancel pushes: none sent" in result.evidence
    # declared not to apply: no check 3 at all
    assert "cancel-push" not in {c.check for c in run_case(override(quiet_pbx, "expect.cancel_push", "false"),
                                                              transport=transport, seed=1).checks}


def test_a_device_that_gives_up_before_the_scripted_cancel_is_judged_against_it():
    # S05: the caller cancels 2 s after its INVITE; a device whose ring timeout is 1 s rejects the INVITE first,
    # so no CANCEL is ever sent: the deadline term "cancel-at-device + 0.5 s" still holds, at the scripted time
    s05 = override(override(load_scenario("S05"), "device.ring_timeout", "1s"), "expect.end", "remoteEnded,unanswered")
    case = run_case(s05, seed=1)
    result = next(c for c in case.checks if c.check == "ends-right")
    assert not result.passed
    assert re.search(r"before cancel-at-device would have come \(3\.\d+, the scripted CANCEL", result.message)
    assert any(re.search(r"no cancel-at-device on the timeline; it would have come at 3\.\d+", line)
               for line in result.evidence)
