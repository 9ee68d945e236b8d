"""SIP soak load, shared by bench/soak.py and tests/reliability: a lab of two processes, a counting driver.

- :class:`Lab`: a responder standing in for the PBX (bench/responder.py: a 200 to every request over UDP,
  TCP and TLS; a process of its own, so it can be killed and restarted on the same ports) and a real
  ``faultlab proxy`` in front of it, each in its own process, output to files.
- :func:`drive`: F flows (one UDP socket or one TCP/TLS connection each) through the proxy, W requests
  outstanding per flow, CSeq 1, 2, 3 ... per flow; for every flow it counts what was answered, lost,
  duplicated, reordered or unexpected, and calls ``at`` hooks as the answered count passes thresholds
  (to sample the proxy's memory mid-load). With ``timeout`` a request unanswered that long counts as
  lost and a broken connection is opened again (a PBX restart); without it, nothing may be lost.
- :func:`hold_idle`: N connections that do nothing, for the memory per idle connection.

Runs with the virtualenv's python (trio, faultlab, trustme).
"""

from __future__ import annotations

import math
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.sip import NEED_DATA, KeepAlive, SipError, StreamFramer, parse_datagram
from procs import proc_resources, raise_nofile, stop  # bench/procs.py

HERE = Path(__file__).resolve().parent
TRANSPORTS = ("udp", "tcp", "tls")
START_LINES = ("faultlab: listening", "faultlab: TLS certificates", "faultlab: profile", "faultlab: limits")
RECEIVE = 65536


# --------------------------------------------------------------------------- the lab: responder + proxy
def _wait_line(path: Path, pattern: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> list[re.Match]:
    """Every match of ``pattern`` in the file ``path`` once there is one (polled: an external process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if found := list(re.finditer(pattern, text, re.M)):
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before it was ready:\n{text[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout} s")


class Lab:
    """A responder (the PBX) and a ``faultlab proxy`` in front of it, one listener per transport, on
    loopback; both stopped by their PIDs on leaving the block. ``proxy_args`` go to the proxy's command,
    ``wrap`` before it (``("prlimit", "--nofile=256:256")``: the proxy under a descriptor limit)."""

    def __init__(self, tmp: Path, transports=TRANSPORTS, proxy_args: tuple[str, ...] = (), nofile: int = 8192,
                 wrap: tuple[str, ...] = ()):
        import trustme

        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.transports = tuple(transports)
        self.proxy_args = tuple(proxy_args)
        self.wrap = tuple(wrap)
        raise_nofile(nofile)  # the responder and the proxy inherit it
        ca = trustme.CA()
        self.cert, self.ca_file = self.tmp / "responder.pem", self.tmp / "responder-ca.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(self.cert))
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAULTLAB_HOME": str(self.tmp / "faultlab-home")}
        self.responder: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.responder_ports: dict[str, int] = {}
        self.addr: dict[str, tuple[str, int]] = {}  # transport -> the proxy's address
        self.starts = 0

    def __enter__(self) -> Lab:
        try:
            self.start_responder()
            self.start_proxy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_responder(self) -> None:
        """Start the responder: on free ports the first time, on the same ports after a kill."""
        self.starts += 1
        cmd = [sys.executable, str(HERE / "responder.py"), "--cert", str(self.cert), "--key", str(self.cert)]
        for t in self.transports:
            cmd += [f"--{t}", f"127.0.0.1:{self.responder_ports.get(t, 0)}"]
        log = self.tmp / f"responder-{self.starts}.log"
        with open(log, "wb") as out:
            self.responder = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=self.env)
        line = _wait_line(log, r"^ready (.*)$", self.responder, "the responder")[0].group(1)
        self.responder_ports = {t: int(p) for t, p in (x.split(":") for x in line.split())}

    def kill_responder(self) -> None:
        """The PBX dies: SIGKILL, no goodbye (its connections are reset by the kernel)."""
        stop(self.responder, sig=9)

    def start_proxy(self) -> None:
        cmd = [*self.wrap, sys.executable, "-m", "faultlab", "proxy", "-q", *self.proxy_args]
        for t in self.transports:
            cmd += ["-l", f"{t}:127.0.0.1:0", "-u", f"{t}:127.0.0.1:{self.responder_ports[t]}"]
        if "tls" in self.transports:
            cmd += ["--upstream-ca", str(self.ca_file)]
        self.proxy_cmd = cmd
        self.proxy_log = self.tmp / "proxy.log"
        with open(self.proxy_log, "wb") as out:
            self.proxy = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env)
        found = _wait_line(self.proxy_log, r"^faultlab: listening on (\w+):127\.0\.0\.1:(\d+)", self.proxy,
                           "faultlab proxy")
        self.addr = {m.group(1): ("127.0.0.1", int(m.group(2))) for m in found}

    def proxy_memory(self) -> dict:
        """The proxy's resident memory (kB) and open descriptors, now."""
        return proc_resources([self.proxy.pid])

    def proxy_output(self) -> str:
        return self.proxy_log.read_text(errors="replace")

    def proxy_news(self) -> list[str]:
        """What the proxy printed besides its start lines (it runs with -q: a warning, a traceback)."""
        return [line for line in self.proxy_output().splitlines() if not line.startswith(START_LINES)]

    def close(self) -> None:
        for proc in (self.proxy, self.responder):
            if proc is not None:
                stop(proc)


# --------------------------------------------------------------------------- the driver
@dataclass
class Counts:
    """What one flow, or all of them, saw."""

    sent: int = 0
    answered: int = 0
    lost: int = 0  # unanswered within the timeout, or outstanding when its connection broke
    duplicated: int = 0  # a second answer to one request
    reordered: int = 0  # an answer to a request sent before one already answered
    unexpected: int = 0  # not a 200, or an answer to nothing this flow sent
    late: int = 0  # an answer to a request already counted lost
    connects: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        for name in ("sent", "answered", "lost", "duplicated", "reordered", "unexpected", "late", "connects"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors[: max(0, 10 - len(self.errors))]

    def error(self, text: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(text)


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the proxy's certificate checks are tested elsewhere; not what a soak measures
    return ctx


async def connect(transport: str, addr: tuple[str, int], ctx: ssl.SSLContext | None = None):
    """A connected UDP socket, a TCP stream, or a TLS stream with its handshake done."""
    if transport == "udp":
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.connect(addr)
        return sock
    stream = await trio.open_tcp_stream(*addr)
    if transport == "tls":
        stream = trio.SSLStream(stream, ctx or client_context(), server_hostname=addr[0])
        await stream.do_handshake()
    return stream


def request(transport: str, flow: str, cseq: int, lport: int) -> bytes:
    body = f"soak {flow} {cseq}\r\n".encode()
    return (f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{lport};branch=z9hG4bK-{flow}-{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag={flow}\r\nTo: <sip:bob@127.0.0.1>\r\n"
            f"Call-ID: {flow}@soak\r\nCSeq: {cseq} MESSAGE\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _Flow:
    """One flow: CSeq 1..count, ``window`` outstanding at most, over one connection at a time."""

    def __init__(self, driver: Driver, name: str, count: int) -> None:
        self.d = driver
        self.name = name
        self.count = count
        self.c = Counts()
        self.next = 1  # the next CSeq to send
        self.outstanding: dict[int, float] = {}  # CSeq -> when sent
        self.lost: set[int] = set()
        self.highest = 0  # highest CSeq answered
        self.settled: trio.Event | None = None  # set when nothing is outstanding any more

    def more(self) -> bool:
        return self.next <= self.count and not self.d.stopping

    def _freed(self) -> None:
        self.d.window_freed(self)
        if not self.outstanding and self.settled is not None:
            self.settled.set()

    def on_answer(self, data: bytes | None, msg=None) -> None:
        try:
            msg = msg if msg is not None else parse_datagram(data)
            cseq = msg.cseq.number if not isinstance(msg, KeepAlive) and msg.cseq is not None else -1
        except SipError as exc:
            self.c.unexpected += 1
            self.c.error(f"{self.name}: an answer that does not parse: {exc}")
            return
        if cseq in self.outstanding:
            del self.outstanding[cseq]
            self._freed()
            self.c.answered += 1
            if cseq < self.highest:
                self.c.reordered += 1
            self.highest = max(self.highest, cseq)
            if msg.status != 200:
                self.c.unexpected += 1
                self.c.error(f"{self.name}: CSeq {cseq} answered {msg.status}")
            self.d.answered()
        elif cseq in self.lost:
            self.c.late += 1
        elif 0 < cseq < self.next:
            self.c.duplicated += 1
        else:
            self.c.unexpected += 1

    def give_up(self, cseqs, why: str) -> None:
        for cseq in cseqs:
            del self.outstanding[cseq]
            self.lost.add(cseq)
            self.c.lost += 1
            self._freed()
        self.c.error(f"{self.name}: {why}")

    async def run(self) -> None:
        failing_since = None
        while self.more() or self.outstanding:
            try:
                conn = await connect(self.d.transport, self.d.addr, self.d.ctx)
            except (OSError, trio.BrokenResourceError) as exc:
                self.c.error(f"{self.name}: connect: {exc!r}")
                failing_since = failing_since or trio.current_time()
                if self.d.timeout is None or trio.current_time() - failing_since > 5 * self.d.timeout:
                    return  # the proxy is gone
                await trio.sleep(self.d.timeout / 4)  # try again
                continue
            failing_since = None
            self.c.connects += 1
            try:
                await self.session(conn)
            finally:
                if isinstance(conn, trio.abc.Stream):
                    await trio.aclose_forcefully(conn)
                else:
                    conn.close()
            if self.d.timeout is None:
                return  # strict: a connection that broke ends the flow (what it had outstanding is lost)
            await trio.sleep(self.d.timeout / 4)  # then open it again, as a phone would

    async def session(self, conn) -> None:
        udp = not isinstance(conn, trio.abc.Stream)
        sock = conn if udp else (conn.transport_stream if isinstance(conn, trio.SSLStream) else conn).socket
        lport = sock.getsockname()[1]
        self.space = trio.Semaphore(max(0, self.d.window - len(self.outstanding)))
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                while self.more():
                    await self.space.acquire()
                    if not self.more():
                        break
                    data = request(self.d.transport, self.name, self.next, lport)
                    self.outstanding[self.next] = trio.current_time()
                    self.next += 1
                    self.c.sent += 1
                    try:
                        await (conn.send(data) if udp else conn.send_all(data))
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        if not udp:
                            return  # the reader sees the break too
                        self.c.error(f"{self.name}: send: {exc}")
                while self.outstanding:  # nothing more to send: the session ends once every answer is in
                    self.settled = trio.Event()
                    await self.settled.wait()
                nursery.cancel_scope.cancel()

            async def receive() -> None:
                framer = StreamFramer()
                while True:  # until the sender has every answer, or the connection breaks
                    try:
                        data = await (conn.recv(RECEIVE) if udp else conn.receive_some(RECEIVE))
                    except OSError as exc:  # UDP: an ICMP error
                        self.c.error(f"{self.name}: receive: {exc}")
                        continue
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        data, why = b"", f"connection broken: {exc.__cause__ or exc}"
                    else:
                        why = "connection closed by the proxy"
                    if udp:
                        self.on_answer(data)
                        continue
                    if not data:
                        self.give_up(list(self.outstanding), f"{why} with {len(self.outstanding)} outstanding")
                        nursery.cancel_scope.cancel()
                        return
                    framer.receive_data(data)
                    while (event := framer.next_event()) is not NEED_DATA:
                        if not isinstance(event, KeepAlive):
                            self.on_answer(None, event)

            nursery.start_soon(send)
            nursery.start_soon(receive)
            if self.d.timeout is not None:
                nursery.start_soon(self.expire)

    async def expire(self) -> None:
        """Requests unanswered for ``timeout`` seconds are lost (the PBX was down)."""
        while True:
            await trio.sleep(self.d.timeout / 4)
            old = trio.current_time() - self.d.timeout
            stale = [cseq for cseq, sent in self.outstanding.items() if sent <= old]
            if stale:
                self.give_up(stale, f"{len(stale)} unanswered for {self.d.timeout:g} s")


class Driver:
    """The flows of one transport; ``total`` answered so far. ``mark()`` starts watching for the first answer
    after a moment (``recovered``: how long after it, in seconds)."""

    def __init__(self, transport: str, addr: tuple[str, int], window: int, timeout: float | None = None,
                 at: dict[int, Callable[[], None]] | None = None) -> None:
        self.transport, self.addr, self.window, self.timeout = transport, addr, window, timeout
        self.ctx = client_context() if transport == "tls" else None
        self.total = 0
        self.hooks = sorted((at or {}).items())
        self.marked: float | None = None
        self.recovered: float | None = None
        self.stopping = False  # set: each flow sends nothing more, and ends once its answers are in

    def window_freed(self, flow: _Flow) -> None:
        if hasattr(flow, "space"):
            flow.space.release()

    def answered(self) -> None:
        self.total += 1
        if self.marked is not None and self.recovered is None:
            self.recovered = trio.current_time() - self.marked
        while self.hooks and self.total >= self.hooks[0][0]:
            self.hooks.pop(0)[1]()

    def mark(self) -> None:
        self.marked, self.recovered = trio.current_time(), None

    async def run(self, flows: int, per_flow: int, deadline: float = math.inf) -> Counts:
        """Run the load; the sum of every flow's :class:`Counts`. What is unanswered after ``deadline``
        seconds is lost (and what was never sent is missing from ``sent``)."""
        self.flows = [_Flow(self, f"f{i}-{os.getpid()}", per_flow) for i in range(flows)]
        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                for flow in self.flows:
                    nursery.start_soon(flow.run)
        for flow in self.flows:
            if flow.outstanding:
                flow.give_up(list(flow.outstanding), f"{len(flow.outstanding)} unanswered at the deadline")
        return self.counts()

    def counts(self) -> Counts:
        """The sum of every flow's counts so far."""
        total = Counts()
        for flow in getattr(self, "flows", []):
            total.add(flow.c)
        return total


async def drive(transport: str, addr: tuple[str, int], *, flows: int, per_flow: int, window: int,
                timeout: float | None = None, at: dict[int, Callable[[], None]] | None = None,
                deadline: float = math.inf) -> Counts:
    """Run the load; the sum of every flow's :class:`Counts`. ``at``: answered count -> hook."""
    return await Driver(transport, addr, window, timeout, at).run(flows, per_flow, deadline)


async def hold_idle(transport: str, addr: tuple[str, int], count: int, *, opening: int = 64):
    """Open ``count`` connections (TLS: handshakes done), at most ``opening`` at a time; the list of them."""
    conns: list[trio.abc.Stream] = []
    limit = trio.CapacityLimiter(opening)
    ctx = client_context()

    async def one() -> None:
        async with limit:
            conns.append(await connect(transport, addr, ctx))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return conns


@dataclass
class Soak:
    """A soak's counts, its time, and the proxy's resident memory (kB) at fractions of the load."""

    counts: Counts
    seconds: float
    rss_kb: dict[float, int]

    def growth_kb(self, start: float, end: float) -> int:
        return self.rss_kb[end] - self.rss_kb[start]


def soak(lab: Lab, transport: str, *, flows: int, per_flow: int, window: int, timeout: float | None = None,
         marks: tuple[float, ...] = (0.1, 0.5, 1.0), deadline: float = math.inf) -> Soak:
    """flows x per_flow transactions through the lab's proxy, sampling its memory as the answered count
    passes each of ``marks`` (fractions of the total)."""
    from functools import partial

    rss: dict[float, int] = {}
    total = flows * per_flow
    at = {max(1, int(total * mark)): partial(lambda m: rss.__setitem__(m, lab.proxy_memory()["rss_kb"]), mark)
          for mark in marks}
    start = time.monotonic()
    counts = trio.run(partial(drive, transport, lab.addr[transport], flows=flows, per_flow=per_flow,
                              window=window, timeout=timeout, at=at, deadline=deadline))
    return Soak(counts, time.monotonic() - start, rss)


async def transact_each(transport: str, conns: list, *, at_once: int = 64) -> Counts:
    """One MESSAGE and its answer on each connection of :func:`hold_idle`, which stays open."""
    counts = Counts()
    limit = trio.CapacityLimiter(at_once)

    async def one(i: int, stream: trio.abc.Stream) -> None:
        async with limit:
            sock = (stream.transport_stream if isinstance(stream, trio.SSLStream) else stream).socket
            await stream.send_all(request(transport, f"idle{i}-{os.getpid()}", 1, sock.getsockname()[1]))
            counts.sent += 1
            framer = StreamFramer()
            while (data := await stream.receive_some(RECEIVE)):
                framer.receive_data(data)
                if (event := framer.next_event()) is not NEED_DATA:
                    counts.answered += event.status == 200
                    return
            counts.lost += 1

    async with trio.open_nursery() as nursery:
        for i, stream in enumerate(conns):
            nursery.start_soon(one, i, stream)
    return counts
