"""The time estimate of an external run (faultlab.lab.estimate): pure arithmetic over the catalogue."""

from __future__ import annotations

from faultlab.faults import load_profile
from faultlab.lab.estimate import SETTLE, approx, estimate, skip_reason, typical_seconds
from faultlab.lab.scenario import list_scenarios, load_scenario


def test_every_catalogue_scenario_has_a_typical_length_within_its_duration():
    for s in list_scenarios():
        seconds = typical_seconds(s)
        assert 0 < seconds <= s.duration, (s.id, seconds)


def test_typical_length_follows_the_script_and_the_expected_end():
    assert typical_seconds(load_scenario("S01")) == 0.3 + 1 + 10 + SETTLE  # answer 1 s after it shows, talk 10 s
    assert typical_seconds(load_scenario("S06")) == 0.3 + 0.5 + SETTLE  # answered elsewhere 0.5 s after
    assert typical_seconds(load_scenario("S20")) == 0.3 + 45 + SETTLE  # the CANCEL is lost: the ring timeout
    assert typical_seconds(load_scenario("S23")) == 45 + 0.3 + 0.5 + SETTLE  # the push stored 45 s


def test_cases_calls_skips_and_total():
    todo = [(load_scenario(n), None) for n in ("S05", "S01", "S21", "S15")]
    plan = estimate(todo, "udp", pause=5.0)
    assert [(c.scenario.id, c.calls, bool(c.skipped)) for c in plan.cases] == [
        ("S05", 2, False), ("S01", 1, False), ("S21", 0, True), ("S15", 0, True)]
    assert "RTP" in plan.cases[2].skipped and plan.cases[3].skipped == skip_reason(load_scenario("S15"), "udp")
    s05, s01 = typical_seconds(load_scenario("S05")), typical_seconds(load_scenario("S01"))
    assert plan.calls == 3 and plan.seconds == 2 * (s05 + 5) + (s01 + 5)
    lines = plan.lines()
    assert lines[0] == f"  S05 cancel-after-invite: 2 calls (the second with cancel pushes dropped), ~{s05:.0f} s " \
                       "each + 5 s pause"
    assert lines[2].startswith("  S21 bye-lost: skipped, its call carries RTP")
    assert lines[-1] == f"estimate: 2 cases, 3 calls, about {approx(plan.seconds)}"
    # a profile makes cases of its own; over tcp S15 runs
    profile = load_profile("register-drop")
    assert [c.calls for c in estimate([(load_scenario("S15"), profile)], "tcp", 1.0).cases] == [1]
    assert "x register-drop" in estimate([(load_scenario("S01"), profile)], "udp", 1.0).lines()[0]


def test_the_whole_catalogue_over_udp_takes_minutes():
    plan = estimate([(s, None) for s in list_scenarios()], "udp", pause=5.0)
    assert plan.lines()[-1].endswith(" min")
    assert approx(89) == "89 s" and approx(600) == "10 min"


async def test_the_progress_of_an_external_run_ticks_through_each_case(autojump_clock, monkeypatch):
    """The CLI's case loop (its lab stood in for: each case takes its estimated seconds) with the bar on a
    terminal: the bar's time left counts down within a case, and a line per case says the verdict and what is
    left."""
    import io
    from types import SimpleNamespace

    import trio
    from rich.console import Console

    from faultlab.cli._lab_external import _play

    plan = estimate([(load_scenario("S06"), None), (load_scenario("S21"), None), (load_scenario("S01"), None)],
                    "udp", pause=5.0)
    seen: list[tuple[float, float]] = []

    class Lab:
        async def run_case(self, scenario, profile, trace_dir=None):
            share = plan.case_seconds(next(c for c in plan.cases if c.scenario is scenario))
            await trio.sleep(share)
            return SimpleNamespace(passed=scenario.id == "S06")

    import rich.progress

    real_update = rich.progress.Progress.update

    def update(self, task, **kw):  # what the bar is told: completed seconds, at which (virtual) time
        if "completed" in kw:
            seen.append((trio.current_time(), kw["completed"]))
        return real_update(self, task, **kw)

    out = io.StringIO()
    err = Console(file=out, force_terminal=True, width=200, color_system=None)
    cases: list = []
    monkeypatch.setattr(rich.progress.Progress, "update", update)
    await _play(Lab(), plan, None, err, cases, bar=True)
    s06 = plan.case_seconds(plan.cases[0])
    assert [c.passed for c in cases] == [True, False]
    text = out.getvalue()
    assert f"S06 answered-elsewhere: pass (1/2 cases, about {approx(plan.seconds - s06)} left)" in text
    assert "S01 baseline: FAIL (2/2 cases, done)" in text
    # within S06 the bar moves on with the time (a tick a second), up to S06's share
    assert (2.0, 2.0) in seen and all(done <= max(t, s06) for t, done in seen if t < s06)
