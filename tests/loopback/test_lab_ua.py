"""The scripted UA (faultlab.lab.ua) reads with the one SIP reader: bytes that are not SIP do not end it."""

from __future__ import annotations

import trio

from faultlab.lab.ua import SipUA
from faultlab.net.reader import SipStreamReader
from faultlab.sip import Message, build_request, build_response

NOT_SIP = b"INVITE sip:x SIP/2.0\r\nContent-Length: banana\r\n\r\n"


async def test_udp_datagram_that_is_not_sip_is_ignored_and_the_ua_keeps_reading():
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            ua = SipUA("bob", "udp", peer.getsockname()[:2])
            await ua.start(nursery)
            await peer.sendto(NOT_SIP, ua.address)
            await peer.sendto(b"\x00\xff", ua.address)
            options = build_request(
                "OPTIONS", ua.aor, via=f"SIP/2.0/UDP 127.0.0.1:{peer.getsockname()[1]};branch=z9hG4bKua1",
                from_="<sip:probe@127.0.0.1>;tag=1", to=f"<{ua.aor}>", call_id="ua-udp-1", cseq=1)
            await peer.sendto(options, ua.address)
            got = await ua.expect_request("OPTIONS")
            assert got.message.call_id == "ua-udp-1"
            assert [r.summary for r in ua.received()] == ["OPTIONS"]
            peer.close()
            nursery.cancel_scope.cancel()


async def test_tcp_connection_that_stops_framing_is_closed_and_the_next_request_opens_another():
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            ua = SipUA("bob", "tcp", listener.socket.getsockname()[:2])
            await ua.start(nursery)
            first = await listener.accept()
            await first.send_all(NOT_SIP)
            assert await first.receive_some(100) == b""  # the UA gave the connection up
            await first.aclose()

            async def registrar() -> None:
                second = await listener.accept()
                async for item in SipStreamReader(second).items():
                    assert isinstance(item, Message) and item.method == "REGISTER"
                    await second.send_all(build_response(item, 200, to_tag="reg"))
                    return

            nursery.start_soon(registrar)
            assert (await ua.register()).status == 200
            assert [r.summary for r in ua.log] == ["REGISTER", "200 REGISTER"]
            await listener.aclose()
            nursery.cancel_scope.cancel()
