#!/usr/bin/env python3
"""Relay benchmark: the direct path, faultlab and Kamailio side by side, in one run.

    python3 bench/relay.py [--quick] [--rounds N] [--duration S] [--paths direct,faultlab,kamailio]

What it measures (see docs/PERFORMANCE.md for the meaning of every number):

- throughput: SIP transactions per second (MESSAGE -> 200) with 100 concurrent flows and one
  outstanding request per flow (a window of 100), over UDP (sipp: `-t un`, one socket per flow,
  `-l 100`) and over TLS (bench/loadgen.py: one TLS connection per flow; Debian's sipp has no TLS);
- latency: round-trip time with one outstanding request (bench/loadgen.py, microsecond clock),
  median and p99, over UDP (UAS: sipp) and TLS (UAS: loadgen);
- CPU microseconds per transaction of the relay (utime+stime from /proc, all Kamailio processes),
  and how busy each core was (from /proc/stat), to tell a saturated relay from a saturated load
  generator and from other load on the machine;
- losses: requests sent vs answered, retransmissions, timeouts, unexpected messages, failed calls.

Paths: direct (UAC -> UAS), faultlab (UAC -> faultlab proxy -> UAS), kamailio (UAC -> Kamailio
registrar/proxy from ../shared/pbx -> UAS; the UAS is registered first); on request (--paths ...,faultlab-hep)
faultlab-hep: the same faultlab proxy sending HEP (--hep udp:127.0.0.1:PORT) to a port where nothing listens,
and faultlab-hep-live: to a UDP socket this script holds open (every packet encoded and sent; never read, so
the kernel drops what its buffer cannot hold, as a collector that falls behind). Each measurement runs
for a fixed time after a warm-up; every round runs every (test, path) once, alternating paths, and
the summary reports the median over rounds. The relay under test is pinned to core 0, the load
generator (UAC and UAS, and this script) to core 1. Results: bench/results/relay-<time>.json and
a Markdown table on stdout (for docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from procs import free_port, proc_resources, stop  # bench/procs.py

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_PBX = BENCH.parents[1] / "shared" / "pbx"  # ../shared/pbx next to the repo
SIPP_DIR = BENCH / "sipp"
LOADGEN = BENCH / "loadgen.py"
RESULTS = BENCH / "results"

PATHS = ("direct", "faultlab", "kamailio", "faultlab-hep", "faultlab-hep-live")
DEFAULT_PATHS = ("direct", "faultlab", "kamailio")
TESTS = ("udp_tput", "tls_tput", "udp_rtt", "tls_rtt")
TEST_TITLES = {
    "udp_tput": "UDP throughput, 100 flows",
    "tls_tput": "TLS throughput, 100 flows",
    "udp_rtt": "UDP round trip, 1 outstanding",
    "tls_rtt": "TLS round trip, 1 outstanding",
}
FLOWS = 100
RELAY_CORE, GEN_CORE = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIPP_BUF = 4 * 1024 * 1024  # sipp's default 64 KB socket buffer drops datagrams with 100 flows


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- /proc helpers
def proc_cpu_ticks(pid: int) -> int | None:
    """utime+stime of one process (all its threads), in clock ticks; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14, 15 of proc(5)


def descendants(root: int) -> list[int]:
    """root and all its descendant processes (Kamailio forks its workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def core_times() -> dict[int, tuple[int, ...]]:
    """Per core jiffies from /proc/stat: (busy, total, irq+softirq, steal)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
                idle = v[3] + v[4]
                total = sum(v)
                out[int(name[3:])] = (total - idle, total, v[5] + v[6], v[7])
    return out




def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"




def listening(proto: str, port: int) -> bool:
    r = subprocess.run(["ss", f"-Hln{proto}", f"sport = :{port}"], capture_output=True, text=True)
    return bool(r.stdout.strip())


def wait_listening(proto: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if listening(proto, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {proto}:{port}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {proto}:{port} after {timeout} s")




def taskset(core: int | None, cmd: list[str]) -> list[str]:
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


# --------------------------------------------------------------------------- sipp output
def sipp_counts(path: Path) -> dict[str, int]:
    """Last row of a sipp -trace_counts CSV as {column: int}."""
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    out = {}
    for k, v in zip(head, last):
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def sipp_stats(path: Path) -> dict[str, float]:
    """Cumulative columns, last row, of a sipp -trace_stat CSV."""
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    out = {}
    for k, v in zip(head, last):
        if k.endswith("(C)"):
            try:
                out[k[:-3]] = float(v)
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------- the bench
@dataclass
class Relay:
    name: str
    pids: callable  # -> list[int]
    procs: list = field(default_factory=list)


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = Path(tempfile.mkdtemp(prefix="faultlab-bench-"))
        self.procs: list[subprocess.Popen] = []  # long-lived processes we started
        self.kam_pid: int | None = None
        self.commands: dict[str, str] = {}
        self.runs: list[dict] = []
        self.seq = 0
        self.notes: list[str] = []
        self.ports = {k: free_port() for k in ("uas_udp", "uas_tls", "fl_udp", "fl_tls", "kam", "kam_tls",
                                               "flh_udp", "flh_tls", "hep_nobody", "fll_udp", "fll_tls")}
        self.hep_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # faultlab-hep-live's collector
        self.hep_sink.bind(("127.0.0.1", 0))
        ncpu = os.cpu_count() or 1
        self.pin = ncpu >= 2
        if not self.pin:
            self.notes.append(f"only {ncpu} CPU: nothing pinned, relay and load generator share it")
        self.relay_core = RELAY_CORE if self.pin else None
        self.gen_core = GEN_CORE if self.pin else None
        self.relays: dict[str, Relay] = {}

    # ----------------------------------------------------------------- setup
    def record_cmd(self, key: str, cmd: list[str], env: dict | None = None) -> None:
        if key not in self.commands:
            pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
            self.commands[key] = (pre + " " if pre else "") + shlex.join(cmd)

    def make_certs(self) -> None:
        d = self.tmp / "certs"
        d.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *c: subprocess.run(["openssl", *c], cwd=d, check=True, capture_output=True)
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=faultlab bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", *ec, "-keyout", "uas.key", "-out", "uas.csr", "-subj", "/CN=localhost")
        (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        run("x509", "-req", "-in", "uas.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-out", "uas.crt", "-extfile", "ext")
        self.ca, self.cert, self.key = d / "ca.crt", d / "uas.crt", d / "uas.key"

    def start_kamailio(self) -> None:
        script = Path(self.a.pbx_dir) / "start-kamailio.sh"
        if not script.exists():
            raise RuntimeError(f"{script} not found (--pbx-dir)")
        wd = self.tmp / "kamailio"
        env = {"KAM_WORKDIR": str(wd), "KAM_SHM_MB": "2048", "KAM_EXTRA_ARGS": "-x tlsf", "KAM_DEBUG": "1"}
        cmd = taskset(self.relay_core, ["bash", str(script), str(self.ports["kam"]), str(self.ports["kam_tls"])])
        self.record_cmd("kamailio", cmd, env)
        r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"start-kamailio.sh failed: {r.stderr.strip()}")
        self.kam_pid = int(r.stdout.split()[-1])
        self.kam_log = wd / "kamailio.log"
        self.relays["kamailio"] = Relay("kamailio", lambda: descendants(self.kam_pid))
        self.check_affinity("kamailio", descendants(self.kam_pid), self.relay_core)
        # registrations: Contact = the UAS, so requests to bob / tbob reach it
        self.register("bob", f"sip:bob@127.0.0.1:{self.ports['uas_udp']}")
        self.register("tbob", f"sip:tbob@127.0.0.1:{self.ports['uas_tls']};transport=tls", "tls")

    def register(self, user: str, contact: str, transport: str = "udp") -> None:
        """REGISTER user -> contact at Kamailio, over the transport its requests will use
        (a binding learnt over UDP makes Kamailio force its UDP socket, then warn and switch
        to TLS for every request). The Via names our own source address: no NAT handling."""
        cid = uuid.uuid4().hex
        if transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            kp = self.ports["kam"]
        else:
            ctx = ssl.create_default_context(cafile=str(self.tmp / "kamailio" / "certs" / "ca.crt"))
            raw = socket.create_connection(("127.0.0.1", self.ports["kam_tls"]), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            kp = self.ports["kam_tls"]
        s.settimeout(5)
        lp = s.getsockname()[1]
        msg = (f"REGISTER sip:127.0.0.1:{kp} SIP/2.0\r\n"
               f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{lp};branch=z9hG4bK{cid[:16]};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag={cid[:8]}\r\n"
               f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: {cid}@bench\r\nCSeq: 1 REGISTER\r\n"
               f"Contact: <{contact}>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            if transport == "udp":
                s.sendto(msg, ("127.0.0.1", kp))
            else:
                s.sendall(msg)
            resp = s.recv(65536).decode(errors="replace")
        finally:
            s.close()
        if not resp.startswith("SIP/2.0 200"):
            raise RuntimeError(f"REGISTER {user} -> {resp.splitlines()[0] if resp else 'nothing'}")
        stored = [l for l in resp.splitlines() if l.lower().startswith(("contact:", "m:"))]
        log(f"  registered {user} over {transport}: {stored[0] if stored else contact}")

    def faultlab_cmd(self) -> list[str]:
        """The faultlab of this Python (console script next to it), else `python -m faultlab`."""
        exe = Path(sys.executable).parent / "faultlab"
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "faultlab"]

    def check_affinity(self, name: str, pids: list[int], core: int | None) -> None:
        if core is None:
            return
        wrong = []
        for pid in pids:
            try:
                if os.sched_getaffinity(pid) != {core}:
                    wrong.append(pid)
            except OSError:
                pass
        if wrong:
            self.notes.append(f"{name}: processes {wrong} are not pinned to core {core}")
        else:
            log(f"  {name}: {len(pids)} process(es) pinned to core {core}")

    def start_faultlab(self, name: str = "faultlab") -> None:
        """The faultlab proxy, UDP and TLS (``name`` faultlab-hep: sending HEP to a port where nothing listens)."""
        probe = subprocess.run([*self.faultlab_cmd(), "proxy", "--help"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise RuntimeError("`faultlab proxy` is not available: " + (probe.stderr.strip().splitlines() or ["?"])[-1])
        home = self.tmp / "faultlab-home"
        env = {"FAULTLAB_HOME": str(home)}
        init = [*self.faultlab_cmd(), "ca", "init"]
        if not (home / "ca.crt").exists():  # one lab CA for every faultlab path
            self.record_cmd("faultlab_ca", init, env)
            r = subprocess.run(init, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"faultlab ca init failed: {r.stderr.strip() or r.stdout.strip()}")
        p = self.ports
        fl = {"faultlab-hep": "flh", "faultlab-hep-live": "fll"}.get(name, "fl")
        hep = {"faultlab-hep": ["--hep", f"udp:127.0.0.1:{p['hep_nobody']}"],
               "faultlab-hep-live": ["--hep", f"udp:127.0.0.1:{self.hep_sink.getsockname()[1]}"]}.get(name, [])
        variants = {
            "udp": ["--listen", f"udp:127.0.0.1:{p[fl + '_udp']}", "--upstream", f"udp:127.0.0.1:{p['uas_udp']}"],
            "tls": ["--listen", f"tls:127.0.0.1:{p[fl + '_tls']}", "--upstream", f"tls:127.0.0.1:{p['uas_tls']}",
                    "--upstream-ca", str(self.ca)],
        }
        procs = []
        for tr, extra in variants.items():
            cmd = taskset(self.relay_core, [*self.faultlab_cmd(), "proxy", *extra, *hep, "-q"])
            self.record_cmd(f"{name}_{tr}", cmd, env)
            logf = open(self.tmp / f"{name}-{tr}.log", "wb")
            proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            self.procs.append(proc)
            procs.append(proc)
            wait_listening("u" if tr == "udp" else "t", p[f"{fl}_{tr}"], proc)
        self.relays[name] = Relay(name, lambda: [pr.pid for pr in procs if pr.poll() is None], procs)
        self.check_affinity(name, [pr.pid for pr in procs], self.relay_core)

    # ----------------------------------------------------------------- one measurement
    def target(self, test: str, path: str) -> tuple[str, int, str]:
        udp = test.startswith("udp")
        user = "bob" if udp else "tbob"
        p = self.ports
        port = {"direct": p["uas_udp" if udp else "uas_tls"], "faultlab": p["fl_udp" if udp else "fl_tls"],
                "faultlab-hep": p["flh_udp" if udp else "flh_tls"], "faultlab-hep-live": p["fll_udp" if udp else "fll_tls"],
                "kamailio": p["kam" if udp else "kam_tls"]}[path]
        return "127.0.0.1", port, user

    def measure(self, test: str, path: str, duration: float, warm: float, rnd: int | str) -> dict:
        host, port, user = self.target(test, path)
        self.seq += 1
        rdir = self.tmp / f"run-{self.seq:03d}-{test}-{path}"
        rdir.mkdir()
        gen: list[subprocess.Popen] = []
        res: dict = {"test": test, "path": path, "round": rnd, "duration_s": duration}
        uas = uac = None
        try:
            if test.startswith("udp"):  # sipp UAS on its fixed port (Kamailio has it registered)
                cmd = taskset(self.gen_core, ["sipp", "-sf", str(SIPP_DIR / "uas.xml"), "-i", "127.0.0.1",
                                              "-p", str(self.ports["uas_udp"]), "-t", "u1", "-buff_size", str(SIPP_BUF),
                                              "-max_socket", "2048", "-trace_counts", "-fd", "3600", "-nostdin"])
                self.record_cmd("sipp_uas", cmd)
                uas = subprocess.Popen(cmd, cwd=rdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
                gen.append(uas)
                wait_listening("u", self.ports["uas_udp"], uas)
            if test == "udp_tput":
                t0 = time.time() + 0.2  # sipp opens its 100 UDP sockets at once: fixed deadlines
                warm_end, meas_end = t0 + warm, t0 + warm + duration
                scen = (SIPP_DIR / "uac.xml").read_text()
                scen = scen.replace("@@WARM_END@@", f"{warm_end:.6f}").replace("@@MEAS_END@@", f"{meas_end:.6f}")
                (rdir / "uac.xml").write_text(scen)
                cmd = taskset(self.gen_core, ["sipp", f"{host}:{port}", "-sf", "uac.xml", "-s", user,
                                              "-i", "127.0.0.1", "-t", "un", "-m", str(FLOWS), "-l", str(FLOWS),
                                              "-r", str(FLOWS), "-rp", "10", "-buff_size", str(SIPP_BUF),
                                              "-max_socket", "2048", "-trace_counts", "-trace_stat", "-fd", "3600",
                                              "-nostdin"])
                self.record_cmd(f"sipp_uac_{path}", cmd)
                uac = subprocess.Popen(cmd, cwd=rdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
                gen.append(uac)
            else:  # loadgen: warm-up traffic until every flow is up (TLS handshakes), then deadlines
                flows = FLOWS if test.endswith("tput") else 1
                tr = "udp" if test.startswith("udp") else "tls"
                cmd = [sys.executable, str(LOADGEN), "--uac", f"{tr}:{host}:{port}", "--user", user,
                       "--flows", str(flows), "--sync"]
                if tr == "tls":
                    cmd += ["--uas", f"tls:127.0.0.1:{self.ports['uas_tls']}", "--cert", str(self.cert),
                            "--key", str(self.key)]
                cmd = taskset(self.gen_core, cmd)
                self.record_cmd(f"loadgen_{test}_{path}", cmd)
                launched = time.time()
                uac = subprocess.Popen(cmd, cwd=rdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.PIPE, text=True)
                gen.append(uac)
                ready, _, _ = select.select([uac.stdout], [], [], 40)
                line = uac.stdout.readline().split() if ready else []
                if len(line) < 3 or line[0] != "connected":
                    raise RuntimeError(f"loadgen did not connect its flows: {line} {uac.stderr.read()[-2000:]}")
                res["connect_s"] = float(line[1]) - launched  # process start + all flows up (TLS handshakes)
                warm_end = max(float(line[1]), time.time()) + warm
                meas_end = warm_end + duration
                uac.stdin.write(f"{warm_end:.6f} {meas_end:.6f}\n")
                uac.stdin.close()
                uac.stdin = None  # so that communicate() leaves it alone
            res.update(warm_end=warm_end, meas_end=meas_end)

            # CPU samples exactly over the measured interval
            relay_pids = self.relays[path].pids() if path in self.relays else []
            time.sleep(max(0.0, warm_end - time.time()))
            s0 = self.sample(relay_pids, gen)
            time.sleep(max(0.0, meas_end - time.time()))
            s1 = self.sample(relay_pids, gen)
            try:
                out, err = uac.communicate(timeout=15)
                out = out or ""
                err = err if isinstance(err, str) else (err or b"").decode(errors="replace")
            except subprocess.TimeoutExpired:
                stop(uac, signal.SIGKILL)
                out, err = uac.communicate()
                res.setdefault("problems", []).append("UAC did not finish within 15 s after the end")
            res["uac_rc"] = uac.returncode
            if uas is not None:
                res["uas_rc"] = stop(uas)  # SIGTERM: sipp writes its final counts
            res.update(self.cpu(s0, s1, relay_pids))
            if test == "udp_tput":
                res.update(self.parse_sipp_uac(rdir))
            else:
                try:
                    lg = json.loads(out.strip().splitlines()[-1])  # after the "connected" line
                except (ValueError, IndexError):
                    raise RuntimeError(f"loadgen failed (rc {uac.returncode}): {err.strip()[-2000:]}")
                res["loadgen"] = lg
                res.update(sent=lg["measured_sent"], answered=lg["measured_answered"], lost=lg["lost"],
                           unexpected=lg["unexpected"] + lg["uas_unexpected"], non_200=lg["non_200"],
                           conn_errors=lg["conn_errors"], retrans=0, rtt_us=lg["rtt_us"],
                           flows_connected=lg["flows_connected"])
                if lg["errors"]:
                    res.setdefault("problems", []).extend(lg["errors"])
                if lg["all_connected_at"] is None:
                    res.setdefault("problems", []).append(f"only {lg['flows_connected']} of {lg['flows']} flows connected")
            if uas is not None:
                res.update(self.parse_sipp_uas(rdir))
        finally:
            for p in gen:
                if p.poll() is None:
                    stop(p, signal.SIGKILL)
        res["tput"] = res["answered"] / duration
        if res["relay_cpu_s"] is not None and res["answered"]:
            res["relay_cpu_us_per_tx"] = res["relay_cpu_s"] * 1e6 / res["answered"]
        res["loss_free"] = self.loss_free(res)
        res["bound"] = self.bottleneck(res)
        res["loadavg"] = os.getloadavg()
        self.runs.append(res)
        if not self.a.keep:
            shutil.rmtree(rdir, ignore_errors=True)
        return res

    def sample(self, relay_pids: list[int], gen: list[subprocess.Popen]) -> dict:
        return {"t": time.time(), "cores": core_times(),
                "relay": {p: proc_cpu_ticks(p) for p in relay_pids},
                "gen": {p.pid: proc_cpu_ticks(p.pid) for p in gen}}

    def cpu(self, s0: dict, s1: dict, relay_pids: list[int]) -> dict:
        wall = s1["t"] - s0["t"]

        def delta(key):
            tot = 0
            for pid, v0 in s0[key].items():
                v1 = s1[key].get(pid)
                if v0 is None or v1 is None:
                    return None
                tot += v1 - v0
            return tot / CLK_TCK

        relay = delta("relay") if relay_pids else None
        gen = delta("gen")
        cores, irq, steal = {}, {}, {}
        for c, (b0, t0, i0, s0_) in s0["cores"].items():
            b1, t1, i1, s1_ = s1["cores"][c]
            span = (t1 - t0) or 1
            cores[c], irq[c], steal[c] = (b1 - b0) / span, (i1 - i0) / span, (s1_ - s0_) / span
        ours = {RELAY_CORE: (relay or 0.0) / wall, GEN_CORE: (gen or 0.0) / wall} if self.pin else {}
        # other processes: busy time not ours, not interrupt/softirq work (the loopback traffic's
        # receive path runs there, uncharged to any process), not stolen by the hypervisor
        other = {c: max(0.0, b - ours.get(c, 0.0) - irq[c] - steal[c]) for c, b in cores.items()}
        return {"wall_s": wall, "relay_cpu_s": relay, "gen_cpu_s": gen, "other_load": other,
                "irq_softirq": irq, "steal": steal,
                "relay_util": relay / wall if relay is not None else None,
                "gen_util": gen / wall if gen is not None else None,
                "core_busy": cores}

    @staticmethod
    def parse_sipp_uac(rdir: Path) -> dict:
        counts = next(rdir.glob("uac_*_counts.csv"), None)
        stats = next(rdir.glob("uac_*_.csv"), None)
        if counts is None or stats is None:
            raise RuntimeError(f"sipp UAC wrote no statistics in {rdir}")
        c, s = sipp_counts(counts), sipp_stats(stats)
        sent_cols = [k for k in c if k.endswith("_MESSAGE_Sent")]
        recv_cols = [k for k in c if k.endswith("_200_Recv")]
        return {
            "sent": c[sent_cols[1]], "answered": c[recv_cols[1]],
            "sent_warmup": c[sent_cols[0]], "answered_warmup": c[recv_cols[0]],
            "retrans": sum(v for k, v in c.items() if k.endswith("_Retrans")),
            "timeouts": sum(v for k, v in c.items() if k.endswith("_Timeout")),
            "unexpected": sum(v for k, v in c.items() if k.endswith("_Unexp")),
            "lost": c[sent_cols[1]] - c[recv_cols[1]],
            "sipp_failed_calls": int(s.get("FailedCall", 0)),
            "sipp_successful_calls": int(s.get("SuccessfulCall", 0)),
            "sipp_out_of_call_msgs": int(s.get("OutOfCallMsgs", 0)),
            "sipp_dead_call_msgs": int(s.get("DeadCallMsgs", 0)),
            "sipp_fatal_errors": int(s.get("FatalErrors", 0)),
            "flows_connected": int(s.get("OutgoingCall", 0)),
        }

    @staticmethod
    def parse_sipp_uas(rdir: Path) -> dict:
        counts = next(rdir.glob("uas_*_counts.csv"), None)
        if counts is None:
            return {"uas": None}
        c = sipp_counts(counts)
        return {"uas": {
            "received": sum(v for k, v in c.items() if k.endswith("_MESSAGE_Recv")),
            "answered": sum(v for k, v in c.items() if k.endswith("_200_Sent")),
            "retrans": sum(v for k, v in c.items() if k.endswith("_Retrans")),
            "unexpected": sum(v for k, v in c.items() if k.endswith("_Unexp")),
        }}

    @staticmethod
    def loss_free(r: dict) -> bool:
        bad = [r.get(k, 0) for k in ("lost", "retrans", "timeouts", "unexpected", "non_200", "conn_errors",
                                     "sipp_failed_calls", "sipp_out_of_call_msgs", "sipp_dead_call_msgs")]
        uas = r.get("uas") or {}
        bad += [uas.get("retrans", 0), uas.get("unexpected", 0)]
        return r["sent"] == r["answered"] and r["sent"] > 0 and not any(bad)

    def bottleneck(self, r: dict) -> str:
        """Which side limited a throughput run: the relay, the load generator, or neither
        (then the window of 100 and the round trip set the rate). "(other load)": the core was
        saturated although our process on it was not: other processes on the machine took the rest."""
        if not r["test"].endswith("tput"):
            return "-"
        g, rl = r.get("gen_util") or 0.0, r.get("relay_util")
        if rl is not None and rl >= 0.85:
            return "relay"
        if g >= 0.85:
            return "generator"
        if not self.pin:
            return "neither"
        cb = r.get("core_busy", {})
        gen_full = cb.get(GEN_CORE, 0.0) >= 0.95
        relay_full = rl is not None and cb.get(RELAY_CORE, 0.0) >= 0.95
        if gen_full and relay_full:
            return "both cores (other load)"
        if gen_full:
            return "generator core (other load)"
        if relay_full:
            return "relay core (other load)"
        return "neither"

    # ----------------------------------------------------------------- the run
    def run(self) -> int:
        a = self.a
        started = dt.datetime.now().astimezone()
        if self.pin:
            os.sched_setaffinity(0, {GEN_CORE})  # this script stays off the relay's core
        paths = [p for p in a.paths.split(",") if p]
        log(f"# faultlab relay benchmark — {started:%Y-%m-%d %H:%M:%S %Z}")
        log(f"machine: {os.cpu_count()} CPU, {cpu_model()}; load average {self.fmt_load(os.getloadavg())}")
        log(f"params: rounds={a.rounds} duration={a.duration}s warm-up={a.warmup}s flows={FLOWS} "
            f"paths={','.join(paths)} relay core={self.relay_core} generator core={self.gen_core}")
        log(f"temp dir: {self.tmp}")
        self.make_certs()
        if "kamailio" in paths:
            log("starting Kamailio ...")
            self.start_kamailio()
        for name in ("faultlab", "faultlab-hep", "faultlab-hep-live"):
            if name not in paths:
                continue
            log(f"starting {name} ...")
            try:
                self.start_faultlab(name)
            except RuntimeError as e:
                self.notes.append(f"{name} skipped: {e}")
                log(f"  SKIPPED {name}: {e}")
                paths.remove(name)
        self.paths = paths
        self.resources = {p: {"start": proc_resources(self.relays[p].pids())} for p in self.relays}
        for k, v in self.commands.items():
            log(f"  $ {v}")
        # warm-up: every relay once per transport; Kamailio gets more (it speeds up over its first runs)
        wd = min(2.0, a.duration)
        for path in paths:
            n = (2 if a.quick else 4) if path == "kamailio" else 1
            for i in range(n):
                for test in ("udp_tput", "tls_tput"):
                    r = self.measure(test, path, wd, 0.5, rnd=f"warmup{i}")
                    log(f"  warm-up {path:9s} {test:9s} {r['tput']:9.0f} tx/s"
                        + ("" if r["loss_free"] else "  (LOSSES)"))
        self.warmups, self.runs = self.runs, []
        tests = [t for t in TESTS if t in a.tests.split(",")]
        for rnd in range(a.rounds):
            log(f"round {rnd + 1}/{a.rounds} (load average {self.fmt_load(os.getloadavg())})")
            for test in tests:
                for path in paths:
                    r = self.measure(test, path, a.duration, a.warmup, rnd)
                    log("  " + self.fmt_run(r))
        log("commands (first run of each kind; --warm-end/--meas-end and the sipp scenario's @@WARM_END@@/"
            "@@MEAS_END@@ are absolute epoch seconds set per run):")
        for k, v in self.commands.items():
            log(f"  {k}: {v}")
        for p in self.resources:
            self.resources[p]["end"] = proc_resources(self.relays[p].pids())
            log(f"{p}: open fds {self.resources[p]['start']['fds']} -> {self.resources[p]['end']['fds']}, "
                f"RSS {self.resources[p]['start']['rss_kb'] / 1024:.0f} -> {self.resources[p]['end']['rss_kb'] / 1024:.0f} MB "
                f"(summed over its processes, shared memory counted in each; after start-up -> at the end)")
        summary = self.summarize(tests)
        finished = dt.datetime.now().astimezone()
        doc = {
            "started": started.isoformat(), "finished": finished.isoformat(),
            "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
            "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
                        "python": platform.python_version(), "loadavg_end": os.getloadavg()},
            "params": {"rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup, "flows": FLOWS,
                       "paths": self.paths, "tests": tests, "quick": a.quick, "pinned": self.pin},
            "versions": self.versions(),
            "commands": self.commands, "notes": self.notes, "summary": summary,
            "runs": self.runs, "warmups": self.warmups, "relay_logs": self.relay_logs(), "relay_resources": self.resources,
        }
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"relay-{started:%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps(doc, indent=1, default=str))
        log()
        log(self.markdown(doc))
        log(f"results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
        return 0 if all(r["loss_free"] for r in self.runs) else 1

    # ----------------------------------------------------------------- reporting
    @staticmethod
    def fmt_load(l) -> str:
        return " ".join(f"{x:.2f}" for x in l)

    def fmt_run(self, r: dict) -> str:
        s = f"{r['test']:9s} {r['path']:9s} "
        if r["test"].endswith("tput"):
            s += f"{r['tput']:9.0f} tx/s"
        else:
            rt = r["rtt_us"]
            s += f"rtt median {rt['median']:7.1f} µs p99 {rt['p99']:8.1f} µs ({r['answered']} tx)"
        if r.get("relay_cpu_us_per_tx") is not None:
            s += f"  relay {r['relay_cpu_us_per_tx']:6.1f} µs/tx ({100 * r['relay_util']:3.0f}% core)"
        s += f"  gen {100 * (r['gen_util'] or 0):3.0f}%"
        cb, ol = r["core_busy"], r["other_load"]
        s += "  cores busy " + "/".join(f"{100 * cb[c]:.0f}%" for c in sorted(cb))
        s += (" (others " + "/".join(f"{100 * ol[c]:.0f}%" for c in sorted(ol))
              + ", softirq " + "/".join(f"{100 * r['irq_softirq'][c]:.0f}%" for c in sorted(ol))
              + ", steal " + "/".join(f"{100 * r['steal'][c]:.0f}%" for c in sorted(ol)) + ")")
        if r["test"].endswith("tput"):
            s += f"  bound: {r['bound']}"
        s += f"  sent {r['sent']} answered {r['answered']}"
        if not r["loss_free"]:
            s += (f"  LOSSES: lost={r.get('lost')} retrans={r.get('retrans')} timeouts={r.get('timeouts', 0)} "
                  f"unexpected={r.get('unexpected')} non200={r.get('non_200', 0)} "
                  f"failed_calls={r.get('sipp_failed_calls', 0)} conn_errors={r.get('conn_errors', 0)} "
                  f"uas={r.get('uas')}")
        for p in r.get("problems", []):
            s += f"\n      problem: {p}"
        return s

    def summarize(self, tests: list[str]) -> dict:
        out: dict = {}
        for test in tests:
            for path in self.paths:
                rs = [r for r in self.runs if r["test"] == test and r["path"] == path]
                if not rs:
                    continue
                med = lambda k: statistics.median(r[k] for r in rs) if all(r.get(k) is not None for r in rs) else None
                e = {
                    "runs": len(rs),
                    "tput_median": med("tput"), "tput_min": min(r["tput"] for r in rs),
                    "tput_max": max(r["tput"] for r in rs),
                    "relay_cpu_us_per_tx": med("relay_cpu_us_per_tx"),
                    "relay_util": med("relay_util"), "gen_util": med("gen_util"),
                    "core_busy": {c: statistics.median(r["core_busy"][c] for r in rs) for c in rs[0]["core_busy"]},
                    "other_load": {c: statistics.median(r["other_load"][c] for r in rs) for c in rs[0]["other_load"]},
                    "irq_softirq": {c: statistics.median(r["irq_softirq"][c] for r in rs) for c in rs[0]["irq_softirq"]},
                    "steal": {c: statistics.median(r["steal"][c] for r in rs) for c in rs[0]["steal"]},
                    "sent": sum(r["sent"] for r in rs), "answered": sum(r["answered"] for r in rs),
                    "lost": sum(r.get("lost", 0) for r in rs), "retrans": sum(r.get("retrans", 0) for r in rs),
                    "timeouts": sum(r.get("timeouts", 0) for r in rs),
                    "unexpected": sum(r.get("unexpected", 0) for r in rs),
                    "failed": sum(r.get("sipp_failed_calls", 0) + r.get("non_200", 0) + r.get("conn_errors", 0)
                                  for r in rs),
                    "uas_retrans": sum((r.get("uas") or {}).get("retrans", 0) for r in rs),
                    "loss_free_runs": sum(r["loss_free"] for r in rs),
                    "bound": sorted({r["bound"] for r in rs}),
                }
                if rs[0].get("connect_s") is not None:
                    e["connect_s"] = statistics.median(r["connect_s"] for r in rs)
                if rs[0].get("rtt_us"):
                    e["rtt_median_us"] = statistics.median(r["rtt_us"]["median"] for r in rs)
                    e["rtt_p99_us"] = statistics.median(r["rtt_us"]["p99"] for r in rs)
                out[f"{test}/{path}"] = e
        # does the load generator limit the throughput numbers?
        checks = []
        for test in ("udp_tput", "tls_tput"):
            d = out.get(f"{test}/direct")
            for path in ("faultlab", "faultlab-hep", "faultlab-hep-live", "kamailio"):
                e = out.get(f"{test}/{path}")
                if not e:
                    continue
                gen_bound = any(b.startswith("generator") for b in e["bound"])
                near_direct = d is not None and e["tput_median"] >= 0.9 * d["tput_median"]
                if gen_bound or near_direct:
                    why = []
                    if gen_bound:
                        why.append(f"generator process at {100 * (e['gen_util'] or 0):.0f}% of core {GEN_CORE}"
                                   f" (core busy {100 * e['core_busy'].get(GEN_CORE, 0):.0f}%)")
                    if near_direct:
                        why.append(f"{e['tput_median']:.0f} tx/s is >= 90% of the direct path's "
                                   f"{d['tput_median']:.0f}")
                    checks.append(f"{TEST_TITLES[test]}, {path}: LIMITED BY THE LOAD GENERATOR — "
                                  f"{'; '.join(why)}; the relay used {100 * (e['relay_util'] or 0):.0f}% of its core, "
                                  f"so its capacity is higher than measured (about "
                                  f"{e['tput_median'] / max(e['relay_util'] or 1e-9, 1e-9):.0f} tx/s if it scaled "
                                  f"to a full core)")
        # project targets
        targets = []
        fu, ku = out.get("udp_tput/faultlab"), out.get("udp_tput/kamailio")
        if fu and ku:
            ok = fu["tput_median"] >= ku["tput_median"]
            targets.append(f"faultlab UDP throughput >= Kamailio's: {'MET' if ok else 'NOT MET'} "
                           f"({fu['tput_median']:.0f} vs {ku['tput_median']:.0f} tx/s)")
        for t in ("udp_rtt", "tls_rtt"):
            f_, k_ = out.get(f"{t}/faultlab"), out.get(f"{t}/kamailio")
            if f_ and k_:
                ok = f_["rtt_median_us"] <= k_["rtt_median_us"]
                targets.append(f"faultlab {t[:3].upper()} RTT <= Kamailio's: {'MET' if ok else 'NOT MET'} "
                               f"(median {f_['rtt_median_us']:.0f} vs {k_['rtt_median_us']:.0f} µs)")
        return {"by_test_path": out, "generator_checks": checks, "targets": targets}

    def markdown(self, doc: dict) -> str:
        s = doc["summary"]["by_test_path"]
        paths = doc["params"]["paths"]
        m = doc["machine"]
        started = dt.datetime.fromisoformat(doc["started"])
        loads = [r["loadavg"][0] for r in self.runs]
        lines = [
            f"Run of {started:%Y-%m-%d %H:%M %Z}: {m['nproc']} CPU ({m['cpu']}), Linux {m['kernel']}, "
            f"Python {m['python']}; load average (1 min) during the runs {min(loads):.2f}–{max(loads):.2f}; "
            f"{doc['params']['rounds']} rounds × {doc['params']['duration_s']:g} s per measurement, medians.",
            f"Command: `{doc['command'].replace(sys.executable, 'python3')}`; faultlab {doc['versions']['faultlab_git']}"
            + (" (with uncommitted changes)" if doc["versions"].get("faultlab_uncommitted") else "")
            + f"; {doc['versions']['kamailio']}; {doc['versions']['sipp']}.",
            "",
            "| | " + " | ".join(paths) + " |",
            "|---|" + "---:|" * len(paths),
        ]

        def row(title, fn):
            cells = []
            for p in paths:
                cells.append(fn(p))
            lines.append(f"| {title} | " + " | ".join(cells) + " |")

        def get(test, p):
            return s.get(f"{test}/{p}")

        for test in ("udp_tput", "tls_tput"):
            if not any(get(test, p) for p in paths):
                continue
            row(f"{TEST_TITLES[test]} (tx/s, min–max)",
                lambda p: (f"**{get(test, p)['tput_median']:,.0f}** ({get(test, p)['tput_min']:,.0f}–"
                           f"{get(test, p)['tput_max']:,.0f})") if get(test, p) else "–")
            row("… relay CPU per tx (µs)", lambda p: f"{get(test, p)['relay_cpu_us_per_tx']:.1f}"
                if get(test, p) and get(test, p)["relay_cpu_us_per_tx"] is not None else "–")
            row("… relay / generator core use", lambda p: (
                (f"{100 * get(test, p)['relay_util']:.0f}%" if get(test, p)["relay_util"] is not None else "–")
                + f" / {100 * (get(test, p)['gen_util'] or 0):.0f}%") if get(test, p) else "–")
            row(f"… other processes on core {RELAY_CORE} / core {GEN_CORE}", lambda p: (
                f"{100 * get(test, p)['other_load'].get(RELAY_CORE, 0):.0f}% / "
                f"{100 * get(test, p)['other_load'].get(GEN_CORE, 0):.0f}%") if get(test, p) else "–")
            row("… limited by", lambda p: ", ".join(get(test, p)["bound"]) if get(test, p) else "–")
            if test == "tls_tput":
                row("… time to open the 100 TLS flows (s)", lambda p: f"{get(test, p)['connect_s']:.2f}"
                    if get(test, p) and get(test, p).get("connect_s") is not None else "–")
        for test in ("udp_rtt", "tls_rtt"):
            if not any(get(test, p) for p in paths):
                continue
            row(f"{TEST_TITLES[test]}: median / p99 (µs)",
                lambda p: f"**{get(test, p)['rtt_median_us']:.0f}** / {get(test, p)['rtt_p99_us']:.0f}"
                if get(test, p) else "–")
        row("requests sent / answered (all measured runs)", lambda p: (
            f"{sum(s[k]['sent'] for k in s if k.endswith('/' + p)):,} / "
            f"{sum(s[k]['answered'] for k in s if k.endswith('/' + p)):,}"))
        row("lost / retrans / timeouts / unexpected / failed", lambda p: " / ".join(
            str(sum(s[k][f] for k in s if k.endswith("/" + p)))
            for f in ("lost", "retrans", "timeouts", "unexpected", "failed")))
        lines.append("")
        for t in doc["summary"]["targets"]:
            lines.append(f"- Target: {t}")
        for c in doc["summary"]["generator_checks"]:
            lines.append(f"- {c}")
        busy = [max(r["other_load"].values(), default=0) for r in self.runs]
        if busy and statistics.median(busy) > 0.10:
            lines.append(f"- Machine busy: other processes took a median {100 * statistics.median(busy):.0f}% "
                         f"(max {100 * max(busy):.0f}%) of a core during the runs (core busy time from /proc/stat "
                         "minus our processes, interrupt/softirq time and hypervisor steal); "
                         "numbers from a busy machine are noisy, re-run on a quiet one.")
        steal = [max(r["steal"].values(), default=0) for r in self.runs]
        if steal and max(steal) > 0.02:
            lines.append(f"- Hypervisor steal: up to {100 * max(steal):.0f}% of a core "
                         f"(median {100 * statistics.median(steal):.0f}%).")
        for n in doc["notes"]:
            lines.append(f"- Note: {n}")
        for name, info in doc["relay_logs"].items():
            if name == "faultlab_exited":
                lines.append(f"- faultlab EXITED during the run (exit codes {info})")
            elif info.get("other_lines") or info.get("errors_warnings"):
                n = info.get("other_lines") or info.get("errors_warnings")
                lines.append(f"- {name} logged {n} line(s) of warnings/errors, e.g. `{info['sample'][0][:200]}`")
        bad = [r for r in self.runs if not r["loss_free"]]
        if bad:
            lines.append(f"- LOSSES in {len(bad)} of {len(self.runs)} runs: " + "; ".join(
                f"{r['test']}/{r['path']} round {r['round']}: sent {r['sent']} answered {r['answered']} "
                f"retrans {r.get('retrans', 0)} unexpected {r.get('unexpected', 0)}" for r in bad[:6]))
        else:
            lines.append(f"- No losses: in all {len(self.runs)} measured runs every request got its 200, with no "
                         "retransmission, timeout, unexpected message or failed call.")
        return "\n".join(lines)

    def versions(self) -> dict:
        v = {}
        for name, cmd in {"sipp": ["sipp", "-v"], "kamailio": ["kamailio", "-v"],
                          "faultlab_git": ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                          "faultlab_uncommitted": ["git", "-C", str(REPO), "status", "--porcelain", "--", "faultlab"],
                          }.items():
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                txt = (r.stdout + r.stderr).strip().splitlines()
                if name == "faultlab_uncommitted":
                    v[name] = [l.strip() for l in txt if l.strip()]
                else:
                    v[name] = next((l.strip() for l in txt if l.strip()), "?")
            except OSError:
                v[name] = "not found"
        return v

    def relay_logs(self) -> dict:
        """What the relays logged: faultlab runs with -q, so any line but its start banner is news;
        Kamailio runs with debug=1, so its log has only warnings and errors."""
        out = {}
        for tr in ("udp", "tls"):
            f = self.tmp / f"faultlab-{tr}.log"
            if f.exists():
                lines = f.read_text(errors="replace").splitlines()
                news = [l for l in lines if not l.startswith(("faultlab: listening", "faultlab: TLS certificates",
                                                               "faultlab: profile ", "faultlab: stopped"))]
                out[f"faultlab_{tr}"] = {"lines": len(lines), "other_lines": len(news), "sample": news[:20]}
        for proc in self.relays.get("faultlab", Relay("", list)).procs:
            if proc.poll() is not None:
                out.setdefault("faultlab_exited", []).append(proc.returncode)
        if self.kam_pid and getattr(self, "kam_log", None) and self.kam_log.exists():
            lines = self.kam_log.read_text(errors="replace").splitlines()
            errs = [l for l in lines if ("ERROR" in l or "CRITICAL" in l or "WARNING" in l)
                    and "openssl bug #1491" not in l]  # a start-up notice
            out["kamailio"] = {"lines": len(lines), "errors_warnings": len(errs), "sample": errs[:20]}
        return out

    def cleanup(self) -> None:
        for p in self.procs:
            stop(p)
        if self.kam_pid:
            pids = descendants(self.kam_pid)
            try:
                os.kill(self.kam_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            end = time.time() + 10
            while time.time() < end and any(os.path.exists(f"/proc/{p}") for p in pids):
                time.sleep(0.1)
            for p in pids:  # Kamailio workers that did not exit: by PID only
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.a.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per measurement (default 5 s), shorter warm-ups")
    p.add_argument("--rounds", type=int, default=3, help="rounds of alternating measurements (default 3)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 5, --quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each measurement (default 1.5, --quick 1)")
    p.add_argument("--paths", default=",".join(DEFAULT_PATHS), help="comma-separated subset of " + ",".join(PATHS))
    p.add_argument("--tests", default=",".join(TESTS), help="comma-separated subset of " + ",".join(TESTS))
    p.add_argument("--pbx-dir", default=str(DEFAULT_PBX), help="folder of start-kamailio.sh (default ../shared/pbx)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (sipp/Kamailio/faultlab logs)")
    a = p.parse_args()
    bad = [x for x in a.paths.split(",") if x not in PATHS] + [x for x in a.tests.split(",") if x not in TESTS]
    if bad:
        p.error(f"unknown path/test {bad}: paths are {','.join(PATHS)}, tests {','.join(TESTS)}")
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.warmup = a.warmup or (1.0 if a.quick else 1.5)
    for tool in ("sipp", "taskset", "ss", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian: apt-get install sip-tester util-linux iproute2 openssl)")
    b = Bench(a)
    try:
        return b.run()
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
