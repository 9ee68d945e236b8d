"""Parsing hostile header shapes stays linear in their size.

For each shape of tests/unit/test_sip_parse.py's hostile-size test, parses the message and reads every accessor at
size N and 4N and prints the time of each and their ratio, beside a benign header of the same sizes (the
baseline). Linear is a ratio near 4; quadratic near 16.

    python3 bench/hostile_parse.py [--size 15000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

from faultlab.sip import SipError, parse_message, remove_top_value


def _big(header: bytes) -> bytes:
    return b"OPTIONS sip:x SIP/2.0\r\n" + header + b"\r\nl: 0\r\n\r\n"


SHAPES = {
    "baseline (benign)": lambda n: _big(b"Subject: " + b"x" * (2 * n)),
    "params": lambda n: _big(b"Via: SIP/2.0/UDP h" + b";a" * n),
    "commas": lambda n: _big(b"Via: " + b"," * (2 * n)),
    "quoted-commas": lambda n: _big(b'Contact: ""' + b"," * (2 * n)),
    "vias": lambda n: _big(b"Via: " + b"SIP/2.0/UDP h," * (n // 7)),
    "escapes": lambda n: _big(b'Contact: "' + b'\\"' * n),
    "angles": lambda n: _big(b"Contact: " + b"<" * (2 * n)),
    "spaced-params": lambda n: _big(b"Contact: <sip:a>" + b"; a = b " * (n // 4)),
    "slashes": lambda n: _big(b"Via: " + b"a/" * n),
    "spaces": lambda n: _big(b"Via: SIP/2.0/UDP h" + b" " * (2 * n)),
}


def exercise(raw: bytes) -> None:
    m = parse_message(raw)
    for attr in ("top_via", "vias", "contacts"):
        try:
            getattr(m, attr)
        except SipError:
            pass
    m.get_all("via")
    m.get_all("contact")
    for name in ("via", "contact"):
        try:
            remove_top_value(m, name)
        except SipError:
            pass


def best_of(raw: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        exercise(raw)
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=15000, help="N: repeats of the hostile unit (default 15000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per point; the fastest counts")
    args = parser.parse_args()
    n = args.size
    print(f"{'shape':<20} {'bytes N':>9} {'ms at N':>9} {'ms at 4N':>9} {'ratio':>6}")
    for name, make in SHAPES.items():
        small, large = make(n), make(4 * n)
        a, b = best_of(small, args.repeat), best_of(large, args.repeat)
        print(f"{name:<20} {len(small):>9} {a * 1e3:>9.2f} {b * 1e3:>9.2f} {b / a:>6.1f}")


if __name__ == "__main__":
    main()
