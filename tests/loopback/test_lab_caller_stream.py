"""The lab Caller over a TCP connection whose other end is not a well-behaved PBX: keep-alive pings are
answered, and bytes that do not frame end the caller's reading with a warning instead of an exception."""

from __future__ import annotations

import functools

import pytest
import trio

from faultlab.lab.caller import Caller
from faultlab.lab.timeline import Timeline

CUT_SHORT = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKx\r\nContent-Length: 10\r\n\r\nabc"


@pytest.mark.parametrize("ending", ["garbage", "cut-short"])
async def test_caller_answers_a_ping_then_stops_reading_unframeable_input_with_a_warning(ending):
    timeline = Timeline()
    pongs = []

    async def pbx(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\r\n\r\n")  # a keep-alive ping: the caller pongs
        pongs.append(await stream.receive_some(65536))
        if ending == "garbage":
            await stream.send_all(b"\x00\x01 not SIP at all\r\n\r\n")
            await trio.sleep_forever()  # the connection stays open: the caller stops on the bytes alone
        await stream.send_all(CUT_SHORT)
        await stream.aclose()  # a message cut short by the end of the stream

    with trio.fail_after(8):
        async with trio.open_nursery() as outer:
            [listener] = await outer.start(functools.partial(trio.serve_tcp, pbx, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            caller = Caller("tcp", ("127.0.0.1", port), "alice", timeline)
            async with trio.open_nursery() as actor:  # ends when the caller's reader ends, raises if it raised
                await caller.start(actor)
            outer.cancel_scope.cancel()
    assert pongs == [b"\r\n"]
    [warning] = [e for e in timeline.events if e.kind == "warning"]
    assert warning.source == "caller" and warning.summary.startswith("unframeable: ")
