#!/usr/bin/env python3
"""What RTP costs a virtual-time lab run: the catalogue with and without media, every scenario on every transport.

    python3 bench/media_cost.py [--rounds 3] [--seed 1] [--json FILE]

Three ways of running the whole catalogue (each case on every transport it applies to), in virtual time on the
memory network, ``--rounds`` rounds each, interleaved (min and median):

* **as shipped**: media only where a scenario asks for it (``[call] media = true``: S21);
* **no media**: S21 too without media (its verdict then fails: the device hears no RTP, so no silence timeout;
  only the time counts here);
* **media everywhere**: every scenario's call carries RTP (50 packets/s each way while it is connected).

It prints the wall time of each, the RTP packets sent, and S21 alone with and without media. Packets are counted
from the ``media`` events' ``sent`` totals (caller and device).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faultlab.lab.runner import run_case  # noqa: E402
from faultlab.lab.scenario import list_scenarios, load_scenario  # noqa: E402


def packets(cases) -> int:
    return sum(e.detail.get("sent", 0) for case in cases for run in case.runs for e in run.events
               if e.kind == "media" and e.detail.get("action") == "stopped")


def catalogue(scenarios, seed: int) -> tuple[float, int, int, float]:
    """(wall seconds, cases, RTP packets, lab seconds) of one round."""
    t = time.perf_counter()
    cases = [run_case(s, transport=tr, seed=seed) for s in scenarios for tr in s.transports]
    wall = time.perf_counter() - t
    return wall, len(cases), packets(cases), sum(r.duration for c in cases for r in c.runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    shipped = list_scenarios()
    modes = {
        "as shipped (media in S21 only)": shipped,
        "no media at all": [replace(s, media=False) for s in shipped],
        "media in every scenario": [replace(s, media=True) for s in shipped],
    }
    results = {}
    rounds: dict[str, list] = {label: [] for label in modes}
    for _ in range(args.rounds):  # interleaved, so that the machine's load falls on every mode alike
        for label, scenarios in modes.items():
            rounds[label].append(catalogue(scenarios, args.seed))
    print(f"{'catalogue':34} {'cases':>5} {'lab s':>7} {'RTP packets':>11} {'wall s min / median':>20}  rounds")
    for label in modes:
        walls = [r[0] for r in rounds[label]]
        _, n, sent, lab = rounds[label][0]
        results[label] = {"cases": n, "lab_seconds": round(lab, 1), "packets": sent, "wall_min": round(min(walls), 3),
                          "wall_median": round(statistics.median(walls), 3), "walls": [round(w, 3) for w in walls]}
        print(f"{label:34} {n:>5} {lab:>7.1f} {sent:>11} {min(walls):>9.3f} / {statistics.median(walls):<8.3f}  "
              + ", ".join(f"{w:.3f}" for w in walls))
    s21 = load_scenario("S21")
    print(f"\n{'S21 alone, every transport':34} {'':>5} {'':>7} {'RTP packets':>11} {'wall s (median)':>16}")
    for label, scenario in (("with media", s21), ("without media", replace(s21, media=False))):
        rounds = [catalogue([scenario], args.seed) for _ in range(args.rounds)]
        wall = statistics.median(r[0] for r in rounds)
        results[f"S21 {label}"] = {"packets": rounds[0][2], "wall_median": round(wall, 3)}
        print(f"{label:34} {'':>5} {'':>7} {rounds[0][2]:>11} {wall:>16.3f}")
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "seed": args.seed,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
