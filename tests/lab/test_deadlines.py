"""The app's own deadlines in lab runs: an app with a legal, tighter INVITE deadline passes when it meets it, and
fails when it misses its own declared deadline; the same app undeclared gives up too soon by the reference's."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.deadlines import apply_deadlines
from faultlab.lab.runner import run_case
from faultlab.lab.scenario import load_scenario
from faultlab.lab.scenario_set import override

PINNED = ["S03", "S04", "S09", "S18"]  # the scenarios whose bounds are the INVITE deadline
TIGHT = {"invite": 4.5, "register": 8.0, "total": 15.0}


def cases(scenario_id):
    return [(scenario_id, t, seed) for t in load_scenario(scenario_id).transports for seed in (1, 2)]


@pytest.mark.parametrize(("scenario_id", "transport", "seed"), [c for s in PINNED for c in cases(s)])
def test_a_tighter_declared_deadline_that_is_met_passes(scenario_id, transport, seed):
    case = run_case(apply_deadlines(load_scenario(scenario_id), TIGHT), transport=transport, seed=seed)
    failed = [f"{c.check}: {c.message}" for c in case.checks if not c.passed]
    assert not failed, failed
    times = case.times()
    assert times["end"] - times["register-ok"] == pytest.approx(4.5, abs=0.1)  # sooner than the reference's 5 s


@pytest.mark.parametrize("scenario_id", PINNED)
def test_the_same_app_undeclared_gives_up_too_soon(scenario_id):
    tight = override(load_scenario(scenario_id), "device.invite_deadline", "4.5s")  # the app, judged by 5 s
    case = run_case(tight, seed=1)
    result = next(c for c in case.checks if c.check == "ends-right")
    assert not result.passed and "gave up too soon" in result.message, result.message
    assert any(line.startswith("earliest term: register-ok + 5 s") for line in result.evidence)


@pytest.mark.parametrize("scenario_id", PINNED)
def test_an_app_that_misses_its_own_declared_deadline_fails(scenario_id):
    slow = apply_deadlines(override(load_scenario(scenario_id), "device.invite_deadline", "5s"), TIGHT)
    case = run_case(slow, seed=1)
    result = next(c for c in case.checks if c.check == "ends-right")
    assert not result.passed and "after the deadline" in result.message, result.message
    assert "(the invite deadline)" in result.message
    assert "deadline term: register-ok + 4.5 s = " in "\n".join(result.evidence)


def test_the_cli_declares_deadlines_from_the_option_and_faultlab_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["lab", "run", "-q", "--seed", "1", "-s", "S03", "-s", "S04",
                                 "--deadline", "invite=4.5s,register=8s,total=15s", "--json", "r.json"])
    assert result.exit_code == 0, result.output
    assert "declared deadlines: invite 4.5 s, register 8 s, total 15 s" in result.output
    assert "advisory" not in result.output
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["deadlines"]["invite"] == 4.5
    # undeclared, the same app fails S03 as too impatient
    result = runner.invoke(app, ["lab", "run", "-q", "--seed", "1", "-s", "S03", "--set", "device.invite_deadline=4.5s"])
    assert result.exit_code == 1 and "gave up too soon" in result.output
    # faultlab.toml in the current directory, with a value outside the recommended range: an advisory line
    (tmp_path / "faultlab.toml").write_text('[deadlines]\ninvite = "2s"\n')
    result = runner.invoke(app, ["lab", "run", "-q", "--seed", "1", "-s", "S03"])
    assert result.exit_code == 0, result.output
    assert "advisory: the declared invite deadline 2 s is outside the recommended 3-10 s" in result.output
    result = runner.invoke(app, ["lab", "run", "-q", "-s", "S03", "--deadline", "invite=fast"])
    assert result.exit_code != 0 and "--deadline: invite='fast'" in result.output


@pytest.mark.parametrize(("scenario_id", "declared", "end_after"), [
    ("S20", {"ring": 30.0}, ("invite", 30.0)),  # ring timeout: check 1 and the 480 duty both at 30 s
    ("S10", {"register": 7.5}, ("push", 7.5)),  # register deadline
])
def test_the_other_declared_deadlines_are_met_and_judged(scenario_id, declared, end_after):
    case = run_case(apply_deadlines(load_scenario(scenario_id), declared), seed=1)
    assert case.passed, [f"{c.check}: {c.message}" for c in case.checks if not c.passed]
    anchor, after = end_after
    times = case.times()
    assert times["end"] - times.get(anchor, 0.0) == pytest.approx(after, abs=0.2)
