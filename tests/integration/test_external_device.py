"""``faultlab lab run --device external`` against an independent device program (tests/extdevice/device.py).

The device is not faultlab's: its own SIP stack, HTTP and CallKit logic, written from the published contract
(registration with RFC 8599 parameters through the relay, the push stream, device events, prompts). Each lane is
the installed ``faultlab`` entry point as a process of its own, with the device as another process, on real
sockets on 127.0.0.1 (free ports), in real time. A representative subset runs on every transport; each planted bug
fails its scenario, with the evidence in the JSON report. The whole catalogue: bench/external_catalogue.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.extdevice.lanes import DEVICE, Lane, faultlab_exe, run_lanes

pytestmark = pytest.mark.integration

SUBSET = ["S01", "S04", "S05", "S06", "S10", "S17"]
TRANSPORTS = ["udp", "tcp", "tls"]
# bug -> (its scenario, the check that must fail, what the evidence must say)
BUGS = {
    "wrong-reason": ("S06", "ends-right", "remoteEnded"),
    "waits-for-cancel-push": ("S04", "cancel-push", "never ended"),
    "no-487": ("S05", "sip-duties", "no 487 to the INVITE"),
}


@pytest.fixture(scope="module")
def lanes(tmp_path_factory) -> dict[str, Lane]:
    exe = faultlab_exe()
    if exe is None:
        pytest.skip("no installed faultlab entry point next to this Python or on PATH (pip install the project)")
    root = tmp_path_factory.mktemp("extdevice")
    todo = [Lane(t, t, SUBSET, root / t) for t in TRANSPORTS]
    todo += [Lane(bug, "udp", [scenario], root / bug, bugs=[bug]) for bug, (scenario, _, _) in BUGS.items()]
    return {lane.name: lane for lane in run_lanes(todo, exe=exe, timeout=600.0)}


def _explain(lane: Lane) -> str:
    return f"{lane.error or ''}\n--- lab output ---\n{lane.output[-6000:]}\n--- device ---\n{lane.device_log[-3000:]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_device_passes_the_subset(lanes, transport):
    lane = lanes[transport]
    assert lane.report is not None, _explain(lane)
    failed = [f"{c['scenario']} {k['check']}: {k['message']}" for c in lane.report["cases"] for k in c["checks"]
              if not k["passed"]]
    assert not failed and lane.returncode == 0, "\n".join(failed) + _explain(lane)
    assert [c["scenario"] for c in lane.report["cases"]] == SUBSET
    assert {c["transport"] for c in lane.report["cases"]} == {transport}
    # the early answer was exercised (the prompt reached the device before the INVITE), not just tolerated
    early = next(k for k in lane.case("S17")["checks"] if k["check"] == "early-answer")
    assert early["passed"] and "did not exercise" not in early["message"]


@pytest.mark.parametrize("bug", list(BUGS))
def test_each_planted_bug_fails_its_scenario_with_evidence(lanes, bug):
    lane = lanes[bug]
    scenario, check, said = BUGS[bug]
    assert lane.report is not None, _explain(lane)
    assert lane.returncode == 1, _explain(lane)
    case = lane.case(scenario)
    assert not case["passed"]
    result = next(k for k in case["checks"] if k["check"] == check)
    assert not result["passed"], _explain(lane)
    assert said in result["message"] + "\n".join(result["evidence"]), result


def test_the_device_does_not_use_faultlab():
    for path in Path(DEVICE).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "faultlab" for n in names), f"{path.name} imports {names}"
