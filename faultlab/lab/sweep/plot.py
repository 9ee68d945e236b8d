"""A sweep's pictures: PNG and SVG charts drawn with matplotlib (Agg, no display) and ``report.html``, one
self-contained page that embeds them (PNG as ``data:`` URIs: no scripts, no network).

The charts answer the sweep's question: pass rate with its 95 % interval (error bars) against the deadline (one
line per condition, the target and the recommended value marked), a heatmap when the grid is a deadline × one condition parameter, and
the cost of waiting (median push → end of the calls that never connected) against the deadline. matplotlib is
imported only when a sweep writes its pictures, so ``faultlab --help`` does not load it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .confidence import wilson
from .params import Param, points

__all__ = ["Chart", "band", "charts_for", "headline", "plot_html", "write_plots", "y_range"]

DIRECT_LABELS = 6  # more conditions than this: one panel per condition instead of a legend
MAX_PANELS = 24
_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
            "#bcbd22"]


@dataclass(frozen=True)
class Chart:
    name: str  # file stem: pass_rate, heatmap, waiting
    title: str
    x: Param  # the deadline (or the one swept parameter)
    other: Param | None = None  # the heatmap's second parameter


def _varied(params: Sequence[Param]) -> list[Param]:
    return [p for p in params if len(p.values) > 1]


def charts_for(summaries: Sequence[dict[str, Any]], params: Sequence[Param]) -> list[Chart]:
    """Which charts a grid gets: none for a parameter with a single value; pass rate against the deadline (or the
    one varied parameter); a heatmap for a deadline × one other varied parameter; the cost of waiting when some
    calls never connected."""
    varied = _varied(params)
    if not varied:
        return []
    x = next((p for p in varied if p.key.startswith("device.")), varied[0])
    others = [p for p in varied if p is not x]
    charts = [Chart("pass_rate", f"Pass rate vs {x.key} (bars: 95 % interval)", x)]
    if len(others) == 1:
        charts.append(Chart("heatmap", f"Pass rate by {x.key} and {others[0].key}", x, others[0]))
    if x.key.startswith("device.") and any(s.get("unconnected_end_median") is not None for s in summaries):
        charts.append(Chart("waiting", f"Cost of waiting: push → end of calls that never connected vs {x.key}", x))
    return charts


def headline(lines: Sequence[str]) -> list[str]:
    """The answer: the first recommendation line per condition (not the indented price of each step, nor a
    heading ending in a colon that introduces them)."""
    return [line for line in lines if line and not line[0].isspace() and not line.rstrip().endswith(":")]


def band(summary: dict[str, Any]) -> tuple[float, float]:
    """The pass rate's 95 % interval: the summary's own, else the Wilson interval from runs and pass rate."""
    if summary.get("pass_low") is not None and summary.get("pass_high") is not None:
        return summary["pass_low"], summary["pass_high"]
    runs = int(summary["runs"])
    return wilson(round(summary["pass_rate"] * runs), runs)


def y_range(lows: Sequence[float], target: float) -> tuple[float, float]:
    """The pass-rate axis zoomed to what matters: from a margin below min(lower bounds, target) to just above 1."""
    bottom = min([*lows, target])
    margin = max(0.02, 0.08 * (1 - bottom))
    return max(0.0, bottom - margin), 1.0 + margin / 4


def _conditions(params: Sequence[Param], x: Param) -> list[tuple[str, dict[str, float]]]:
    """(name, point values) of each combination of the varied parameters other than ``x``."""
    others = [p for p in _varied(params) if p is not x]
    return [(", ".join(f"{p.key.split('.')[-1]} {p.label(c[p.key])}" for p in others) or "all runs", c)
            for c in (points(others) if others else [{}])]


def _series(summaries: Sequence[dict[str, Any]], x: Param, condition: dict[str, float]) -> list[dict[str, Any]]:
    return sorted((s for s in summaries if all(s["point"].get(k) == v for k, v in condition.items())),
                  key=lambda s: s["point"][x.key])


def passes(summary: dict[str, Any], target: float) -> bool:
    """A point reaches ``target`` as the recommendation judges it: by its 95 % lower bound when the summary has
    one, else by its pass rate."""
    if summary.get("pass_low") is not None:
        return summary["pass_low"] >= target
    return summary["pass_rate"] >= target


def recommended(series: Sequence[dict[str, Any]], x: Param, target: float) -> float | None:
    """The smallest value of ``x`` that reaches ``target`` (as the recommendation says), or None."""
    return next((s["point"][x.key] for s in series if passes(s, target)), None)


def _legend(ax, drawn: int) -> None:
    if 1 < drawn <= DIRECT_LABELS:  # one line: the title names it; many: one panel each (_figure)
        ax.legend(loc="best", fontsize=8, frameon=False)


def _pass_rate(ax, chart: Chart, summaries, conditions, target: float) -> list[float]:
    """Draw each condition's pass rate with its 95 % interval as an error bar (conditions side by side at each
    value, so that their intervals do not hide each other); return the intervals' lower bounds (for the shared
    y axis)."""
    x = chart.x
    lows: list[float] = []
    drawn = 0
    dodge = 0.012 * ((max(x.values) - min(x.values)) or 1.0)
    for n, name, condition in conditions:
        series = _series(summaries, x, condition)
        if not series:
            continue
        colour = _COLOURS[n % len(_COLOURS)]
        shift = (n - (len(conditions) - 1) / 2) * dodge
        xs = [s["point"][x.key] + shift for s in series]
        rates = [s["pass_rate"] for s in series]
        bands = [band(s) for s in series]
        lows += [lo for lo, _ in bands]
        ax.errorbar(xs, rates, yerr=[[max(0.0, r - lo) for r, (lo, _) in zip(rates, bands)],
                                     [max(0.0, hi - r) for r, (_, hi) in zip(rates, bands)]],
                    fmt="o-", color=colour, lw=2, ms=4, elinewidth=1.2, capsize=3, label=name)
        best = recommended(series, x, target)
        if best is not None:
            rate = next(s["pass_rate"] for s in series if s["point"][x.key] == best)
            ax.plot([best + shift], [rate], marker="*", ms=16, color=colour, mec="black", mew=0.8, ls="none",
                    zorder=5)
        drawn += 1
    ax.axhline(target, color="black", ls="--", lw=1)
    ax.annotate(f"target {target:.0%}", (0, target), xycoords=("axes fraction", "data"), xytext=(4, -3),
                textcoords="offset points", fontsize=8, ha="left", va="top")
    ax.yaxis.set_major_formatter(_percent())
    _x_axis(ax, x)
    _legend(ax, drawn)
    return lows


def _x_axis(ax, x: Param) -> None:
    """Ticks at the swept values, and room either side so no point sits on the frame."""
    lo, hi = min(x.values), max(x.values)
    pad = 0.04 * (hi - lo) or 0.5
    ax.set_xticks(list(x.values), [f"{v:g}" for v in x.values])
    ax.set_xlim(lo - pad, hi + pad)


def _percent():
    from matplotlib.ticker import PercentFormatter
    return PercentFormatter(1.0, decimals=0)


def _heatmap(ax, chart: Chart, summaries, target: float) -> None:
    x, other = chart.x, chart.other
    assert other is not None
    cells: list[list[dict[str, Any] | None]] = [[None] * len(x.values) for _ in other.values]
    for s in summaries:
        if s["point"].get(x.key) in x.values and s["point"].get(other.key) in other.values:
            cells[other.values.index(s["point"][other.key])][x.values.index(s["point"][x.key])] = s
    grid = [[None if c is None else c["pass_rate"] for c in row] for row in cells]
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    image = ax.imshow(values, cmap="RdYlGn", vmin=min(0.5, target - 0.1), vmax=1.0, aspect="auto", origin="lower")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v is not None:
                dark = v >= 0.9 or v < min(0.5, target - 0.1) + 0.1  # the colour map's dark ends
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=9, color="white" if dark else "black")
        best = next((j for j, c in enumerate(cells[i]) if c is not None and passes(c, target)), None)
        if best is not None:
            from matplotlib.patches import Rectangle
            ax.add_patch(Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=2.5))
    ax.set_xticks(range(len(x.values)), [x.label(v) for v in x.values])
    ax.set_yticks(range(len(other.values)), [other.label(v) for v in other.values])
    ax.set_xlabel(f"{x.key}\noutlined: recommended (smallest value reaching {target:.0%})")
    ax.set_ylabel(other.key)
    ax.figure.colorbar(image, ax=ax, format=_percent(), label="pass rate")


def _waiting(ax, chart: Chart, summaries, conditions) -> float:
    """Draw each condition's median push -> end of the calls that never connected; return the highest value."""
    x = chart.x
    drawn, top = 0, 0.0
    for n, name, condition in conditions:
        pts = [(s["point"][x.key], s["unconnected_end_median"]) for s in _series(summaries, x, condition)
               if s.get("unconnected_end_median") is not None]
        if not pts:
            continue
        colour = _COLOURS[n % len(_COLOURS)]
        ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", color=colour, lw=2, ms=4, label=name)
        drawn += 1
        top = max([top, *(v for _, v in pts)])
    _x_axis(ax, x)
    _legend(ax, drawn)
    return top


def _figure(chart: Chart, summaries, params, target: float):
    """One chart; more than DIRECT_LABELS conditions become panels (at most MAX_PANELS), one per condition."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    if chart.name == "heatmap":
        figure = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(chart.x.values)), 4.2), dpi=100, layout="constrained")
        ax = figure.add_subplot()
        _heatmap(ax, chart, summaries, target)
        ax.set_title(chart.title, fontsize=11)
        return figure
    conditions = [(n, name, c) for n, (name, c) in enumerate(_conditions(params, chart.x))]
    panels = [conditions] if len(conditions) <= DIRECT_LABELS else [[c] for c in conditions[:MAX_PANELS]]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    figure = Figure(figsize=(7.5 if cols == 1 else 3.4 * cols, 4.2 if rows == 1 else 2.6 * rows + 0.8), dpi=100,
                    layout="constrained")
    axes = list(figure.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).flat)
    lows, top = [], 0.0
    for ax, panel in zip(axes, panels):
        if chart.name == "pass_rate":
            lows += _pass_rate(ax, chart, summaries, panel, target)
        else:
            top = max(top, _waiting(ax, chart, summaries, panel))
        ax.grid(True, color="#dddddd", lw=0.6)
        if len(panels) > 1:
            ax.set_title(panel[0][1], fontsize=9)
    for ax in axes[len(panels):]:  # the grid's empty cells
        ax.set_visible(False)
    first = figure.axes[0]
    if chart.name == "pass_rate":
        first.set_ylim(*y_range(lows, target))  # shared: every panel
        note = "   ★ = recommended (smallest value reaching the target)"
        y_label = "pass rate"
    else:
        first.set_ylim(0, top * 1.15 or 1.0)
        note, y_label = "", "median push → end, s\n(calls that never connected)"
    shown = "" if len(conditions) <= max(DIRECT_LABELS, MAX_PANELS) else f" (first {MAX_PANELS} of {len(conditions)})"
    figure.suptitle(chart.title + shown, fontsize=11)
    figure.supxlabel(f"{chart.x.key} ({chart.x.unit}){note}", fontsize=10)
    figure.supylabel(y_label, fontsize=10)
    return figure


def write_plots(out: Path, settings: dict, summaries: Sequence[dict[str, Any]], params: Sequence[Param],
                lines: Sequence[str], target: float = 0.99) -> list[Path]:
    """Draw each chart into ``out/NAME.png`` and ``out/NAME.svg``, write ``report.html`` (and ``plot.html``,
    the same page) and return the files written."""
    import matplotlib
    matplotlib.use("Agg")  # no display: never a window, also on a desktop
    written, images = [], []
    for chart in charts_for(summaries, params):
        figure = _figure(chart, summaries, params, target)
        for ext in ("png", "svg"):
            path = out / f"{chart.name}.{ext}"
            figure.savefig(path, format=ext)
            written.append(path)
        images.append((chart, base64.b64encode((out / f"{chart.name}.png").read_bytes()).decode()))
    page = plot_html(settings, params, lines, images)
    for name in ("report.html", "plot.html"):
        (out / name).write_text(page)
        written.append(out / name)
    return written


def plot_html(settings: dict, params: Sequence[Param], lines: Sequence[str],
              images: Sequence[tuple[Chart, str]]) -> str:
    """The page: the answer per condition at the top, then each chart (base64 PNG) and the full findings."""
    answer = "".join(f"<li>{html.escape(line)}</li>" for line in headline(lines))
    figures = "".join(f"<figure><img alt='{html.escape(c.title)}' src='data:image/png;base64,{data}'>"
                      f"<figcaption>{html.escape(c.title)} (<a href='{c.name}.svg'>SVG</a>)</figcaption></figure>"
                      for c, data in images)
    details = html.escape("\n".join(lines))
    title = f"faultlab sweep: {settings['scenario']}"
    fixed = [f"{p.key} = {p.label(p.values[0])}" for p in params if len(p.values) == 1]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<style>body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1000px}img{max-width:100%}"
            "#answer li{font-size:1.1em;margin:.3em 0}pre{white-space:pre-wrap}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><h2>Answer</h2><ul id='answer'>{answer}</ul>"
            f"<p>{settings['runs']} runs per point, seeds from {settings['seed']}"
            + (f"; fixed: {html.escape(', '.join(fixed))}" if fixed else "") + "</p>"
            f"{figures}<h2>Every step</h2><pre>{details}</pre></body></html>\n")
