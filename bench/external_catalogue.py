#!/usr/bin/env python3
"""The whole scenario catalogue x every transport, ``faultlab lab run --device external`` against the independent
device program (tests/extdevice/device.py), in real time, optionally as N parallel lanes.

    python bench/external_catalogue.py [--lanes 3] [--transport udp --transport tcp ...] [--scenario S05 ...]
                                       [--pause 5s] [--keepalive 5] [--out DIR]

A lane is one lab process (``faultlab`` from this Python's environment) on free ports of 127.0.0.1 with a device of
its own, registered over one transport, and a slice of the catalogue (the lab run's ``-s`` options); at least one
lane per transport. The lab itself skips what cannot apply to a device it does not control (and says why in its
output). Cases are dealt to the lanes by their scenario length, longest first. Printed: each lane's wall time and verdict, every failed check,
the skipped scenarios with the lab's reason, and the whole run's wall time. Exit 0 only if every lane passed.

``--keepalive`` is the device's CRLF keep-alive interval on TCP/TLS (S25 needs a ping during its call: 5 s, as in
the scenario; a device pinging every 90 s cannot be judged on S25).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faultlab.lab.scenario import list_scenarios  # noqa: E402
from tests.extdevice.catalogue import TRANSPORTS, plan  # noqa: E402
from tests.extdevice.lanes import faultlab_exe, run_lanes  # noqa: E402

PAUSE = 5.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lanes", type=int, default=3)
    p.add_argument("--transport", action="append", choices=TRANSPORTS)
    p.add_argument("--scenario", action="append", help="only these scenario ids (default: the whole catalogue)")
    p.add_argument("--pause", default="5s", help="the pause between calls (the lab's --pause)")
    p.add_argument("--keepalive", type=float, default=5.0)
    p.add_argument("--out", type=Path, help="where lanes keep their reports and traces (default: a temp dir)")
    args = p.parse_args()
    exe = faultlab_exe()
    if exe is None:
        sys.exit("no faultlab entry point next to this Python or on PATH: pip install the project first")
    scenarios = [s for s in list_scenarios() if not args.scenario or s.id in args.scenario]
    pause = float(re.sub(r"[^0-9.]", "", args.pause) or PAUSE) / (1000 if args.pause.endswith("ms") else 1)
    root = args.out or Path(tempfile.mkdtemp(prefix="faultlab-external-catalogue-"))
    lanes = plan(scenarios, args.transport or TRANSPORTS, args.lanes, pause, root)
    for lane in lanes:
        lane.pause = args.pause
        lane.device_args = ["--keepalive", str(args.keepalive)]
        print(f"lane {lane.name}: {' '.join(lane.scenarios)}", flush=True)
    begun = time.monotonic()
    run_lanes(lanes, exe=exe, timeout=7200.0)
    wall = time.monotonic() - begun
    ok = True
    cases = passed = 0
    for lane in lanes:
        report = lane.report or {"cases": []}
        good = sum(c["passed"] for c in report["cases"])
        cases, passed = cases + len(report["cases"]), passed + good
        ok = ok and lane.returncode == 0
        print(f"\nlane {lane.name}: exit {lane.returncode}, {good}/{len(report['cases'])} cases passed, "
              f"{lane.wall:.1f} s{'; ' + lane.error if lane.error else ''}")
        for case in report["cases"]:
            for check in case["checks"]:
                if not check["passed"]:
                    print(f"  FAIL {case['scenario']} {case['transport']} {check['check']}: {check['message']}")
        for line in lane.output.splitlines():
            if ": skipped, " in line:
                print(f"  {line.strip()}")
    print(f"\n{'PASS' if ok else 'FAIL'} {passed}/{cases} cases in {len(lanes)} lanes; wall time {wall:.1f} s "
          f"(reports and traces in {root})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
