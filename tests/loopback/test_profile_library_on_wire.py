"""Every library profile does on the wire what its summary says: one
representative message through the running UDP relay per case, judged from
what arrives and from the relay's timeline. Virtual time (autojump clock), so
a 7 s delay takes no wall time and is exact."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from faultlab.faults import load_profile
from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.sip import parse_datagram

HEAD = ("{method} sip:{ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{branch}\r\n"
        "From: <sip:alice@pbx>;tag=a\r\nTo: <sip:bob@pbx>{to_tag}\r\nCall-ID: c1\r\nCSeq: {cseq} {cseq_method}\r\n"
        "{extra}Content-Length: 0\r\n\r\n")


def request(method, *, to_tag="", cseq=1, extra="", cseq_method=None):
    return HEAD.format(method=method, ruri="bob@10.0.0.2:5060", via="pbx:5060", branch=method.lower(),
                       to_tag=to_tag, cseq=cseq, cseq_method=cseq_method or method, extra=extra).encode()


REGISTER = request("REGISTER")
INVITE = request("INVITE")
CANCEL = request("CANCEL", extra='Reason: SIP;cause=200;text="Call completed elsewhere"\r\n')
BYE = request("BYE", to_tag=";tag=b", cseq=2)
OK_REGISTER = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr\r\nFrom: <sip:bob@pbx>;tag=b\r\n"
               b"To: <sip:bob@pbx>;tag=x\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")


def serialisation(data: bytes, bits_per_second: float) -> float:
    return len(data) * 8 / bits_per_second


CASES = [
    # profile, direction the message travels, message, expected outcome
    ("clean", "to-pbx", REGISTER, ("through", 0.0)),
    ("register-response-drop", "to-device", OK_REGISTER, ("dropped",)),
    ("invite-drop", "to-device", INVITE, ("dropped",)),
    ("invite-delay-7s", "to-device", INVITE, ("through", 7.0)),
    ("cancel-drop", "to-device", CANCEL, ("dropped",)),
    ("cancel-strip-reason", "to-device", CANCEL, ("no-reason",)),
    ("bye-drop", "to-pbx", BYE, ("dropped",)),
    ("bye-drop", "to-device", BYE, ("dropped",)),
    ("nlc-100-loss", "to-pbx", REGISTER, ("dropped",)),
    ("nlc-100-loss", "to-device", INVITE, ("dropped",)),
    ("nlc-edge", "to-device", INVITE, ("through", 0.400 + serialisation(INVITE, 240_000))),
    ("nlc-edge", "to-pbx", REGISTER, ("through", 0.440 + serialisation(REGISTER, 200_000))),
    ("nlc-3g", "to-device", INVITE, ("through", 0.100 + serialisation(INVITE, 780_000))),
    ("nlc-dsl", "to-pbx", REGISTER, ("through", 0.005 + serialisation(REGISTER, 256_000))),
    ("nlc-high-latency-dns", "to-pbx", REGISTER, ("through", 0.0)),  # DNS only, in the netns lab
]


async def relay(nursery, profile):
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("udp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"udp:127.0.0.1:{pbx.getsockname()[1]}")],
        profile=load_profile(profile), seed=11))
    device = trio.socket.socket(type=socket.SOCK_DGRAM)
    await device.bind(("127.0.0.1", 0))
    await device.connect(proxy.bound["udp"])
    return proxy, pbx, device


@pytest.mark.parametrize("profile, direction, message, expected", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_library_profile_on_the_wire(nursery, autojump_clock, profile, direction, message, expected):
    proxy, pbx, device = await relay(nursery, profile)
    if direction == "to-pbx":
        sender, send, receiver = device, device.send, pbx
    else:
        await device.send(b"\r\n\r\n")  # opens the device's flow (a keep-alive, as phones send)
        await pbx.recvfrom(65535) if profile != "nlc-100-loss" else None
        await trio.testing.wait_all_tasks_blocked()
        flow = next(e for e in proxy.events if e.kind == "flow-open").detail["pbx_side"]
        host, port = flow.rsplit(":", 1)
        sender, receiver = pbx, device

        async def send(data):
            await pbx.sendto(data, (host, int(port)))
    await send(message)
    got = None
    with trio.move_on_after(60):  # virtual seconds: anything later counts as never
        got = await receiver.recv(65535)
    await trio.testing.wait_all_tasks_blocked()
    mine = [e for e in proxy.events if e.direction == direction and e.raw is not None and e.raw != b"\r\n\r\n"]
    if expected[0] == "dropped":
        assert got is None
        assert [e.kind for e in mine] == ["received", "dropped"]
        return
    assert got is not None, f"{profile}: the message never arrived"
    received = next(e for e in mine if e.kind == "received")
    sent = next(e for e in mine if e.kind == "sent")
    if expected[0] == "through":
        assert sent.t - received.t == pytest.approx(expected[1], abs=1e-6)
        # and otherwise relayed as always: faultlab's Via on top, the rest as sent
        assert parse_datagram(got).get_all("via")[1:] == parse_datagram(message).get_all("via")
    elif expected[0] == "no-reason":
        arrived = parse_datagram(got)
        assert arrived.method == "CANCEL" and arrived.get("Reason") is None
        assert parse_datagram(message).get("Reason") is not None


async def test_register_503_retry_1s_answers_only_the_first_register(nursery, autojump_clock):
    proxy, pbx, device = await relay(nursery, "register-503-retry-1s")
    await device.send(REGISTER)
    first = parse_datagram(await device.recv(65535))
    assert (first.status, first.get("Retry-After")) == (503, "1")
    await trio.sleep(1)  # the device waits as told, then registers again
    await device.send(request("REGISTER", cseq=2).replace(b"z9hG4bKregister", b"z9hG4bKregister2"))
    data, _ = await pbx.recvfrom(65535)
    assert parse_datagram(data).cseq.number == 2
