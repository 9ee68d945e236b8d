"""The reliability tests share their load with the benchmarks: bench/sipload.py (the lab, the counting driver)
and bench/responder.py (the stand-in PBX), imported by path as bench/soak.py imports them."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
