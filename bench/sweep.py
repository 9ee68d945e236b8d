#!/usr/bin/env python3
"""Sweep throughput: 1,000 runs of a 30-second scenario in virtual time, on 1 worker and on every core.

    python3 bench/sweep.py [--runs 1000] [--scenario S01] [--hang-up-after 26s] [--dask] [--rounds N]

The scenario is S01 (push, REGISTER, INVITE, answer at 1 s) with the caller hanging up 26 s after the answer, so a
run covers 30 s of lab time (1 s idle before the call + 1 + 26 + 2 s settle). The same sweep (one grid point,
``--runs`` seeds) runs twice, into fresh directories: baseline with 1 worker process, then ``--jobs auto`` (one per
core). Reported: wall time, runs per second, lab seconds per wall second, and that both gave the same rows.
With ``--dask`` (needs ``pip install 'faultlab[dask]'``) the same grid then runs twice more with as many dask
worker processes as the local pool: on a LocalCluster the sweep starts and stops itself (``--executor
dask-local:N``, its start-up counted), and on a scheduler with its workers already running, as a cluster of several
machines is used (``--executor dask://HOST:PORT``; the cluster is started, and its workers import faultlab,
before the clock starts). The overhead of
each over the local pool is reported in %.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faultlab.lab.sweep import default_jobs, parse_executor, parse_param, sweep  # noqa: E402


def strip(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "wall"} for r in rows), key=lambda r: json.dumps(r))


def running_cluster(workers: int):
    """A dask scheduler with ``workers`` worker processes, up before the sweep's clock starts, each having imported
    what a run needs (as the long-lived workers of a cluster of several machines have after their first sweep)."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=":0")
    with Client(cluster) as client:
        client.run(importlib.import_module, "faultlab.lab.runner")
    return cluster


def run_engine(args, params, sets, jobs: int, executor, n: int) -> tuple[float, list[dict]]:
    """One sweep of the grid on one engine, into a fresh directory: (wall seconds, rows)."""
    cluster = None
    if callable(executor):  # a scheduler and its workers, up before the clock starts
        cluster = executor(n)
        executor = parse_executor("dask://" + cluster.scheduler_address.removeprefix("tcp://"))
    try:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            rows = sweep(args.scenario, params, runs=args.runs, seed=1, out=Path(out), jobs=jobs, sets=sets,
                         executor=executor)
            return time.perf_counter() - t, rows
    finally:
        if cluster is not None:
            cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--scenario", default="S01")
    parser.add_argument("--hang-up-after", default="26s")
    parser.add_argument("--dask", action="store_true", help="also on a dask LocalCluster of the same size")
    parser.add_argument("--rounds", type=int, default=1, help="run every engine this many times, in turn, and "
                        "compare the medians (a busy or throttled machine drifts between engines)")
    args = parser.parse_args()
    params = [parse_param("device.invite_deadline=5")]
    sets = [("call.hang_up_after", args.hang_up_after)]
    results = {}
    n = default_jobs()
    engines = [("1 worker (baseline)", 1, None), (f"{n} workers (--jobs auto)", n, None)]
    if args.dask:
        engines.append((f"dask-local:{n} (start counted)", n, parse_executor(f"dask-local:{n}")))
        engines.append((f"dask://, {n} workers running", n, running_cluster))
    walls: dict[str, list[float]] = {label: [] for label, _, _ in engines}
    for round_ in range(args.rounds):
        for label, jobs, executor in engines:
            wall, rows = run_engine(args, params, sets, jobs, executor, n)
            walls[label].append(wall)
            results[label] = (statistics.median(walls[label]), rows)
            lab = sum(r["end"] + 1 + 2 for r in rows if r["end"] is not None)  # push->end + idle + settle, per run
            passed = sum(r["passed"] for r in rows)
            print(f"{label:28} {len(rows)} runs in {wall:6.1f} s = {len(rows) / wall:5.1f} runs/s, "
                  f"{lab / wall:6.0f} lab s per wall s, {passed} passed" + (f" (round {round_ + 1})"
                                                                            if args.rounds > 1 else ""))
    if args.rounds > 1:
        for label, each in walls.items():
            print(f"{label:28} median {statistics.median(each):6.1f} s of {', '.join(f'{w:.1f}' for w in each)}")
    (a_wall, a), (b_wall, b), *dask = results.values()
    same = strip(a) == strip(b)
    print(f"speed-up {a_wall / b_wall:.2f}x; same rows: {same}")
    summary = {"runs": args.runs, "baseline_wall": a_wall, "parallel_wall": b_wall, "same": same}
    for (d_wall, d), key in zip(dask, ("dask_local", "dask_running")):
        same_dask = strip(d) == strip(b)
        same = same and same_dask
        print(f"{key.replace('_', ' ')} over the local pool: {(d_wall / b_wall - 1) * 100:+.1f} % wall time; "
              f"same rows: {same_dask}")
        summary.update({f"{key}_wall": d_wall, f"{key}_overhead_pct": (d_wall / b_wall - 1) * 100,
                        f"same_{key}": same_dask})
    print(json.dumps(summary))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
