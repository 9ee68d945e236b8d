"""Which charts a sweep gets, the answer sentence and the zoomed pass-rate axis (faultlab.lab.sweep.plot)."""

from __future__ import annotations

import pytest

from faultlab.lab.sweep.confidence import wilson
from faultlab.lab.sweep.plot import band, charts_for, headline, y_range
from faultlab.lab.sweep.params import Param

DEADLINE = Param("device.invite_deadline", (1.0, 2.0, 4.0), "s")
LOSS = Param("link.loss", (0.0, 10.0), "%")
DELAY = Param("link.delay", (150.0,), "ms")
JITTER = Param("link.jitter", (0.0, 20.0), "ms")


def summary(unconnected=None, **point):
    return {"point": point, "runs": 10, "pass_rate": 1.0, "unconnected_end_median": unconnected}


def names(charts):
    return [c.name for c in charts]


def test_a_deadline_against_one_condition_gets_a_heatmap_and_the_single_valued_parameter_no_chart():
    charts = charts_for([summary(2.0)], [LOSS, DELAY, DEADLINE])
    assert names(charts) == ["pass_rate", "heatmap", "waiting"]
    assert all(c.x is DEADLINE for c in charts) and charts[1].other is LOSS
    assert all("link.delay" not in c.title for c in charts)


def test_one_varied_parameter_gets_no_heatmap_and_no_waiting_chart_when_every_call_connected():
    assert names(charts_for([summary()], [DEADLINE, DELAY])) == ["pass_rate"]
    assert names(charts_for([summary(3.0)], [DEADLINE])) == ["pass_rate", "waiting"]


def test_two_conditions_besides_the_deadline_get_no_heatmap():
    assert names(charts_for([summary()], [DEADLINE, LOSS, JITTER])) == ["pass_rate"]


def test_without_a_deadline_the_varied_parameter_is_the_x_axis_and_waiting_is_not_drawn():
    charts = charts_for([summary(2.0)], [DELAY, LOSS])
    assert names(charts) == ["pass_rate"] and charts[0].x is LOSS


def test_nothing_varied_draws_nothing():
    assert charts_for([summary()], [DELAY]) == []


def test_the_answer_is_the_first_line_per_condition():
    lines = ["link.loss = 0%: device.invite_deadline = 1 s is the smallest value passing in ≥ 99% of runs",
             "    1 s → 2 s: pass rate +0 points",
             "link.loss = 10%: no device.invite_deadline tried reaches 99% (best 80% at 4 s)",
             "    1 s → 2 s: pass rate +10 points"]
    assert headline(lines) == [lines[0], lines[2]]
    assert headline([lines[0], lines[2], "link.loss = 0%, step by step:", lines[1]]) == [lines[0], lines[2]]


def test_the_recommended_value_is_judged_by_the_lower_bound_when_the_summary_has_one():
    from faultlab.lab.sweep.plot import recommended
    series = [{"point": {DEADLINE.key: d}, "pass_rate": 1.0, "pass_low": low} for d, low in ((1.0, 0.8), (2.0, 0.995))]
    assert recommended(series, DEADLINE, 0.99) == 2.0
    assert recommended([{k: v for k, v in s.items() if k != "pass_low"} for s in series], DEADLINE, 0.99) == 1.0


def test_the_band_is_the_summarys_own_or_the_wilson_interval():
    assert band({"runs": 20, "pass_rate": 0.85}) == wilson(17, 20)
    assert band({"runs": 20, "pass_rate": 0.85, "pass_low": 0.6, "pass_high": 0.95}) == (0.6, 0.95)


@pytest.mark.parametrize("lows, target", [([0.84, 0.95], 0.99), ([0.999], 0.99), ([0.2], 0.9), ([], 0.99)])
def test_the_pass_rate_axis_shows_the_lowest_bound_and_the_target_and_stops_just_above_one(lows, target):
    bottom, top = y_range(lows, target)
    assert bottom < min([*lows, target]) and 1.0 < top < 1.02
    assert bottom >= 0.0


def test_the_pass_rate_axis_is_zoomed_not_zero_to_one():
    assert y_range([0.84], 0.99)[0] > 0.7
    assert y_range([0.0], 0.99)[0] == 0.0


def test_many_conditions_get_one_panel_each_and_no_legend_few_share_one_legend():
    from faultlab.lab.sweep.plot import Chart, _figure
    loss = Param("link.loss", (0.0, 5.0, 10.0, 15.0, 20.0), "%")
    delay = Param("link.delay", (50.0, 150.0), "ms")
    summaries = [{"point": {"device.invite_deadline": d, "link.loss": lo, "link.delay": de}, "runs": 10,
                  "pass_rate": 0.9, "unconnected_end_median": d}
                 for d in DEADLINE.values for lo in loss.values for de in delay.values]
    many = _figure(Chart("pass_rate", "t", DEADLINE), summaries, [DEADLINE, loss, delay], 0.99)
    shown = [ax for ax in many.axes if ax.get_visible()]
    assert len(shown) == 10 and all(ax.get_legend() is None for ax in shown)
    assert {ax.get_title() for ax in shown} >= {"loss 0%, delay 50 ms", "loss 20%, delay 150 ms"}
    few = _figure(Chart("waiting", "t", DEADLINE), summaries[::2], [DEADLINE, loss], 0.99)
    assert len(few.axes) == 1 and len(few.axes[0].get_legend().get_texts()) == 5
