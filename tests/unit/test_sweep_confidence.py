import pytest

from faultlab.lab.sweep.confidence import runs_to_show, wilson


def test_sixty_clean_runs_do_not_show_99_percent():
    low, high = wilson(60, 60)
    assert 0.93 < low < 0.95 and high == pytest.approx(1.0)


def test_the_interval_holds_the_rate_and_narrows_with_runs():
    for k, n in [(0, 10), (5, 10), (99, 100), (990, 1000)]:
        low, high = wilson(k, n)
        assert 0 <= low <= k / n <= high <= 1
    assert wilson(990, 1000)[1] - wilson(990, 1000)[0] < wilson(99, 100)[1] - wilson(99, 100)[0]


def test_runs_to_show_a_target_with_no_failure():
    n = runs_to_show(0.99)
    assert 370 <= n <= 390  # 0.99 z² / 0.01 = 380.3
    assert wilson(n, n)[0] >= 0.99 > wilson(n - 1, n - 1)[0]


@pytest.mark.parametrize("bad", [(5, 4), (-1, 4)])
def test_impossible_counts_are_refused(bad):
    with pytest.raises(ValueError, match="passed must be"):
        wilson(*bad)


def test_no_runs_say_nothing():
    assert wilson(0, 0) == (0.0, 1.0)
