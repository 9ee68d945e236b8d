"""Timeout sweeps: a scenario over a grid of parameter values x seeded runs, in virtual time, on every core.

``faultlab sweep --scenario S01 --param device.invite_deadline=1,2,4,8 --param link.loss=0..20:10 --runs 20``
runs every point of the grid ``runs`` times (seeds ``seed``, ``seed + 1``, ... the same at every point, so points
differ only by their parameters) and records one row per run: the parameters, the seed, the verdicts and the key
times (push -> ring, push -> connect, push -> end). Rows go to ``DIR/runs.jsonl`` as they finish, so an
interrupted sweep resumes where it stopped; then ``results.csv``, ``results.json``, ``plot.html`` and the
recommendation (:func:`recommend`).

Parameters (:func:`parse_param`), a value list ``a,b,c`` or a range ``lo..hi:step`` (both ends included):

* ``device.register_deadline|invite_deadline|total_deadline|ring_timeout`` (aliases ``device.register_wait``,
  ``device.invite_wait``, ``device.total_wait``): seconds (a bare number) or a duration (``1500ms``);
* ``link.delay|jitter`` (one way, both directions; bare number: milliseconds), ``link.loss|duplicate|reorder``
  (both directions; bare number: percent), ``link.rate`` (``1mbit``): on top of the scenario's own link;
* ``rule.NAME.delay``: the delay of the scenario's fault rule ``NAME`` (bare number: seconds);
* ``call.*``, ``pbx.hold``, ``push.delay``, ``expect.*``: as ``faultlab lab run --set`` (:func:`override`).
"""

from __future__ import annotations

import csv
import fcntl
import html
import itertools
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from faultlab.faults import Link, Profile, parse_bitrate, parse_duration
from faultlab.lab.scenario import Scenario, load_scenario, override

__all__ = ["Param", "SweepError", "apply", "parse_param", "recommend", "run_point", "sweep", "summarise",
           "write_results"]

ALIASES = {"device.register_wait": "device.register_deadline", "device.invite_wait": "device.invite_deadline",
           "device.total_wait": "device.total_deadline"}
LINK_TIME = ("delay", "jitter")
LINK_RATIO = ("loss", "duplicate", "reorder")
TIMES = ("ring", "connect", "end")


class SweepError(ValueError):
    """A parameter or sweep setting that cannot work, said so a person can fix it."""


@dataclass(frozen=True)
class Param:
    key: str  # canonical, e.g. device.invite_deadline
    values: tuple[float, ...]
    unit: str  # "s", "ms", "%", "bit/s": how values are written back

    def label(self, value: float) -> str:
        return f"{value:g}%" if self.unit == "%" else f"{value:g} {self.unit}"


def _numbers(text: str, parse: Callable[[str], float]) -> tuple[float, ...]:
    if ".." in text:
        span, _, step_text = text.partition(":")
        lo_text, _, hi_text = span.partition("..")
        lo, hi = parse(lo_text), parse(hi_text)
        step = parse(step_text) if step_text else None
        if step is None or step <= 0 or hi < lo:
            raise SweepError(f"{text!r}: a range is LO..HI:STEP with LO <= HI and STEP > 0, e.g. 0..20:5")
        count = int(math.floor((hi - lo) / step + 1e-9)) + 1
        if count > 1000:
            raise SweepError(f"{text!r}: {count} values; keep a parameter under 1000 values")
        return tuple(round(lo + i * step, 9) for i in range(count))
    values = tuple(parse(v) for v in text.split(",") if v.strip())
    if not values:
        raise SweepError(f"{text!r}: no values; write a list (2,4,8) or a range (0..20:5)")
    return values


def _seconds(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return parse_duration(text)


def _millis(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return parse_duration(text) * 1000


def _percent(text: str) -> float:
    text = text.strip().rstrip("%")
    return float(text)


def duration_text(seconds: float) -> str:
    """``seconds`` as a duration :func:`override` reads back exactly: ``1e-05`` -> ``"0.00001s"`` (positional
    digits of the shortest repr, never an exponent, which parse_duration refuses)."""
    return f"{Decimal(repr(float(seconds))):f}s"


def _checked(text: str, key: str, values: tuple[float, ...], *, durations: bool) -> tuple[float, ...]:
    """``values`` without repeats (first kept, in order); every value finite, and not negative for a duration."""
    for v in values:
        if not math.isfinite(v):
            raise SweepError(f"--param {text!r}: {v} is not a number")
        if durations and v < 0:
            raise SweepError(f"--param {text!r}: {v:g} is negative; {key} is a duration, 0 or more")
    return tuple(dict.fromkeys(values))


def parse_param(text: str) -> Param:
    """``KEY=VALUES`` (see the module docstring) -> :class:`Param`; :class:`SweepError` says what is wrong.
    Every value is checked (not only the first), repeated values are dropped."""
    key, sep, values = text.partition("=")
    key = ALIASES.get(key.strip(), key.strip())
    if not sep or not key or not values.strip():
        raise SweepError(f"--param {text!r}: write KEY=VALUES, e.g. device.invite_deadline=2,4,8 or link.loss=0..20:5")
    section, _, name = key.partition(".")
    try:
        if section == "link" and name in LINK_TIME:
            return Param(key, _checked(text, key, _numbers(values, _millis), durations=True), "ms")
        if section == "link" and name in LINK_RATIO:
            parsed = _checked(text, key, _numbers(values, _percent), durations=False)
            if any(not 0 <= v <= 100 for v in parsed):
                raise SweepError(f"--param {text!r}: {name} is a percentage from 0 to 100")
            return Param(key, parsed, "%")
        if section == "link" and name == "rate":
            return Param(key, _checked(text, key, _numbers(values, parse_bitrate), durations=True), "bit/s")
        if section == "link":
            raise SweepError(f"--param {text!r}: link fields are delay, jitter, loss, duplicate, reorder, rate")
        if section == "rule" and key.endswith(".delay") and key.count(".") >= 2:
            return Param(key, _checked(text, key, _numbers(values, _seconds), durations=True), "s")
        if section in ("device", "call", "pbx", "push") or key in ("expect.tolerance",):
            parsed = _checked(text, key, _numbers(values, _seconds), durations=True)
            s01 = load_scenario("S01")
            for value in parsed:  # the key must be one override() knows, and take every value
                override(s01, key, duration_text(value))
            return Param(key, parsed, "s")
    except ValueError as exc:
        if isinstance(exc, SweepError):
            raise
        raise SweepError(f"--param {text!r}: {exc}") from None
    raise SweepError(f"--param {text!r}: unknown parameter {key!r}; use device.*, link.*, rule.NAME.delay, call.*, "
                     "pbx.hold or push.delay (faultlab sweep --help)")


def apply(scenario: Scenario, values: dict[str, float]) -> Scenario:
    """``scenario`` with the grid point's values set (see the module docstring)."""
    link_changes: dict[str, Any] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section == "link":
            if name in LINK_TIME:
                link_changes[name] = value / 1000
            elif name in LINK_RATIO:
                link_changes[name] = value / 100
            else:
                link_changes["rate_bps"] = value
        elif section == "rule":
            rule_name = key[len("rule."):-len(".delay")]
            scenario = _set_rule_delay(scenario, rule_name, value)
        else:
            scenario = override(scenario, key, duration_text(value))
    if link_changes:
        faults = scenario.faults or Profile(name=f"{scenario.slug}-sweep", summary="sweep")
        base = faults.link or Link()
        link = replace(base, to_pbx=replace(base.to_pbx, **link_changes),
                       to_device=replace(base.to_device, **link_changes))
        scenario = replace(scenario, faults=replace(faults, link=link, text=""))
    return scenario


def _set_rule_delay(scenario: Scenario, name: str, value: float) -> Scenario:
    faults = scenario.faults
    names = [r.name for r in faults.rules] if faults else []
    if name not in names:
        raise SweepError(f"rule.{name}.delay: {scenario.id} has no fault rule {name!r} "
                         f"(its rules: {', '.join(names) or 'none'})")
    rules = []
    for rule in faults.rules:
        if rule.name == name:
            if rule.action.delay is None:
                raise SweepError(f"rule.{name}.delay: that rule does not delay ({rule.action.kind})")
            rule = replace(rule, action=replace(rule.action, delay=replace(rule.action.delay, delay=value)))
        rules.append(rule)
    return replace(scenario, faults=replace(faults, rules=tuple(rules), text=""))


def points(params: Sequence[Param]) -> list[dict[str, float]]:
    """Every combination of the parameters' values, in order."""
    return [dict(zip([p.key for p in params], combo)) for combo in itertools.product(*(p.values for p in params))]


def run_key(point: dict[str, float], seed: int) -> str:
    return json.dumps({"point": point, "seed": seed}, sort_keys=True)


def run_point(scenario_name: str, sets: Sequence[tuple[str, str]], point: dict[str, float], seed: int,
              behaviour: str | None = None) -> dict[str, Any]:
    """One run in virtual time; its row. Runs in a worker process (everything it takes is picklable)."""
    from faultlab.lab.checks import anchors
    from faultlab.lab.runner import run_case

    scenario = load_scenario(scenario_name)
    for key, value in sets:
        scenario = override(scenario, key, value)
    case = run_case(apply(scenario, point), seed=seed, behaviour=behaviour)
    run = case.runs[0]
    found = anchors(run.events, run.call_id) if run.call_id else {}
    t0 = found["push"].t if "push" in found else None

    def since(name: str) -> float | None:
        return round(found[name].t - t0, 6) if t0 is not None and name in found else None

    end = found.get("end")
    return {
        "point": point, "seed": seed, "passed": case.passed,
        "checks": {c.check: c.passed for c in case.checks},
        "end_reason": end.detail.get("reason") if end is not None else None,
        "ring": since("invite"), "connect": since("ok"), "end": since("end"),
        "error": run.error, "wall": round(sum(r.wall for r in case.runs), 6),
    }


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows already in ``runs.jsonl`` (a last line cut short by an interruption is ignored)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _drop_partial_line(path: Path) -> None:
    """Cut ``path`` back to just after its last newline, so the next row does not glue onto a line an interruption
    cut short."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def error_row(point: dict[str, float], seed: int, exc: BaseException) -> dict[str, Any]:
    """The row of a run that raised instead of finishing: failed, with ``error`` ``"<Type>: <message>"``."""
    return {"point": point, "seed": seed, "passed": False, "checks": {}, "end_reason": None,
            "ring": None, "connect": None, "end": None, "error": f"{type(exc).__name__}: {exc}", "wall": 0.0}


def run_point_safely(scenario_name: str, sets: Sequence[tuple[str, str]], point: dict[str, float], seed: int,
                     behaviour: str | None = None) -> dict[str, Any]:
    """:func:`run_point`, an exception turned into its :func:`error_row` (in the worker: nothing to unpickle)."""
    try:
        return run_point(scenario_name, sets, point, seed, behaviour)
    except Exception as exc:  # noqa: BLE001 - one run's failure is that run's row, the sweep goes on
        return error_row(point, seed, exc)


def sweep(scenario_name: str, params: Sequence[Param], *, runs: int, seed: int, out: Path, jobs: int = 1,
          sets: Sequence[tuple[str, str]] = (), behaviour: str | None = None,
          on_row: Callable[[dict[str, Any], int, int], None] | None = None,
          stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Run every (point, seed) not yet in ``out/runs.jsonl``; return all rows of this sweep, in grid order.

    ``out/sweep.json`` records the settings; a different sweep in the same directory is refused, the same sweep
    with more ``runs`` only runs the new seeds. ``out/sweep.lock`` is held for the sweep's duration: a second sweep
    into the same directory fails at once. A run that raises is recorded as a failed row with its ``error``.
    ``on_row(row, done, total)`` after each run; ``stop()`` true ends the sweep early (what is done is kept)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep is running in {out}; wait for it or use another --out") from None
        return _sweep_locked(scenario_name, params, runs=runs, seed=seed, out=out, jobs=jobs, sets=sets,
                             behaviour=behaviour, on_row=on_row, stop=stop)


def _sweep_locked(scenario_name: str, params: Sequence[Param], *, runs: int, seed: int, out: Path, jobs: int,
                  sets: Sequence[tuple[str, str]], behaviour: str | None,
                  on_row: Callable[[dict[str, Any], int, int], None] | None,
                  stop: Callable[[], bool] | None) -> list[dict[str, Any]]:
    settings = {"scenario": scenario_name, "params": [{"key": p.key, "values": list(p.values), "unit": p.unit}
                                                      for p in params],
                "runs": runs, "seed": seed, "set": [list(s) for s in sets], "behaviour": behaviour}
    settings_path = out / "sweep.json"
    if settings_path.exists():
        before = json.loads(settings_path.read_text())
        if {k: v for k, v in before.items() if k != "runs"} != {k: v for k, v in settings.items() if k != "runs"}:
            raise SweepError(f"{out} holds a different sweep ({settings_path}); use another --out directory")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    rows_path = out / "runs.jsonl"
    done: dict[str, dict[str, Any]] = {}
    for row in load_rows(rows_path):  # a (point, seed) twice (e.g. an older, unlocked double run): the first counts
        done.setdefault(run_key(row["point"], row["seed"]), row)
    _drop_partial_line(rows_path)
    grid = points(params)
    todo = [(p, seed + i) for p in grid for i in range(runs) if run_key(p, seed + i) not in done]
    total = len(grid) * runs
    count = total - len(todo)
    broken: BaseException | None = None
    with rows_path.open("a") as sink:
        def record(row: dict[str, Any]) -> None:
            nonlocal count
            sink.write(json.dumps(row, sort_keys=True) + "\n")
            sink.flush()
            done[run_key(row["point"], row["seed"])] = row
            count += 1
            if on_row is not None:
                on_row(row, count, total)

        if jobs <= 1:
            for point, s in todo:
                if stop is not None and stop():
                    break
                record(run_point_safely(scenario_name, sets, point, s, behaviour))
        else:
            with ProcessPoolExecutor(jobs) as pool:
                pending: dict[Future, tuple[dict[str, float], int]] = {}
                queue = iter(todo)

                def submit(n: int) -> None:
                    for point, s in itertools.islice(queue, n):
                        pending[pool.submit(run_point_safely, scenario_name, sets, point, s, behaviour)] = (point, s)

                submit(jobs * 4)
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        point, s = pending.pop(future)
                        try:
                            row = future.result()
                        except BrokenProcessPool as exc:  # a worker died: not this run's fault, leave it to redo
                            broken = exc
                            continue
                        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be unpickled
                            row = error_row(point, s, exc)
                        record(row)
                    if broken is not None or (stop is not None and stop()):
                        for future in pending:
                            future.cancel()
                        break
                    submit(len(finished))
    if broken is not None:
        raise SweepError(f"a worker process died ({broken}); {count} of {total} runs are kept in {rows_path}: "
                         "run the same command again to finish")
    return [done[k] for k in (run_key(p, seed + i) for p in grid for i in range(runs)) if k in done]


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------- results


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
        summary: dict[str, Any] = {"point": point, "runs": len(group),
                                   "pass_rate": sum(r["passed"] for r in group) / len(group)}
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
    """Plain-language findings: for a swept deadline (``device.*``), per condition (the other parameters' values),
    the smallest value whose pass rate reaches ``target``, and the price of each step between neighbouring values of
    the deadline: the change in pass rate (points) and in the median push -> end of the runs that never connected
    (no ``connect`` time: the ghost ring or missed call a longer deadline prolongs)."""
    deadlines = [p for p in params if p.key.startswith("device.")]
    if not deadlines:
        return [f"no device deadline swept: pass rate per point is in results.csv (target {target:.0%})"]
    lines = []
    for knob in deadlines:
        others = [p for p in params if p is not knob]
        conditions = points(others) if others else [{}]
        for condition in conditions:
            series = [s for s in summaries if all(s["point"].get(k) == v for k, v in condition.items())]
            series.sort(key=lambda s: s["point"][knob.key])
            where = ", ".join(f"{k} = {p.label(condition[k])}" for p in others for k in [p.key]) or "all runs"
            passing = [s for s in series if s["pass_rate"] >= target]
            if passing:
                best = passing[0]
                lines.append(f"{where}: {knob.key} = {knob.label(best['point'][knob.key])} is the smallest value "
                             f"passing in ≥ {target:.0%} of runs ({best['pass_rate']:.0%} of {best['runs']})")
            else:
                top = max(series, key=lambda s: s["pass_rate"]) if series else None
                lines.append(f"{where}: no {knob.key} tried reaches {target:.0%}"
                             + (f" (best {top['pass_rate']:.0%} at {knob.label(top['point'][knob.key])})" if top else ""))
            for before, after in zip(series, series[1:]):
                lines.append(f"    {_step(knob, before, after)}")
    return lines


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


def write_results(out: Path, rows: Sequence[dict[str, Any]], params: Sequence[Param], summaries, lines) -> None:
    """``results.csv`` (one row per run), ``results.json`` (settings, rows, summaries, recommendation) and
    ``plot.html``."""
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
    (out / "plot.html").write_text(plot_html(settings, summaries, params, lines))


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


# ---------------------------------------------------------------------------------------------- plot

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _chart(title: str, x_label: str, y_label: str, series: list[tuple[str, list[tuple[float, float]]]],
           y_max: float | None = None) -> str:
    """A line chart as inline SVG (no external files, no scripts)."""
    w, h, left, bottom, top, right = 560, 300, 60, 40, 30, 150
    xs = [x for _, pts in series for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, pts in series for _, y in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = 0.0, (y_max if y_max is not None else (max(ys) * 1.1 if max(ys) > 0 else 1.0))

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{w / 2 - right / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#444"/>',
             f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle" font-size="12">'
             f'{html.escape(x_label)}</text>',
             f'<text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" font-size="12" '
             f'transform="rotate(-90 14 {(top + h - bottom) / 2})">{html.escape(y_label)}</text>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end" font-size="10">{yv:.3g}</text>')
        parts.append(f'<line x1="{left}" y1="{py(yv):.1f}" x2="{w - right}" y2="{py(yv):.1f}" stroke="#ddd"/>')
    for xv in sorted(set(xs)):
        parts.append(f'<text x="{px(xv):.1f}" y="{h - bottom + 14}" text-anchor="middle" font-size="10">{xv:g}</text>')
    for n, (name, pts) in enumerate(series):
        colour = _COLOURS[n % len(_COLOURS)]
        pts = sorted(pts)
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"><title>'
                         f'{html.escape(name)}: {x:g} → {y:.3g}</title></circle>')
        parts.append(f'<text x="{w - right + 8}" y="{top + 14 + 16 * n}" font-size="11" fill="{colour}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def plot_html(settings: dict, summaries: Sequence[dict[str, Any]], params: Sequence[Param], lines: Sequence[str]) -> str:
    """A self-contained HTML page: for each swept parameter, pass rate and median push -> connect / push -> end
    against it, one line per combination of the other parameters."""
    charts = []
    for knob in params:
        others = [p for p in params if p is not knob]
        for metric, label, y_max in (("pass_rate", "pass rate", 1.0), ("connect_median", "push → connect, median s", None),
                                     ("end_median", "push → end, median s", None)):
            series = []
            for condition in (points(others) if others else [{}]):
                pts = [(s["point"][knob.key], s[metric]) for s in summaries
                       if all(s["point"].get(k) == v for k, v in condition.items()) and s[metric] is not None]
                name = ", ".join(f"{p.key.split('.')[-1]} {p.label(condition[p.key])}" for p in others) or "all"
                if pts:
                    series.append((name, pts))
            if series:
                charts.append(_chart(f"{label} vs {knob.key}", f"{knob.key} ({knob.unit})", label, series, y_max))
    recommendation = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    title = f"faultlab sweep: {settings['scenario']}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}svg{margin:0.5em;"
            "border:1px solid #eee}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{settings['runs']} runs per point, seeds from {settings['seed']}; "
            f"parameters: {html.escape(', '.join(p.key for p in params))}</p>"
            f"<h2>Recommendation</h2><ul>{recommendation}</ul><h2>Charts</h2>{''.join(charts)}</body></html>\n")
