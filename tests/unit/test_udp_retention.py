"""What the relay keeps per UDP transaction, on the in-memory network and trio's MockClock: an answered
transaction leaves nothing behind, an unanswered one is forgotten after TRANSACTION_LIFETIME."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.net import memnet
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.relay.core import TRANSACTION_LIFETIME
from faultlab.sip import build_response, parse_datagram

OPTIONS = ("OPTIONS sip:pbx@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.{d}:5060;branch=z9hG4bK{d}-{i}\r\n"
           "From: <sip:d{d}@pbx>;tag=t{d}\r\nTo: <sip:pbx@pbx>\r\nCall-ID: c{d}-{i}@10.0.1.{d}\r\n"
           "CSeq: {i} OPTIONS\r\nContent-Length: 0\r\n\r\n")
DEVICES, PER_DEVICE, KEEP = 3, 200, 50


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def _devices(answer: bool):
    """A PBX that answers every request 200 (or none with ``answer`` False), a proxy in front of it, and
    DEVICES devices that each send PER_DEVICE OPTIONS, each with a Call-ID and branch of its own."""
    memnet.install()
    pbx = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await pbx.bind(("10.0.0.1", 5060))
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(serve_proxy, ProxyConfig(
            listen=[parse_endpoint("udp:10.0.0.9:5060")], upstream=[parse_endpoint("udp:10.0.0.1:5060")],
            keep_events=KEEP, quiet=True))
        for d in range(DEVICES):
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await sock.bind((f"10.0.1.{d}", 5060))
            for i in range(1, PER_DEVICE + 1):
                await sock.sendto(OPTIONS.format(d=d, i=i).encode(), ("10.0.0.9", 5060))
                data, addr = await pbx.recvfrom(65535)
                if answer:
                    await pbx.sendto(build_response(parse_datagram(data), 200), addr)
                    assert b"200" in (await sock.recvfrom(65535))[0]
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return proxy


async def test_an_answered_udp_transaction_leaves_nothing_in_the_relay(clock) -> None:
    proxy = await _devices(answer=True)
    assert sum(e.kind == "sent" for e in proxy.events) > 0  # the relay carried them
    assert proxy.open_requests == {}  # each final response closed its request at once
    assert proxy.in_flight() == 0
    assert (len(proxy.holds), len(proxy.device_engines), len(proxy.events)) == (0, 0, KEEP)


async def test_an_unanswered_udp_request_is_forgotten_after_the_transaction_lifetime(clock) -> None:
    proxy = await _devices(answer=False)
    assert len(proxy.open_requests) == DEVICES * PER_DEVICE  # in flight: a graceful stop waits for them
    clock.jump(TRANSACTION_LIFETIME + 1)
    assert proxy.in_flight() == 0
    assert proxy.open_requests == {}
