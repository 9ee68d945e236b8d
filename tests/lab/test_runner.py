"""The runner in both clocks, its reports and its CLI (issue 6, items 3-5 and 8)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.report import to_junit
from faultlab.lab.runner import run_case
from faultlab.lab.scenario import list_scenarios, load_scenario
from faultlab.lab.scenario_set import override
from faultlab.trace import read_jsonl

# short scenarios (a few seconds each on the real clock), run side by side in threads: (scenario, behaviour,
# transport); virtual time has its default round trip (40 ms per hop), real time the kernel's loopback
REAL_TIME = [("S06", None, "udp"), ("S12", None, "udp"), ("S17", None, "udp"), ("S05", None, "udp"),
             ("S06", "wrong-reason-mapping", "udp"), ("S17", "fulfills-before-invite", "udp"),
             ("S05", "slow-end", "udp"), ("S17", None, "tcp"), ("S05", None, "tls"),
             ("S06", "wrong-reason-mapping", "tls"), ("S29", None, "udp"), ("S29", "decline-486", "udp"),
             ("S07b", "no-487", "udp"), ("S12b", "ignores-retry-after", "udp"),
             ("S17", "drops-after-connect", "udp"), ("S24", "unanswered-after-reregister", "tcp")]


def verdicts(case) -> list[tuple[str, bool, str | None]]:
    end = next((e.detail.get("reason") for e in case.runs[0].events
                if e.kind == "device" and e.detail.get("event") == "ended"), None)
    return [(c.check, c.passed, end) for c in case.checks]


def test_real_time_on_loopback_and_virtual_time_on_memory_agree():
    def both(item):
        scenario, behaviour, transport = load_scenario(item[0]), item[1], item[2]
        real = run_case(scenario, seed=7, behaviour=behaviour, transport=transport, virtual=False)
        virtual = run_case(scenario, seed=7, behaviour=behaviour, transport=transport, virtual=True)
        return item, real, virtual

    with ThreadPoolExecutor(len(REAL_TIME)) as pool:
        results = list(pool.map(both, REAL_TIME))
    for item, real, virtual in results:
        assert real.runs[0].network == "loopback" and virtual.runs[0].network == "memory"
        assert verdicts(real) == verdicts(virtual), (item, [c.message for c in real.checks],
                                                     [c.message for c in virtual.checks])
        # and the same milestones (register-ok, invite, ok, end) happened; how far apart the real clock puts them
        # depends on how busy the machine is, so it is measured (bench/virtual_time.py), not asserted
        assert real.times().keys() == virtual.times().keys(), item
    assert [v for _, _, v in results if not v.passed] != []  # the bad devices failed in both clocks


def test_junit_has_the_usual_shape():
    good = run_case(load_scenario("S06"))
    bad = run_case(load_scenario("S06"), behaviour="wrong-reason-mapping")
    root = ET.fromstring(to_junit([good, bad]))
    assert root.tag == "testsuites"
    assert int(root.get("tests")) == len(good.checks) + len(bad.checks)
    assert int(root.get("failures")) == sum(not c.passed for c in bad.checks) > 0
    [suite] = root.findall("testsuite")
    assert suite.get("name") == "S06 answered-elsewhere"
    for attr in ("tests", "failures", "errors", "skipped", "time"):
        assert suite.get(attr) is not None
    cases = suite.findall("testcase")
    assert all(c.get("classname") and c.get("name") and float(c.get("time")) >= 0 for c in cases)
    failures = [c.find("failure") for c in cases if c.find("failure") is not None]
    assert failures and all(f.get("message") and f.text for f in failures)
    assert "ended remoteEnded" in failures[0].get("message")


def test_lab_run_cli_reports_and_exit_codes(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["lab", "run", "-s", "S04", "-s", "S05", "-s", "S17", "--seed", "3", "-q",
                              "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"),
                              "--trace-dir", str(tmp_path / "traces")])
    assert out.exit_code == 0, out.output
    # by default every scenario plays on every transport it applies to
    assert "9/9 cases passed" in out.output and "seed 3" in out.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["settings"]["seed"] == 3
    assert [(c["scenario"], c["transport"]) for c in report["cases"]] == [
        (s, t) for s in ("S04", "S05", "S17") for t in ("udp", "tcp", "tls")]
    traces = sorted(p.name for p in (tmp_path / "traces").iterdir())
    # check 3 runs S04 again with its cancel push dropped; S05's PBX sends none (the INVITE was forwarded)
    assert traces == sorted(
        [f"S04-cancel-before-register--none--{t}{x}.jsonl" for t in ("udp", "tcp", "tls") for x in ("", "-no-cancel-push")]
        + [f"{s}--none--{t}.jsonl" for s in ("S05-cancel-after-invite", "S17-answer-before-invite")
           for t in ("udp", "tcp", "tls")])
    junit = ET.parse(tmp_path / "r.xml").getroot()
    names = {(c.get("classname"), c.get("name")) for c in junit.iter("testcase")}
    assert {("faultlab.S05.none", f"{t}: ends-right") for t in ("udp", "tcp", "tls")} <= names
    events = list(read_jsonl(tmp_path / "traces" / "S17-answer-before-invite--none--udp.jsonl"))
    assert any(e.kind == "device" and e.detail.get("event") == "answer-fulfilled" for e in events)

    bad = runner.invoke(app, ["lab", "run", "-s", "S06", "--behaviour", "wrong-reason-mapping", "-q"])
    assert bad.exit_code == 1
    for transport in ("udp", "tcp", "tls"):
        assert f"FAIL S06 answered-elsewhere / none / {transport} / ends-right: ended remoteEnded" in bad.output
    assert "device ended remoteEnded" in bad.output  # the evidence


def test_lab_run_cli_profiles_transports_and_overrides():
    runner = CliRunner()
    out = runner.invoke(app, ["lab", "run", "-s", "S03", "-p", "clean", "-p", "lossy-wifi", "-t", "udp", "-t",
                              "tcp", "--seed", "1", "-q", "--set", "expect.end=failed"])
    # 1 scenario x 2 profiles x 2 transports; the team's override makes S03 expect "failed": every case fails
    assert out.exit_code == 1 and "0/4 cases passed" in out.output, out.output
    assert "ended unanswered" in out.output and "expected failed" in out.output


@pytest.mark.parametrize(("args", "message"), [
    (["-s", "S99"], "no such scenario"),
    (["-s", "S01", "-p", "no-such-profile"], "no-such-profile"),
    (["-s", "S01", "--behaviour", "rude"], "use one of depends-on-cancel-push"),
    (["-s", "S01", "-t", "sctp"], "use udp, tcp or tls"),
    (["-s", "S01", "--set", "expect.end"], "write KEY=VALUE"),
    (["-s", "S14", "-t", "udp"], "nothing to run"),
    (["-s", "S01", "--pbx", "127.0.0.1:5060"], "needs --push-listen"),
    (["-s", "S01", "--real-time", "--network", "memory"], "needs virtual time"),
])
def test_lab_run_cli_bad_input(args, message):
    out = CliRunner().invoke(app, ["lab", "run", *args])
    assert out.exit_code == 2 and message in out.output, out.output


def test_lab_scenarios_lists_the_catalogue():
    out = CliRunner().invoke(app, ["lab", "scenarios"])
    assert out.exit_code == 0
    for sid in ("S01", "S12b", "S24", "S25", "S26"):
        assert sid in out.output
    assert f"{len(list_scenarios())} scenarios" in out.output


def test_set_for_one_scenario_only(tmp_path):
    out = CliRunner().invoke(app, ["lab", "run", "-s", "S01", "-s", "S03", "--seed", "1", "-q", "--json",
                                   str(tmp_path / "r.json"), "--set", "S03:expect.end=failed"])
    assert out.exit_code == 1 and "3/6 cases passed" in out.output, out.output
    cases = [(c["scenario"], c["passed"]) for c in json.loads((tmp_path / "r.json").read_text())["cases"]]
    assert cases == [("S01", True)] * 3 + [("S03", False)] * 3  # S01 untouched; S03 now expects "failed"
    bad = CliRunner().invoke(app, ["lab", "run", "-s", "S01", "--set", "S04:call.cancel_at=1s"])
    assert bad.exit_code == 2 and "S04 is not among the chosen scenarios" in bad.output


@pytest.mark.parametrize("rtt", ["0s", "40ms", "200ms"])
def test_the_virtual_network_has_the_scenarios_round_trip(rtt):
    scenario = load_scenario("S01")
    if rtt != "40ms":  # 40 ms is the default
        scenario = override(scenario, "network.rtt", rtt)
    case = run_case(scenario, seed=1)
    assert case.passed, [c.message for c in case.checks]
    # the push's REGISTER: device -> faultlab -> PBX, and its 200 back to faultlab: three hops of half a round trip
    assert case.times()["register-ok"] == pytest.approx(1.5 * scenario.network_rtt)


def test_a_run_stuck_at_one_virtual_instant_fails_with_evidence():
    case = run_case(load_scenario("S05"), transport="tcp", seed=2, behaviour="loops-at-one-instant", watchdog=2000)
    [result] = case.checks
    assert not case.passed and result.check == "ends-right"
    assert result.message.startswith("the run failed: virtual time stopped advancing at t=")
    assert "2000 scheduler rounds" in result.message and "Device._read_pushes" in result.message
    assert result.evidence[0] == "last events:" and any("call push delivered" in e for e in result.evidence)
