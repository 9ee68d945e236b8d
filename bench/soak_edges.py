"""bench/soak.py's phases at the edges: a descriptor limit, slowloris, SIGTERM under load. Each runs a normal
client (bench/sipload.py's Driver) through a real `faultlab proxy` process (sipload.Lab) and counts what it got.

- fdlimit: the proxy under ``prlimit --nofile=256:256``; UDP phones with their own source ports and TCP
  connections beyond its limits; the normal client's transactions sent / answered before, during and after.
- slowloris: connections sending a header one byte a second; the normal client's tx/s without and with them,
  and how many the proxy closed and after how long.
- sigterm, per transport: SIGTERM during load with --trace; from the trace, the messages `received` that were
  neither `sent`, `abandoned` nor `dropped` (must be 0); how the clients' connections ended (FIN or reset).
"""

from __future__ import annotations

import json
import signal
import statistics
from collections import Counter
from pathlib import Path

import trio

import sipload  # bench/sipload.py

PHASES = ("fdlimit", "slowloris", "sigterm")


def _snap(drivers: list[sipload.Driver]) -> tuple[int, int]:
    """(sent, answered) so far, summed over drivers."""
    sent = answered = 0
    for d in drivers:
        c = d.counts()
        sent, answered = sent + c.sent, answered + c.answered
    return sent, answered


def _delta(a: tuple[int, int], b: tuple[int, int], seconds: float) -> dict:
    sent, answered = b[0] - a[0], b[1] - a[1]
    return {"sent": sent, "answered": answered, "tx_per_s": answered / seconds if seconds else 0.0}


async def _probe(transport: str, addr, i: int, wait: float, keep: list) -> str:
    """One phone: a connection (UDP: its own source port), one MESSAGE; "answered", "closed" or "silent" after
    ``wait`` seconds. The connection stays open (in ``keep``) for the caller to close."""
    try:
        conn = await sipload.connect(transport, addr)
    except OSError:
        return "refused"
    keep.append(conn)
    udp = transport == "udp"
    sock = conn if udp else conn.socket
    data = sipload.request(transport, f"phone{i}", 1, sock.getsockname()[1])
    with trio.move_on_after(wait):
        try:
            await (conn.send(data) if udp else conn.send_all(data))
            got = await (conn.recv(sipload.RECEIVE) if udp else conn.receive_some(sipload.RECEIVE))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return "closed"
        return "answered" if got else "closed"
    return "silent"


async def _close_all(conns: list) -> None:
    for conn in conns:
        if isinstance(conn, trio.abc.Stream):
            await trio.aclose_forcefully(conn)
        else:
            conn.close()


# --------------------------------------------------------------------------- descriptor limit
async def _fdlimit(a, lab: sipload.Lab) -> dict:
    drivers = [sipload.Driver(t, lab.addr[t], 2, timeout=2.0) for t in ("udp", "tcp")]
    out: dict = {"phases": {}}
    async with trio.open_nursery() as nursery:
        for d in drivers:
            nursery.start_soon(d.run, a.fd_client_flows, 10**9)
        await trio.sleep(1)  # the client is under way
        s0 = _snap(drivers)
        await trio.sleep(a.fd_phase)
        s1 = _snap(drivers)
        out["phases"]["before"] = _delta(s0, s1, a.fd_phase)
        keep: list = []
        t0 = trio.current_time()
        results: dict[str, Counter] = {"udp": Counter(), "tcp": Counter()}

        async def phone(t: str, i: int) -> None:
            results[t][await _probe(t, lab.addr[t], i, a.fd_phase, keep)] += 1

        async with trio.open_nursery() as flood:
            for i in range(a.fd_udp):
                flood.start_soon(phone, "udp", i)
            for i in range(a.fd_tcp):
                flood.start_soon(phone, "tcp", i)
        out["flood"] = {t: dict(c) for t, c in results.items()}
        out["proxy_at_peak"] = lab.proxy_memory()
        await trio.sleep(max(0.0, a.fd_phase - (trio.current_time() - t0)))
        s2 = _snap(drivers)
        out["phases"]["during"] = _delta(s1, s2, trio.current_time() - t0)
        await _close_all(keep)
        await trio.sleep(a.fd_phase)
        s3 = _snap(drivers)
        out["phases"]["after"] = _delta(s2, s3, a.fd_phase)
        for d in drivers:
            d.stopping = True
        await trio.sleep(2.5)  # the last answers; then whatever is outstanding stays so
        nursery.cancel_scope.cancel()
    out["client"] = {d.transport: {"sent": d.counts().sent, "answered": d.counts().answered,
                                   "lost": d.counts().lost} for d in drivers}
    return out


def run_fdlimit(a, tmp: Path) -> dict:
    with sipload.Lab(tmp / "fdlimit", ["udp", "tcp"], wrap=("prlimit", f"--nofile={a.fd_limit}:{a.fd_limit}")) as lab:
        limits = [line for line in lab.proxy_output().splitlines() if line.startswith("faultlab: limits")]
        r = trio.run(_fdlimit, a, lab)
        r["proxy_alive"] = lab.proxy.poll() is None
        r["limits_line"] = limits[0] if limits else None
        lines = lab.proxy_news()
        r["proxy_lines"], r["proxy_sample"] = len(lines), lines[:5]
    return r


# --------------------------------------------------------------------------- slowloris
async def _drip(stream: trio.abc.Stream, i: int, closed: list[float]) -> None:
    """Send a header one byte a second until the proxy closes the connection; note after how long."""
    head = sipload.request("tcp", f"slow{i}", 1, stream.socket.getsockname()[1])
    t0 = trio.current_time()
    try:
        for n in range(len(head)):
            await stream.send_all(head[n:n + 1])
            with trio.move_on_after(1):
                if not await stream.receive_some(sipload.RECEIVE):
                    break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    closed.append(trio.current_time() - t0)


async def _slowloris(a, lab: sipload.Lab, timeout: float | None) -> dict:
    addr = lab.addr["tcp"]
    driver = sipload.Driver("tcp", addr, 2, timeout=2.0)
    hold = (timeout or 32.0) + a.slow_extra
    out: dict = {"message_timeout": timeout or "default (32)", "connections": a.slow_connections, "seconds": hold}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run, a.slow_client_flows, 10**9)
        await trio.sleep(1)
        s0 = _snap([driver])
        await trio.sleep(a.slow_base)
        s1 = _snap([driver])
        out["without"] = _delta(s0, s1, a.slow_base)
        conns = await sipload.hold_idle("tcp", addr, a.slow_connections)
        closed: list[float] = []
        s2, t0 = _snap([driver]), trio.current_time()
        async with trio.open_nursery() as slow:
            for i, stream in enumerate(conns):
                slow.start_soon(_drip, stream, i, closed)
            await trio.sleep(hold)
            slow.cancel_scope.cancel()
        out["with"] = _delta(s2, _snap([driver]), trio.current_time() - t0)
        out["opened"] = len(conns)
        out["closed"] = len(closed)
        out["closed_after_s"] = ({"median": statistics.median(closed), "max": max(closed)} if closed else None)
        await _close_all(conns)
        driver.stopping = True
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    c = driver.counts()
    out["client"] = {"sent": c.sent, "answered": c.answered, "lost": c.lost}
    return out


def run_slowloris(a, tmp: Path, timeout: float | None) -> dict:
    args = ("--message-timeout", f"{timeout:g}") if timeout else ()
    with sipload.Lab(tmp / f"slowloris-{timeout}", ["tcp"], proxy_args=args,
                     nofile=4 * a.slow_connections + 1024) as lab:
        r = trio.run(_slowloris, a, lab, timeout)
        r["proxy_alive"] = lab.proxy.poll() is None
        lines = lab.proxy_news()
        r["proxy_lines"], r["proxy_sample"] = len(lines), lines[:5]
    return r


# --------------------------------------------------------------------------- SIGTERM under load
def account(trace: Path) -> dict:
    """From a trace: messages `received` with neither `sent`, `abandoned` nor `dropped` (a bug when not 0)."""
    events = []
    for line in trace.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a last line cut short
    kinds = Counter(e.get("kind") for e in events)

    def key(e: dict) -> tuple:
        return e.get("flow"), e.get("direction"), e.get("call_id"), e.get("cseq"), e.get("method") or e.get("status")

    received = Counter(key(e) for e in events if e.get("kind") == "received")
    done = Counter(key(e) for e in events if e.get("kind") in ("sent", "abandoned", "dropped"))
    return {"received": kinds["received"], "sent": kinds["sent"], "abandoned": kinds["abandoned"],
            "dropped": kinds["dropped"], "unaccounted": sum((received - done).values()),
            "stopping": kinds["stopping"], "stop": kinds["stop"]}


def _ending(flow) -> str:
    text = " ".join(flow.c.errors)
    if "closed by the proxy" in text:
        return "fin"
    if "Reset" in text:
        return "reset"
    return "other" if text else "open"


async def _sigterm(a, lab: sipload.Lab, transport: str) -> dict:
    driver = sipload.Driver(transport, lab.addr[transport], a.term_window)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run, a.term_flows, 10**9)
        await trio.sleep(a.term_load)
        sent, answered = _snap([driver])
        in_flight = {f.name: set(f.outstanding) for f in driver.flows}  # sent before the signal, unanswered
        t0 = trio.current_time()
        lab.proxy.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(lab.proxy.wait)
        stop_s = trio.current_time() - t0
        await trio.sleep(1)  # the last answers and closes reach the clients
        nursery.cancel_scope.cancel()
    c = driver.counts()
    never = sum(len(in_flight[f.name] & (f.lost | set(f.outstanding))) for f in driver.flows)
    return {"transport": transport, "exit_code": code, "stop_s": stop_s,
            "at_signal": {"sent": sent, "answered": answered, "in_flight": sum(map(len, in_flight.values())),
                          "in_flight_never_answered": never},
            "client": {"sent": c.sent, "answered": c.answered,
                       "unanswered": c.lost + sum(len(f.outstanding) for f in driver.flows)},
            "endings": dict(Counter(_ending(f) for f in driver.flows)) if transport != "udp" else None}


def run_sigterm(a, tmp: Path, transport: str) -> dict:
    trace = tmp / f"sigterm-{transport}" / "trace.jsonl"
    with sipload.Lab(trace.parent, [transport], proxy_args=("--trace", str(trace), "--drain", f"{a.drain:g}")) as lab:
        r = trio.run(_sigterm, a, lab, transport)
        lines = lab.proxy_news()
        r["proxy_lines"], r["proxy_sample"] = len(lines), lines[:5]
    r["trace"] = account(trace)
    return r


# --------------------------------------------------------------------------- flags and report
def add_arguments(p) -> None:
    p.add_argument("--fd-limit", type=int, default=256, help="fdlimit: the proxy's descriptor limit (default 256)")
    p.add_argument("--fd-udp", type=int, default=400, help="fdlimit: UDP phones, each its own port (default 400)")
    p.add_argument("--fd-tcp", type=int, default=100, help="fdlimit: TCP connections beyond the limit (default 100)")
    p.add_argument("--fd-client-flows", type=int, default=4, help="fdlimit: the normal client's flows per transport")
    p.add_argument("--fd-phase", type=float, default=10.0, help="fdlimit: seconds before / during / after (10)")
    p.add_argument("--slow-connections", type=int, default=500, help="slowloris: connections (default 500)")
    p.add_argument("--slow-timeouts", default="2,default",
                   help="slowloris: the --message-timeout of each run, 'default' for none (default 2,default)")
    p.add_argument("--slow-extra", type=float, default=6.0,
                   help="slowloris: seconds the connections drip beyond the timeout (default 6)")
    p.add_argument("--slow-base", type=float, default=4.0, help="slowloris: seconds of load without them (4)")
    p.add_argument("--slow-client-flows", type=int, default=4, help="slowloris: the normal client's flows")
    p.add_argument("--term-flows", type=int, default=20, help="sigterm: flows per transport (default 20)")
    p.add_argument("--term-window", type=int, default=8, help="sigterm: outstanding per flow (default 8)")
    p.add_argument("--term-load", type=float, default=5.0, help="sigterm: seconds of load before it (default 5)")
    p.add_argument("--drain", type=float, default=5.0, help="sigterm: the proxy's --drain (default 5)")


def run(a, tmp: Path, phases: list[str], doc: dict, log) -> None:
    if "fdlimit" in phases:
        doc["fdlimit"] = run_fdlimit(a, tmp)
        log(f"fdlimit: {json.dumps({k: doc['fdlimit'][k] for k in ('phases', 'flood', 'proxy_alive')})}")
    if "slowloris" in phases:
        doc["slowloris"] = []
        for spec in a.slow_timeouts.split(","):
            r = run_slowloris(a, tmp, None if spec == "default" else float(spec))
            doc["slowloris"].append(r)
            log(f"slowloris {spec}: without {r['without']}, with {r['with']}, closed {r['closed']} "
                f"after {r['closed_after_s']}")
    if "sigterm" in phases:
        doc["sigterm"] = []
        for t in sipload.TRANSPORTS:
            r = run_sigterm(a, tmp, t)
            doc["sigterm"].append(r)
            log(f"sigterm {t}: {json.dumps({k: r[k] for k in ('exit_code', 'stop_s', 'at_signal', 'client', 'endings', 'trace')})}")


def _closed_after(after: dict | None) -> str:
    return "-" if not after else f"{after['median']:.1f} / {after['max']:.1f}"


def _endings(e: dict | None) -> str:
    return "-" if e is None else f"{e.get('fin', 0)} / {e.get('reset', 0)} / {e.get('other', 0) + e.get('open', 0)}"


def table(doc: dict) -> list[str]:
    out: list[str] = []
    if r := doc.get("fdlimit"):
        p = r["phases"]
        lost = ", ".join(f"{v['lost']} over {t.upper()}" for t, v in r["client"].items())
        out += [f"Descriptor limit ({r['limits_line']}): {r['flood']['udp']} of the UDP phones and "
                f"{r['flood']['tcp']} of the TCP connections; the proxy {'kept running' if r['proxy_alive'] else 'EXITED'} "
                f"({r['proxy_lines']} lines of output besides its start lines; {r['proxy_at_peak']['fds']} descriptors "
                f"open at the peak); the normal client lost {lost}.", "",
                "| normal client | sent | answered | tx/s |", "|---|---:|---:|---:|"]
        out += [f"| {k} | {v['sent']:,} | {v['answered']:,} | {v['tx_per_s']:,.0f} |" for k, v in p.items()]
        out.append("")
    if doc.get("slowloris"):
        out += ["| slowloris | connections | client tx/s without / with | slow connections closed | closed after "
                "(median / max s) | proxy alive |", "|---|---:|---|---:|---|---|"]
        for r in doc["slowloris"]:
            after = r["closed_after_s"]
            out.append(f"| --message-timeout {r['message_timeout']} | {r['opened']} | {r['without']['tx_per_s']:,.0f} / "
                       f"{r['with']['tx_per_s']:,.0f} | {r['closed']} | "
                       f"{_closed_after(after)} | {r['proxy_alive']} |")
        out.append("")
    if doc.get("sigterm"):
        out += ["| SIGTERM | received / sent / abandoned / dropped (trace) | received, not accounted for | in flight at "
                "the signal / of them never answered | client sent / answered / unanswered | connections ended FIN / reset / other | exit, stop (s) |",
                "|---|---|---:|---|---|---|---|"]
        for r in doc["sigterm"]:
            t, c = r["trace"], r["client"]
            out.append(f"| {r['transport'].upper()} | {t['received']:,} / {t['sent']:,} / {t['abandoned']} / "
                       f"{t['dropped']} | **{t['unaccounted']}** | {r['at_signal']['in_flight']} / "
                       f"{r['at_signal']['in_flight_never_answered']} | {c['sent']:,} / {c['answered']:,} / "
                       f"{c['unanswered']} | {_endings(r['endings'])} | {r['exit_code']}, {r['stop_s']:.1f} |")
    return out


def bad(doc: dict) -> list:
    """What failed: the proxy exited, or a message received was never accounted for."""
    out = [doc["fdlimit"]] if doc.get("fdlimit") and not doc["fdlimit"]["proxy_alive"] else []
    out += [r for r in doc.get("slowloris", []) if not r["proxy_alive"]]
    return out + [r for r in doc.get("sigterm", []) if r["trace"]["unaccounted"] or r["exit_code"] != 0]
