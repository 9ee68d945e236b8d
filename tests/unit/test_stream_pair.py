"""One TCP connection pair on the in-memory network, in virtual time: order, raw fallback, close."""

import functools

import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.net import memnet
from faultlab.proxy import ProxyConfig, serve_proxy

OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\n"
           b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def make_proxy(**config):
    return ProxyConfig(listen=[parse_endpoint("tcp:127.0.0.1:5070")],
                       upstream=[parse_endpoint("tcp:127.0.0.1:5060")], seed=1, **config)


async def read_until_eof(stream):
    out = b""
    while data := await stream.receive_some():
        out += data
    return out


class Pair:
    """A device connected through the proxy; ``pbx()`` is the PBX's side of the connection, once the proxy
    has opened it (with the device's first message)."""

    def __init__(self, proxy, device, accepted):
        self.proxy, self.device, self.accepted = proxy, device, accepted

    async def pbx(self):
        return await self.accepted.receive()

    @property
    def events(self):
        return self.proxy.events

    async def done(self, within=10.0):
        """Whether the proxy closed the flow within ``within`` seconds (virtual time)."""
        with trio.move_on_after(within):
            while not any(e.kind == "flow-close" for e in self.proxy.events):
                await trio.sleep(0.01)
        return any(e.kind == "flow-close" for e in self.proxy.events)


async def run_pair(config, nursery):
    memnet.install()
    send, accepted = trio.open_memory_channel(100)

    async def pbx(stream):
        await send.send(stream)
        await trio.sleep_forever()

    await nursery.start(functools.partial(trio.serve_tcp, pbx, 5060, host="127.0.0.1"))
    proxy = await nursery.start(serve_proxy, config)
    device = await trio.open_tcp_stream(*proxy.bound["tcp"])
    return Pair(proxy, device, accepted)


async def test_unframeable_stream_is_relayed_raw_from_there_on(nursery, autojump_clock):
    pair = await run_pair(make_proxy(), nursery)
    garbage = b"NOT SIP AT ALL\r\nX: y\r\n\r\n"  # no Content-Length on a stream: cannot frame
    await pair.device.send_all(b"\r\n\r\n" + garbage + OPTIONS)
    await pair.device.send_eof()
    received = await read_until_eof(await pair.pbx())
    # the keep-alive came before any message: faultlab answered it (no PBX connection yet); then
    # everything raw, unchanged
    assert received == garbage + OPTIONS
    assert await read_until_eof(pair.device) == b"\r\n"
    kinds = [(e.kind, e.parsed) for e in pair.events if e.kind in ("received", "warning")]
    assert ("warning", None) in kinds and ("received", False) in kinds
    warning = next(e for e in pair.events if e.kind == "warning")
    assert "relaying it raw" in warning.detail["message"]


async def test_messages_keep_their_order_and_only_gain_a_via(nursery, autojump_clock):
    pair = await run_pair(make_proxy(), nursery)
    msgs = [OPTIONS.replace(b"CSeq: 1", f"CSeq: {n}".encode()) for n in range(1, 50)]
    # deliver in awkward pieces: 7 bytes at a time
    blob = b"".join(msgs)
    for i in range(0, len(blob), 7):
        await pair.device.send_all(blob[i:i + 7])
    await pair.device.send_eof()
    received = await read_until_eof(await pair.pbx())
    from faultlab.sip import StreamFramer, NEED_DATA, EOF, remove_top_value
    framer = StreamFramer()
    framer.receive_data(received)
    framer.receive_data(b"")
    got = []
    while (ev := framer.next_event()) not in (NEED_DATA, EOF):
        got.append(remove_top_value(ev, "via"))
    assert got == msgs


async def test_pbx_close_closes_device_side(nursery, autojump_clock):
    pair = await run_pair(make_proxy(), nursery)
    await pair.device.send_all(OPTIONS)  # the PBX connection opens with the device's first message
    pbx = await pair.pbx()
    assert b"OPTIONS" in await pbx.receive_some()
    await pbx.send_all(OPTIONS)
    await pbx.aclose()
    data = await read_until_eof(pair.device)
    assert b"OPTIONS" in data
    await pair.device.aclose()
    assert await pair.done()
    closed = [e for e in pair.events if e.kind == "closed"]
    assert closed[0].detail == {"how": "eof", "by": "pbx"}


async def test_finishing_a_pair_that_ended_on_its_own_is_harmless(nursery, autojump_clock, monkeypatch):
    """A graceful stop may reach a pair whose connections have just closed by themselves (its nursery closed, the
    pair not yet forgotten): faultlab must stop cleanly, not fail with "Nursery is closed to new arrivals"."""
    from faultlab.net.stop import Stopper

    pairs = []
    closes = Stopper.closes

    def recording(self, pair):
        pairs.append(pair)
        return closes(self, pair)

    monkeypatch.setattr(Stopper, "closes", recording)
    pair = await run_pair(make_proxy(), nursery)
    await pair.device.send_all(OPTIONS)
    pbx = await pair.pbx()
    assert b"OPTIONS" in await pbx.receive_some()
    await pbx.aclose()
    await read_until_eof(pair.device)
    await pair.device.aclose()
    assert await pair.done()
    [connection] = pairs
    connection.finish("stop")  # what the stop does to every pair it still knows of
    assert connection.reason == "stop"


def proxy_with(profile_text, **config):
    from faultlab.faults import parse_profile

    return make_proxy(profile=parse_profile(profile_text), **config)


async def test_a_delayed_message_holds_back_the_ones_behind_it(nursery, autojump_clock):
    pair = await run_pair(proxy_with('''
        [[rules]]
        name = "slow-first"
        match = { method = "OPTIONS", headers = { "CSeq" = "^1 " } }
        action = { delay = "2s" }
    '''), nursery)
    first = OPTIONS
    second = OPTIONS.replace(b"CSeq: 1", b"CSeq: 2")
    start = trio.current_time()
    await pair.device.send_all(first + second)
    pbx = await pair.pbx()
    got = b""
    arrivals = []
    while got.count(b"OPTIONS sip") < 2:
        got += await pbx.receive_some()
        arrivals.append(trio.current_time() - start)
    assert got.index(b"CSeq: 1") < got.index(b"CSeq: 2")  # order kept
    assert arrivals[0] == 2.0  # nothing at all arrived before the delayed one
    sent = [e for e in pair.events if e.kind == "sent"]
    assert [e.cseq for e in sent] == [1, 2] and sent[0].t == sent[1].t


async def test_close_before_loses_the_message_and_ends_both_sides(nursery, autojump_clock):
    pair = await run_pair(proxy_with('''
        [[rules]]
        name = "fin-on-options"
        match = { method = "OPTIONS" }
        action = { close = true, when = "before" }
    '''), nursery)
    await pair.device.send_all(OPTIONS)
    assert await read_until_eof(await pair.pbx()) == b""
    assert await read_until_eof(pair.device) == b""
    assert await pair.done()


async def test_keep_alive_rules_swallow_pongs_faultlabs_own_and_the_pbxs(nursery, autojump_clock):
    from faultlab.faults import parse_profile

    swallow = parse_profile('name = "p"\n[[rules]]\nname = "swallow-pongs"\n'
                            'match = { on = "keep-alive", keep_alive = "pong" }\naction = { drop = true }\n')
    pair = await run_pair(make_proxy(profile=swallow), nursery)
    await pair.device.send_all(b"\r\n\r\n")  # before the PBX connection: faultlab's own pong, swallowed
    await pair.device.send_all(OPTIONS)
    pbx = await pair.pbx()
    await pbx.send_all(b"\r\n")  # the PBX's pong, swallowed on its way
    await pbx.send_all(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\n"
                       b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    await pbx.aclose()
    assert (await read_until_eof(pair.device)).startswith(b"SIP/2.0 200 OK")  # and nothing before it
    dropped = [e for e in pair.events if e.kind == "dropped"]
    assert [e.summary for e in dropped] == ["keep-alive pong by faultlab", "keep-alive"], dropped
    assert all(e.detail["rules"] == ["swallow-pongs"] for e in dropped)
