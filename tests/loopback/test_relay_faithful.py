"""The relay is faithful: 20 connections x 300 pipelined messages over UDP,
TCP and TLS, through real loopback sockets, reach the other side in order,
byte for byte except faultlab's own Via, and nothing is lost.

A fake PBX answers every request with 200 (RFC 3261 §8.2.6), so responses are
checked on the way back too.
"""

from __future__ import annotations

import functools
import ssl

import pytest
import trio
import trustme

from faultlab.addr import parse_endpoint
from faultlab.net.udp import enlarge_buffers
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.sip import NEED_DATA, StreamFramer, build_response, parse_datagram, parse_message, remove_top_value

FLOWS = 20
MESSAGES = int(__import__("os").environ.get("FL_MESSAGES", 300))  # FL_MESSAGES=1000 for a longer run
UDP_WINDOW = 16  # outstanding requests per UDP flow; a datagram flood would overrun socket buffers


def make_request(flow: int, n: int) -> bytes:
    body = (f"flow {flow} message {n} " + "x" * (n % 200)).encode()
    compact = n % 3 == 0
    lines = [
        f"MESSAGE sip:bob@127.0.0.1 SIP/2.0",
        f"{'v' if compact else 'Via'}: SIP/2.0/UDP 192.0.2.{flow}:5060;branch=z9hG4bK-{flow}-{n};rport",
        f"Max-Forwards: 70",
        f"{'f' if compact else 'From'}: <sip:alice{flow}@127.0.0.1>;tag=t{flow}",
        f"To: <sip:bob@127.0.0.1>",
        f"{'i' if compact else 'Call-ID'}: call-{flow}-{n}",
        f"CSeq: {n + 1} MESSAGE",
        f"X-Odd-Header:   keep   this   spacing  ",
        f"Content-Type: text/plain",
        f"{'l' if compact else 'Content-Length'}: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


def check_flow(sent: list[bytes], at_pbx: list[bytes], answered: list[bytes]) -> None:
    assert len(at_pbx) == len(sent), "requests lost on the way to the PBX"
    assert len(answered) == len(sent), "responses lost on the way back"
    for orig, got, resp in zip(sent, at_pbx, answered):
        msg = parse_message(got)
        assert msg.top_via.branch.startswith("z9hG4bKfl")
        assert remove_top_value(msg, "via") == orig  # only faultlab's Via was added
        sent_by_pbx = parse_message(build_response(msg, 200))
        assert resp == remove_top_value(sent_by_pbx, "via")  # and removed again


async def fake_pbx_udp(sock, received: dict):
    while True:
        data, src = await sock.recvfrom(65535)
        received.setdefault(src[:2], []).append(data)
        await sock.sendto(build_response(parse_datagram(data), 200), src)


async def test_udp_relay_is_faithful(nursery):
    pbx = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    enlarge_buffers(pbx)  # like a real PBX's: the relay delivers bursts
    await pbx.bind(("127.0.0.1", 0))
    at_pbx: dict = {}
    nursery.start_soon(fake_pbx_udp, pbx, at_pbx)
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("udp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"udp:127.0.0.1:{pbx.getsockname()[1]}")],
    ))
    relay_addr = proxy.bound["udp"]
    results: dict[int, tuple[list, list]] = {}

    async def device(flow: int) -> None:
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await sock.connect(relay_addr)
        sent = [make_request(flow, n) for n in range(MESSAGES)]
        answered: list[bytes] = []
        window = trio.Semaphore(UDP_WINDOW)

        async def reader():
            while len(answered) < MESSAGES:
                answered.append(await sock.recv(65535))
                window.release()

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            for data in sent:
                await window.acquire()
                await sock.send(data)
        results[flow] = (sent, answered)
        sock.close()

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for flow in range(FLOWS):
                n.start_soon(device, flow)
    assert len(at_pbx) == FLOWS, "one upstream socket (source address) per device"
    by_first_call = {parse_message(msgs[0]).call_id: msgs for msgs in at_pbx.values()}
    for flow, (sent, answered) in results.items():
        check_flow(sent, by_first_call[f"call-{flow}-0"], answered)
    assert not [e for e in proxy.events if e.kind == "warning"]


async def fake_pbx_stream(stream, received: list):
    framer = StreamFramer()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        framer.receive_data(data)
        while (event := framer.next_event()) is not NEED_DATA:
            received.append(event.raw)
            await stream.send_all(build_response(event, 200))


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_stream_relay_is_faithful(nursery, tmp_path, transport):
    at_pbx: list[list[bytes]] = []
    pbx_ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pbx_ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "pbx-ca.pem"
    pbx_ca.cert_pem.write_to_path(str(ca_file))

    async def pbx_handler(stream):
        if transport == "tls":
            stream = trio.SSLStream(stream, server_ctx, server_side=True)
        received: list[bytes] = []
        at_pbx.append(received)
        await fake_pbx_stream(stream, received)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, pbx_handler, 0, host="127.0.0.1"))
    pbx_port = listeners[0].socket.getsockname()[1]
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint(f"{transport}:127.0.0.1:0")],
        upstream=[parse_endpoint(f"{transport}:127.0.0.1:{pbx_port}")],
        upstream_ca=ca_file if transport == "tls" else None,
        confdir=tmp_path / "faultlab",
    ))
    host, port = proxy.bound[transport]
    results: dict[int, tuple[list, list]] = {}

    async def device(flow: int) -> None:
        stream = await trio.open_tcp_stream(host, port)
        if transport == "tls":
            ctx = ssl.create_default_context(cafile=str(proxy.ca_cert_path))
            stream = trio.SSLStream(stream, ctx, server_hostname="127.0.0.1")
        sent = [make_request(flow, n) for n in range(MESSAGES)]
        answered: list[bytes] = []

        async def reader():
            framer = StreamFramer()
            while len(answered) < MESSAGES:
                framer.receive_data(await stream.receive_some(65536))
                while (event := framer.next_event()) is not NEED_DATA:
                    answered.append(event.raw)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await stream.send_all(b"".join(sent))  # all pipelined at once
        results[flow] = (sent, answered)
        await stream.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for flow in range(FLOWS):
                n.start_soon(device, flow)
    assert len(at_pbx) == FLOWS, "one upstream connection per device connection"
    by_first_call = {parse_message(msgs[0]).call_id: msgs for msgs in at_pbx}
    for flow, (sent, answered) in results.items():
        check_flow(sent, by_first_call[f"call-{flow}-0"], answered)
    assert not [e for e in proxy.events if e.kind == "warning"]
