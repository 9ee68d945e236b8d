"""UDP flows on real loopback sockets: one upstream socket per device, the PBX's
own requests come back through it, garbage goes through unchanged, idle flows
expire (on trio's MockClock, so no waiting)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.sip import build_response, parse_datagram

REGISTER = (b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr1;rport\r\n"
            b"From: <sip:bob@pbx>;tag=b\r\nTo: <sip:bob@pbx>\r\nCall-ID: reg1\r\nCSeq: 1 REGISTER\r\n"
            b"Contact: <sip:bob@10.0.0.2:5060>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n")
OPTIONS = (b"OPTIONS sip:bob@10.0.0.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP pbx:5060;branch=z9hG4bKo1\r\n"
           b"From: <sip:pbx>;tag=p\r\nTo: <sip:bob@pbx>\r\nCall-ID: opt1\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def udp(family=socket.AF_INET):
    return trio.socket.socket(family, socket.SOCK_DGRAM)


async def setup(nursery, host="127.0.0.1", **config):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bracket = f"[{host}]" if ":" in host else host
    pbx = udp(family)
    await pbx.bind((host, 0))
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint(f"udp:{bracket}:0")],
        upstream=[parse_endpoint(f"udp:{bracket}:{pbx.getsockname()[1]}")], **config))
    device = udp(family)
    await device.bind((host, 0))
    await device.connect(proxy.bound["udp"])
    return proxy, pbx, device


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_pbx_request_reaches_the_device_through_its_flow(nursery, host):
    proxy, pbx, device = await setup(nursery, host)
    with trio.fail_after(5):
        await device.send(REGISTER)
        reg, flow_addr = await pbx.recvfrom(65535)
        await pbx.sendto(build_response(parse_datagram(reg), 200), flow_addr)
        assert parse_datagram(await device.recv(65535)).status == 200
        # the PBX sends its own request to the address the REGISTER came from
        await pbx.sendto(OPTIONS, flow_addr)
        got, src = await device.recvfrom(65535)
    assert src[:2] == proxy.bound["udp"][:2]  # from faultlab's listen address, not the PBX
    msg = parse_datagram(got)
    assert msg.method == "OPTIONS" and msg.top_via.branch.startswith("z9hG4bKfl")
    assert msg.vias[1].raw == "SIP/2.0/UDP pbx:5060;branch=z9hG4bKo1"
    # the device's answer goes back through the same flow, without faultlab's Via
    with trio.fail_after(5):
        await device.send(build_response(msg, 200))
        answer, src = await pbx.recvfrom(65535)
    assert src == flow_addr
    assert parse_datagram(answer).get_all("via") == ["pbx:5060;branch=z9hG4bKo1".join(["SIP/2.0/UDP ", ""])]


async def test_two_devices_get_two_upstream_sockets(nursery):
    proxy, pbx, device = await setup(nursery)
    other = udp()
    await other.connect(proxy.bound["udp"])
    with trio.fail_after(5):
        await device.send(REGISTER)
        _, a = await pbx.recvfrom(65535)
        await other.send(REGISTER.replace(b"reg1", b"reg2"))
        _, b = await pbx.recvfrom(65535)
        await device.send(REGISTER.replace(b"CSeq: 1", b"CSeq: 2"))
        _, a2 = await pbx.recvfrom(65535)
    assert a != b and a == a2


async def test_unparsable_datagram_goes_through_unchanged_and_is_recorded(nursery):
    proxy, pbx, device = await setup(nursery)
    garbage = b"\x00\x01 this is not SIP \xff\r\n\r\n"
    with trio.fail_after(5):
        await device.send(garbage)
        got, _ = await pbx.recvfrom(65535)
    assert got == garbage
    received = [e for e in proxy.events if e.kind == "received"]
    assert received[-1].parsed is False and received[-1].raw == garbage and received[-1].detail["error"]


async def test_traffic_keeps_a_flow_open_past_the_idle_timeout(nursery, mock_clock):
    proxy, pbx, device = await setup(nursery, udp_idle_timeout=30)
    for _ in range(3):  # 60 s in all, never 30 s without traffic
        with trio.fail_after(5):
            await device.send(REGISTER)
            await pbx.recvfrom(65535)
        mock_clock.jump(20)
        await trio.testing.wait_all_tasks_blocked()
    assert not [e for e in proxy.events if e.kind == "flow-close"]
    mock_clock.jump(11)  # 31 s since the last datagram
    await trio.testing.wait_all_tasks_blocked()
    assert [e.detail for e in proxy.events if e.kind == "flow-close"] == [{"reason": "idle"}]


async def test_idle_flow_expires_and_the_next_datagram_opens_a_new_one(nursery, mock_clock):
    proxy, pbx, device = await setup(nursery, udp_idle_timeout=30)
    with trio.fail_after(5):
        await device.send(REGISTER)
        _, first = await pbx.recvfrom(65535)
    mock_clock.jump(29)
    await trio.testing.wait_all_tasks_blocked()
    assert not [e for e in proxy.events if e.kind == "flow-close"]
    mock_clock.jump(2)
    await trio.testing.wait_all_tasks_blocked()
    closes = [e for e in proxy.events if e.kind == "flow-close"]
    assert len(closes) == 1 and closes[0].detail == {"reason": "idle"}
    with trio.fail_after(5):
        await device.send(REGISTER)
        _, second = await pbx.recvfrom(65535)
    assert second != first  # a fresh upstream socket
