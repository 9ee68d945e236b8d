#!/usr/bin/env python3
"""Delay precision: how exactly faultlab holds a delayed message, through real sockets.

    python3 bench/delay.py [--messages 1000] [--rate 500] [--min 10ms] [--max 5s] [--rounds 3]

A sender (this script, core 1) sends ``--messages`` MESSAGE requests over UDP
at ``--rate`` per second through ``faultlab proxy`` (its own process, core 0)
to a receiver (this script). The profile delays every MESSAGE by a uniform
random time between ``--min`` and ``--max`` (one seeded draw per message,
recorded in the trace), so most of them are held at once. For each message,
error = (arrival - departure) - intended delay, in milliseconds: what a user
sees, including two loopback hops and the relay's own work. "Inside the
relay" is the same from the relay's trace: its send time minus its receive
time minus the intended delay (no loopback hops, no receiver).

Baseline, in the same run, alternating rounds: the same load through the
relay with no delay (``clean``), whose "error" is the relay's transit time.
Reported: p50, p99 and max error over all rounds, and messages lost (must be 0).
Project target: p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILE = """
name = "bench-delay"
summary = "Delay every MESSAGE uniformly between {lo} and {hi}."
[[rules]]
name = "delay-message"
match = {{ method = "MESSAGE" }}
action = {{ delay = "{mid}ms", jitter = "{half}ms", distribution = "uniform" }}
"""
MESSAGE = ("MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{n};rport\r\n"
           "From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: d{n}\r\nCSeq: 1 MESSAGE\r\n"
           "Max-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")


def ms(text: str) -> float:
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2])
    if text.endswith("s"):
        return float(text[:-1]) * 1000
    raise SystemExit(f"durations need a unit (ms or s): {text!r}")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def one_round(profile: Path | None, args, workdir: Path, round_no: int) -> dict:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listen_port = free_udp_port()
    trace = workdir / f"trace-{round_no}-{'delay' if profile else 'clean'}.jsonl"
    cmd = [*pin(0), sys.executable, "-m", "faultlab", "proxy", "-q", "--seed", str(round_no),
           "--listen", f"udp:127.0.0.1:{listen_port}", "--upstream", f"udp:127.0.0.1:{receiver.getsockname()[1]}",
           "--trace", str(trace)]
    if profile:
        cmd += ["--profile", str(profile)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, "FAULTLAB_HOME": str(workdir)})
    try:
        banner = proc.stderr.readline().decode()
        if "listening" not in banner:
            raise SystemExit(f"faultlab did not start: {banner}{proc.stderr.read().decode()}")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        sender.connect(("127.0.0.1", listen_port))
        port = sender.getsockname()[1]
        departures: dict[str, float] = {}
        arrivals: dict[str, float] = {}
        gap = 1.0 / args.rate
        start = time.perf_counter()
        receiver.setblocking(False)
        for n in range(args.messages):
            due = start + n * gap
            while (now := time.perf_counter()) < due:
                try:
                    data = receiver.recv(65535)
                    arrivals[_call_id(data)] = time.perf_counter()
                except BlockingIOError:
                    pass
            sender.send(MESSAGE.format(port=port, n=n).encode())
            departures[f"d{n}"] = time.perf_counter()
        # Keep polling (no blocking wait): waking an idle virtual CPU can take a millisecond or
        # more, which would be charged to faultlab.
        deadline = time.perf_counter() + args.max_ms / 1000 + 2
        while len(arrivals) < args.messages and time.perf_counter() < deadline:
            try:
                data = receiver.recv(65535)
            except BlockingIOError:
                continue
            arrivals[_call_id(data)] = time.perf_counter()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    intended, received, sent = {}, {}, {}
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "fault" and event.get("detail", {}).get("action") == "delay":
            intended[event["call_id"]] = float(event["detail"]["delay"])
        elif event["kind"] == "received" and event.get("call_id"):
            received[event["call_id"]] = event["t"]
        elif event["kind"] == "sent" and event.get("call_id"):
            sent[event["call_id"]] = event["t"]
    errors = [((arrivals[c] - departures[c]) - intended.get(c, 0.0)) * 1000 for c in arrivals]
    # the same seen from inside the relay: its send time against its receive time, on its own clock
    inside = [((sent[c] - received[c]) - intended.get(c, 0.0)) * 1000 for c in sent if c in received]
    return {"errors_ms": errors, "inside_ms": inside, "lost": args.messages - len(arrivals)}


def _call_id(data: bytes) -> str:
    i = data.index(b"Call-ID: ") + 9
    return data[i:data.index(b"\r\n", i)].decode()


def summary(errors: list[float]) -> dict:
    ordered = sorted(errors)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"n": len(ordered), "p50": pct(50), "p99": pct(99), "max": ordered[-1],
            "min": ordered[0], "mean": statistics.fmean(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500,
                        help="messages per second sent (500: 1,000 messages over 2 s, so that with delays "
                             "up to 5 s most are held at once)")
    parser.add_argument("--min", default="10ms")
    parser.add_argument("--max", default="5s")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lo, hi = ms(args.min), ms(args.max)
    args.max_ms = hi
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator on core 1, faultlab on core 0
    workdir = Path(tempfile.mkdtemp(prefix="faultlab-bench-delay-"))
    try:
        profile = workdir / "bench-delay.toml"
        profile.write_text(PROFILE.format(lo=args.min, hi=args.max, mid=(lo + hi) / 2, half=(hi - lo) / 2))
        results = {name: {"errors_ms": [], "inside_ms": [], "lost": 0} for name in ("clean", "delayed")}
        for r in range(args.rounds):
            for name, prof in (("clean", None), ("delayed", profile)):
                out = one_round(prof, args, workdir, r)
                results[name]["errors_ms"] += out["errors_ms"]
                results[name]["inside_ms"] += out["inside_ms"]
                results[name]["lost"] += out["lost"]
                print(f"round {r + 1} {name:<8} p99 {summary(out['errors_ms'])['p99']:.3f} ms, lost {out['lost']}",
                      file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nDelay precision, {args.messages} messages at {args.rate:.0f}/s, delays uniform {args.min}..{args.max}, "
          f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores\n")
    print("| path | messages | error p50 (ms) | error p99 (ms) | error max (ms) | inside the relay p50 / p99 (ms) | lost |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("clean", "relay, no delay (baseline: transit)"), ("delayed", "relay, delayed 10 ms-5 s")):
        s = summary(results[name]["errors_ms"])
        i = summary(results[name]["inside_ms"])
        print(f"| {label} | {s['n']} | {s['p50']:.3f} | {s['p99']:.3f} | {s['max']:.3f} | "
              f"{i['p50']:.3f} / {i['p99']:.3f} | {results[name]['lost']} |")
    Path(HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"delay-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps({name: {**summary(v["errors_ms"]), "inside": summary(v["inside_ms"]), "lost": v["lost"]}
                    for name, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
