"""``--until-confident``: after the first ``runs`` per point, more runs only at the points that can still change
the answer (per condition, the candidate smallest deadline and its lower neighbour) until every answer is settled
or those points have ``max_runs``. Deterministic: a point's extra seeds continue from its last, so the same
command gives the same rows; each round is a :func:`~faultlab.lab.sweep.run.sweep` (locked, resumable)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .boundary import answers, point_key, runs_needed
from .params import Param
from .results import summarise
from .run import sweep

__all__ = ["more_runs", "sweep_until_confident"]


def more_runs(summaries: Sequence[dict[str, Any]], params: Sequence[Param], target: float, *, block: int,
              max_runs: int) -> dict[str, int]:
    """The runs each still-open point should have next (by :func:`point_key`), at most ``max_runs``: the candidate
    (and the nearest value above it with runs left) enough to show the target if no further run fails (at least ``block`` more), its
    lower neighbour twice its runs (at least ``block`` more). Empty: every answer is settled or its points are
    at ``max_runs``."""
    want: dict[str, int] = {}
    for answer in answers(summaries, params, target):
        above = 0  # of the values above an unshown candidate: the nearest with runs left
        for s in answer.open_points(target):
            n = s["runs"]
            if s is not answer.candidate and s is not answer.below:
                if above or n >= max_runs:
                    continue
                above += 1
            step = n
            if s is not answer.below:
                step = runs_needed(s["passed"], n, target) or n
            total = min(max_runs, n + max(block, step))
            if total > n:
                key = point_key(s["point"])
                want[key] = max(want.get(key, 0), total)
    return want


def sweep_until_confident(scenario_name: str, params: Sequence[Param], *, runs: int, seed: int, out: Path,
                          target: float, max_runs: int, jobs: int = 1, sets: Sequence[tuple[str, str]] = (),
                          behaviour: str | None = None,
                          on_row: Callable[[dict[str, Any], int, int], None] | None = None,
                          stop: Callable[[], bool] | None = None, executor: Any = None) -> list[dict[str, Any]]:
    """:func:`sweep` with ``runs`` per point, then rounds of more runs at the open points (:func:`more_runs`)
    until none is left; all rows, in grid order."""
    extra: dict[str, int] = {}
    while True:
        rows = sweep(scenario_name, params, runs=runs, seed=seed, out=out, jobs=jobs, sets=sets,
                     behaviour=behaviour, on_row=on_row, stop=stop, extra=extra, executor=executor)
        if stop is not None and stop():
            return rows
        grow = more_runs(summarise(rows, params), params, target, block=runs, max_runs=max_runs)
        if not grow:
            return rows
        for key, total in grow.items():
            extra[key] = total - runs
