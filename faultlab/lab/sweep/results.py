"""A sweep's results: one summary per grid point, the recommendation, and the files (CSV, JSON, the plot)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .boundary import Answer, answers, pct, runs_needed
from .confidence import wilson
from .params import Param, points
from .plot import write_plots

__all__ = ["TIMES", "recommend", "summarise", "write_results"]

TIMES = ("ring", "connect", "end")


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def summarise(rows: Sequence[dict[str, Any]], params: Sequence[Param]) -> list[dict[str, Any]]:
    """One summary per grid point: runs, pass rate, median / p95 of each key time, end reasons."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(json.dumps(row["point"], sort_keys=True), []).append(row)
    out = []
    for point in points(params):
        group = by_point.get(json.dumps(point, sort_keys=True), [])
        if not group:
            continue
        passed = sum(1 for r in group if r["passed"])
        low, high = wilson(passed, len(group))
        summary: dict[str, Any] = {"point": point, "runs": len(group), "passed": passed,
                                   "pass_rate": passed / len(group), "pass_low": low, "pass_high": high}
        for name in TIMES:
            values = [r[name] for r in group if r.get(name) is not None]
            summary[f"{name}_median"] = statistics.median(values) if values else None
            summary[f"{name}_p95"] = _quantile(values, 0.95)
        reasons: dict[str, int] = {}
        for r in group:
            reasons[str(r.get("end_reason"))] = reasons.get(str(r.get("end_reason")), 0) + 1
        summary["end_reasons"] = reasons
        # the calls that never connected (a ghost ring, a missed call): how long until the device gave up
        unconnected = [r["end"] for r in group if r.get("connect") is None and r.get("end") is not None]
        summary["unconnected"] = len(unconnected)
        summary["unconnected_end_median"] = statistics.median(unconnected) if unconnected else None
        summary["errors"] = sum(1 for r in group if r.get("error"))
        out.append(summary)
    return out


def recommend(summaries: Sequence[dict[str, Any]], params: Sequence[Param], target: float = 0.99) -> list[str]:
    """Plain-language findings. First one sentence per swept deadline (``device.*``) and condition (the other
    parameters' values): the smallest value whose pass rate is at least ``target`` with 95 % confidence (its Wilson
    lower bound reaches it), or that none is shown yet and how many more runs would show it. Then the price of each
    step between neighbouring values of the deadline: the change in pass rate (points) and in the median push ->
    end of the runs that never connected (no ``connect`` time: the ghost ring or missed call a longer deadline
    prolongs)."""
    found = answers(summaries, params, target)
    if not found:
        return [f"no device deadline swept: pass rate per point is in results.csv (target {_rate(target)})"]
    lines = [_sentence(a, target) for a in found]
    for a in found:
        if len(a.series) > 1:
            lines.append(f"{a.where}, step by step:")
            lines.extend(f"    {_step(a.knob, before, after)}" for before, after in zip(a.series, a.series[1:]))
    return lines


def _counts(s: dict[str, Any]) -> str:
    return (f"{s['passed']} of {s['runs']} runs passed; 95 % interval {pct(s['pass_low'])}–{pct(s['pass_high'])} %")


def _more(s: dict[str, Any], target: float) -> str:
    more = runs_needed(s["passed"], s["runs"], target)
    if more is None:
        return f"no number of runs can show {_rate(target)}"
    failed = s["runs"] - s["passed"]
    return f"{more} more runs with no further failure would show it" + (
        f" (with its {failed} failure{'s' if failed != 1 else ''} so far)" if failed else "")


def _sentence(a: Answer, target: float) -> str:
    """The one-sentence answer of one condition."""
    knob, at = a.knob, (lambda s: f"{a.knob.key} = {a.knob.label(s['point'][a.knob.key])}")
    if a.chosen is not None:
        line = (f"{a.where}: {at(a.chosen)} is the smallest value whose pass rate is at least {_rate(target)} "
                f"with 95 % confidence ({_counts(a.chosen)})")
        if a.below is not None and a.below["pass_high"] >= target:
            line += (f"; not yet settled whether {knob.label(a.below['point'][knob.key])} would do too "
                     f"({_counts(a.below)})")
        return line
    if a.candidate is not None:
        return (f"{a.where}: no {knob.key} tried shows a pass rate of at least {_rate(target)} with 95 % "
                f"confidence yet; the best candidate is {knob.label(a.candidate['point'][knob.key])} "
                f"({_counts(a.candidate)}): {_more(a.candidate, target)}")
    top = max(a.series, key=lambda s: (s["pass_high"], -s["point"][knob.key]))
    return (f"{a.where}: no {knob.key} tried reaches {_rate(target)}: even the best, "
            f"{knob.label(top['point'][knob.key])}, is below it with 95 % confidence ({_counts(top)})")


def _step(knob: Param, before: dict[str, Any], after: dict[str, Any]) -> str:
    """``"1 s → 2 s: pass rate +14 points, push → end of calls that never connected +1.00 s"``."""
    rate = (after["pass_rate"] - before["pass_rate"]) * 100
    a, b = before.get("unconnected_end_median"), after.get("unconnected_end_median")
    if a is not None and b is not None:
        cost = f" {b - a:+.2f} s ({a:.2f} s → {b:.2f} s)"
    elif a is None and b is None:
        cost = ": none"
    else:
        missing = knob.label((before if a is None else after)["point"][knob.key])
        cost = f": none at {missing}"
    return (f"{knob.label(before['point'][knob.key])} → {knob.label(after['point'][knob.key])}: pass rate "
            f"{rate:+.0f} points, push → end of calls that never connected{cost}")


def write_results(out: Path, rows: Sequence[dict[str, Any]], params: Sequence[Param], summaries, lines,
                  target: float = 0.99) -> None:
    """``results.csv`` (one row per run), ``results.json`` (settings, rows, summaries, recommendation), the charts
    (PNG and SVG) and ``report.html`` (also as ``plot.html``)."""
    keys = [p.key for p in params]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys + ["seed", "passed", "end_reason", "push_to_ring", "push_to_connect", "push_to_end",
                                "checks_failed", "error"])
        for r in rows:
            writer.writerow([r["point"][k] for k in keys] + [
                r["seed"], int(r["passed"]), r.get("end_reason") or "", _blank(r.get("ring")),
                _blank(r.get("connect")), _blank(r.get("end")),
                ";".join(k for k, v in r["checks"].items() if not v), r.get("error") or ""])
    settings = json.loads((out / "sweep.json").read_text())
    (out / "results.json").write_text(json.dumps({"settings": settings, "summaries": summaries,
                                                  "recommendation": lines, "rows": list(rows)}, indent=1) + "\n")
    write_plots(out, settings, summaries, params, lines, target)


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"



def _rate(target: float) -> str:
    return f"{target * 100:g} %"
