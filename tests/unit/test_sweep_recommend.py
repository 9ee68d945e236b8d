from faultlab.lab.sweep import parse_param, recommend, summarise
from faultlab.lab.sweep.boundary import point_key, runs_needed
from faultlab.lab.sweep.confidence import runs_to_show, wilson
from faultlab.lab.sweep.until import more_runs

WAIT = parse_param("device.invite_wait=1,2,4,8")
LOSS = parse_param("link.loss=0,10")


def rows(point, passed, failed):
    out = []
    for i in range(passed + failed):
        out.append({"point": point, "seed": i + 1, "passed": i < passed, "checks": {}, "end_reason": None,
                    "ring": None, "connect": 1.0 if i < passed else None, "end": 2.0, "error": None})
    return out


def test_a_summary_carries_its_passes_and_95_percent_interval():
    [s] = summarise(rows({WAIT.key: 1.0}, 57, 3), [parse_param("device.invite_wait=1")])
    assert (s["passed"], s["runs"]) == (57, 60)
    assert (s["pass_low"], s["pass_high"]) == wilson(57, 60)
    assert s["pass_low"] < 0.95 < s["pass_high"]


def test_sixty_clean_runs_are_not_99_percent_and_the_report_says_how_many_more_would_be():
    param = parse_param("device.invite_wait=2,4")
    data = rows({param.key: 2.0}, 30, 30) + rows({param.key: 4.0}, 60, 0)
    first = recommend(summarise(data, [param]), [param], 0.99)[0]
    more = runs_to_show(0.99) - 60
    assert first == ("all runs: no device.invite_deadline tried shows a pass rate of at least 99 % with 95 % "
                     "confidence yet; the best candidate is 4 s (60 of 60 runs passed; 95 % interval 94.0–100 %): "
                     f"{more} more runs with no further failure would show it")


def test_the_answer_is_the_smallest_deadline_whose_lower_bound_reaches_the_target():
    n = runs_to_show(0.99)
    data = (rows({WAIT.key: 1.0, LOSS.key: 10.0}, 0, 20) + rows({WAIT.key: 2.0, LOSS.key: 10.0}, 300, 81)
            + rows({WAIT.key: 4.0, LOSS.key: 10.0}, n, 0) + rows({WAIT.key: 8.0, LOSS.key: 10.0}, n, 0))
    lines = recommend(summarise(data, [WAIT, LOSS]), [WAIT, LOSS], 0.99)
    assert lines[0] == ("link.loss = 10%: device.invite_deadline = 4 s is the smallest value whose pass rate is at "
                        f"least 99 % with 95 % confidence ({n} of {n} runs passed; 95 % interval 99.0–100 %)")
    assert lines[1] == "link.loss = 10%, step by step:"  # the answers first, then the price of each step
    assert lines[2].startswith("    1 s → 2 s: pass rate +79 points")


def test_a_neighbour_that_may_still_do_is_said_unsettled():
    param = parse_param("device.invite_wait=2,4")
    data = rows({param.key: 2.0}, 100, 0) + rows({param.key: 4.0}, 400, 0)
    line = recommend(summarise(data, [param]), [param], 0.99)[0]
    assert "4 s is the smallest value" in line and "not yet settled whether 2 s would do too (100 of 100" in line


def test_more_runs_needed_count_the_failures_so_far():
    clean = runs_needed(100, 100, 0.99)
    assert clean == runs_to_show(0.99) - 100
    failed = runs_needed(99, 100, 0.99)
    assert failed > clean
    assert wilson(99 + failed, 100 + failed)[0] >= 0.99 > wilson(98 + failed, 99 + failed)[0]
    assert runs_needed(5, 5, 1.0) is None
    param = parse_param("device.invite_wait=4")
    line = recommend(summarise(rows({param.key: 4.0}, 99, 1), [param]), [param], 0.99)[0]
    assert line.endswith(f"{failed} more runs with no further failure would show it (with its 1 failure so far)")


def test_when_nothing_can_reach_the_target_it_says_so():
    param = parse_param("device.invite_wait=2,4")
    data = rows({param.key: 2.0}, 10, 50) + rows({param.key: 4.0}, 50, 10)
    line = recommend(summarise(data, [param]), [param], 0.99)[0]
    assert line.startswith("all runs: no device.invite_deadline tried reaches 99 %: even the best, 4 s, is below it")


def test_more_runs_go_only_to_the_points_next_to_the_boundary():
    data = []
    for loss in (0.0, 10.0):
        data += rows({WAIT.key: 1.0, LOSS.key: loss}, 0, 20)
        data += rows({WAIT.key: 2.0, LOSS.key: loss}, 20 if loss == 0 else 15, 0 if loss == 0 else 5)
        data += rows({WAIT.key: 4.0, LOSS.key: loss}, 20, 0)
        data += rows({WAIT.key: 8.0, LOSS.key: loss}, 20, 0)
    want = more_runs(summarise(data, [WAIT, LOSS]), [WAIT, LOSS], 0.99, block=20, max_runs=2000)
    clean = runs_to_show(0.99)
    # loss 0: 2 s is the candidate (1 s, 0 of 20, cannot reach 99 %); loss 10: 2 s (15 of 20) cannot, 4 s is it;
    # nothing is shown yet, so the value above each candidate runs too (it may show the target first)
    assert want == {point_key({WAIT.key: w, LOSS.key: loss}): clean
                    for w, loss in [(2.0, 0.0), (4.0, 0.0), (4.0, 10.0), (8.0, 10.0)]}
    capped = more_runs(summarise(data, [WAIT, LOSS]), [WAIT, LOSS], 0.99, block=20, max_runs=100)
    assert set(capped.values()) == {100}
    assert more_runs(summarise(data, [WAIT, LOSS]), [WAIT, LOSS], 0.99, block=20, max_runs=20) == {}
    grown = [(2.0, 0.0), (4.0, 0.0), (4.0, 10.0), (8.0, 10.0)]
    settled = [r for r in data if (r["point"][WAIT.key], r["point"][LOSS.key]) not in grown]
    for w, loss in grown:
        settled += rows({WAIT.key: w, LOSS.key: loss}, clean, 0)
    assert more_runs(summarise(settled, [WAIT, LOSS]), [WAIT, LOSS], 0.99, block=20, max_runs=2000) == {}
