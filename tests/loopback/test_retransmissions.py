"""Transmission-aware drops over real UDP, against a client that retransmits
its REGISTER per RFC 3261 §17.1.2.2 (Timer E: T1 = 500 ms, doubling to T2 = 4 s,
Timer F = 64*T1). Virtual time: trio's autojump clock."""

from __future__ import annotations

import socket

import pytest
import trio

from faultlab.faults import load_profile
from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.sip import build_response, parse_datagram

T1, T2 = 0.5, 4.0
REGISTER = (b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK%d;rport\r\n"
            b"From: <sip:bob@pbx>;tag=b\r\nTo: <sip:bob@pbx>\r\nCall-ID: reg\r\nCSeq: %d REGISTER\r\n"
            b"Contact: <sip:bob@10.0.0.2:5060>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n")


async def register_transaction(sock, n: int) -> float | None:
    """Send REGISTER number ``n`` with Timer E retransmissions; the time of the final response, or None (Timer F)."""
    data = REGISTER % (n, n)
    start = trio.current_time()
    interval = T1
    with trio.move_on_after(64 * T1):
        while True:
            await sock.send(data)
            with trio.move_on_after(interval):
                await sock.recv(65535)
                return trio.current_time() - start
            interval = min(2 * interval, T2)
    return None


async def run(nursery, profile: str, transactions: int = 1):
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    arrivals = []

    async def answer():
        while True:
            data, src = await pbx.recvfrom(65535)
            arrivals.append(trio.current_time())
            await pbx.sendto(build_response(parse_datagram(data), 200), src)

    nursery.start_soon(answer)
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("udp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"udp:127.0.0.1:{pbx.getsockname()[1]}")],
        profile=load_profile(profile), seed=3))
    device = trio.socket.socket(type=socket.SOCK_DGRAM)
    await device.connect(proxy.bound["udp"])
    return proxy, [await register_transaction(device, n) for n in range(1, transactions + 1)]


async def test_first_3_transmissions_dropped_then_the_4th_retransmission_gets_through(nursery, autojump_clock):
    proxy, [took] = await run(nursery, "register-first-3-dropped")
    assert took == pytest.approx(T1 + 2 * T1 + 4 * T1)  # sent at 0, 0.5, 1.5 (lost), 3.5 (through)
    assert len([e for e in proxy.events if e.kind == "dropped"]) == 3


async def test_register_drop_loses_the_whole_transaction_until_timer_f(nursery, autojump_clock):
    proxy, results = await run(nursery, "register-drop", transactions=2)
    assert results == [None, None]
    dropped = [e for e in proxy.events if e.kind == "dropped"]
    # 0, .5, 1.5, 3.5, 7.5, 11.5, ... 31.5: 11 transmissions per transaction, all lost
    assert len(dropped) == 2 * 11


async def test_register_drop_10s_window_from_first_register(nursery, autojump_clock):
    proxy, [took] = await run(nursery, "register-drop-10s")
    assert took == pytest.approx(11.5)  # 0 .. 7.5 lost inside the window, 11.5 gets through
