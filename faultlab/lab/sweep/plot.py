"""``plot.html``: a sweep's summaries as inline SVG line charts (no external files, no scripts)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from .params import Param, points

__all__ = ["plot_html"]


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
