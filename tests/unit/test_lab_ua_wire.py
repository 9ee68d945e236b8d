"""faultlab.lab.ua.UAWire, the transport under the caller, the reference device and the scripted UA, on the
in-memory network: where responses go, what the observer and the hooks hear, keep-alive pongs."""

from __future__ import annotations

import socket

import pytest
import trio

from faultlab.lab.ua import Incoming, UAWire
from faultlab.net import memnet
from faultlab.sip import build_request

PEER = ("127.0.0.1", 7000)


def options(via_sent_by: str) -> bytes:
    return build_request("OPTIONS", "sip:ua@127.0.0.1", via=f"SIP/2.0/UDP {via_sent_by};branch=z9hG4bKw1",
                         from_="<sip:probe@127.0.0.1>;tag=1", to="<sip:ua@127.0.0.1>", call_id="w1", cseq=1)


@pytest.mark.parametrize(("sent_by", "answered_at"), [
    ("127.0.0.1:9999;rport", PEER),  # RFC 3581: the source port
    ("127.0.0.1:9999", ("127.0.0.1", 9999)),  # RFC 3261 §18.2.2: the Via's port
    ("127.0.0.1", ("127.0.0.1", 5060)),  # ... or 5060
])
async def test_a_udp_response_goes_where_the_top_via_says(sent_by, answered_at):
    memnet.install()
    seen: list[tuple[str, tuple[str, int], str]] = []

    async def answer(incoming: Incoming) -> None:
        await wire.reply(incoming, 200)

    wire = UAWire("udp", user="ua", on_message=answer, user_agent="test-agent",
                  observer=lambda direction, link, peer, m, data: seen.append((direction, peer, m.summary())))
    sockets = {}
    for address in {PEER, answered_at}:
        sockets[address] = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sockets[address].bind(address)
    async with trio.open_nursery() as nursery:
        await wire.start(nursery)
        await sockets[PEER].sendto(options(sent_by), wire.local)
        with trio.fail_after(1):
            data, source = await sockets[answered_at].recvfrom(65535)
        assert data.startswith(b"SIP/2.0 200 OK\r\n") and b"User-Agent: test-agent\r\n" in data
        assert source == wire.local
        await wire.aclose()
    assert [(d, p) for d, p, _ in seen] == [("received", PEER), ("sent", answered_at)]


@pytest.mark.parametrize("pong", [True, False])
async def test_a_connection_pongs_a_ping_if_asked_and_its_end_is_heard(pong):
    memnet.install()
    listener = (await trio.open_tcp_listeners(5060, host="127.0.0.1"))[0]
    ends = []
    wire = UAWire("tcp", user="ua", on_message=lambda incoming: trio.sleep(0), pong=pong,
                  on_closed=lambda link, ended: ends.append((link, ended)))
    async with trio.open_nursery() as nursery:
        await wire.start(nursery, ("127.0.0.1", 5060))
        server = await listener.accept()
        await server.send_all(b"\r\n\r\n")
        await server.send_eof()  # the PBX is done: the UA's reading ends, and it closes its side
        received = b""
        with trio.fail_after(1):
            while chunk := await server.receive_some(100):
                received += chunk
    assert received == (b"\r\n" if pong else b"")
    assert ends == [(wire.main, True)] and wire.main.closed and wire.links == []


async def test_closing_the_wire_stops_its_reading_which_is_not_an_end_of_the_connection():
    memnet.install()
    listener = (await trio.open_tcp_listeners(5060, host="127.0.0.1"))[0]
    ends = []
    wire = UAWire("tcp", user="ua", on_message=lambda incoming: trio.sleep(0),
                  on_closed=lambda link, ended: ends.append(ended))
    async with trio.open_nursery() as nursery:
        await wire.start(nursery, ("127.0.0.1", 5060))
        server = await listener.accept()
        await wire.aclose()
    assert ends == [False] and wire.main.closed
    with trio.fail_after(1):
        assert await server.receive_some(100) == b""
