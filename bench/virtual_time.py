#!/usr/bin/env python3
"""Virtual time against real time: the same lab runs, judged the same, on trio's mock clock and on the real one.

    python3 bench/virtual_time.py [--scenario S01 ...] [--seed 1] [--catalogue-rounds 3]

For each chosen scenario (default: a mix that sums to about a minute of lab time), the runner plays the case twice
in this one process, one after the other:

* **baseline, real time**: real sockets on 127.0.0.1, the real clock (what a lab run costs without virtual time);
* **virtual time**: the in-memory network under ``trio.testing.MockClock(autojump_threshold=0)``.

It checks that both give the same verdicts and reports, per scenario and in total: lab seconds covered, wall
seconds in each mode, and the speed-up (real wall / virtual wall). Then it times the whole catalogue in virtual
time (``--catalogue-rounds`` rounds, median), the run time ``faultlab demo`` and ``faultlab lab run`` have.
Project target (issue 6): virtual time at least 100x faster than real time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faultlab.lab.runner import run_case, run_matrix  # noqa: E402
from faultlab.lab.scenario import list_scenarios, load_scenario  # noqa: E402

DEFAULT = ["S01", "S03", "S05", "S06", "S12", "S17", "S19", "S22"]


def verdicts(case) -> list[tuple[str, bool]]:
    return [(c.check, c.passed) for c in case.checks]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", "-s", action="append", help="scenario id (repeat); default: " + " ".join(DEFAULT))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--catalogue-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = args.scenario or DEFAULT

    rows = []
    print(f"{'scenario':10} {'lab s':>7} {'real wall s':>12} {'virtual wall s':>15} {'speed-up':>9}  verdicts")
    for name in names:
        scenario = load_scenario(name)
        t = time.perf_counter()
        real = run_case(scenario, seed=args.seed, virtual=False)
        real_wall = time.perf_counter() - t
        t = time.perf_counter()
        virtual = run_case(scenario, seed=args.seed, virtual=True)
        virtual_wall = time.perf_counter() - t
        lab = sum(r.duration for r in virtual.runs)
        same = verdicts(real) == verdicts(virtual)
        rows.append({"scenario": scenario.id, "lab_seconds": lab, "real_wall": real_wall,
                     "virtual_wall": virtual_wall, "speedup": real_wall / virtual_wall, "same_verdicts": same,
                     "passed": virtual.passed})
        print(f"{scenario.id:10} {lab:7.1f} {real_wall:12.2f} {virtual_wall:15.4f} {real_wall / virtual_wall:8.0f}x"
              f"  {'same' if same else 'DIFFERENT'}, {'pass' if virtual.passed else 'FAIL'}")
    lab = sum(r["lab_seconds"] for r in rows)
    real_wall = sum(r["real_wall"] for r in rows)
    virtual_wall = sum(r["virtual_wall"] for r in rows)
    print(f"{'total':10} {lab:7.1f} {real_wall:12.2f} {virtual_wall:15.4f} {real_wall / virtual_wall:8.0f}x  "
          f"{'all the same' if all(r['same_verdicts'] for r in rows) else 'SOME DIFFER'}")

    catalogue = list_scenarios()
    walls, cases, lab_total = [], 0, 0.0
    for _ in range(args.catalogue_rounds):
        t = time.perf_counter()
        results = run_matrix(catalogue, seed=args.seed)  # every scenario on every transport it applies to
        walls.append(time.perf_counter() - t)
        cases = len(results)
        lab_total = sum(r.duration for c in results for r in c.runs)
    print(f"\nwhole catalogue in virtual time: {cases} cases, {lab_total:.0f} lab seconds, "
          f"median {statistics.median(walls):.2f} s wall over {len(walls)} rounds ({', '.join(f'{w:.2f}' for w in walls)})")
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "seed": args.seed, "rows": rows,
                                         "catalogue_walls": walls, "catalogue_cases": cases,
                                         "catalogue_lab_seconds": lab_total}, indent=2))
    return 0 if all(r["same_verdicts"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
