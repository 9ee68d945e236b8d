"""Real sockets where the point is the socket: FIN and RST propagation, and the
CLI process stopping cleanly on SIGTERM with a complete trace."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys

import pytest
import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy

OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\n"
           b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


async def start_tcp_pair(nursery):
    accepted: trio.MemorySendChannel
    send, recv = trio.open_memory_channel(1)

    async def handler(stream):
        await send.send(stream)
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("tcp:127.0.0.1:0")], upstream=[parse_endpoint(f"tcp:127.0.0.1:{port}")]))
    device = await trio.open_tcp_stream(*proxy.bound["tcp"])
    await device.send_all(OPTIONS)
    with trio.fail_after(5):
        pbx = await recv.receive()
        assert b"OPTIONS" in await pbx.receive_some()
    return proxy, device, pbx


async def test_device_fin_reaches_pbx_as_fin(nursery):
    proxy, device, pbx = await start_tcp_pair(nursery)
    await device.send_eof()
    with trio.fail_after(5):
        assert await pbx.receive_some() == b""


async def test_device_reset_reaches_pbx_as_reset(nursery):
    proxy, device, pbx = await start_tcp_pair(nursery)
    device.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await device.aclose()
    with trio.fail_after(5):
        with pytest.raises(trio.BrokenResourceError) as info:
            while await pbx.receive_some():
                pass
    assert isinstance(info.value.__cause__, ConnectionResetError)


async def test_cli_proxy_stops_cleanly_on_sigterm(tmp_path):
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    trace = tmp_path / "trace.jsonl"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "faultlab", "proxy", "--listen", "udp:127.0.0.1:0",
         "--upstream", f"udp:127.0.0.1:{pbx.getsockname()[1]}", "--trace", str(trace), "-q"],
        stderr=subprocess.PIPE, env={**os.environ, "FAULTLAB_HOME": str(tmp_path)})
    try:
        with trio.fail_after(20):
            banner = b""
            while b"\n" not in banner:
                banner += await proc.stderr.receive_some()
            line = banner.decode().splitlines()[0]
            assert line.startswith("faultlab: listening on udp:127.0.0.1:")
            port = int(line.split()[3].rsplit(":", 1)[1])
            device = trio.socket.socket(type=socket.SOCK_DGRAM)
            await device.sendto(OPTIONS, ("127.0.0.1", port))
            data, _ = await pbx.recvfrom(65535)
            assert data.endswith(OPTIONS[OPTIONS.index(b"\r\n") + 2:])
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert "stopping" in kinds and kinds.count("received") == 1 and kinds.count("sent") == 1
    sent = next(e for e in events if e["kind"] == "sent")
    assert sent["method"] == "OPTIONS" and sent["direction"] == "to-pbx" and sent["raw"].endswith("\r\n\r\n")


async def test_tcp_reset_after_register_profile(nursery, tmp_path):
    """The 200 OK to REGISTER is delivered, then the device's connection is reset."""
    from faultlab.faults import load_profile
    from faultlab.sip import StreamFramer, NEED_DATA, build_response

    async def pbx(stream):
        framer = StreamFramer()
        while data := await stream.receive_some():
            framer.receive_data(data)
            while (ev := framer.next_event()) is not NEED_DATA:
                await stream.send_all(build_response(ev, 200))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, pbx, 0, host="127.0.0.1"))
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("tcp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"tcp:127.0.0.1:{listeners[0].socket.getsockname()[1]}")],
        profile=load_profile("tcp-reset-after-register")))
    device = await trio.open_tcp_stream(*proxy.bound["tcp"])
    register = OPTIONS.replace(b"OPTIONS", b"REGISTER").replace(b"1 REGISTER", b"1 REGISTER")
    await device.send_all(register.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 REGISTER"))
    got = b""
    with trio.fail_after(5):
        with pytest.raises(trio.BrokenResourceError) as info:
            while data := await device.receive_some():
                got += data
    assert got.startswith(b"SIP/2.0 200 OK") and b"REGISTER" in got
    assert isinstance(info.value.__cause__, ConnectionResetError)


async def test_tls_handshake_stall_profile(nursery, tmp_path):
    """The device's TLS handshake never completes: faultlab accepts and then reads nothing."""
    import ssl

    from faultlab.faults import load_profile

    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("tls:127.0.0.1:0")], upstream=[parse_endpoint("tls:127.0.0.1:9")],
        upstream_insecure=True, confdir=tmp_path, profile=load_profile("tls-handshake-stall")))
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert_path))
    stream = trio.SSLStream(await trio.open_tcp_stream(*proxy.bound["tls"]), ctx, server_hostname="127.0.0.1")
    handshake_done = trio.Event()

    async def handshake():
        await stream.do_handshake()
        handshake_done.set()

    nursery.start_soon(handshake)
    with trio.fail_after(5):
        while not [e for e in proxy.events if e.kind == "stalled"]:
            await trio.sleep(0.001)
    await trio.testing.wait_all_tasks_blocked()
    assert not handshake_done.is_set()
    stalled = next(e for e in proxy.events if e.kind == "stalled")
    assert stalled.detail == {"for": "forever"} and stalled.transport == "tls"
