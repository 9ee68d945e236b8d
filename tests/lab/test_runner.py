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
from faultlab.trace import read_jsonl

# short scenarios (a few seconds each on the real clock), run side by side in threads
REAL_TIME = [("S06", None), ("S12", None), ("S17", None), ("S05", None), ("S06", "wrong-reason-mapping"),
             ("S17", "fulfills-before-invite"), ("S05", "slow-end"), ("S29", None), ("S29", "decline-486"),
             ("S07b", "no-487"), ("S12b", "ignores-retry-after")]


def verdicts(case) -> list[tuple[str, bool, str | None]]:
    end = next((e.detail.get("reason") for e in case.runs[0].events
                if e.kind == "device" and e.detail.get("event") == "ended"), None)
    return [(c.check, c.passed, end) for c in case.checks]


def test_real_time_on_loopback_and_virtual_time_on_memory_agree():
    def both(item):
        scenario, behaviour = load_scenario(item[0]), item[1]
        real = run_case(scenario, seed=7, behaviour=behaviour, virtual=False)
        virtual = run_case(scenario, seed=7, behaviour=behaviour, virtual=True)
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
    assert "3/3 cases passed" in out.output and "seed 3" in out.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["settings"]["seed"] == 3
    assert [c["scenario"] for c in report["cases"]] == ["S04", "S05", "S17"]
    traces = sorted(p.name for p in (tmp_path / "traces").iterdir())
    # check 3 runs S04 again with its cancel push dropped; S05's PBX sends none (the INVITE was forwarded)
    assert traces == ["S04-cancel-before-register--none--udp-no-cancel-push.jsonl",
                      "S04-cancel-before-register--none--udp.jsonl", "S05-cancel-after-invite--none--udp.jsonl",
                      "S17-answer-before-invite--none--udp.jsonl"]
    events = list(read_jsonl(tmp_path / "traces" / "S17-answer-before-invite--none--udp.jsonl"))
    assert any(e.kind == "device" and e.detail.get("event") == "answer-fulfilled" for e in events)
    ET.parse(tmp_path / "r.xml")

    bad = runner.invoke(app, ["lab", "run", "-s", "S06", "--behaviour", "wrong-reason-mapping", "-q"])
    assert bad.exit_code == 1
    assert "FAIL S06 answered-elsewhere / none / udp / ends-right: ended remoteEnded" in bad.output
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
    assert out.exit_code == 1 and "1/2 cases passed" in out.output, out.output
    cases = {c["scenario"]: c["passed"] for c in json.loads((tmp_path / "r.json").read_text())["cases"]}
    assert cases == {"S01": True, "S03": False}  # S01 untouched; S03 now expects "failed"
    bad = CliRunner().invoke(app, ["lab", "run", "-s", "S01", "--set", "S04:call.cancel_at=1s"])
    assert bad.exit_code == 2 and "S04 is not among the chosen scenarios" in bad.output
