"""The embedded PBX over a long run: its memory stays flat over many REGISTER and call cycles.

Starts `faultlab pbx --listen udp:127.0.0.1:0 --quiet` as a process and runs --cycles cycles over UDP on loopback,
--lanes of them at a time. One cycle: the phone REGISTERs (200); the caller INVITEs it (100); the PBX forwards
the INVITE to the phone, which answers 200; the caller ACKs and hangs up (BYE, 200 from the phone). Every
--every cycles, the PBX process's resident memory (VmRSS) is read and a row printed:

    python3 bench/pbx_soak.py [--cycles 1000000] [--lanes 16] [--every 50000] [--pace 120]
    python3 bench/pbx_soak.py --logic [--cycles 1000000] [--rate 200]

A finished call is forgotten 64*T1 to 2*64*T1 (32 to 64 s) after it ends, so the PBX holds about a minute of
calls: its memory grows for the first minute or so, then stays flat at a steady load (--pace caps the cycles
per second; unpaced, the rate follows what the machine gives, and so does the number of calls held). A step
that gets no answer in 5 s counts as a failure and the lane goes on with its next cycle.

--logic runs the same cycles through the PBX's sans-IO logic in this process on a virtual clock (--rate cycles
per virtual second), printing its table sizes, Python's allocated blocks (sys.getallocatedblocks) and the
process's RSS: the same code without sockets, several times faster. Figures in docs/PERFORMANCE.md ("Embedded
PBX over long runs").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time

import trio

from faultlab.net.udp import enlarge_buffers
from faultlab.sip import Message, parse_datagram

RUN = "from faultlab.cli.pbx import app; app(prog_name='faultlab pbx')"
STEP_TIMEOUT = 5.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def sip(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


class Lane:
    """One phone (user ``soakN``) and one caller, each on its own UDP socket, running cycles one after another."""

    def __init__(self, n: int, pbx: tuple[str, int], phone=None, caller=None) -> None:
        self.n, self.pbx, self.seq = n, pbx, 0
        self.timeout = phone is None  # --logic: the logic answers at once or not at all
        self.phone = phone or trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.caller = caller or trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)

    async def bind(self) -> None:
        for sock in (self.phone, self.caller):
            enlarge_buffers(sock, 1 << 20)
            await sock.bind(("127.0.0.1", 0))
        self.phone_at = f"127.0.0.1:{self.phone.getsockname()[1]}"
        self.caller_at = f"127.0.0.1:{self.caller.getsockname()[1]}"

    async def wait(self, sock, want) -> Message:
        """The next message on ``sock`` for which ``want`` holds (others, e.g. 100 Trying, are passed over)."""
        with trio.fail_after(STEP_TIMEOUT) if self.timeout else contextlib.nullcontext():
            while True:
                data, _ = await sock.recvfrom(65535)
                msg = parse_datagram(data)
                if isinstance(msg, Message) and want(msg):
                    return msg

    async def cycle(self) -> None:
        self.seq += 1
        s, n, user = self.seq, self.n, f"soak{self.n}"
        await self.phone.sendto(sip(
            "REGISTER sip:127.0.0.1 SIP/2.0", f"Via: SIP/2.0/UDP {self.phone_at};rport;branch=z9hG4bKr{n}x{s}",
            "Max-Forwards: 70", f"From: <sip:{user}@127.0.0.1>;tag=r{n}", f"To: <sip:{user}@127.0.0.1>",
            f"Call-ID: reg-{n}", f"CSeq: {s} REGISTER", f"Contact: <sip:{user}@{self.phone_at}>", "Expires: 300"),
            self.pbx)
        await self.wait(self.phone, lambda m: m.status == 200 and m.call_id == f"reg-{n}")
        call_id = f"c{n}x{s}"
        head = [f"From: <sip:caller{n}@127.0.0.1>;tag=c{n}x{s}", f"Call-ID: {call_id}"]
        await self.caller.sendto(sip(
            f"INVITE sip:{user}@127.0.0.1 SIP/2.0", f"Via: SIP/2.0/UDP {self.caller_at};rport;branch=z9hG4bKi{n}x{s}",
            "Max-Forwards: 70", *head, f"To: <sip:{user}@127.0.0.1>", "CSeq: 1 INVITE",
            f"Contact: <sip:caller{n}@{self.caller_at}>"), self.pbx)
        inv = await self.wait(self.phone, lambda m: m.method == "INVITE" and m.call_id == call_id)
        await self.phone.sendto(sip(
            "SIP/2.0 200 OK", *(f"Via: {v}" for v in inv.get_all("via")),
            *(f"Record-Route: {r}" for r in inv.get_all("record-route")), f"From: {inv.get('from')}",
            f"To: {inv.get('to')};tag=p{n}x{s}", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
            f"Contact: <sip:{user}@{self.phone_at}>"), self.pbx)
        ok = await self.wait(self.caller, lambda m: m.status == 200 and m.call_id == call_id)
        routes = [f"Route: {r}" for r in ok.get_all("record-route")[::-1]]
        to = f"To: {ok.get('to')}"
        for method, cseq in (("ACK", 1), ("BYE", 2)):
            await self.caller.sendto(sip(
                f"{method} sip:{user}@{self.phone_at} SIP/2.0",
                f"Via: SIP/2.0/UDP {self.caller_at};rport;branch=z9hG4bK{method}{n}x{s}", "Max-Forwards: 70",
                *routes, *head, to, f"CSeq: {cseq} {method}"), self.pbx)
            got = await self.wait(self.phone, lambda m, method=method: m.method == method and m.call_id == call_id)
        await self.phone.sendto(sip(
            "SIP/2.0 200 OK", *(f"Via: {v}" for v in got.get_all("via")), f"From: {got.get('from')}",
            f"To: {got.get('to')}", f"Call-ID: {call_id}", "CSeq: 2 BYE"), self.pbx)
        await self.wait(self.caller, lambda m: m.status == 200 and m.call_id == call_id and m.cseq.method == "BYE")


class Soak:
    def __init__(self, pid: int, cycles: int, every: int, pace: float | None = None) -> None:
        self.pid, self.cycles, self.every, self.pace = pid, cycles, every, pace
        self.started = self.done = self.failed = 0
        self.t0 = time.monotonic()
        self.rows: list[tuple[int, float, int, int]] = []

    def sample(self) -> None:
        elapsed = time.monotonic() - self.t0
        row = (self.done, elapsed, rss_kib(self.pid), self.failed)
        self.rows.append(row)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        print(f"{row[0]:>10,} {elapsed:>9.0f} {rate:>9.0f} {row[2] / 1024:>9.1f} {row[3]:>8}", flush=True)

    async def lane(self, lane: Lane) -> None:
        await lane.bind()
        while self.started < self.cycles:
            self.started += 1
            if self.pace:
                await trio.sleep_until(trio.current_time() + max(0.0, self.t0 + self.started / self.pace
                                                                 - time.monotonic()))
            try:
                await lane.cycle()
            except trio.TooSlowError:
                self.failed += 1
            self.done += 1
            if self.done % self.every == 0:
                self.sample()


async def soak(port: int, pid: int, args) -> Soak:
    run = Soak(pid, args.cycles, args.every, args.pace)
    print(f"{'cycles':>10} {'seconds':>9} {'cycles/s':>9} {'RSS MiB':>9} {'failures':>8}")
    run.sample()
    async with trio.open_nursery() as nursery:
        for n in range(args.lanes):
            nursery.start_soon(run.lane, Lane(n, ("127.0.0.1", port)))
    if run.done % args.every:
        run.sample()
    return run


class FakeSock:
    """A UDP socket of the phone or caller in ``--logic`` mode: what it sends goes straight into the PBX logic."""

    def __init__(self, net: "LogicNet", port: int) -> None:
        self.net, self.port, self.inbox = net, port, collections.deque()

    def setsockopt(self, *args) -> None:
        pass

    async def bind(self, addr) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def sendto(self, data: bytes, addr) -> None:
        self.net.deliver(self, data)

    async def recvfrom(self, size: int):
        if not self.inbox:
            raise RuntimeError("the PBX logic answered nothing")
        return self.inbox.popleft(), ("127.0.0.1", 5060)


class LogicNet:
    """The sans-IO PBX logic and the lanes' sockets, on a virtual clock (``now``)."""

    def __init__(self) -> None:
        from faultlab.lab.pbx.logic import PbxLogic

        self.logic, self.now, self.socks = PbxLogic(), 0.0, {}

    def socket(self) -> FakeSock:
        sock = FakeSock(self, 20000 + len(self.socks))
        self.socks[sock.port] = sock
        return sock

    def deliver(self, sock: FakeSock, data: bytes) -> None:
        from faultlab.lab.pbx.logic import Flow

        flow = Flow("udp", ("127.0.0.1", sock.port), ("127.0.0.1", 5060))
        self.route(self.logic.receive(parse_datagram(data), flow, self.now))

    def route(self, outputs) -> None:
        from faultlab.lab.pbx.logic import SendBytes

        for out in outputs:
            if isinstance(out, SendBytes):
                self.socks[out.flow.peer[1]].inbox.append(out.data)

    def run_timers(self) -> None:
        while (t := self.logic.next_wakeup()) is not None and t <= self.now:
            self.route(self.logic.on_timer(t))


async def logic_soak(args) -> int:
    """``--logic``: the PBX's sans-IO logic in this process, no sockets, --rate cycles per virtual second."""
    net = LogicNet()
    lanes = [Lane(n, ("127.0.0.1", 5060), net.socket(), net.socket()) for n in range(args.lanes)]
    for lane in lanes:
        await lane.bind()
    print(f"{'cycles':>10} {'seconds':>9} {'lab s':>9} {'calls':>7} {'txns':>7} {'pending':>8} "
          f"{'blocks':>10} {'RSS MiB':>8}")
    t0 = time.monotonic()
    for i in range(args.cycles + 1):
        if i % args.every == 0:
            sizes = net.logic.sizes()
            print(f"{i:>10,} {time.monotonic() - t0:>9.0f} {net.now:>9.0f} {sizes['calls']:>7} "
                  f"{sizes['client_transactions'] + sizes['server_transactions']:>7} {sizes['pending']:>8} "
                  f"{sys.getallocatedblocks():>10,} {rss_kib(os.getpid()) / 1024:>8.1f}", flush=True)
        if i == args.cycles:
            break
        net.now = i / args.rate
        net.run_timers()
        await lanes[i % len(lanes)].cycle()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1_000_000, help="REGISTER + call cycles (default 1,000,000)")
    parser.add_argument("--lanes", type=int, default=16, help="cycles running at the same time (default 16)")
    parser.add_argument("--every", type=int, default=50_000, help="read the PBX's memory every N cycles")
    parser.add_argument("--pace", type=float, default=None,
                        help="at most this many cycles a second (a steady load: the PBX then holds a steady number "
                             "of finished calls)")
    parser.add_argument("--logic", action="store_true",
                        help="drive the PBX's sans-IO logic in this process on a virtual clock instead (no sockets): "
                             "table sizes, Python's allocated blocks and this process's RSS")
    parser.add_argument("--rate", type=float, default=200.0, help="--logic: cycles per virtual second (default 200)")
    args = parser.parse_args()
    if args.logic:
        return trio.run(logic_soak, args)
    proc = subprocess.Popen([sys.executable, "-c", RUN, "--listen", "udp:127.0.0.1:0", "--quiet"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stderr.readline()
        if not line.startswith("faultlab pbx: udp on 127.0.0.1:"):
            print(f"the PBX did not start: {line}{proc.stderr.read()}", file=sys.stderr)
            return 1
        port = int(line.rsplit(":", 1)[1])
        run = trio.run(soak, port, proc.pid, args)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    settled = [r for r in run.rows if r[1] >= 130]  # past the first calls' lifetimes (2*64*T1) and then some
    if len(settled) >= 2:
        low, high = min(r[2] for r in settled), max(r[2] for r in settled)
        print(f"after the first 130 s: RSS {low / 1024:.1f} to {high / 1024:.1f} MiB over "
              f"{settled[-1][0] - settled[0][0]:,} cycles; {run.failed} failed steps")
    return 0 if run.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
