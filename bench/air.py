#!/usr/bin/env python3
"""The lab's air, measured: loss and delay per transport against the profile's numbers (root, Linux).

    sudo python3 bench/air.py [--profile lossy-wifi] [--udp 1000] [--tcp 300] [--tls 300] [--seed N]

Builds a lab of its own (``fl-air<pid>-*``: one device, the air, the gateway, the PBX), with everything
on at once: ``net intercept`` in the gateway, ``faultlab proxy --transparent`` there (no profile),
faultlab's embedded PBX (``faultlab pbx``) on the PBX's address, and the profile on the air (the TUN
wire, seeded). From the device, SIP OPTIONS to the PBX's real address (tests/netns/air_probe.py):

- UDP: one OPTIONS every 10 ms; answered if neither it nor its answer is lost;
- TCP, TLS: one connection per probe (every 25 ms); the TCP handshake with faultlab (SYN up, SYN-ACK
  down), the TLS handshake, the OPTIONS exchange.

Printed per transport: the loss each way as the wire counted it (packets in / lost per direction and
protocol: what the profile's loss applies to), what the device saw (answered, connections that waited
for a SYN retransmission), and the delay (round trips: median, p10, p90) against the profile's
(n crossings x delay). The lab is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = HERE.parent / "tests" / "netns" / "air_probe.py"
PROXY_PORT, PROXY_TLS_PORT = 15060, 15061


def run(*argv: str, timeout: float = 600) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=timeout).stdout


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start(argv: list[str], log: Path, lines: int, marker: bytes, what: str) -> subprocess.Popen:
    """Start ``argv`` with its console in ``log`` (a pipe nobody reads would stall it once full) and wait
    until ``marker`` shows ``lines`` times there."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log.read_bytes().count(marker) >= lines:
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"{what} did not listen within 20 s: {log.read_text(errors='replace')}")


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def wire_counts(log: Path) -> dict[tuple[str, str], dict[str, int]]:
    """{(direction, proto): {"in": n, "lost": n, "out": n}} from the wire's closing log lines."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"wire\[\d+\] (to-pbx|to-device) (\S+) (in|lost|out): (\d+)$", line)
        if m:
            counts.setdefault((m[1], m[2]), {})[m[3]] = int(m[4])
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="lossy-wifi")
    p.add_argument("--udp", type=int, default=1000, help="UDP OPTIONS (every 10 ms)")
    p.add_argument("--tcp", type=int, default=300, help="TCP connections (every 25 ms)")
    p.add_argument("--tls", type=int, default=300, help="TLS connections (every 25 ms)")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/air.py needs root (network namespaces): sudo python3 bench/air.py")

    from faultlab.faults import load_profile
    from faultlab.labnet import lab_down, lab_up
    from faultlab.labnet.impair import STATE_ROOT, clear_lab, impair_lab
    from faultlab.labnet.intercept import intercept_on

    profile = load_profile(a.profile)
    spec_up, spec_down = profile.link.to_pbx, profile.link.to_device
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2**31)
    name = f"air{os.getpid() % 10**6}"
    tmp = Path(tempfile.mkdtemp(prefix="faultlab-air-"))
    procs: list[subprocess.Popen] = []
    rows: list[tuple[str, ...]] = []
    try:
        lab_down(name)
        lab = lab_up(name, "10.81.0.0/16", 1)
        gw, pbx_ns, dev = lab.gateway.netns, lab.pbx.netns, lab.devices[0].netns
        pbx = lab.pbx.address
        conf = tmp / "conf"
        run(sys.executable, "-m", "faultlab", "ca", "init", "--confdir", str(conf))
        fl = [sys.executable, "-m", "faultlab"]
        procs.append(start(
            ["ip", "netns", "exec", pbx_ns, *fl, "pbx", "--confdir", str(conf), "--tls-name", "pbx.lab.test",
             "--listen", f"udp:{pbx}:5060", "--listen", f"tcp:{pbx}:5060", "--listen", f"tls:{pbx}:5061"],
            tmp / "pbx.log", 3, b" on " + pbx.encode(), "faultlab pbx"))
        intercept_on(gw, pbx=pbx, ports=(5060, 5061), tls_ports=(5061,), proxy_udp_port=PROXY_PORT,
                     proxy_tcp_port=PROXY_PORT, proxy_tls_port=PROXY_TLS_PORT, table=f"faultlab_{name}")
        procs.append(start(
            ["ip", "netns", "exec", gw, *fl, "proxy", "--transparent", "--confdir", str(conf), "-q",
             "--listen", f"udp:0.0.0.0:{PROXY_PORT}", "--listen", f"tcp:0.0.0.0:{PROXY_PORT}",
             "--listen", f"tls:0.0.0.0:{PROXY_TLS_PORT}", "--tls-name", "pbx.lab.test",
             "--upstream-ca", str(conf / "ca.crt")],
            tmp / "proxy.log", 3, b"listening on", "faultlab proxy"))

        def measure(transport: str, count: int, gap: float) -> tuple[dict, dict]:
            impair_lab(name, profile, seed=seed, use_netem=False)
            log = STATE_ROOT / name / "wire.log"
            port = 5061 if transport == "tls" else 5060
            argv = ["ip", "netns", "exec", dev, sys.executable, str(PROBE), transport, pbx, str(port), str(count),
                    str(gap), "--cafile", str(conf / "ca.crt")]
            out = json.loads(run(*argv))
            pid = int((STATE_ROOT / name / "wire.pid").read_text())
            os.kill(pid, signal.SIGTERM)  # the wire this script started: it logs its counts as it stops
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            counts = wire_counts(log)
            clear_lab(name)
            return out, counts

        def loss_cells(counts: dict, proto: str) -> tuple[str, str]:
            cells = []
            for direction in ("to-pbx", "to-device"):
                c = counts.get((direction, proto), {})
                n, lost = c.get("in", 0), c.get("lost", 0)
                cells.append(f"{lost / n:.1%} of {n}" if n else "-")
            return cells[0], cells[1]

        one_way = spec_up.delay
        expected_loss = f"{spec_up.loss:.0%} / {spec_down.loss:.0%}"
        if a.udp:
            out, counts = measure("udp", a.udp, 0.01)
            rtts = out["rtts"]
            up, down = loss_cells(counts, "udp")
            rows.append(("UDP OPTIONS", f"{a.udp}", expected_loss, f"{up} / {down}",
                         f"answered {len(rtts) / out['sent']:.1%} (exp. {(1 - spec_up.loss) * (1 - spec_down.loss):.1%})",
                         f"{2 * one_way * 1000:.0f}",
                         f"{pct(rtts, .5) * 1000:.1f} ({pct(rtts, .1) * 1000:.0f}-{pct(rtts, .9) * 1000:.0f})"))
        for transport, count in (("tcp", a.tcp), ("tls", a.tls)):
            if not count:
                continue
            out, counts = measure(transport, count, 0.025)
            probes = out["probes"]
            up, down = loss_cells(counts, "tcp")
            slow = [p for p in probes if p["connect"] is None or p["connect"] >= 0.8]
            fast = [p["connect"] for p in probes if p["connect"] is not None and p["connect"] < 0.8]
            p_syn = 1 - (1 - spec_up.loss) * (1 - spec_down.loss)
            rows.append((f"{transport.upper()}: connect (TCP)", f"{count}", expected_loss, f"{up} / {down}",
                         f"SYN retransmitted {len(slow) / count:.1%} (exp. {p_syn:.1%})", f"{2 * one_way * 1000:.0f}",
                         f"{pct(fast, .5) * 1000:.1f} ({pct(fast, .1) * 1000:.0f}-{pct(fast, .9) * 1000:.0f})"))
            if transport == "tcp":
                ex = [p["exchange"] for p in probes if p["exchange"] is not None]
                crossings = 2
            else:
                ex = [p["tls"] + p["exchange"] for p in probes if p["tls"] is not None and p["exchange"] is not None]
                crossings = 4 if {p["version"] for p in probes if p["version"]} == {"TLSv1.3"} else 6
            threshold = crossings * (spec_up.delay + spec_up.jitter) + 0.18
            quick = [x for x in ex if x < threshold]
            what = "OPTIONS exchange" if transport == "tcp" else "handshake + OPTIONS"
            rows.append((f"{transport.upper()}: {what}", f"{len(ex)}", "", "",
                         f"retransmitted {1 - len(quick) / max(1, len(ex)):.1%}", f"{crossings * one_way * 1000:.0f}",
                         f"{pct(quick, .5) * 1000:.1f} ({pct(quick, .1) * 1000:.0f}-{pct(quick, .9) * 1000:.0f}); "
                         f"all: p90 {pct(ex, .9) * 1000:.0f}"))
    finally:
        for proc in reversed(procs):
            stop(proc)
        try:
            clear_lab(name)
        finally:
            lab_down(name)
    head = ("probe", "n", "profile loss up/down", "wire: lost up / down", "the device saw",
            "profile delay ms", "median ms (p10-p90), no retransmission")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    print(f"profile {profile.name}: {profile.summary}  seed {seed}")
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
