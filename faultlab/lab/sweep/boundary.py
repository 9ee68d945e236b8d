"""Where a sweep's answer is decided: per condition, the smallest deadline whose pass rate is at least the target
with 95 % confidence (its Wilson lower bound reaches it), its lower neighbour, and whether the answer is settled.

Pure: it reads summaries (:func:`faultlab.lab.sweep.results.summarise`) and runs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .confidence import wilson
from .params import Param, points

__all__ = ["Answer", "answers", "pct", "point_key", "runs_needed", "settled"]

RUNS_CAP = 10_000_000  # beyond this, "more runs" is no answer


def point_key(point: dict[str, float]) -> str:
    return json.dumps(point, sort_keys=True)


def pct(x: float) -> str:
    """``0.99 -> "99.0"``, ``1.0 -> "100"``, ``0.0 -> "0"``."""
    text = f"{x * 100:.1f}"
    return text[:-2] if text in ("100.0", "0.0") else text


def runs_needed(passed: int, runs: int, target: float) -> int | None:
    """The fewest more runs, all passing, after which ``passed`` of ``runs`` has a Wilson lower bound reaching
    ``target``; None if no number of runs can (a target of 100 %)."""
    if target >= 1:
        return None

    def enough(k: int) -> bool:
        return wilson(passed + k, runs + k)[0] >= target

    if enough(0):
        return 0
    hi = 1
    while not enough(hi):
        hi *= 2
        if hi > RUNS_CAP:
            return None
    lo = hi // 2  # enough(lo) is false (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


@dataclass(frozen=True)
class Answer:
    """One condition's answer for one swept deadline.

    ``series``: the condition's summaries, by deadline. ``chosen``: the smallest whose lower bound reaches the
    target (None: none yet). ``candidate``: ``chosen``, or else the smallest that still may (upper bound reaching
    the target; None: none can). ``below``: the candidate's lower neighbour. ``settled``: no more runs at these
    points can change the answer (the chosen one shown, its neighbour's upper bound below the target)."""
    knob: Param
    condition: dict[str, float]
    where: str
    series: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    candidate: dict[str, Any] | None
    below: dict[str, Any] | None

    def open_points(self, target: float) -> list[dict[str, Any]]:
        """The summaries whose interval still holds the target where the answer depends on it: the candidate, and
        while nothing is shown yet the value above it too (a candidate right at the target may never be shown;
        the next value may be, quickly: the values above it, nearest first); once one is shown, its lower
        neighbour while that may still do."""
        out = []
        if self.candidate is not None and self.candidate["pass_low"] < target:
            out.append(self.candidate)
            i = self.series.index(self.candidate)
            out.extend(s for s in self.series[i + 1:] if s["pass_low"] < target)
        if self.candidate is not None and self.below is not None and self.below["pass_high"] >= target:
            out.append(self.below)
        return out


def answers(summaries: Sequence[dict[str, Any]], params: Sequence[Param], target: float) -> list[Answer]:
    """Per swept deadline (``device.*``) and condition (the other parameters' values), its :class:`Answer`."""
    out = []
    for knob in (p for p in params if p.key.startswith("device.")):
        others = [p for p in params if p is not knob]
        for condition in (points(others) if others else [{}]):
            series = [s for s in summaries if all(s["point"].get(k) == v for k, v in condition.items())]
            if not series:  # e.g. an interrupted sweep
                continue
            series.sort(key=lambda s: s["point"][knob.key])
            where = ", ".join(f"{p.key} = {p.label(condition[p.key])}" for p in others) or "all runs"
            chosen = next((s for s in series if s["pass_low"] >= target), None)
            candidate = chosen or next((s for s in series if s["pass_high"] >= target), None)
            i = series.index(candidate) if candidate is not None else 0
            out.append(Answer(knob, condition, where, series, chosen, candidate, series[i - 1] if i > 0 else None))
    return out


def settled(answer: Answer, target: float) -> bool:
    """No more runs at the points next to the boundary can change ``answer``."""
    return not answer.open_points(target)
