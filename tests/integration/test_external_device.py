"""``faultlab lab run --device external`` against an independent device program (tests/extdevice/device.py).

The device is not faultlab's: its own SIP stack, HTTP and CallKit logic, written from the published contract
(registration with RFC 8599 parameters through the relay, the push stream, device events, prompts). Each lane is
the installed ``faultlab`` entry point as a process of its own, with the device as another process, on real
sockets on 127.0.0.1 (free ports), in real time. The whole catalogue runs on every transport it applies to (the
cases an external device can play; the lab says why it skips the others), dealt into parallel lanes with a 1 s
pause between calls; each planted bug fails its scenario, with the evidence in the JSON report, in lanes of its
own at the same time; every device's event log passes ``faultlab events lint``. bench/external_catalogue.py runs
the same with the default 5 s pause and prints the times.

The lanes are real time and mostly wait, so they start in the background as soon as the suite is collected
(:func:`start_lanes_early`, from tests/conftest.py) and these tests run last: the rest of the suite runs meanwhile.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from faultlab.lab.eventlint import lint_stream
from faultlab.lab.scenario import list_scenarios
from tests.extdevice.catalogue import TRANSPORTS, played, plan
from tests.extdevice.lanes import DEVICE, Lane, faultlab_exe, run_lanes, stop_all

pytestmark = pytest.mark.integration

LANES = 9  # about three per transport: the longest lane is about three minutes
# bug -> (its scenario, the check that must fail, what the evidence must say)
BUGS = {
    "wrong-reason": ("S06", "ends-right", "remoteEnded"),
    "waits-for-cancel-push": ("S04", "cancel-push", "never ended"),
    "no-487": ("S05", "sip-duties", "no 487 to the INVITE"),
}


_BACKGROUND: dict = {}  # "thread", "lanes", "root": the lanes started early


def start_lanes_early() -> None:
    """Start every lane in a background thread (once); the ``lanes`` fixture waits for them."""
    exe = faultlab_exe()
    if exe is None or "thread" in _BACKGROUND:
        return
    root = Path(tempfile.mkdtemp(prefix="faultlab-extdevice-"))
    todo = plan(list_scenarios(), TRANSPORTS, LANES, 1.0, root)
    for lane in todo:
        lane.device_args = ["--keepalive", "5"]  # S25 judges a keep-alive ping during the call
    todo += [Lane(bug, "udp", [scenario], root / bug, bugs=[bug]) for bug, (scenario, _, _) in BUGS.items()]
    thread = threading.Thread(target=run_lanes, args=(todo,), kwargs={"exe": exe, "timeout": 900.0},
                              name="external-device lanes", daemon=True)
    _BACKGROUND.update(thread=thread, lanes=todo, root=root)
    thread.start()


def stop_lanes(keep: bool = False) -> None:
    """The end of the test session: no lane process outlives it; its files go unless ``keep`` (a failed session:
    the lanes' reports, traces and logs are evidence)."""
    stop_all()
    if "root" in _BACKGROUND and not keep:
        shutil.rmtree(_BACKGROUND["root"], ignore_errors=True)


@pytest.fixture(scope="module")
def lanes() -> dict[str, Lane]:
    if faultlab_exe() is None:
        pytest.skip("no installed faultlab entry point next to this Python or on PATH (pip install the project)")
    start_lanes_early()
    _BACKGROUND["thread"].join()
    return {lane.name: lane for lane in _BACKGROUND["lanes"]}


def _catalogue(lanes: dict[str, Lane], transport: str) -> list[Lane]:
    return [lane for lane in lanes.values() if not lane.bugs and lane.transport == transport]


def _explain(lane: Lane) -> str:
    return f"(lane files: {lane.workdir})\n{lane.error or ''}\n--- lab output ---\n{lane.output[-6000:]}\n--- device ---\n{lane.device_log[-3000:]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_device_passes_the_whole_catalogue(lanes, transport):
    cases = []
    for lane in _catalogue(lanes, transport):
        assert lane.report is not None, _explain(lane)
        failed = [f"{c['scenario']} {k['check']}: {k['message']}" for c in lane.report["cases"]
                  for k in c["checks"] if not k["passed"]]
        assert not failed and lane.returncode == 0, "\n".join(failed) + _explain(lane)
        cases += [(c["scenario"], c["transport"]) for c in lane.report["cases"]]
    assert sorted(cases) == sorted(played(list_scenarios(), [transport]))
    # the early answer was exercised (the prompt reached the device before the INVITE), not just tolerated
    s17 = next(lane for lane in _catalogue(lanes, transport) if "S17" in lane.scenarios)
    early = next(k for k in s17.case("S17")["checks"] if k["check"] == "early-answer")
    assert early["passed"] and "did not exercise" not in early["message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_devices_event_logs_pass_the_linter(lanes, transport):
    for lane in _catalogue(lanes, transport):
        log = lane.workdir / "events.ndjson"
        done = subprocess.run([faultlab_exe(), "events", "lint", str(log)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.rstrip().endswith("clean")
        # each case's trace: the same events on the lab's timeline with the SIP the relay carried (fulfil after 200)
        traces = sorted((lane.workdir / "traces").glob("*.jsonl"))
        assert traces, _explain(lane)
        for trace in traces:
            with open(trace, "rb") as stream:
                report = lint_stream(stream)
            assert report.clean and report.events, (trace.name, [f.to_json() for f in report.findings])


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
    # the device program and its modules (catalogue.py, the CI harness, reads faultlab's catalogue on purpose)
    modules = [Path(DEVICE), *Path(DEVICE).parent.glob("ext*.py")]
    assert len(modules) >= 5
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "faultlab" for n in names), f"{path.name} imports {names}"
