#!/usr/bin/env python3
"""Reliability benchmark: long soaks, idle connections, a PBX restart, through a real `faultlab proxy` process.

    .venv/bin/python bench/soak.py [--transactions 100000] [--idle-tcp 2000] [--idle-tls 1000] [--phases ...]

Each phase starts its own responder (the PBX: a 200 to every request, bench/sipload.py) and its own
`faultlab proxy` in front of it, on loopback, and measures (docs/RELIABILITY.md has the figures):

- soak, per transport: --transactions transactions (--flows flows, --window outstanding per flow): what
  was lost, duplicated or reordered within a flow (must be nothing), the time it took, and the proxy's
  resident memory at 10%, 50% and 100% of the load (the growth over the second half: a leak shows there);
- idle, TCP and TLS: the proxy's resident memory before and after --idle-tcp / --idle-tls connections that
  do nothing (TLS: handshake done), divided by their number: the memory per idle connection (targets:
  32 KiB over TCP, 64 KiB over TLS); then again after one transaction on each (a registered phone's
  connection), and after they close;
- restart: load on UDP, TCP and TLS at once for --before seconds; the responder is killed (SIGKILL) and started
  again on the same ports --down seconds later, and the load goes on for --after seconds; per transport, what was lost while it was down (expected: requests sent
  then; a request unanswered for --timeout seconds counts as lost, a connection the proxy closes is opened
  again after a quarter of that), and how long after the restart the first transaction was answered;
- fdlimit, slowloris, sigterm (bench/soak_edges.py, flags --fd-*, --slow-*, --term-*, --drain): a normal client's
  transactions answered with the proxy at a descriptor limit of 256 past its flows and connections, and through
  500 connections sending a header a byte a second (how many the proxy closed, after how long); SIGTERM under
  load per transport, and from its trace the messages received but neither sent, abandoned nor dropped.

Prints a Markdown table; the whole result goes to bench/results/soak-<time>.json. Exit 1 when a soak lost,
duplicated or reordered anything, the proxy exited, or SIGTERM left a received message unaccounted for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import trio

import sipload  # bench/sipload.py
import soak_edges  # bench/soak_edges.py: the descriptor limit, slowloris, SIGTERM under load
from procs import raise_nofile

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PHASES = ("soak", "idle", "restart", *soak_edges.PHASES)


def log(msg: str = "") -> None:
    print(msg, flush=True)


def kib(kb: float) -> str:
    return f"{kb:,.0f}"


# --------------------------------------------------------------------------- soak
def run_soak(a, tmp: Path, transport: str) -> dict:
    per_flow = max(1, a.transactions // a.flows)
    with sipload.Lab(tmp / f"soak-{transport}", [transport]) as lab:
        start = lab.proxy_memory()
        r = sipload.soak(lab, transport, flows=a.flows, per_flow=per_flow, window=a.window)
        end = lab.proxy_memory()
        alive = lab.proxy.poll() is None
        warnings = lab.proxy_news()
    c = r.counts
    clean = (c.sent == c.answered == a.flows * per_flow and not (c.lost or c.duplicated or c.reordered
                                                                   or c.unexpected or c.late) and alive)
    return {"transport": transport, "transactions": a.flows * per_flow, "counts": asdict(c), "seconds": r.seconds,
            "tx_per_s": c.answered / r.seconds, "rss_kb": {"start": start["rss_kb"], **r.rss_kb, "end": end["rss_kb"]},
            "growth_first_half_kb": r.growth_kb(0.1, 0.5), "growth_second_half_kb": r.growth_kb(0.5, 1.0),
            "fds": [start["fds"], end["fds"]], "proxy_alive": alive, "proxy_lines": warnings[:20], "clean": clean}


# --------------------------------------------------------------------------- idle connections
async def _settle(lab: sipload.Lab, at_least: int, timeout: float = 60) -> dict:
    """The proxy's memory once its descriptors reach ``at_least`` and stop changing for a second (polled:
    another process)."""
    deadline = trio.current_time() + timeout
    last, since = None, trio.current_time()
    while trio.current_time() < deadline:
        now = lab.proxy_memory()
        if now["fds"] != last:
            last, since = now["fds"], trio.current_time()
        elif now["fds"] >= at_least and trio.current_time() - since >= 1.0:
            return now
        await trio.sleep(0.1)
    return lab.proxy_memory()


async def _idle(lab: sipload.Lab, transport: str, count: int) -> dict:
    addr = lab.addr[transport]
    warm = await sipload.hold_idle(transport, addr, 20)  # the first connections set up what all share
    await sipload.transact_each(transport, warm)
    for stream in warm:
        await stream.aclose()
    base = await _settle(lab, 0)
    t0 = trio.current_time()
    conns = await sipload.hold_idle(transport, addr, count)
    opened_s = trio.current_time() - t0
    idle = await _settle(lab, base["fds"] + count)
    counts = await sipload.transact_each(transport, conns)
    used = await _settle(lab, base["fds"] + count)
    for stream in conns:
        await trio.aclose_forcefully(stream)
    closed = await _settle(lab, 0)
    per = lambda m: (m["rss_kb"] - base["rss_kb"]) / count
    return {"transport": transport, "connections": count, "open_s": opened_s, "base": base, "idle": idle,
            "after_one_transaction": used, "after_close": closed, "idle_kib_per_conn": per(idle),
            "used_kib_per_conn": per(used), "fds_per_conn": (idle["fds"] - base["fds"]) / count,
            "transactions": asdict(counts)}


def run_idle(a, tmp: Path, transport: str, count: int) -> dict:
    with sipload.Lab(tmp / f"idle-{transport}", [transport], nofile=4 * count + 1024) as lab:
        r = trio.run(_idle, lab, transport, count)
        r["proxy_alive"] = lab.proxy.poll() is None
        r["proxy_lines"] = lab.proxy_news()[:20]
    return r


# --------------------------------------------------------------------------- PBX restart
async def _restart(a, lab: sipload.Lab) -> dict:
    drivers = {t: sipload.Driver(t, lab.addr[t], a.restart_window, timeout=a.timeout) for t in sipload.TRANSPORTS}
    results: dict[str, sipload.Counts] = {}
    at: dict[str, dict] = {t: {} for t in drivers}

    async def load(t: str) -> None:
        results[t] = await drivers[t].run(a.restart_flows, 10**9)  # until told to stop

    async with trio.open_nursery() as nursery:
        for t in drivers:
            nursery.start_soon(load, t)
        await trio.sleep(a.before)
        for t, d in drivers.items():
            at[t]["before_kill"] = d.total
        lab.kill_responder()
        killed = trio.current_time()
        await trio.sleep(a.down)
        await trio.to_thread.run_sync(lab.start_responder)
        down_s = trio.current_time() - killed
        for t, d in drivers.items():
            at[t]["at_restart"] = d.total
            d.mark()
        stop_at = trio.current_time() + a.after
        while len(results) < len(drivers):  # the load goes on; stop it if the proxy died (polled: a process)
            if lab.proxy.poll() is not None:
                nursery.cancel_scope.cancel()
            if trio.current_time() >= stop_at:
                for d in drivers.values():
                    d.stopping = True
            await trio.sleep(0.2)
    out = {"down_s": down_s, "transports": {}, "completed": sorted(results)}
    for t, d in drivers.items():
        c = results.get(t) or d.counts()
        out["transports"][t] = {"counts": asdict(c), **at[t], "answered_after_restart": d.total - at[t]["at_restart"],
                                "first_answer_after_restart_s": d.recovered}
    return out


def run_restart(a, tmp: Path) -> dict:
    with sipload.Lab(tmp / "restart", sipload.TRANSPORTS) as lab:
        r = trio.run(_restart, a, lab)
        r["proxy_alive"] = lab.proxy.poll() is None
        lines = lab.proxy_news()
        r["proxy_lines"] = len(lines)
        r["proxy_sample"] = lines[:8]
    return r


# --------------------------------------------------------------------------- report
def table(doc: dict) -> str:
    out = [f"Run of {doc['started'][:16]} UTC: {os.cpu_count()} CPU, load average {doc['loadavg_start']} at the "
           f"start, {doc['loadavg_end']} at the end; faultlab {doc['git']}.", f"Command: `{doc['command']}`", ""]
    if doc.get("soak"):
        out += ["| soak | transactions | lost / dup / reordered / unexpected | tx/s | proxy RSS at 10% / 50% / 100% "
                "(KiB) | growth 1st / 2nd half (KiB) |", "|---|---:|---|---:|---|---|"]
        for r in doc["soak"]:
            c, m = r["counts"], r["rss_kb"]
            out.append(f"| {r['transport'].upper()} | {c['answered']:,} of {r['transactions']:,} | {c['lost']} / "
                       f"{c['duplicated']} / {c['reordered']} / {c['unexpected']} | {r['tx_per_s']:,.0f} | "
                       f"{kib(m[0.1])} / {kib(m[0.5])} / {kib(m[1.0])} | {r['growth_first_half_kb']:+,} / "
                       f"{r['growth_second_half_kb']:+,} |")
        out.append("")
    if doc.get("idle"):
        out += ["| idle connections | count | KiB per idle connection | KiB per connection after one transaction "
                "| proxy descriptors per connection | proxy RSS base / idle / after close (KiB) |",
                "|---|---:|---:|---:|---:|---|"]
        for r in doc["idle"]:
            out.append(f"| {r['transport'].upper()} | {r['connections']:,} | **{r['idle_kib_per_conn']:.1f}** | "
                       f"{r['used_kib_per_conn']:.1f} | {r['fds_per_conn']:.2f} | {kib(r['base']['rss_kb'])} / "
                       f"{kib(r['idle']['rss_kb'])} / {kib(r['after_close']['rss_kb'])} |")
        out.append("")
    if doc.get("restart"):
        r = doc["restart"]
        out += [f"PBX restart: killed after {doc['params']['before']:g} s of load, back {r['down_s']:.1f} s later, "
                f"then {doc['params']['after']:g} s more load; the proxy "
                f"{'kept running' if r['proxy_alive'] else 'EXITED'} ({r['proxy_lines']} lines of output besides its start lines).", "",
                "| restart | sent | answered | lost (while down) | late | connections opened | answered after restart "
                "| first answer after restart (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for t, x in r["transports"].items():
            c = x["counts"]
            first = x["first_answer_after_restart_s"]
            out.append(f"| {t.upper()} | {c['sent']:,} | {c['answered']:,} | {c['lost']} | {c['late']} | "
                       f"{c['connects']} | {x['answered_after_restart']:,} | "
                       f"{'never' if first is None else f'{first:.2f}'} |")
        out.append("")
    return "\n".join(out + soak_edges.table(doc))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transactions", type=int, default=100_000, help="per transport in the soak (default 100,000)")
    p.add_argument("--flows", type=int, default=100, help="soak flows per transport (default 100)")
    p.add_argument("--window", type=int, default=8, help="outstanding requests per flow (default 8)")
    p.add_argument("--idle-tcp", type=int, default=2000, help="idle TCP connections (default 2,000)")
    p.add_argument("--idle-tls", type=int, default=1000, help="idle TLS connections (default 1,000)")
    p.add_argument("--restart-flows", type=int, default=20, help="flows per transport in the restart (default 20)")
    p.add_argument("--restart-window", type=int, default=2,
                   help="outstanding requests per flow there (default 2: a steady load, not the most it takes)")
    p.add_argument("--before", type=float, default=2.0, help="seconds of load before the kill (default 2)")
    p.add_argument("--down", type=float, default=2.0, help="seconds the PBX stays down (default 2)")
    p.add_argument("--after", type=float, default=5.0, help="seconds of load after the restart (default 5)")
    p.add_argument("--timeout", type=float, default=2.0, help="restart: a request unanswered this long is lost")
    soak_edges.add_arguments(p)
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ",".join(PHASES))
    p.add_argument("--transports", default=",".join(sipload.TRANSPORTS), help="soak transports (default all)")
    a = p.parse_args()
    phases = a.phases.split(",")
    raise_nofile(4 * max(a.idle_tcp, a.idle_tls) + 1024)
    started = dt.datetime.now(dt.timezone.utc)
    git = subprocess.run(["git", "-C", str(BENCH), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    doc: dict = {"started": started.isoformat(), "command": shlex.join(["python", "bench/soak.py", *sys.argv[1:]]),
                 "git": git.stdout.strip()[:80], "params": vars(a), "loadavg_start": "%.2f %.2f %.2f" % os.getloadavg()}
    log(f"# faultlab soak — {started:%Y-%m-%d %H:%M:%S} UTC, load average {doc['loadavg_start']}")
    with tempfile.TemporaryDirectory(prefix="faultlab-soak-") as tmpdir:
        tmp = Path(tmpdir)
        if "soak" in phases:
            doc["soak"] = []
            for t in a.transports.split(","):
                r = run_soak(a, tmp, t)
                doc["soak"].append(r)
                log(f"soak {t}: {r['counts']['answered']:,}/{r['transactions']:,} answered in {r['seconds']:.1f} s, "
                    f"lost {r['counts']['lost']} dup {r['counts']['duplicated']} reordered "
                    f"{r['counts']['reordered']}, RSS {r['rss_kb']}")
        if "idle" in phases:
            doc["idle"] = []
            for t, n in (("tcp", a.idle_tcp), ("tls", a.idle_tls)):
                if n:
                    r = run_idle(a, tmp, t, n)
                    doc["idle"].append(r)
                    log(f"idle {t}: {n} connections, {r['idle_kib_per_conn']:.1f} KiB each idle, "
                        f"{r['used_kib_per_conn']:.1f} KiB after one transaction, {r['fds_per_conn']:.2f} fds each")
        if "restart" in phases:
            doc["restart"] = run_restart(a, tmp)
            log(f"restart: {json.dumps(doc['restart']['transports'])}")
        soak_edges.run(a, tmp, phases, doc, log)
    doc["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(doc, indent=1, default=str))
    log()
    log(table(doc))
    log(f"\nresults: {out}")
    bad = [r for r in doc.get("soak", []) if not r["clean"]] + [
        r for r in doc.get("idle", []) if not r["proxy_alive"]]
    if doc.get("restart") and not doc["restart"]["proxy_alive"]:
        bad.append(doc["restart"])
    bad += soak_edges.bad(doc)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
