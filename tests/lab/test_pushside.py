"""The PBX's side of push: S23, S27, S27b and S28, and the push-side check, with the reference device and the
embedded PBX, and against known-bad PBXs (virtual time, memory network; both clocks for two of them).

The reference device with the embedded PBX passes each scenario over 5 seeds on every transport it applies to; each
known-bad PBX (or device) fails the check written for it, with its tell-tale in the message and the events that
decided it in the evidence.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from faultlab.lab.pbx.model import MISBEHAVIOURS
from faultlab.lab.pushside import check_push_side
from faultlab.lab.runner import run_case
from faultlab.lab.scenario import load_scenario
from faultlab.trace import Event

SEEDS = [1, 2, 3, 4, 5]
PUSH_SIDE = ["S23", "S27", "S27b", "S28"]

# PBX misbehaviour -> {scenario: a phrase the push-side check's message must contain}
CAUGHT_PBX: dict[str, dict[str, str]] = {
    "retries-push": {"S27": "410 Unregistered must not be retried", "S27b": "400 BadDeviceToken must not be retried",
                     "S28": "413 PayloadTooLarge must not be retried"},
    "stores-pushes": {"S01": "not 0: APNs stores such a push"},
    "forgets-cancel-push": {"S04": "sent no cancel push"},
    "holds-forever": {"S13": "was still held at its hold deadline"},
}


def cases():
    return [(sid, t) for sid in PUSH_SIDE for t in load_scenario(sid).transports]


def push_side(case):
    return next(c for c in case.checks if c.check == "push-side")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("scenario_id", "transport"), cases())
def test_the_reference_device_and_pbx_pass(scenario_id, transport, seed):
    case = run_case(load_scenario(scenario_id), transport=transport, seed=seed)
    failed = [f"{c.check}: {c.message} {c.evidence}" for c in case.checks if not c.passed]
    assert not failed, failed


def test_what_each_scenario_shows():
    s23 = run_case(load_scenario("S23"), seed=1)
    events = s23.runs[0].events
    stored = [e for e in events if e.source == "push" and e.kind == "push" and e.detail.get("outcome") == "stored"]
    late = [e for e in events if e.source == "push" and e.kind == "push-delivered"]
    assert stored and stored[0].detail["expiration"] != "0" and late[0].t - stored[0].t == pytest.approx(45.0)
    ends = [e for e in events if e.kind == "device" and e.detail.get("event") in ("reported", "ended")]
    assert [(e.detail["event"], e.t) for e in ends] == [("reported", late[0].t), ("ended", late[0].t)]
    assert any(e.source == "proxy" and e.method == "REGISTER" and e.t >= late[0].t for e in events)  # RFC 8599

    s27 = run_case(load_scenario("S27"), seed=1)
    events = s27.runs[0].events
    assert [e.detail.get("action") for e in events if e.source == "pbx" and e.kind == "pbx"
            and e.detail.get("action") in ("token-dropped", "push-failed")] == ["token-dropped", "push-failed"]
    requests = [e for e in events if e.source == "push" and e.kind == "push"]
    assert [(e.detail["status"], e.detail["reason"]) for e in requests] == [(410, "Unregistered")]  # 2 calls, 1 push
    finals = [e.status for e in events if e.source == "caller" and e.kind == "received" and e.status >= 400]
    assert finals[0] == 480 and len(finals) == 2  # the second call: answered at once, no push
    assert not [e for e in events if e.source == "proxy" and e.direction == "to-device" and e.method == "INVITE"]

    s28 = run_case(load_scenario("S28"), seed=1)
    [push] = [e for e in s28.runs[0].events if e.source == "push" and e.kind == "push"]
    assert (push.detail["status"], push.detail["reason"], push.detail["size"]) == (413, "PayloadTooLarge", 5121)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("misbehaviour", "scenario_id"), [(m, s) for m, found in CAUGHT_PBX.items() for s in found])
def test_each_known_bad_pbx_is_caught(misbehaviour, scenario_id, seed):
    case = run_case(load_scenario(scenario_id), seed=seed, pbx_behaviour=misbehaviour)
    result = push_side(case)
    assert not result.passed, f"{misbehaviour} passed the push-side check on {scenario_id}"
    assert CAUGHT_PBX[misbehaviour][scenario_id] in result.message, result.message
    assert any("push" in line for line in result.evidence), result.evidence


def test_every_pbx_misbehaviour_is_caught_somewhere():
    assert set(CAUGHT_PBX) == set(MISBEHAVIOURS)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_a_device_that_rings_a_stale_push_fails_s23(transport):
    case = run_case(load_scenario("S23"), transport=transport, seed=3, behaviour="rings-stale-push")
    result = next(c for c in case.checks if c.check == "ends-right")
    assert not result.passed and "after the deadline" in result.message, result.message
    assert any("call push delivered" in line for line in result.evidence)


def test_a_pbx_that_retries_leaves_the_caller_hanging_and_pushes_to_the_dropped_token():
    case = run_case(load_scenario("S27"), seed=1, pbx_behaviour="retries-push")
    message = push_side(case).message
    assert "the caller must get 480 within 1 s" in message
    assert "pushed again to token" in message  # the second call: the token was kept


def test_a_pbx_without_push_is_told_so():
    """What the check says of a PBX that passes INVITEs straight to the registered flow (Kamailio without push):
    the same events as a lab run against one (tests/integration/test_kamailio_push_side.py runs the real one)."""
    events = [Event(1.0, "sent", source="caller", method="INVITE", call_id="c1"),
              Event(1.01, "received", source="proxy", direction="to-device", method="INVITE", call_id="c1"),
              Event(1.02, "device", source="device:alice", call_id="c1", detail={"event": "reported"}),
              Event(1.03, "received", source="caller", status=180, call_id="c1", summary="180 Ringing cseq=1 INVITE "
                    "call=c1")]
    result = check_push_side(events, "c1", load_scenario("S01"))
    assert not result.passed
    assert result.message.startswith("this PBX sent no VoIP push at all")
    assert "does not push (RFC 8599)" in result.message
    refused = check_push_side(events, "c1", load_scenario("S27"))
    assert "no push was refused (none was sent?): not exercised" in refused.message


def test_push_side_verdicts_agree_in_both_clocks():
    def both(item):
        scenario_id, misbehaviour = item
        scenario = load_scenario(scenario_id)
        real = run_case(scenario, seed=7, virtual=False, pbx_behaviour=misbehaviour)
        virtual = run_case(scenario, seed=7, virtual=True, pbx_behaviour=misbehaviour)
        return item, real, virtual

    items = [("S28", None), ("S27", None), ("S28", "retries-push")]
    with ThreadPoolExecutor(len(items)) as pool:
        results = list(pool.map(both, items))
    for item, real, virtual in results:
        assert real.runs[0].network == "loopback" and virtual.runs[0].network == "memory"
        assert [(c.check, c.passed) for c in real.checks] == [(c.check, c.passed) for c in virtual.checks], (
            item, [c.message for c in real.checks], [c.message for c in virtual.checks])
    assert [item for item, _, v in results if not v.passed] == [("S28", "retries-push")]
