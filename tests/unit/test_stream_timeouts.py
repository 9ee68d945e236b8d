"""TCP connections through the proxy on the in-memory network, in virtual time: a message begun must be
complete in time (slowloris), a connection with no traffic closes (keep-alives count; a registration keeps
it), the PBX connection opens only with the device's first message, and a graceful stop forwards what is
due and records what it gives up."""

import functools

import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.faults import parse_profile
from faultlab.net import memnet
from faultlab.net.stop import stopper_of
from faultlab.proxy import ProxyConfig, serve_proxy
from faultlab.sip import NEED_DATA, KeepAlive, StreamFramer, build_response


def request(method="OPTIONS", cseq=1, call="c1"):
    return (f"{method} sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK{call}-{cseq}\r\n"
            f"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nContact: <sip:a@10.0.0.2;transport=tcp>\r\n"
            f"Call-ID: {call}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode()


class Lab:
    """A PBX on 127.0.0.1:5060 that answers every request with 200 (REGISTER: with ``expires``) and
    every ping with a pong, and a proxy in front of it on 127.0.0.1:5070."""

    def __init__(self, nursery, **config):
        self.nursery = nursery
        self.config = config
        self.accepted = 0  # connections the PBX accepted
        self.expires = 60

    async def start(self):
        memnet.install()
        await self.nursery.start(functools.partial(trio.serve_tcp, self.pbx, 5060, host="127.0.0.1"))
        self.proxy = await self.nursery.start(serve_proxy, ProxyConfig(
            listen=[parse_endpoint("tcp:127.0.0.1:5070")], upstream=[parse_endpoint("tcp:127.0.0.1:5060")],
            seed=1, **self.config))
        return self

    async def pbx(self, stream):
        self.accepted += 1
        framer = StreamFramer()
        try:
            while data := await stream.receive_some():
                framer.receive_data(data)
                while (event := framer.next_event()) is not NEED_DATA:
                    if isinstance(event, KeepAlive):
                        if event.raw == b"\r\n\r\n":
                            await stream.send_all(b"\r\n")
                    elif event.is_request and event.method != "ACK":
                        contact = [("Contact", f"<sip:a@10.0.0.2>;expires={self.expires}")]
                        await stream.send_all(build_response(
                            event, 200, headers=contact if event.method == "REGISTER" else ()))
        except trio.BrokenResourceError:
            pass

    async def device(self):
        return await trio.open_tcp_stream("127.0.0.1", 5070)

    def closes(self, reason=None):
        return [e for e in self.proxy.events if e.kind == "flow-close"
                and (reason is None or e.detail.get("reason") == reason)]


async def answer(stream, framer):
    """The next message (or keep-alive) on a device's connection; None at EOF."""
    while (event := framer.next_event()) is NEED_DATA:
        data = await stream.receive_some()
        framer.receive_data(data)
        if not data:
            return None
    return event


async def test_slowloris_connections_close_while_a_normal_client_keeps_relaying(nursery, autojump_clock):
    lab = await Lab(nursery, message_timeout=2.0).start()
    slow = [await lab.device() for _ in range(50)]
    ended = []

    async def trickle(stream):
        for byte in request():  # one byte a second: never a whole message within 2 s
            await stream.send_all(bytes([byte]))
            with trio.move_on_after(1):
                if await stream.receive_some() == b"":  # faultlab closed it in order (FIN)
                    ended.append(trio.current_time())
                    return

    for stream in slow:
        nursery.start_soon(trickle, stream)
    normal = await lab.device()
    framer = StreamFramer()
    for n in range(1, 11):  # a request in two halves 1 s apart, then 3 s of quiet: each answered
        data = request(cseq=n, call="normal")
        await normal.send_all(data[:40])
        await trio.sleep(1)
        await normal.send_all(data[40:])
        reply = await answer(normal, framer)
        assert reply is not None and reply.status == 200 and reply.cseq.number == n
        await trio.sleep(3)
    assert len(lab.closes("message-timeout")) == 50
    assert all(e.detail["how"] == "eof" for e in lab.closes("message-timeout"))
    assert lab.accepted == 1  # a message never completed opens no PBX connection
    closed = [e for e in lab.proxy.events if e.kind == "closed" and e.detail.get("reason") == "message-timeout"]
    assert len(closed) == 50 and all(e.detail["from"] == "device" and e.detail["after"] == 2.0 for e in closed)
    assert len(ended) == 50


async def test_idle_connections_close_and_keep_alives_count_as_traffic(nursery, autojump_clock):
    lab = await Lab(nursery, stream_idle_timeout=10.0).start()
    silent = await lab.device()
    pinging = await lab.device()
    framer = StreamFramer()
    for n in range(12):  # a ping every 5 s for a minute: before and after the first message
        if n == 6:
            await pinging.send_all(request())
            assert (await answer(pinging, framer)).status == 200
        await pinging.send_all(b"\r\n\r\n")
        assert await answer(pinging, framer) == KeepAlive(b"\r\n")
        await trio.sleep(5)
    assert await silent.receive_some() == b""  # closed in order
    [idle] = lab.closes()
    assert idle.detail == {"how": "eof", "reason": "idle-timeout"}
    [closed] = [e for e in lab.proxy.events if e.kind == "closed"]
    assert closed.detail == {"how": "eof", "by": "faultlab", "reason": "idle-timeout", "after": 10.0}
    assert closed.t == 10.0
    pongs = [e for e in lab.proxy.events if e.kind == "responded"]
    assert len(pongs) == 6  # faultlab answered the pings before the first message; the PBX the rest
    assert lab.accepted == 1


async def test_a_registration_keeps_its_connection_until_it_expires(nursery, autojump_clock):
    lab = await Lab(nursery, stream_idle_timeout=10.0).start()
    lab.expires = 100
    device = await lab.device()
    await device.send_all(request("REGISTER"))
    assert (await answer(device, StreamFramer())).status == 200
    registered_at = trio.current_time()
    assert await device.receive_some() == b""  # silent from now on: closed once the registration expired
    [closed] = [e for e in lab.proxy.events if e.kind == "closed"]
    assert closed.detail["reason"] == "idle-timeout"
    assert trio.current_time() - registered_at == 100 + 32  # expires, plus a grace for a late refresh


async def test_idle_devices_open_no_pbx_connection(nursery, autojump_clock):
    lab = await Lab(nursery).start()
    devices = [await lab.device() for _ in range(20)]
    for device in devices[:10]:
        await device.send_all(b"\r\n\r\n")  # a keep-alive is answered by faultlab, not the PBX
        assert await device.receive_some() == b"\r\n"
    await trio.sleep(60)
    assert lab.accepted == 0
    assert not [e for e in lab.proxy.events if e.kind == "flow-open"]
    await devices[3].send_all(request())
    assert (await answer(devices[3], StreamFramer())).status == 200
    assert lab.accepted == 1
    assert [e.kind for e in lab.proxy.events if e.flow == "t4"] == [
        "received", "responded",  # the ping, answered by faultlab
        "flow-open", "received", "sent", "received", "sent"]  # the OPTIONS opens the PBX connection; its 200


async def test_stop_forwards_what_is_due_and_records_what_it_gives_up(nursery, autojump_clock):
    profile = parse_profile('''
        [[rules]]
        name = "hold-register"
        match = { method = "REGISTER" }
        action = { hold = true }
        [[rules]]
        name = "slow-info"
        match = { method = "INFO" }
        action = { delay = "2s" }
        [[rules]]
        name = "slower-message"
        match = { method = "MESSAGE" }
        action = { delay = "20s" }
    ''')
    lab = await Lab(nursery, profile=profile, drain=5.0).start()
    device = await lab.device()
    await device.send_all(request("REGISTER", call="r") + request("INFO", call="i") + request("MESSAGE", call="m"))
    await trio.testing.wait_all_tasks_blocked()
    stopped = trio.Event()

    async def stop():
        await stopper_of(lab.proxy).stop(lab.proxy, lab.proxy.config.drain)
        stopped.set()

    nursery.start_soon(stop)
    framer = StreamFramer()
    got = []
    while (event := await answer(device, framer)) is not None:
        got.append(event)
    await stopped.wait()
    # the REGISTER was held, and the rest waited behind it (FIFO, as TCP would) for the whole drain; at the
    # close the INFO, due by then, was written; the held REGISTER and the MESSAGE still delayed were not
    assert got == []
    abandoned = [e for e in lab.proxy.events if e.kind == "abandoned"]
    assert [(e.method, e.detail["reason"]) for e in abandoned] == [("REGISTER", "stop"), ("MESSAGE", "stop")]
    assert abandoned[0].detail["hold"] == "h1" and not lab.proxy.holds
    assert [e.method for e in lab.proxy.events if e.kind == "sent"] == ["INFO"]
    assert len([e for e in lab.proxy.events if e.kind == "received"]) == 3
    [close] = lab.closes()
    assert close.detail["reason"] == "stop"


async def test_stop_forwards_delayed_messages_due_within_the_drain(nursery, autojump_clock):
    profile = parse_profile('''
        [[rules]]
        name = "slow-info"
        match = { method = "INFO" }
        action = { delay = "2s" }
    ''')
    lab = await Lab(nursery, profile=profile, drain=5.0).start()
    device = await lab.device()
    await device.send_all(request("INFO", call="i") + request("OPTIONS", call="o"))
    await trio.testing.wait_all_tasks_blocked()
    start = trio.current_time()
    nursery.start_soon(stopper_of(lab.proxy).stop, lab.proxy, 5.0)
    framer = StreamFramer()
    got = []
    while (event := await answer(device, framer)) is not None:
        got.append((event.status, event.cseq.method))
    assert got == [(200, "INFO"), (200, "OPTIONS")]  # both answered within the drain, then FIN
    assert not [e for e in lab.proxy.events if e.kind == "abandoned"]
    assert trio.current_time() - start < 5.0  # the drain ended as soon as nothing was in flight


def test_the_expiry_of_a_registration_is_read_from_any_response_without_raising():
    from faultlab.net.pair import registration_expires
    from faultlab.sip import parse_message

    def response(contact="", expires=None, cseq="1 REGISTER", status=200):
        head = f"SIP/2.0 {status} OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\nCall-ID: r\r\nCSeq: {cseq}\r\n"
        head += f"Contact: {contact}\r\n" if contact else ""
        head += f"Expires: {expires}\r\n" if expires is not None else ""
        return parse_message((head + "Content-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape"))

    assert registration_expires(response("<sip:a@h>;expires=120, <sip:b@h>;expires=300")) == 300
    assert registration_expires(response("<sip:a@h>", expires=600)) == 600
    assert registration_expires(response("<sip:a@h>")) == 3600
    assert registration_expires(response("<sip:a@h>;expires=" + "9" * 400)) == 2**32 - 1
    assert registration_expires(response(cseq="1 INVITE")) is None
    assert registration_expires(response(status=403)) is None
    for hostile in ("<sip:a@h>;expires=\u00b2", "<sip:a@h>;expires=12\udcbd", "<sip:a@h", "<sip:a@h>;expires=-1"):
        assert registration_expires(response(hostile)) in (None, 3600)
    assert registration_expires(response(expires="\u00b2")) is None


async def test_stop_with_a_full_queue_behind_a_hold_loses_nothing_unrecorded(nursery, autojump_clock):
    profile = parse_profile('''
        [[rules]]
        name = "hold-register"
        match = { method = "REGISTER" }
        action = { hold = true }
    ''')
    lab = await Lab(nursery, profile=profile, drain=1.0).start()
    device = await lab.device()
    # more than the writer's queue holds: the reading side waits for room, as TCP flow control would
    await device.send_all(request("REGISTER", call="r") + b"".join(request(cseq=n, call="o") for n in range(1, 301)))
    await trio.testing.wait_all_tasks_blocked()
    await stopper_of(lab.proxy).stop(lab.proxy, lab.proxy.config.drain)
    kinds = [e.kind for e in lab.proxy.events]
    assert kinds.count("received") == 301
    assert kinds.count("sent") == 300 and kinds.count("abandoned") == 1  # due by the close: written
    assert lab.proxy.waiting == 0


def test_the_console_tells_of_a_message_abandoned():
    import io

    from faultlab.trace import ConsolePrinter, Event

    out = io.StringIO()
    ConsolePrinter(out)(Event(4.0, "abandoned", flow="t1", direction="to-pbx", transport="tcp", method="REGISTER",
                              cseq=1, cseq_method="REGISTER", summary="REGISTER sip:pbx cseq=1 REGISTER call=r",
                              raw=request("REGISTER", call="r"), detail={"reason": "stop", "hold": "h1"}))
    assert out.getvalue().split() == ["4.000", "abandoned", "t1", "->pbx", "REGISTER", "abandoned", "(stop)"]


def test_timeouts_and_drain_must_be_positive():
    import pytest

    from faultlab.proxy import ConfigError

    def config(**options):
        return ProxyConfig(listen=[parse_endpoint("tcp:127.0.0.1:5070")],
                           upstream=[parse_endpoint("tcp:127.0.0.1:5060")], **options)

    config(drain=0).validate()
    for option, value in (("message_timeout", 0), ("stream_idle_timeout", -1), ("drain", -1),
                          ("stream_idle_timeout", float("nan"))):
        with pytest.raises(ConfigError, match="--" + option.replace("_", "-")):
            config(**{option: value}).validate()
