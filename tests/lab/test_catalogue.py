"""The catalogue against the reference device, in virtual time on the memory network (issue 6, item 8).

For every scenario the well-behaved device passes every check, over 5 seeds, on every transport the scenario
applies to; for every known-bad behaviour and every scenario where a check applies to it, that check fails (with
the behaviour's tell-tale in its message), over the same 5 seeds and every transport. A check that could not fail
would show up here as a bad device passing.
"""

from __future__ import annotations

import pytest

from faultlab.lab.device.logic import BEHAVIOURS
from faultlab.lab.runner import run_case
from faultlab.lab.scenario import list_scenarios, load_scenario

SEEDS = [1, 2, 3, 4, 5]
CATALOGUE = list_scenarios()

# behaviour -> {scenario id: (the check that must fail, a phrase its message must contain)}
CAUGHT: dict[str, dict[str, tuple[str, str]]] = {
    "depends-on-cancel-push": {
        "S04": ("cancel-push", "with the cancel push, ended remoteEnded"),
        "S09": ("ends-right", "never ended"),
        "S18": ("cancel-push", "with the cancel push, ended remoteEnded"),
    },
    "rejects-early-answer": {
        "S17": ("early-answer", "before the call connected"),
        "S18": ("early-answer", "the early answer was not held"),
    },
    "fulfills-before-invite": {
        "S17": ("early-answer", "fulfilled before the call connected"),
        "S18": ("early-answer", "no INVITE ever arrived"),
    },
    "wrong-reason-mapping": {
        "S06": ("ends-right", "ended remoteEnded"),
        "S07": ("ends-right", "ended remoteEnded"),
        "S07b": ("ends-right", "ended remoteEnded"),
    },
    "never-ends": {s.id: ("ends-right", "never ended") for s in CATALOGUE if s.end},
    "slow-end": {s.id: ("ends-right", "after the deadline") for s in CATALOGUE if s.end},
    "loops-at-one-instant": {sid: ("ends-right", "virtual time stopped advancing") for sid in ("S01", "S04", "S24")},
    # the SIP the device owes (faultlab.lab.duties)
    "no-487": {s: ("sip-duties", "no 487 to the INVITE after the CANCEL") for s in
               ("S05", "S06", "S07", "S07b", "S08", "S24")},
    "no-480-at-ring-timeout": {"S20": ("sip-duties", "rang out with no final response: expected 480")},
    "late-invite-486": {"S03": ("sip-duties", "got 486 at t=")},
    "decline-486": {"S29": ("sip-duties", "got 486: expected 603 Decline"),
                    "S30": ("sip-duties", "got 486: expected 603 Decline")},
    "register-retry-after-403": {"S13": ("sip-duties", "after the 403 at t=")},
    "ignores-retry-after": {"S12": ("sip-duties", "before the 503's Retry-After: 30 allowed"),
                            "S12b": ("sip-duties", "before the 503's Retry-After: 1 allowed")},
    "no-register-on-push": {s: ("sip-duties", "no REGISTER from the device within 8 s of the call push")
                            for s in ("S01", "S05", "S22")},
    "unanswered-after-reregister": {"S24": ("ends-right", "gave up too soon")},
    "drops-after-connect": {
        "S17": ("early-answer", "before the caller's BYE"),
        "S01": ("ends-right", "expected remoteEnded"),
    },
    "rings-stale-push": {"S23": ("ends-right", "after the deadline")},
    "no-media-timeout": {"S21": ("ends-right", "never ended")},
    "ignores-dead-flow": {"S25": ("invariants", "no register-new-flow")},
    "ignores-path-change": {"S26": ("invariants", "no register-new-flow")},
}


def test_catalogue_covers_the_reference():
    ids = [s.id for s in CATALOGUE]
    required = [f"S{n:02d}" for n in range(1, 21)] + ["S07b", "S21", "S22", "S23", "S24", "S25", "S26", "S27", "S27b", "S28", "S29", "S30"]
    assert set(required) <= set(ids)
    assert len(ids) == len(set(ids)) and len({s.slug for s in CATALOGUE}) == len(ids)
    assert set(CAUGHT) == set(BEHAVIOURS)  # every known-bad behaviour is shown to be caught somewhere


def on_every_transport(ids):
    return [pytest.param(sid, t, id=f"{sid}-{t}") for sid in ids for t in load_scenario(sid).transports]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("scenario_id", "transport"), on_every_transport([s.id for s in CATALOGUE]))
def test_the_reference_device_passes(scenario_id, transport, seed):
    case = run_case(load_scenario(scenario_id), transport=transport, seed=seed)
    failed = [f"{c.check}: {c.message} {c.evidence}" for c in case.checks if not c.passed]
    assert not failed, failed


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("behaviour", "scenario_id", "transport"),
                         [pytest.param(b, *p.values, id=f"{b}-{p.id}") for b, scenarios in CAUGHT.items()
                          for p in on_every_transport(scenarios)])
def test_each_known_bad_behaviour_is_caught(behaviour, scenario_id, transport, seed):
    check, phrase = CAUGHT[behaviour][scenario_id]
    case = run_case(load_scenario(scenario_id), transport=transport, seed=seed, behaviour=behaviour)
    result = next(c for c in case.checks if c.check == check)
    assert not result.passed, f"{behaviour} passed {check} on {scenario_id}"
    assert phrase in result.message, result.message
    assert result.evidence  # the events and times that decided it
