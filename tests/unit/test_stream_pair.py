"""One TCP/TLS connection pair on memory streams: order, raw fallback, close."""

import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.net.stream import _relay_pair
from faultlab.proxy import Proxy, ProxyConfig
from faultlab.relay import TO_DEVICE, TO_PBX, Hop, Side

SIDE = Side("tcp", device=("127.0.0.1", 5060), pbx=("127.0.0.1", 40000))
OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\n"
           b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def make_proxy():
    return Proxy(ProxyConfig(listen=[parse_endpoint("tcp:127.0.0.1:0")],
                             upstream=[parse_endpoint("tcp:127.0.0.1:5060")]))


async def read_until_eof(stream):
    out = b""
    while data := await stream.receive_some():
        out += data
    return out


async def run_pair(proxy, nursery):
    device, device_relay = trio.testing.memory_stream_pair()
    upstream_relay, pbx = trio.testing.memory_stream_pair()
    hops = (Hop("t1", TO_PBX, "tcp", ("10.0.0.2", 1111), SIDE),
            Hop("t1", TO_DEVICE, "tcp", ("127.0.0.1", 5060), SIDE))
    done = trio.Event()

    async def pair():
        await _relay_pair(proxy, device_relay, upstream_relay, *hops, ("127.0.0.1", 5060))
        await device_relay.aclose()
        await upstream_relay.aclose()
        done.set()

    nursery.start_soon(pair)
    return device, pbx, done


async def test_unframeable_stream_is_relayed_raw_from_there_on(nursery, autojump_clock):
    proxy = make_proxy()
    device, pbx, done = await run_pair(proxy, nursery)
    garbage = b"NOT SIP AT ALL\r\nX: y\r\n\r\n"  # no Content-Length on a stream: cannot frame
    await device.send_all(b"\r\n\r\n" + garbage + OPTIONS)
    await device.send_eof()
    received = await read_until_eof(pbx)
    assert received == b"\r\n\r\n" + garbage + OPTIONS  # keep-alive, then everything raw, unchanged
    kinds = [(e.kind, e.parsed) for e in proxy.events if e.kind in ("received", "warning")]
    assert ("warning", None) in kinds and ("received", False) in kinds
    warning = next(e for e in proxy.events if e.kind == "warning")
    assert "relaying it raw" in warning.detail["message"]


async def test_messages_keep_their_order_and_only_gain_a_via(nursery, autojump_clock):
    proxy = make_proxy()
    device, pbx, done = await run_pair(proxy, nursery)
    msgs = [OPTIONS.replace(b"CSeq: 1", f"CSeq: {n}".encode()) for n in range(1, 50)]
    # deliver in awkward pieces: 7 bytes at a time
    blob = b"".join(msgs)
    for i in range(0, len(blob), 7):
        await device.send_all(blob[i:i + 7])
    await device.send_eof()
    received = await read_until_eof(pbx)
    from faultlab.sip import StreamFramer, NEED_DATA, EOF, remove_top_value
    framer = StreamFramer()
    framer.receive_data(received)
    framer.receive_data(b"")
    got = []
    while (ev := framer.next_event()) not in (NEED_DATA, EOF):
        got.append(remove_top_value(ev, "via"))
    assert got == msgs


async def test_pbx_close_closes_device_side(nursery, autojump_clock):
    proxy = make_proxy()
    device, pbx, done = await run_pair(proxy, nursery)
    await pbx.send_all(OPTIONS)
    await pbx.aclose()
    data = await read_until_eof(device)
    assert b"OPTIONS" in data
    with trio.fail_after(1):
        await done.wait()
    closed = [e for e in proxy.events if e.kind == "closed"]
    assert closed[0].detail == {"how": "eof", "by": "pbx"}


def proxy_with(profile_text):
    from faultlab.faults import parse_profile

    return Proxy(ProxyConfig(listen=[parse_endpoint("tcp:127.0.0.1:0")],
                             upstream=[parse_endpoint("tcp:127.0.0.1:5060")],
                             profile=parse_profile(profile_text), seed=1))


async def test_a_delayed_message_holds_back_the_ones_behind_it(nursery, autojump_clock):
    proxy = proxy_with('''
        [[rules]]
        name = "slow-first"
        match = { method = "OPTIONS", headers = { "CSeq" = "^1 " } }
        action = { delay = "2s" }
    ''')
    device, pbx, done = await run_pair(proxy, nursery)
    first = OPTIONS
    second = OPTIONS.replace(b"CSeq: 1", b"CSeq: 2")
    start = trio.current_time()
    await device.send_all(first + second)
    got = b""
    arrivals = []
    while got.count(b"OPTIONS sip") < 2:
        got += await pbx.receive_some()
        arrivals.append(trio.current_time() - start)
    assert got.index(b"CSeq: 1") < got.index(b"CSeq: 2")  # order kept
    assert arrivals[0] == 2.0  # nothing at all arrived before the delayed one
    sent = [e for e in proxy.events if e.kind == "sent"]
    assert [e.cseq for e in sent] == [1, 2] and sent[0].t == sent[1].t


async def test_close_before_loses_the_message_and_ends_both_sides(nursery, autojump_clock):
    proxy = proxy_with('''
        [[rules]]
        name = "fin-on-options"
        match = { method = "OPTIONS" }
        action = { close = true, when = "before" }
    ''')
    device, pbx, done = await run_pair(proxy, nursery)
    await device.send_all(OPTIONS)
    assert await read_until_eof(pbx) == b""
    assert await read_until_eof(device) == b""
    with trio.fail_after(1):
        await done.wait()
