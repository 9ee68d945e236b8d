"""The trio Device over real UDP on loopback, against a tiny scripted registrar/INVITE sender, in virtual time
(trio's autojump clock).

S01: push -> REGISTER 200 -> INVITE -> 100/180 -> user answers at +2 s -> 200 -> ACK -> BYE -> 200, ended remoteEnded.
Also: Timer E retransmissions of an unanswered REGISTER and the register deadline (S10), CANCEL with a Reason over
UDP, TCP and TLS, a refused connection (S15), the REGISTER at start, and the --push-url NDJSON reader.
"""

from __future__ import annotations

import socket
import ssl
from types import SimpleNamespace

import pytest
import trio
import trustme

from faultlab.lab.device import Device
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.timeline import Timeline
from faultlab.sip import Message, build_response, parse_datagram, parse_uri, push_params

CALL_ID = "call-1@pbx"
PUSH = SimpleNamespace(kind="call", payload={"type": "call", "call-id": CALL_ID, "uuid": "U-1",
                                             "from-uri": "sip:bob@lab.test", "display-name": "Bob", "send-time": 0})


def fresh() -> float:
    """The device's wall clock: PUSH's ``send-time`` is 0, so it is 1 s old (a stale push would be ended at once)."""
    return 1.0


class Pbx:
    """A scripted registrar and INVITE sender on one UDP socket."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.device: tuple[str, int] | None = None
        self.log: list[tuple[float, str, Message]] = []

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def recv(self, summary: str | None = None) -> Message:
        while True:
            data, src = await self.sock.recvfrom(65535)
            m = parse_datagram(data)
            s = m.method if m.is_request else f"{m.status} {m.cseq.method}"
            self.log.append((trio.current_time(), s, m))
            self.device = src[:2]
            if summary is None or s == summary:
                return m

    async def reply(self, request: Message, status: int, headers=()) -> None:
        await self.sock.sendto(build_response(request, status, headers=list(headers)), self.device)

    async def send(self, method: str, *, to: str = "<sip:alice@lab.test>", cseq: int = 1, branch: str = "z9hG4bKinv1",
                   headers=(), cseq_method: str | None = None) -> None:
        lines = [f"{method} sip:alice@{self.device[0]}:{self.device[1]} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}",
                 "Max-Forwards: 70", "From: <sip:bob@lab.test>;tag=caller1", f"To: {to}", f"Call-ID: {CALL_ID}",
                 f"CSeq: {cseq} {cseq_method or method}", "Contact: <sip:bob@127.0.0.1>", *headers,
                 "Content-Length: 0"]
        await self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), self.device)


async def start(nursery, **config):
    sock = trio.socket.socket(type=socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    pbx = Pbx(sock)
    timeline = Timeline()
    send, receive = trio.open_memory_channel(10)
    device = Device(proxy=f"udp:127.0.0.1:{pbx.port}", user="alice", domain="lab.test", token="a1b2c3",
                    pushes=receive, timeline=timeline, config=DeviceConfig(**config), register_at_start=False, wall_clock=fresh)

    nursery.start_soon(device.run)
    return pbx, device, timeline, send


def device_events(timeline: Timeline) -> list[tuple[float, str, str | None]]:
    return [(round(e.t, 3), e.detail["event"], e.detail.get("reason")) for e in timeline.events if e.kind == "device"]


async def test_s01_push_register_invite_answer_ack_bye(nursery, autojump_clock) -> None:
    pbx, device, timeline, pushes = await start(nursery, answer_after=2.0)
    await pushes.send(PUSH)
    register = await pbx.recv("REGISTER")
    assert trio.current_time() - timeline.t0 < 0.01
    contact = register.contacts[0]
    assert push_params(contact) == {"pn-provider": "apns", "pn-prid": "a1b2c3",
                                    "pn-param": "ABCDE12345.org.faultlab.device.voip"}
    assert parse_uri(contact.uri).params["pn-prid"] == "a1b2c3"
    assert register.expires == 600
    await trio.sleep(0.2)  # virtual: the PBX answers 200 ms later
    await pbx.reply(register, 200, [("Contact", register.get("Contact") + ";expires=600")])
    await trio.sleep(0.3)
    await pbx.send("INVITE")
    assert (await pbx.recv()).status == 100
    assert (await pbx.recv()).status == 180
    ok = await pbx.recv("200 INVITE")
    assert round(trio.current_time() - timeline.t0, 3) == 2.0
    assert ok.to_tag and ok.body.startswith(b"v=0") and ok.contacts
    await pbx.send("ACK", to=ok.get("To"), cseq=1, branch="z9hG4bKack1")
    await trio.sleep(10)
    await pbx.send("BYE", to=ok.get("To"), cseq=2, branch="z9hG4bKbye1")
    assert (await pbx.recv()).status == 200
    await trio.sleep(0.1)
    assert device_events(timeline) == [
        (0.0, "reported", None),
        (2.0, "answer-tapped", None),
        (2.0, "answer-fulfilled", None),
        (12.0, "ended", "remoteEnded"),
    ]
    events = [e for e in timeline.events if e.kind == "device"]
    assert {e.source for e in events} == {"device:alice"} and {e.call_id for e in events} == {CALL_ID}
    assert all(e.detail["uuid"] == "U-1" for e in events)
    # the 200 was not retransmitted (the ACK came at once); nothing else reached the PBX
    assert [s for _, s, _ in pbx.log] == ["REGISTER", "100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]


async def test_s10_unanswered_register_is_retransmitted_per_timer_e_then_fails_at_8s(nursery, autojump_clock) -> None:
    pbx, device, timeline, pushes = await start(nursery)
    await pushes.send(PUSH)
    times = []
    with trio.move_on_after(30):
        while True:
            await pbx.recv("REGISTER")
            times.append(round(trio.current_time() - timeline.t0, 3))
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5]  # stopped at the 8 s deadline
    assert device_events(timeline) == [(0.0, "reported", None), (8.0, "ended", "failed")]


async def test_s06_cancel_answered_elsewhere_and_duplicate_push(nursery, autojump_clock) -> None:
    pbx, device, timeline, pushes = await start(nursery)
    await pushes.send(PUSH)
    register = await pbx.recv("REGISTER")
    await pushes.send(PUSH)  # S22: the same push again
    await pbx.reply(register, 200)
    await pbx.send("INVITE")
    assert (await pbx.recv("180 INVITE")).status == 180
    await trio.sleep(1)
    await pbx.send("CANCEL", branch="z9hG4bKinv1",
                   headers=['Reason: SIP;cause=200;text="Call completed elsewhere"'])
    got = {(await pbx.recv()).status, (await pbx.recv()).status}
    assert got == {200, 487}
    await trio.sleep(1)
    assert device_events(timeline) == [(0.0, "reported", None), (1.0, "ended", "answeredElsewhere")]
    assert [s for _, s, _ in pbx.log].count("REGISTER") == 1


# ------------------------------------------------------------------ TCP and TLS, and a refused connection (S15)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_stream_register_invite_cancel_declined_elsewhere(nursery, autojump_clock, tmp_path, transport) -> None:
    from faultlab.sip import NEED_DATA, StreamFramer

    ca_file = None
    if transport == "tls":
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
        port = listeners[0].transport_listener.socket.getsockname()[1]
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
    timeline = Timeline()
    send, receive = trio.open_memory_channel(10)
    device = Device(proxy=f"{transport}:127.0.0.1:{port}", user="alice", domain="lab.test", token="a1b2c3",
                    pushes=receive, timeline=timeline, register_at_start=False, ca_file=ca_file, wall_clock=fresh)
    nursery.start_soon(device.run)
    await send.send(PUSH)
    stream = await listeners[0].accept()
    framer = StreamFramer()

    async def recv() -> Message:
        while (event := framer.next_event()) is NEED_DATA:
            framer.receive_data(await stream.receive_some(65536))
        return event

    register = await recv()
    assert register.method == "REGISTER" and f"transport={transport}" in register.get("Contact")
    assert register.top_via.transport == transport.upper()
    await stream.send_all(build_response(register, 200))
    invite = ("INVITE sip:alice@127.0.0.1 SIP/2.0\r\n"
              f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:5060;branch=z9hG4bKt1\r\n"
              f"From: <sip:bob@lab.test>;tag=c\r\nTo: <sip:alice@lab.test>\r\nCall-ID: {CALL_ID}\r\n"
              "CSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1;transport=tcp>\r\nContent-Length: 0\r\n\r\n")
    await stream.send_all(invite.encode())
    assert [(await recv()).status for _ in range(2)] == [100, 180]
    cancel = invite.replace("INVITE sip", "CANCEL sip").replace("1 INVITE", "1 CANCEL").replace(
        "Content-Length", "Reason: SIP;cause=600;text=\"Busy Everywhere\"\r\nContent-Length")
    await trio.sleep(2)
    await stream.send_all(cancel.encode())
    got = sorted(((await recv()).status, (await recv()).status))
    assert got == [200, 487]
    await trio.sleep(0.1)
    assert device_events(timeline) == [(0.0, "reported", None), (2.0, "ended", "declinedElsewhere")]
    await stream.aclose()
    for listener in listeners:
        await listener.aclose()


async def test_s15_connection_refused_fails_fast(nursery, autojump_clock) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()  # nothing listens there now: RST
    timeline = Timeline()
    send, receive = trio.open_memory_channel(10)
    device = Device(proxy=f"tcp:127.0.0.1:{port}", user="alice", domain="lab.test", token="a1",
                    pushes=receive, timeline=timeline, register_at_start=False, wall_clock=fresh)
    nursery.start_soon(device.run)
    await send.send(PUSH)
    await trio.sleep(1)
    assert device_events(timeline) == [(0.0, "reported", None), (0.0, "ended", "failed")]


# ------------------------------------------------------------------ --push-url: the NDJSON stream, read in a thread


async def test_push_url_stream_delivers_pushes(nursery) -> None:
    import http.server
    import threading

    from faultlab.cli.device import stream_pushes

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.path == "/devices/ab12/pushes"
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            self.wfile.write(b'{"kind": "call", "payload": {"type": "call", "call-id": "c1", "uuid": "u1"}}\n\n'
                             b'{"type": "cancel", "call-id": "c1", "uuid": "u1"}\n')

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        send, receive = trio.open_memory_channel(10)
        with trio.fail_after(5):
            async with trio.open_nursery() as inner:
                inner.start_soon(stream_pushes, f"http://127.0.0.1:{server.server_address[1]}/devices/ab12/pushes",
                                 send)
                first, second = await receive.receive(), await receive.receive()
                inner.cancel_scope.cancel()
        assert (first.kind, first.payload["call-id"]) == ("call", "c1")
        assert (second.kind, second.payload["uuid"]) == ("cancel", "u1")
    finally:
        server.shutdown()
        server.server_close()


async def test_register_at_start_leaves_the_push_binding_without_device_events(nursery, autojump_clock) -> None:
    sock = trio.socket.socket(type=socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    pbx = Pbx(sock)
    timeline = Timeline()
    device = Device(proxy=f"udp:127.0.0.1:{pbx.port}", user="alice", domain="lab.test", token="ff00",
                    timeline=timeline)

    async def registrar() -> None:
        register = await pbx.recv("REGISTER")
        assert push_params(register.contacts[0])["pn-prid"] == "ff00"
        await pbx.reply(register, 200)

    nursery.start_soon(registrar)
    await nursery.start(device.run)
    assert device.initial_register == 200
    assert [e for e in timeline.events if e.kind == "device"] == []


async def test_a_connection_that_stops_framing_is_given_up_with_a_warning() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    timeline = Timeline()
    device = Device(proxy=f"tcp:127.0.0.1:{port}", user="alice", domain="lab.test", token="a1", timeline=timeline)
    closed = []
    proxy_done = trio.Event()

    async def proxy() -> None:
        async with await listeners[0].accept() as stream:
            assert (await stream.receive_some(65536)).startswith(b"REGISTER ")
            await stream.send_all(b"\x00\x01 not SIP at all\r\n\r\n")
            closed.append(await stream.receive_some(65536))  # b"": the device closed the connection
        proxy_done.set()

    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy)
            await nursery.start(device.run)  # returns with the REGISTER's outcome
            await proxy_done.wait()
            nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    assert device.initial_register.startswith("transport failure")  # the flow was lost under the REGISTER
    assert closed == [b""]
    [warning] = [e for e in timeline.events if e.kind == "warning"]
    assert warning.source == "device:alice" and warning.summary.startswith("unframeable: ")
