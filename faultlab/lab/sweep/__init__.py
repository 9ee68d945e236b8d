"""Timeout sweeps: a scenario over a grid of parameter values x seeded runs, in virtual time, on every core.

``faultlab sweep --scenario S01 --param device.invite_deadline=1,2,4,8 --param link.loss=0..20:10 --runs 20``
runs every point of the grid ``runs`` times (seeds ``seed``, ``seed + 1``, ... the same at every point, so points
differ only by their parameters) and records one row per run: the parameters, the seed, the verdicts and the key
times (push -> ring, push -> connect, push -> end). Rows go to ``DIR/runs.jsonl`` as they finish, so an
interrupted sweep resumes where it stopped; then ``results.csv``, ``results.json``, the charts, ``report.html`` and the
recommendation (:func:`recommend`).

Parameters (:func:`parse_param`), a value list ``a,b,c`` or a range ``lo..hi:step`` (both ends included):

* ``device.register_deadline|invite_deadline|total_deadline|ring_timeout`` (aliases ``device.register_wait``,
  ``device.invite_wait``, ``device.total_wait``): seconds (a bare number) or a duration (``1500ms``);
* ``link.delay|jitter`` (one way, both directions; bare number: milliseconds), ``link.loss|duplicate|reorder``
  (both directions; bare number: percent), ``link.rate`` (``1mbit``): on top of the scenario's own link;
* ``rule.NAME.delay``: the delay of the scenario's fault rule ``NAME`` (bare number: seconds);
* ``call.*``, ``pbx.hold``, ``push.delay``, ``expect.*``: as ``faultlab lab run --set`` (:func:`override`).
"""

from .executors import Executor, parse_executor
from .params import ALIASES, Param, SweepError, apply, duration_text, parse_param, points
from .plot import plot_html
from .results import recommend, summarise, write_results
from .run import default_jobs, run_point, sweep
from .until import sweep_until_confident

__all__ = ["ALIASES", "Executor", "Param", "SweepError", "apply", "default_jobs", "duration_text", "parse_executor",
           "parse_param", "plot_html", "points", "recommend", "run_point", "sweep", "sweep_until_confident", "summarise",
           "write_results"]
