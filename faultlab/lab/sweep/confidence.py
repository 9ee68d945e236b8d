"""How sure a pass rate is: the Wilson score interval, and how many more runs would settle a question.

A sweep point that passed ``k`` of ``n`` runs has the pass rate k/n; its 95 % Wilson interval bounds the true
rate. 60 runs without a failure put the lower bound at 94 %: they do not show 99 %. The smallest ``n`` whose lower
bound can reach a target with no failure at all is :func:`runs_to_show`.
"""

from __future__ import annotations

import math

__all__ = ["Z95", "runs_to_show", "wilson"]

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def wilson(passed: int, runs: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of ``passed`` successes in ``runs`` trials; (0, 1) for no runs."""
    if runs <= 0:
        return 0.0, 1.0
    if not 0 <= passed <= runs:
        raise ValueError(f"passed must be between 0 and runs ({runs}), not {passed}")
    p = passed / runs
    z2 = z * z
    centre = (p + z2 / (2 * runs)) / (1 + z2 / runs)
    half = z * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs * runs)) / (1 + z2 / runs)
    return max(0.0, centre - half), min(1.0, centre + half)


def runs_to_show(target: float, z: float = Z95) -> int:
    """The fewest runs, all passing, whose Wilson lower bound reaches ``target`` (0 < target < 1)."""
    if not 0 < target < 1:
        raise ValueError(f"target must be between 0 and 1 (exclusive), not {target}")
    # all passing: low = n / (n + z²) >= target  <=>  n >= target z² / (1 - target)
    n = math.ceil(target * z * z / (1 - target))
    while wilson(n, n, z)[0] < target:  # guard against rounding at the boundary
        n += 1
    return n
