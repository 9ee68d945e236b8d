"""Timeout sweeps (faultlab.lab.sweep, `faultlab sweep`): issue 8, item 5."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.scenario import load_scenario
from faultlab.lab.sweep import SweepError, apply, parse_param, recommend, summarise, sweep

# S02: faultlab holds the INVITE (rule "delay-invite-3s"); the user answers 4 s after the report
GRID = [parse_param("device.invite_wait=1,2,4"), parse_param("rule.delay-invite-3s.delay=0.5,3")]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "wall"} for r in rows]


def test_a_longer_invite_wait_never_lowers_the_pass_rate_under_invite_delay(tmp_path):
    rows = sweep("S02", GRID, runs=3, seed=1, out=tmp_path)
    assert len(rows) == 3 * 2 * 3
    rates = {(s["point"]["device.invite_deadline"], s["point"]["rule.delay-invite-3s.delay"]): s["pass_rate"]
             for s in summarise(rows, GRID)}
    for delay in (0.5, 3.0):
        series = [rates[(wait, delay)] for wait in (1.0, 2.0, 4.0)]
        assert series == sorted(series), (delay, series)
    # an INVITE 3 s late: a 1 s or 2 s wait gives up first (unanswered), a 4 s wait gets the call
    assert rates[(1.0, 3.0)] == rates[(2.0, 3.0)] == 0.0 and rates[(4.0, 3.0)] == 1.0
    assert rates[(1.0, 0.5)] == 1.0
    lines = recommend(summarise(rows, GRID), GRID)
    assert "rule.delay-invite-3s.delay = 3 s: device.invite_deadline = 4 s is the smallest value" in "\n".join(lines)


def test_same_seed_same_results(tmp_path):
    params = [parse_param("device.invite_wait=0.5,2"), parse_param("link.loss=0,20")]
    first = sweep("S16", params, runs=4, seed=11, out=tmp_path / "a")
    second = sweep("S16", params, runs=4, seed=11, out=tmp_path / "b")
    assert strip(first) == strip(second)
    assert {r["seed"] for r in first} == {11, 12, 13, 14}
    other = sweep("S16", params, runs=4, seed=12, out=tmp_path / "c")
    assert strip(other) != strip(first)


def test_an_interrupted_sweep_resumes_without_redoing_runs(tmp_path):
    params = [parse_param("device.invite_wait=1,4")]
    done = []
    partial = sweep("S03", params, runs=5, seed=1, out=tmp_path, on_row=lambda row, n, total: done.append(row),
                    stop=lambda: len(done) >= 4)
    assert len(partial) == 4
    again = []
    rows = sweep("S03", params, runs=5, seed=1, out=tmp_path, on_row=lambda row, n, total: again.append((n, total)))
    assert [n for n, _ in again] == [5, 6, 7, 8, 9, 10] and again[-1][1] == 10  # only the 6 missing runs ran
    assert strip(rows) == strip(sweep("S03", params, runs=5, seed=1, out=tmp_path / "fresh"))
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 10
    # a different sweep in the same directory is refused
    with pytest.raises(SweepError, match="holds a different sweep"):
        sweep("S04", params, runs=5, seed=1, out=tmp_path)


def test_parameters_apply_to_the_scenario():
    s16 = load_scenario("S16")
    changed = apply(s16, {"device.invite_deadline": 2.0, "link.loss": 20.0, "link.delay": 300.0})
    assert changed.device["invite_deadline"] == 2.0
    link = changed.faults.link
    assert link.to_pbx.loss == link.to_device.loss == 0.2 and link.to_pbx.delay == 0.3
    assert link.to_pbx.jitter == s16.faults.link.to_pbx.jitter  # the rest of the scenario's link stays
    s01 = apply(load_scenario("S01"), {"link.loss": 10.0})  # no faults of its own: a link is added
    assert s01.faults.link.to_device.loss == 0.1


@pytest.mark.parametrize(("text", "message"), [
    ("device.invite_wait", "write KEY=VALUES"),
    ("link.loss=0..20", "a range is LO..HI:STEP"),
    ("link.loss=0,150", "percentage from 0 to 100"),
    ("link.colour=1", "link fields are"),
    ("device.patience=1,2", "not a field that can be set"),
    ("wifi=1", "unknown parameter"),
])
def test_bad_parameters_say_what_to_write(text, message):
    with pytest.raises(SweepError, match=message):
        parse_param(text)


def test_ranges_and_units():
    assert parse_param("link.loss=0..20:5").values == (0, 5, 10, 15, 20)
    assert parse_param("link.delay=50,0.2s").values == (50, 200)
    assert parse_param("device.invite_wait=1500ms,3").values == (1.5, 3)


def test_sweep_command_writes_results_plot_and_recommendation(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", "-s", "S02", "-P", "device.invite_wait=1,4", "-P",
                                      "rule.delay-invite-3s.delay=3", "--runs", "2", "--jobs", "2", "--out", str(out),
                                      "-q"])
    assert result.exit_code == 0, result.output
    assert "device.invite_deadline = 4 s is the smallest value passing" in result.output
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["passed"] for r in rows} == {"0", "1"}
    assert set(rows[0]) >= {"device.invite_deadline", "seed", "push_to_ring", "push_to_connect", "push_to_end"}
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["scenario"] == "S02" and len(report["summaries"]) == 2
    page = (out / "plot.html").read_text()
    assert page.count("<svg") >= 3 and "pass rate vs device.invite_deadline" in page and "<script" not in page
    bad = CliRunner().invoke(app, ["sweep", "-s", "S02", "-P", "link.loss=0..20"])
    assert bad.exit_code == 2 and "LO..HI:STEP" in bad.output
