"""SIGTERM under load, on real sockets (the point is the socket: FIN or RST), with `faultlab proxy` in a
subprocess: over UDP, TCP and TLS, every message the trace shows as received is sent or abandoned, every
request received before the signal is answered, and the clients and the PBX see FIN, not a reset."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections import Counter
from functools import partial

import trio
import trustme

from faultlab.sip import NEED_DATA, Message, StreamFramer, build_response, parse_datagram

CLIENTS = 4  # per transport
INTERVAL = 0.02  # between a client's requests
ANSWER_AFTER = 0.2  # the PBX answers each request this late: requests are in flight at the signal


def request(call: str, cseq: int, transport: str) -> bytes:
    return (f"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/{transport.upper()} 10.0.0.2;branch=z9hG4bK{call}.{cseq}\r\n"
            f"From: <sip:a@x>;tag=1\r\nTo: <sip:pbx@x>\r\nCall-ID: {call}\r\nCSeq: {cseq} OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


class Pbx:
    """Answers every request with 200, ANSWER_AFTER seconds late, over UDP, TCP and TLS; notes resets."""

    def __init__(self) -> None:
        self.resets = 0
        ca = trustme.CA()
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(self.tls)

    async def start(self, nursery: trio.Nursery) -> dict[str, int]:
        tcp = await nursery.start(partial(trio.serve_tcp, self.stream, 0, host="127.0.0.1"))
        tls = await nursery.start(partial(trio.serve_tcp, partial(self.stream, tls=True), 0, host="127.0.0.1"))
        self.udp = trio.socket.socket(type=socket.SOCK_DGRAM)
        await self.udp.bind(("127.0.0.1", 0))
        nursery.start_soon(self.datagrams)
        return {"tcp": tcp[0].socket.getsockname()[1], "tls": tls[0].socket.getsockname()[1],
                "udp": self.udp.getsockname()[1]}

    async def stream(self, stream: trio.abc.Stream, tls: bool = False) -> None:
        if tls:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        lock = trio.StrictFIFOLock()
        framer = StreamFramer()

        async def answer(msg: Message) -> None:
            await trio.sleep(ANSWER_AFTER)
            async with lock:
                await stream.send_all(build_response(msg, 200))

        try:
            async with trio.open_nursery() as nursery:
                while data := await stream.receive_some():
                    framer.receive_data(data)
                    while (event := framer.next_event()) is not NEED_DATA:
                        if isinstance(event, Message) and event.is_request:
                            nursery.start_soon(answer, event)
                nursery.cancel_scope.cancel()  # the proxy closed: what was not answered stays so
        except* trio.BrokenResourceError as group:
            if any(isinstance(e.__cause__, ConnectionResetError) for e in group.exceptions):
                self.resets += 1

    async def datagrams(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                data, addr = await self.udp.recvfrom(65535)
                nursery.start_soon(self._answer_datagram, parse_datagram(data), addr)

    async def _answer_datagram(self, msg: Message, addr) -> None:
        await trio.sleep(ANSWER_AFTER)
        await self.udp.sendto(build_response(msg, 200), addr)


class Client:
    """Sends a request every INTERVAL until the proxy closes; notes the answers and how the connection ended."""

    def __init__(self, transport: str, n: int, port: int) -> None:
        self.transport, self.call, self.port = transport, f"{transport}-{n}", port
        self.answered: set[int] = set()
        self.ended: str | None = None  # "eof" or "reset"

    async def run(self) -> None:
        if self.transport == "udp":
            await self._datagrams()
            return
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        if self.transport == "tls":
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            stream = trio.SSLStream(stream, ctx, server_hostname="localhost")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send, stream)
            framer = StreamFramer()
            try:
                while data := await stream.receive_some():
                    framer.receive_data(data)
                    while (event := framer.next_event()) is not NEED_DATA:
                        self.answered.add(event.cseq.number)
                self.ended = "eof"
            except trio.BrokenResourceError as exc:
                self.ended = "reset"
                self.why = repr(exc.__cause__)
            nursery.cancel_scope.cancel()
        await stream.aclose()

    async def _send(self, stream: trio.abc.Stream) -> None:
        cseq = 0
        try:
            while True:
                cseq += 1
                await stream.send_all(request(self.call, cseq, self.transport))
                await trio.sleep(INTERVAL)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _datagrams(self) -> None:
        sock = trio.socket.socket(type=socket.SOCK_DGRAM)
        await sock.connect(("127.0.0.1", self.port))

        async def receive() -> None:
            while True:
                try:
                    self.answered.add(parse_datagram(await sock.recv(65535)).cseq.number)
                except OSError:  # the proxy is gone: ICMP port unreachable
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            cseq = 0
            while True:
                cseq += 1
                try:
                    await sock.send(request(self.call, cseq, "udp"))
                except OSError:
                    pass
                await trio.sleep(INTERVAL)


async def start_proxy(tmp_path, ports: dict[str, int]):
    trace = tmp_path / "trace.jsonl"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "faultlab", "proxy", "-q", "--trace", str(trace), "--drain", "3",
         "-l", "udp:127.0.0.1:0", "-l", "tcp:127.0.0.1:0", "-l", "tls:127.0.0.1:0",
         "-u", f"udp:127.0.0.1:{ports['udp']}", "-u", f"tcp:127.0.0.1:{ports['tcp']}",
         "-u", f"tls:localhost:{ports['tls']}", "--upstream-insecure"],
        stderr=subprocess.PIPE, env={**os.environ, "FAULTLAB_HOME": str(tmp_path)})
    listening: dict[str, int] = {}
    text = b""
    with trio.fail_after(30):
        while len(listening) < 3:
            data = await proc.stderr.receive_some()
            assert data, f"the proxy ended: {text.decode(errors='replace')}"
            text += data
            for line in text.decode(errors="replace").splitlines():
                if line.startswith("faultlab: listening on "):
                    transport, _, port = line.split()[3].partition(":")
                    listening[transport] = int(port.rsplit(":", 1)[1])
    return proc, trace, listening


async def test_sigterm_under_load_forwards_what_was_received_and_closes_with_fin(tmp_path):
    pbx = Pbx()
    async with trio.open_nursery() as nursery:
        proc, trace, listening = await start_proxy(tmp_path, await pbx.start(nursery))
        try:
            clients = [Client(t, n, listening[t]) for t in ("udp", "tcp", "tls") for n in range(CLIENTS)]
            async with trio.open_nursery() as load:
                for client in clients:
                    load.start_soon(client.run)
                await trio.sleep(1)
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(20):
                    assert await proc.wait() == 0
                    while not all(c.ended for c in clients if c.transport != "udp"):
                        await trio.sleep(0.05)
                await trio.sleep(ANSWER_AFTER)  # any answer still on its way
                load.cancel_scope.cancel()
            said = b""
            while data := await proc.stderr.receive_some():
                said += data
            assert b"faultlab: stopping: what is in flight has up to 3 s (--drain); SIGTERM again stops at once" \
                in said
        finally:
            if proc.returncode is None:
                proc.kill()
        nursery.cancel_scope.cancel()

    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = Counter(e["kind"] for e in events)
    assert kinds["stopping"] == 1 and events[-1]["kind"] == "stop"

    def key(e):
        return (e.get("flow"), e.get("direction"), e.get("call_id"), e.get("cseq"), e.get("method") or e.get("status"))

    received = Counter(key(e) for e in events if e["kind"] == "received")
    accounted = Counter(key(e) for e in events if e["kind"] in ("sent", "abandoned"))
    assert received and not received - accounted  # every message received was sent or abandoned

    stopping = next(e["t"] for e in events if e["kind"] == "stopping")
    for client in clients:
        before = {e["cseq"] for e in events if e["kind"] == "received" and e.get("call_id") == client.call
                  and e.get("method") == "OPTIONS" and e["t"] < stopping}
        assert before and before <= client.answered, client.call  # in flight at the signal: answered
        if client.transport != "udp":
            assert client.ended == "eof", (client.call, getattr(client, "why", None))  # FIN (and TLS close_notify), not a reset
    assert pbx.resets == 0
    closes = [e for e in events if e["kind"] == "flow-close" and e["transport"] != "udp"]
    assert len(closes) == 2 * CLIENTS and all(e["detail"].get("reason") == "stop" for e in closes)
