"""The PBX resets its connections while devices are sending (it crashed, or restarted): each pair ends, the
device gets a reset, and the proxy goes on relaying new connections (it used to end the process with the
write's BrokenResourceError). bench/soak.py kills and restarts a PBX under load and counts what was lost."""

from __future__ import annotations

import functools
import socket
import struct

import trio
from responder import respond_stream  # bench/responder.py (conftest.py puts bench/ on the path)

from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.sip import NEED_DATA, StreamFramer


def message(n: int) -> bytes:
    return (f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-r{n}\r\n"
            f"From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: reset-{n}\r\n"
            f"CSeq: {n} MESSAGE\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_pbx_that_resets_mid_load_ends_the_pair_not_the_proxy(nursery) -> None:
    healthy = trio.Event()

    async def pbx(stream: trio.SocketStream) -> None:
        if healthy.is_set():  # after the resets: answer, as a restarted PBX does
            await respond_stream(stream)
            return
        await stream.receive_some(65536)  # the first bytes, then a crash: RST
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, pbx, 0, host="127.0.0.1"))
    proxy_done = trio.Event()

    async def run_proxy(task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_proxy(ProxyConfig(
                listen=[parse_endpoint("tcp:127.0.0.1:0")],
                upstream=[parse_endpoint(f"tcp:127.0.0.1:{listeners[0].socket.getsockname()[1]}")]),
                task_status=task_status)
        finally:
            proxy_done.set()

    proxy = await nursery.start(run_proxy)
    addr = proxy.bound["tcp"]

    async def device() -> None:  # sends without pause until the proxy gives the connection up
        stream = await trio.open_tcp_stream(*addr)
        burst = b"".join(message(n) for n in range(1, 200))
        try:
            with trio.move_on_after(10):
                while True:
                    await stream.send_all(burst)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(30):
        async with trio.open_nursery() as devices:
            for _ in range(20):
                devices.start_soon(device)
    assert not proxy_done.is_set(), "the proxy stopped"
    healthy.set()
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(message(1))
    framer = StreamFramer()
    with trio.fail_after(10):
        while (event := framer.next_event()) is NEED_DATA:
            framer.receive_data(await stream.receive_some(65536))
    assert event.status == 200
    await stream.aclose()
    closed = [e for e in proxy.events if e.kind == "flow-close"]
    assert len(closed) >= 20
