"""Running a sweep: every (point, seed) once, in virtual time, on a pool of worker processes, each row appended to
``runs.jsonl`` as it finishes (so an interrupted sweep resumes), one sweep per directory at a time."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any

from faultlab.lab.scenario import Scenario, load_scenario
from faultlab.lab.scenario_set import override

from .executors import Executor, default_jobs, run_dask
from .params import Param, SweepError, apply, points

__all__ = ["chunk_size", "default_jobs", "error_row", "load_rows", "run_key", "run_point", "run_point_safely",
           "run_points_safely", "sweep"]


def run_key(point: dict[str, float], seed: int) -> str:
    return json.dumps({"point": point, "seed": seed}, sort_keys=True)


def run_point(scenario_name: str, sets: Sequence[tuple[str, str]], point: dict[str, float], seed: int,
              behaviour: str | None = None) -> dict[str, Any]:
    """One run in virtual time; its row. Runs in a worker process (everything it takes is picklable)."""
    from faultlab.lab.checks import anchors
    from faultlab.lab.runner import run_case

    make = _point_scenario if _sweeping else _point_scenario.__wrapped__
    scenario = make(scenario_name, tuple(sets), tuple(point.items()))
    case = run_case(scenario, seed=seed, behaviour=behaviour)
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


_sweeping = False  # in a sweep: run_point takes its point's scenario from _point_scenario's memory


@functools.lru_cache(maxsize=64)
def _point_scenario(scenario_name: str, sets: tuple[tuple[str, str], ...],
                    point: tuple[tuple[str, float], ...]) -> Scenario:
    """The scenario of one grid point (a frozen dataclass), made once per worker process and sweep (a worker runs
    many seeds of each point; :func:`sweep` forgets them at its start, so a library changed meanwhile counts from
    the next sweep on and every run of one sweep plays the same scenario). Outside a sweep: made each time."""
    scenario = load_scenario(scenario_name)
    for key, value in sets:
        scenario = override(scenario, key, value)
    scenario = apply(scenario, dict(point))
    if scenario.rtt is None:  # the sweep's link profile is the network: no lab round trip unless one is set
        scenario = replace(scenario, rtt=0.0)
    return scenario


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
        with _one_collection():
            return run_point(scenario_name, sets, point, seed, behaviour)
    except Exception as exc:  # noqa: BLE001 - one run's failure is that run's row, the sweep goes on
        return error_row(point, seed, exc)


_frozen_in: int | None = None  # the process whose heap is frozen out of the cyclic collector's passes (gc.freeze)


@contextlib.contextmanager
def _one_collection() -> Iterator[None]:
    """A run without the cyclic collector, then one collection of the young generations, where all it left is.
    A run makes thousands of objects in cycles (trio's tasks, frames, tracebacks, the lab's actors): collected as
    they go, each is traversed in every generation it survives into; collected once after the run, once. What a
    process had before its first sweep run (modules, caches; a forked worker: its parent's heap) is frozen out
    of the collector's passes after that run. A run's own garbage is bounded by the run (the watchdog and the
    scenario's duration end it); between runs the collector works as usual (the oldest generation included)."""
    global _frozen_in
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _frozen_in != os.getpid():
            gc.collect()
            gc.freeze()
            _frozen_in = os.getpid()
        else:
            gc.collect(1)
        if enabled:
            gc.enable()


def run_points_safely(scenario_name: str, sets: Sequence[tuple[str, str]],
                      chunk: Sequence[tuple[dict[str, float], int]], behaviour: str | None = None
                      ) -> list[dict[str, Any]]:
    """:func:`run_point_safely` for several (point, seed): one task of a worker, so that a run's row does not pay
    a round trip to the pool of its own."""
    global _sweeping
    _sweeping = True  # a worker process: it runs this sweep's points only
    return [run_point_safely(scenario_name, sets, point, seed, behaviour) for point, seed in chunk]


def chunk_size(runs: int, jobs: int) -> int:
    """Runs per task handed to a worker: a few, so the pool's traffic is shared, yet at least 8 tasks per worker
    so the workers finish together, and rows keep coming (each chunk's rows are recorded when it is done)."""
    return max(1, min(8, runs // (jobs * 8)))


def sweep(scenario_name: str, params: Sequence[Param], *, runs: int, seed: int, out: Path, jobs: int = 1,
          sets: Sequence[tuple[str, str]] = (), behaviour: str | None = None,
          on_row: Callable[[dict[str, Any], int, int], None] | None = None,
          stop: Callable[[], bool] | None = None, extra: dict[str, int] | None = None,
          executor: Executor | None = None) -> list[dict[str, Any]]:
    """Run every (point, seed) not yet in ``out/runs.jsonl``; return all rows of this sweep, in grid order.
    ``extra`` (by ``json.dumps(point, sort_keys=True)``): more runs at some points, their seeds continuing.

    ``out/sweep.json`` records the settings; a different sweep in the same directory is refused, the same sweep
    with more ``runs`` only runs the new seeds. ``out/sweep.lock`` is held for the sweep's duration: a second sweep
    into the same directory fails at once. A run that raises is recorded as a failed row with its ``error``.
    ``on_row(row, done, total)`` after each run; ``stop()`` true ends the sweep early (what is done is kept).
    ``executor`` a dask one (:mod:`.executors`): the runs go to dask workers instead of ``jobs`` local ones."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep is running in {out}; wait for it or use another --out") from None
        global _sweeping
        _point_scenario.cache_clear()
        _sweeping = True
        try:
            return _sweep_locked(scenario_name, params, runs=runs, seed=seed, out=out, jobs=jobs, sets=sets,
                                 behaviour=behaviour, on_row=on_row, stop=stop, extra=extra or {},
                                 executor=executor)
        finally:
            _sweeping = False


def _sweep_locked(scenario_name: str, params: Sequence[Param], *, runs: int, seed: int, out: Path, jobs: int,
                  sets: Sequence[tuple[str, str]], behaviour: str | None,
                  on_row: Callable[[dict[str, Any], int, int], None] | None,
                  stop: Callable[[], bool] | None, extra: dict[str, int],
                  executor: Executor | None = None) -> list[dict[str, Any]]:
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
    plan = [(p, seed + i) for p in grid for i in range(runs + extra.get(json.dumps(p, sort_keys=True), 0))]
    todo = [(p, s) for p, s in plan if run_key(p, s) not in done]
    total = len(plan)
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

        if executor is not None and executor.is_dask:
            run_dask(executor, todo, run_chunk=functools.partial(run_points_safely, scenario_name, list(sets),
                                                                 behaviour=behaviour),
                     error_row=error_row, record=record,
                     stop=stop, forget=_point_scenario.cache_clear)
        elif jobs <= 1:
            for point, s in todo:
                if stop is not None and stop():
                    break
                record(run_point_safely(scenario_name, sets, point, s, behaviour))
        else:
            with ProcessPoolExecutor(jobs) as pool:
                pending: dict[Future, list[tuple[dict[str, float], int]]] = {}
                queue = iter(todo)
                size = chunk_size(len(todo), jobs)

                def submit(n: int) -> None:
                    for _ in range(n):
                        chunk = list(itertools.islice(queue, size))
                        if chunk:
                            pending[pool.submit(run_points_safely, scenario_name, sets, chunk, behaviour)] = chunk

                submit(jobs * 4)
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        chunk = pending.pop(future)
                        try:
                            rows = future.result()
                        except BrokenProcessPool as exc:  # a worker died: not these runs' fault, leave them to redo
                            broken = exc
                            continue
                        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be unpickled
                            rows = [error_row(point, s, exc) for point, s in chunk]
                        for row in rows:
                            record(row)
                    if broken is not None or (stop is not None and stop()):
                        for future in pending:
                            future.cancel()
                        break
                    submit(len(finished))
    if broken is not None:
        raise SweepError(f"a worker process died ({broken}); {count} of {total} runs are kept in {rows_path}: "
                         "run the same command again to finish")
    return [done[k] for k in (run_key(p, s) for p, s in plan) if k in done]

