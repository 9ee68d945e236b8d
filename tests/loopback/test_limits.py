"""Limits on real loopback sockets: messages over --max-message-size per transport, the trace's cap on raw
bytes, and a `faultlab proxy` process with a descriptor limit of 256 that keeps serving past its flows and
connections (real descriptors are the point there)."""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from faultlab.addr import parse_endpoint
from faultlab.proxy import Proxy, ProxyConfig, serve_proxy
from faultlab.sip import SipError, StreamFramer, build_response, parse_datagram

HEAD = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK%s\r\nFrom: <sip:a@pbx>;tag=a\r\n"
        b"To: <sip:pbx>\r\nCall-ID: %s\r\nCSeq: 1 OPTIONS\r\nContent-Length: %d\r\n\r\n")


def message(name: bytes, body_size: int = 0) -> bytes:
    return HEAD % (name, name, body_size) + b"x" * body_size


def udp_message(name: bytes, size: int, *, request: bool = True) -> bytes:
    """A SIP datagram of exactly ``size`` octets."""
    head = HEAD.replace(b"TCP", b"UDP") % (name, name, 0)
    if not request:
        head = build_response(parse_datagram(head), 200)
    filler = size - len(head) - len(b"X-Pad: \r\n")
    return head.replace(b"Content-Length", b"X-Pad: " + b"p" * filler + b"\r\nContent-Length")


class StreamPbx:
    """A TCP or TLS "PBX" on 127.0.0.1 that keeps every message it frames."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.got = trio.Event()
        self.ctx: ssl.SSLContext | None = None

    async def start(self, nursery: trio.Nursery, tls: bool) -> int:
        if tls:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            trustme.CA().issue_cert("pbx.lab.test").configure_cert(self.ctx)
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.serve, 0, host="127.0.0.1"))
        return listeners[0].socket.getsockname()[1]

    async def serve(self, stream: trio.abc.Stream) -> None:
        if self.ctx is not None:
            stream = trio.SSLStream(stream, self.ctx, server_side=True)
        framer = StreamFramer(max_message_size=1 << 24)
        try:
            while data := await stream.receive_some():
                framer.receive_data(data)
                while hasattr(event := framer.next_event(), "raw"):
                    self.messages.append(event.raw)
                    self.got.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def stream_setup(nursery, tmp_path: Path, transport: str, **config) -> tuple[Proxy, StreamPbx, trio.abc.Stream]:
    pbx = StreamPbx()
    port = await pbx.start(nursery, tls=transport == "tls")
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint(f"{transport}:127.0.0.1:0")], upstream=[parse_endpoint(f"{transport}:127.0.0.1:{port}")],
        upstream_insecure=transport == "tls", confdir=tmp_path / "fl", **config))
    device: trio.abc.Stream = await trio.open_tcp_stream(*proxy.bound[transport])
    if transport == "tls":
        ctx = ssl.create_default_context(cafile=str(proxy.ca_cert_path))
        device = trio.SSLStream(device, ctx, server_hostname="127.0.0.1")
    return proxy, pbx, device


async def closed(stream: trio.abc.Stream) -> bool:
    """True when faultlab closes ``stream`` (whatever it still sends first is read and ignored)."""
    with trio.fail_after(10):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        return True


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("oversize", ["body", "endless head"])
async def test_a_stream_message_over_the_limit_closes_the_connection_with_a_warning(
        nursery, tmp_path, transport, oversize) -> None:
    proxy, pbx, device = await stream_setup(nursery, tmp_path, transport)
    big = message(b"big", 10 * 1024 * 1024) if oversize == "body" else b"OPTIONS sip:pbx SIP/2.0\r\nX: " + b"a" * 200_000
    with trio.fail_after(10):
        await device.send_all(message(b"small"))
        await pbx.got.wait()
        try:
            await device.send_all(big)
        except trio.BrokenResourceError:
            pass  # faultlab closed the connection while the device was still sending
    assert await closed(device)
    with trio.fail_after(10):
        while not any(e.kind == "flow-close" for e in proxy.events):
            await trio.sleep(0.01)
    assert len(pbx.messages) == 1 and b"small" in pbx.messages[0]  # nothing of the big one went on, raw or not
    warning = next(e for e in proxy.events if e.kind == "warning")
    assert "larger than 65536 octets" in warning.detail["message"] and "--max-message-size" in warning.detail["message"]
    received = [e for e in proxy.events if e.kind == "received"]
    assert received[-1].parsed is False and len(received[-1].raw) <= 64 * 1024
    dropped = next(e for e in proxy.events if e.kind == "dropped")
    assert dropped.detail["how"].endswith("connection closed")
    assert next(e for e in proxy.events if e.kind == "flow-close").detail["how"] == "too-large"
    assert sum(len(e.raw or b"") for e in proxy.events) < 300_000  # the trace does not take every byte


async def test_a_trace_event_carries_the_first_64_kib_and_the_length(nursery, tmp_path) -> None:
    proxy, pbx, device = await stream_setup(nursery, tmp_path, "tcp", max_message_size=1 << 20)
    big = message(b"big", 150_000)
    with trio.fail_after(10):
        await device.send_all(big)
        await pbx.got.wait()
    assert len(pbx.messages[0]) > len(big)  # relayed whole (with faultlab's Via)
    for kind in ("received", "sent"):
        event = next(e for e in proxy.events if e.kind == kind)
        assert len(event.raw) == 64 * 1024 and event.detail["raw_length"] >= len(big)
        assert event.call_id == "big"


async def udp_setup(nursery, **config):
    pbx = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("udp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"udp:127.0.0.1:{pbx.getsockname()[1]}")], **config))
    device = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await device.bind(("127.0.0.1", 0))
    await device.connect(proxy.bound["udp"])
    return proxy, pbx, device


async def test_a_udp_request_over_the_limit_is_answered_513_and_a_response_over_it_dropped(nursery) -> None:
    proxy, pbx, device = await udp_setup(nursery, max_message_size=2000)
    with trio.fail_after(10):
        await device.send(udp_message(b"fits", 2000))
        _, flow_addr = await pbx.recvfrom(65535)  # at the limit: relayed
        await device.send(udp_message(b"big", 2001))
        answer = parse_datagram(await device.recv(65535))
        assert (answer.status, answer.call_id) == (513, "big")
        # the PBX's own request over the limit is answered too, and its response over it goes nowhere
        await pbx.sendto(udp_message(b"from-pbx", 3000), flow_addr)
        answer = parse_datagram(await pbx.recv(65535))
        assert (answer.status, answer.call_id) == (513, "from-pbx")
        await pbx.sendto(udp_message(b"reply", 3000, request=False), flow_addr)
        await pbx.sendto(udp_message(b"after", 1000), flow_addr)
        assert parse_datagram(await device.recv(65535)).call_id == "after"  # not "reply"
    sent_to_pbx = [e.call_id for e in proxy.events if e.kind == "sent" and e.direction == "to-pbx"]
    assert sent_to_pbx == ["fits"]
    dropped = {e.call_id: e.detail["how"] for e in proxy.events if e.kind == "dropped"}
    assert dropped == {"big": "larger than 2000 octets (--max-message-size): answered 513",
                       "from-pbx": "larger than 2000 octets (--max-message-size): answered 513",
                       "reply": "larger than 2000 octets (--max-message-size)"}
    assert [e.status for e in proxy.events if e.kind == "responded"] == [513, 513]


# -- a proxy process at a descriptor limit of 256 ----------------------------------------------------------

LIMIT = 256


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


async def run_proxy(tmp_path: Path, udp_port: int, tcp_port: int, *options: str):
    """`faultlab proxy` with RLIMIT_NOFILE 256 (soft and hard); its process, ports and output files."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "faultlab", "proxy", "--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0",
         "--upstream", f"udp:127.0.0.1:{udp_port}", "--upstream", f"tcp:127.0.0.1:{tcp_port}",
         "--trace", str(tmp_path / "trace.jsonl"), *options],
        stdout=out.open("wb"), stderr=err.open("wb"), preexec_fn=_limit_descriptors,
        env={**os.environ, "FAULTLAB_HOME": str(tmp_path / "home"), "NO_COLOR": "1"})
    ports: dict[str, int] = {}
    with trio.fail_after(30):
        while len(ports) < 2:
            assert proc.poll() is None, err.read_text()
            ports = {t: int(p) for t, p in re.findall(r"listening on (udp|tcp):127\.0\.0\.1:(\d+)", err.read_text())}
            await trio.sleep(0.05)
    return proc, ports, out, err


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def udp_pbx(nursery) -> int:
    """Answers every UDP request 200."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def answer() -> None:
        while True:
            data, addr = await sock.recvfrom(65535)
            await sock.sendto(build_response(parse_datagram(data), 200), addr)

    nursery.start_soon(answer)
    return sock.getsockname()[1]


async def tcp_pbx(nursery) -> int:
    """Answers every TCP request 200 (one read, one message), and keeps the connection."""

    async def serve(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some():
                await stream.send_all(build_response(parse_datagram(data), 200))
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


PHONES: list[trio.socket.SocketType] = []  # kept open, so that every phone has a source port of its own


def close_phones() -> None:
    for sock in PHONES:
        sock.close()
    PHONES.clear()


async def phone(port: int, name: str) -> int:
    """A new UDP phone (a new source port) sends OPTIONS; the status it gets."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    PHONES.append(sock)
    await sock.connect(("127.0.0.1", port))
    await sock.send(udp_message(name.encode(), 400))
    with trio.fail_after(10):
        return parse_datagram(await sock.recv(65535)).status


async def tcp_phone(port: int, name: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(message(name.encode()))
        with trio.fail_after(10):
            return parse_datagram(await stream.receive_some()).status


def trace_events(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "trace.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


@pytest.fixture
def many_descriptors():
    """This test process holds hundreds of client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, 4096)  # a higher hard limit: root only
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft if soft == resource.RLIM_INFINITY else max(soft, 4096), new_hard))
    except (ValueError, OSError):
        pytest.skip(f"the test needs 4096 descriptors; the hard limit is {hard} (raise it, or run as root)")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, new_hard))


async def tcp_works_again(port: int) -> None:
    """Wait (30 s at most) until a TCP phone gets its 200 through the proxy again."""
    with trio.fail_after(30):
        while True:
            try:
                assert await tcp_phone(port, "after") == 200
                return
            except (trio.BrokenResourceError, SipError):
                await trio.sleep(0.1)


async def test_at_256_descriptors_the_proxy_keeps_serving_past_its_default_flows_and_connections(
        nursery, tmp_path, many_descriptors) -> None:
    proc, ports, out, err = await run_proxy(tmp_path, await udp_pbx(nursery), await tcp_pbx(nursery))
    try:
        assert "limits: 256 descriptors, 96 UDP flows, 48 TCP/TLS connections" in err.read_text()
        for n in range(300):  # three hundred phones within the idle timeout, each on a port of its own
            assert await phone(ports["udp"], f"phone{n}") == 200
        idle = [await trio.open_tcp_stream("127.0.0.1", ports["tcp"]) for _ in range(60)]
        for stream in idle[48:]:  # over --max-connections: closed at once
            assert await closed(stream)
        assert await phone(ports["udp"], "late") == 200  # a new phone still gets through
        for stream in idle:
            await stream.aclose()
        await tcp_works_again(ports["tcp"])  # the slots free up as faultlab sees the closes
        assert proc.poll() is None
    finally:
        stop(proc)
        close_phones()
    events = trace_events(tmp_path)
    evicted = [e for e in events if e["kind"] == "flow-close" and e["detail"].get("reason", "").startswith("max-flows")]
    assert len(evicted) == 301 - 96  # the phones beyond 96, each took the place of the flow idle longest
    assert sum(e["kind"] == "refused" for e in events) >= 12
    assert "Traceback" not in err.read_text() + out.read_text()


async def test_out_of_descriptors_new_phones_take_the_idlest_flows_socket_and_accept_backs_off(
        nursery, tmp_path, many_descriptors) -> None:
    proc, ports, out, err = await run_proxy(tmp_path, await udp_pbx(nursery), await tcp_pbx(nursery),
                                            "--max-connections", "1000", "--max-flows", "1000",
                                            "--udp-idle-timeout", "3")
    try:
        assert "may need 3064 descriptors, more than the limit of 256" in out.read_text()
        for n in range(300):  # past 256 descriptors: each new phone takes the socket of the flow idle longest
            assert await phone(ports["udp"], f"phone{n}") == 200
        clients = []
        with trio.fail_after(60):
            while "cannot accept a tcp connection: Too many open files" not in out.read_text():
                clients.append(await trio.open_tcp_stream("127.0.0.1", ports["tcp"]))  # the kernel's backlog takes it
                await trio.sleep(0.01)
        assert await phone(ports["udp"], "late") == 200
        for stream in clients:
            await stream.aclose()
        await tcp_works_again(ports["tcp"])  # once the UDP flows idle out, accept has descriptors again
        assert proc.poll() is None
    finally:
        stop(proc)
        close_phones()
    assert "Traceback" not in err.read_text() + out.read_text()
    events = trace_events(tmp_path)
    assert any(e["kind"] == "flow-close" and "out of descriptors" in e["detail"].get("reason", "") for e in events)
    assert not any(e["kind"] == "dropped" for e in events)  # no phone's datagram was lost for want of a socket
