"""Timeout sweeps (faultlab.lab.sweep, `faultlab sweep`): issue 8, item 5."""

from __future__ import annotations

import csv
import fcntl
import html
import json
import pickle
import struct

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.scenario import ScenarioError, load_scenario
from faultlab.lab.sweep import (Param, SweepError, apply, parse_param, recommend, summarise, sweep,
                                sweep_until_confident)

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
    lines = recommend(summarise(rows, GRID), GRID, target=0.3)  # 3 clean runs: a lower bound of 44 %
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


def test_a_sweep_has_no_lab_round_trip_unless_it_sets_one():
    # the sweep's link profile is its network: its figures stay those of link.delay alone
    from faultlab.lab.sweep.run import run_point

    assert run_point("S01", [], {}, 1)["ring"] == 0.0  # the INVITE reaches the device at once after the push
    assert run_point("S01", [("network.rtt", "40ms")], {}, 1)["ring"] == pytest.approx(0.06)
    assert run_point("S01", [], {"network.rtt": 0.2}, 1)["ring"] == pytest.approx(0.3)
    assert parse_param("network.rtt=0,0.1").values == (0.0, 0.1)


@pytest.mark.parametrize(("text", "message"), [
    ("device.invite_wait", "write KEY=VALUES"),
    ("link.loss=0..20", "a range is LO..HI:STEP"),
    ("link.loss=0,150", "percentage from 0 to 100"),
    ("link.colour=1", "link fields are"),
    ("device.patience=1,2", "not a field that can be set"),
    ("wifi=1", "unknown parameter"),
    ("device.invite_deadline=1,-1", "-1 is negative; device.invite_deadline is a duration"),  # not only the first
    ("device.invite_wait=2,-0.5", "is negative"),
    ("call.cancel_at=1,-1", "is negative"),
    ("rule.delay-invite-3s.delay=1,-2", "is negative"),
    ("link.delay=10,-5", "is negative"),
    ("device.invite_wait=1,nan", "not a number"),
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
    assert "the best candidate is 4 s (2 of 2 runs passed" in " ".join(result.output.split())  # not 99 % yet
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["passed"] for r in rows} == {"0", "1"}
    assert set(rows[0]) >= {"device.invite_deadline", "seed", "push_to_ring", "push_to_connect", "push_to_end"}
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["scenario"] == "S02" and len(report["summaries"]) == 2
    page = (out / "report.html").read_text()
    answer = page.split("<figure")[0]  # the answer, above the charts
    assert report["recommendation"][0] in html.unescape(answer) and "4 s" in report["recommendation"][0]
    assert "<script" not in page and page.count("src='data:image/png;base64,") == 2  # pass rate, cost of waiting
    assert (out / "plot.html").read_text() == page
    assert not (out / "heatmap.png").exists()  # one varied parameter: no heatmap; the single-valued delay: no chart
    png = (out / "pass_rate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert 400 <= width <= 2000 and 250 <= height <= 1500
    assert (out / "pass_rate.svg").read_text().lstrip().startswith("<?xml")
    bad = CliRunner().invoke(app, ["sweep", "-s", "S02", "-P", "link.loss=0..20"])
    assert bad.exit_code == 2 and "LO..HI:STEP" in bad.output


def test_a_negative_deadline_is_refused_before_any_run(tmp_path):
    for jobs in ("1", "2"):
        out = tmp_path / jobs
        result = CliRunner().invoke(app, ["sweep", "-s", "S04", "-P", "device.invite_deadline=1,-1", "--jobs", jobs,
                                          "--runs", "1", "--out", str(out), "-q"])
        assert result.exit_code == 2, result.output
        assert "-1 is negative" in result.output and not out.exists()


def test_scenario_errors_survive_pickling():  # what a worker process sends back
    error = pickle.loads(pickle.dumps(ScenarioError("--set device.invite_deadline", "", "-1.0s", "a duration")))
    assert isinstance(error, ScenarioError) and error.value == "-1.0s" and "a duration" in str(error)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_that_raises_is_a_failed_row_and_the_sweep_goes_on(tmp_path, jobs):
    bad = Param("device.invite_deadline", (2.0, -1.0), "s")  # past parse_param (the API): override() raises
    rows = sweep("S04", [bad], runs=2, seed=1, out=tmp_path, jobs=jobs)
    assert len(rows) == 4
    good, broken = rows[:2], rows[2:]
    assert all(r["error"] is None and r["end_reason"] == "unanswered" for r in good)
    assert all(not r["passed"] and r["error"].startswith("ScenarioError: --set device.invite_deadline")
               for r in broken)
    summaries = summarise(rows, [bad])
    assert summaries[1]["pass_rate"] == 0.0 and summaries[1]["errors"] == 2 and summaries[0]["errors"] == 0
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4


def test_the_cli_says_how_many_runs_errored(tmp_path, monkeypatch):
    import faultlab.lab.sweep.run as sweep_module

    real = sweep_module.run_point

    def flaky(scenario_name, sets, point, seed, behaviour=None):
        if seed == 2:
            raise RuntimeError("the lab fell over")
        return real(scenario_name, sets, point, seed, behaviour)

    monkeypatch.setattr(sweep_module, "run_point", flaky)
    result = CliRunner().invoke(app, ["sweep", "-s", "S04", "-P", "device.invite_wait=1,2", "--runs", "2",
                                      "--jobs", "1", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 of 4 runs errored" in result.output and "RuntimeError: the lab fell over" in result.output
    with (tmp_path / "results.csv").open() as f:
        errors = [r["error"] for r in csv.DictReader(f)]
    assert errors.count("RuntimeError: the lab fell over") == 2


def test_resuming_after_a_cut_off_line_keeps_one_row_per_line(tmp_path):
    params = [parse_param("device.invite_wait=1,4")]
    sweep("S03", params, runs=2, seed=1, out=tmp_path)
    path = tmp_path / "runs.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # killed while writing row 3
    rows = sweep("S03", params, runs=2, seed=1, out=tmp_path)
    assert len(rows) == 4
    written = path.read_text().splitlines()
    assert len(written) == 4 and [json.loads(line) for line in written]  # every line a whole row
    assert strip(rows) == strip(sweep("S03", params, runs=2, seed=1, out=tmp_path / "fresh"))


def test_repeated_values_run_once():
    assert parse_param("device.invite_wait=2,2,1,2000ms").values == (2.0, 1.0)
    assert parse_param("link.loss=0,0,10").values == (0.0, 10.0)


@pytest.mark.parametrize("value", [1e-5, 0.0001, 1e-9, 123456789.5])
def test_tiny_and_large_values_reach_the_scenario_exactly(value):
    param = parse_param(f"device.invite_wait={value!r}")
    assert param.values == (value,)
    assert apply(load_scenario("S04"), {"device.invite_deadline": value}).device["invite_deadline"] == value
    assert apply(load_scenario("S04"), {"call.cancel_at": value}).cancel_at == value


def test_a_second_sweep_into_the_same_directory_fails_at_once(tmp_path):
    params = [parse_param("device.invite_wait=1")]
    with (tmp_path / "sweep.lock").open("a") as held:  # a sweep running in another process holds this lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SweepError, match=f"another sweep is running in {tmp_path}"):
            sweep("S03", params, runs=1, seed=1, out=tmp_path)
        assert not (tmp_path / "runs.jsonl").exists()
    assert len(sweep("S03", params, runs=1, seed=1, out=tmp_path)) == 1  # released: runs
    result = CliRunner().invoke(app, ["sweep", "-s", "S03", "-P", "device.invite_wait=1", "--runs", "1",
                                      "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output


def test_duplicate_rows_on_disk_count_once(tmp_path):
    params = [parse_param("device.invite_wait=1,4")]
    sweep("S03", params, runs=2, seed=1, out=tmp_path)
    path = tmp_path / "runs.jsonl"
    text = path.read_text()
    path.write_text(text + text)  # two unlocked sweeps (older versions) appended the same runs
    rows = sweep("S03", params, runs=2, seed=1, out=tmp_path)
    assert len(rows) == 4 and len({(json.dumps(r["point"]), r["seed"]) for r in rows}) == 4
    assert summarise(rows, params)[0]["runs"] == 2


def test_more_runs_in_the_same_directory_only_run_the_new_seeds(tmp_path):
    params = [parse_param("device.invite_wait=1,4")]
    sweep("S03", params, runs=2, seed=1, out=tmp_path)
    ran = []
    rows = sweep("S03", params, runs=5, seed=1, out=tmp_path, on_row=lambda row, n, total: ran.append(row))
    assert sorted((r["point"]["device.invite_deadline"], r["seed"]) for r in ran) == [
        (1.0, 3), (1.0, 4), (1.0, 5), (4.0, 3), (4.0, 4), (4.0, 5)]
    assert len(rows) == 10 and len((tmp_path / "runs.jsonl").read_text().splitlines()) == 10
    assert strip(rows) == strip(sweep("S03", params, runs=5, seed=1, out=tmp_path / "fresh"))
    assert len(sweep("S03", params, runs=3, seed=1, out=tmp_path)) == 6  # fewer: the first 3 seeds, nothing runs


def test_the_price_of_each_step_of_deadline_counts_only_calls_that_never_connected():
    param = parse_param("device.invite_wait=1,2,4")

    def row(wait, seed, passed, connect, end):
        return {"point": {param.key: wait}, "seed": seed, "passed": passed, "checks": {}, "end_reason": None,
                "ring": None, "connect": connect, "end": end, "error": None}

    rows = [row(1.0, 1, False, None, 3.0), row(1.0, 2, True, 5.0, 9.0),  # a connected call ends late: not counted
            row(2.0, 1, False, None, 4.0), row(2.0, 2, True, 5.0, 9.0),
            row(4.0, 1, True, 5.0, 9.0), row(4.0, 2, True, 5.0, 9.0)]
    lines = recommend(summarise(rows, [param]), [param], target=0.3)
    assert lines[0].startswith("all runs: device.invite_deadline = 4 s is the smallest value")
    assert lines[1] == "all runs, step by step:"
    lines = lines[1:]
    assert lines[1] == ("    1 s → 2 s: pass rate +0 points, push → end of calls that never connected +1.00 s "
                        "(3.00 s → 4.00 s)")
    assert lines[2] == "    2 s → 4 s: pass rate +50 points, push → end of calls that never connected: none at 4 s"
    everyone = [dict(r, connect=5.0, passed=True) for r in rows]
    assert recommend(summarise(everyone, [param]), [param])[2].endswith("never connected: none")


def test_until_confident_adds_runs_only_at_the_boundary_and_stops_when_settled(tmp_path):
    # 3 s of INVITE delay: 1 s never passes, 4 s and more always do; 3 runs do not show 90 %, 35 clean runs do.
    # Nothing shown at first: the candidate (4 s) and the value above it (8 s) run on, 1 s and 12 s do not
    args = ["sweep", "-s", "S02", "-P", "device.invite_wait=1,4,8,12", "-P", "rule.delay-invite-3s.delay=3",
            "--runs", "3", "--jobs", "2", "--target", "0.9", "--until-confident", "--max-runs", "40", "-q"]
    result = CliRunner().invoke(app, args + ["--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert ("device.invite_deadline = 4 s is the smallest value whose pass rate is at least 90 % with 95 % "
            "confidence (35 of 35 runs passed; 95 % interval 90.1–100 %)") in " ".join(result.output.split())
    rows = json.loads((tmp_path / "a" / "results.json").read_text())["rows"]
    seeds = {w: sorted(r["seed"] for r in rows if r["point"]["device.invite_deadline"] == w) for w in (1, 4, 8, 12)}
    assert seeds == {1: [1, 2, 3], 4: list(range(1, 36)), 8: list(range(1, 36)), 12: [1, 2, 3]}  # seeds continue
    params = [parse_param("device.invite_wait=1,4,8,12"), parse_param("rule.delay-invite-3s.delay=3")]
    again = sweep_until_confident("S02", params, runs=3, seed=1, out=tmp_path / "b", target=0.9, max_runs=40)
    assert strip(again) == strip(rows)  # the same command: the same rows
    ran = []
    resumed = sweep_until_confident("S02", params, runs=3, seed=1, out=tmp_path / "a", target=0.9, max_runs=40,
                                    on_row=lambda row, n, total: ran.append(row))
    assert ran == [] and strip(resumed) == strip(rows)  # done already: nothing runs again
    few = CliRunner().invoke(app, [("2" if a == "40" else a) for a in args] + ["--out", str(tmp_path / "d")])
    assert few.exit_code == 2 and "--max-runs 2 is below --runs 3" in few.output
    capped = sweep_until_confident("S02", params, runs=3, seed=1, out=tmp_path / "c", target=0.9, max_runs=10)
    assert len(capped) == 3 + 10 + 10 + 10  # 4 s and 8 s at --max-runs, not shown: 12 s runs on


def test_a_sweep_run_collects_its_garbage_and_leaves_the_collector_as_it_was():
    import gc

    from faultlab.lab.sweep.run import run_point_safely

    was = gc.isenabled()
    gc.disable()
    try:
        run_point_safely("S01", (), {}, 1)  # the first: freezes what the process had (gc.freeze)
        gc.collect()  # what earlier tests left
        row = run_point_safely("S01", (), {}, 2)
        assert row["passed"] and row["error"] is None
        assert gc.collect() < 50  # the run's cycles (trio's tasks, the lab's actors: hundreds) are collected
        assert gc.isenabled() is False
        gc.enable()
        run_point_safely("S01", (), {}, 3)
        assert gc.isenabled() is True
    finally:
        (gc.enable if was else gc.disable)()
