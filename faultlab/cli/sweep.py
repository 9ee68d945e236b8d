"""``faultlab sweep``: a scenario over a grid of parameters x seeded runs, with results, a plot and a
recommendation. Thin: parse options, call :mod:`faultlab.lab.sweep`, show progress with rich."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from faultlab.cli._common import failing
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from faultlab.lab.device.logic import BEHAVIOURS
from faultlab.lab.scenario import ScenarioError, load_scenario
from faultlab.lab.scenario_set import override
from faultlab.lab.sweep import (SweepError, default_jobs, parse_executor, parse_param, recommend, summarise,
                                 sweep, sweep_until_confident, write_results)


_fail = failing("faultlab sweep")


def sweep_command(
    scenario: Annotated[str, typer.Option("--scenario", "-s", help="The scenario to sweep: id (S01), slug or TOML "
                                          "file (faultlab lab scenarios).")],
    param: Annotated[list[str], typer.Option("--param", "-P", help="KEY=VALUES to sweep, repeatable: a list (2,4,8) "
                                             "or a range LO..HI:STEP. Keys: device.invite_deadline (alias "
                                             "device.invite_wait), device.register_deadline, device.total_deadline, "
                                             "device.ring_timeout (seconds); link.delay, link.jitter (ms, one way); "
                                             "link.loss, link.duplicate, link.reorder (%); link.rate (1mbit); "
                                             "rule.NAME.delay (s); call.*, pbx.hold, push.delay, network.rtt (s).")],
    runs: Annotated[int, typer.Option(help="Runs per grid point (seeds SEED, SEED+1, ...: the same at every "
                                      "point).")] = 20,
    seed: Annotated[int, typer.Option(help="The first seed.")] = 1,
    jobs: Annotated[str, typer.Option(help="Worker processes: a number, or auto (one per CPU core).")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output directory: runs.jsonl (resumable), results.csv, "
                                                "results.json, report.html. Default: sweep-<scenario>.")] = None,
    target: Annotated[float, typer.Option(help="Pass rate a deadline must reach to be recommended (0-1).")] = 0.99,
    set_: Annotated[list[str], typer.Option("--set", help="Fix a scenario field for the whole sweep, KEY=VALUE "
                                            "(as in faultlab lab run --set).")] = [],
    behaviour: Annotated[Optional[str], typer.Option(help=f"Sweep a known-bad reference device: "
                                                     f"{', '.join(BEHAVIOURS)}.")] = None,
    executor: Annotated[str, typer.Option(help="Where runs execute: local (--jobs processes here), dask-local[:N] "
                                          "(a dask LocalCluster of N worker processes, default one per core) or "
                                          "dask://HOST:PORT (a running dask scheduler's workers; needs "
                                          "pip install 'faultlab\\[dask]').")] = "local",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    until_confident: Annotated[bool, typer.Option("--until-confident", help="After --runs, add runs only at the "
                                                  "points next to each answer's boundary until the answer is "
                                                  "settled with 95 % confidence (or --max-runs).")] = False,
    max_runs: Annotated[int, typer.Option(help="With --until-confident: runs per point at most.")] = 2000,
) -> None:
    """Sweep a scenario over device deadlines, link and fault parameters, each point run --runs times in virtual
    time on every core; write results.csv, results.json, charts and report.html and print the smallest deadline that
    passes.
    Interrupted (Ctrl-C)? Run the same command again: finished runs are kept."""
    base, sets, params, n_jobs = _checked(scenario, param, set_, runs=runs, target=target, behaviour=behaviour,
                                          jobs=jobs)
    try:
        engine = parse_executor(executor)
    except SweepError as exc:
        _fail(str(exc))
    out = out or Path(f"sweep-{base.id}")
    grid = 1
    for p in params:
        grid *= len(p.values)
    err = Console(stderr=True)
    where = engine.describe() if engine.is_dask else f"{n_jobs} jobs"
    err.print(f"faultlab sweep: {base.id} {base.slug}, {grid} points x {runs} runs = {grid * runs} runs, seeds "
              f"{seed}..{seed + runs - 1}, {where}, virtual time; output in {out}/")
    if until_confident:
        err.print(f"then more runs next to each answer's boundary until it is settled (at most {max_runs} per point)")
    begun = time.perf_counter()
    with _interrupt() as interrupted:
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), console=err, transient=True, disable=quiet) as progress:
                task = progress.add_task("runs", total=grid * runs)

                def on_row(row, done, total) -> None:
                    progress.update(task, completed=done, total=total)

                common = dict(runs=runs, seed=seed, out=out, jobs=n_jobs, sets=sets, behaviour=behaviour,
                              on_row=on_row, stop=interrupted.is_set, executor=engine)
                if until_confident:
                    if max_runs < runs:
                        _fail(f"--max-runs {max_runs} is below --runs {runs}: give at least {runs}")
                    rows = sweep_until_confident(scenario, params, target=target, max_runs=max_runs, **common)
                else:
                    rows = sweep(scenario, params, **common)
        except SweepError as exc:
            _fail(str(exc))
    wall = time.perf_counter() - begun
    if interrupted.is_set():
        err.print(f"interrupted after {len(rows)} runs; run the same command again to finish")
        raise typer.Exit(130)
    _show(rows, params, base, target=target, out=out, wall=wall)


class _Flag:
    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@contextlib.contextmanager
def _interrupt() -> Iterator[_Flag]:
    """Ctrl-C only sets a flag while the sweep runs (it stops after the runs under way); the previous SIGINT
    handler is back after."""
    flag = _Flag()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _checked(scenario: str, param: list[str], set_: list[str], *, runs: int, target: float, behaviour: str | None,
             jobs: str) -> tuple:
    """(the scenario with --set applied, the --set pairs, the parameters, the number of jobs); fails on a bad
    option."""
    try:
        base = load_scenario(scenario)
        sets = []
        for item in set_:
            key, sep, value = item.partition("=")
            if not sep:
                _fail(f"--set {item!r}: write KEY=VALUE")
            override(base, key.strip(), value.strip())
            sets.append((key.strip(), value.strip()))
        params = [parse_param(p) for p in param]
    except (ScenarioError, SweepError) as exc:
        _fail(str(exc))
    if not params:
        _fail("give at least one --param, e.g. --param device.invite_deadline=2,4,8")
    if len({p.key for p in params}) != len(params):
        _fail("each --param key once")
    if runs < 1:
        _fail("--runs must be at least 1")
    if not 0 < target <= 1:
        _fail("--target is a pass rate between 0 and 1, e.g. 0.99")
    if behaviour is not None and behaviour not in BEHAVIOURS:
        _fail(f"--behaviour {behaviour!r}: use one of {', '.join(BEHAVIOURS)}")
    try:
        n_jobs = default_jobs() if jobs == "auto" else int(jobs)
        if n_jobs < 1:
            raise ValueError
    except ValueError:
        _fail(f"--jobs {jobs!r}: a number of processes (1 or more) or auto")
    return base, sets, params, n_jobs


def _show(rows: list, params: list, base, *, target: float, out: Path, wall: float) -> None:
    """Write the results and print the table and the recommendation."""
    summaries = summarise(rows, params)
    lines = recommend(summaries, params, target)
    write_results(out, rows, params, summaries, lines, target)
    console = Console() if sys.stdout.isatty() else Console(width=140)

    table = Table(title=f"{base.id} {base.slug}: pass rate and median times (s after the push) per point")
    for p in params:
        table.add_column(p.key, justify="right")
    for column in ("runs", "pass", "→ ring", "→ connect", "→ end", "end reasons"):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(*(p.label(s["point"][p.key]) for p in params), str(s["runs"]), f"{s['pass_rate']:.0%}",
                      *(f"{s[k]:.2f}" if s[k] is not None else "-" for k in ("ring_median", "connect_median",
                                                                             "end_median")),
                      ", ".join(f"{k} {v}" for k, v in sorted(s["end_reasons"].items())))
    console.print(table)
    console.print("[bold]Recommendation[/bold]")
    for line in lines:
        console.print(line, highlight=False)
    errored = [r for r in rows if r.get("error")]
    if errored:
        console.print(f"{len(errored)} of {len(rows)} runs errored (counted as failed; the error column of "
                      f"results.csv says why), e.g. {errored[0]['error']}", highlight=False)
    console.print(f"{len(rows)} runs in {wall:.1f} s; {out}/results.csv, results.json, report.html")
