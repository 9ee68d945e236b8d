"""faultlab.net.hep.HepSender on real loopback sockets: HEP reaches a collector over UDP and TCP, and a collector
that is gone, slow or refuses costs the caller nothing but dropped, counted packets and one warning a minute."""

from __future__ import annotations

import socket
import struct

import pytest

from faultlab.net.hep import HepSender
from faultlab.trace.hep import HepTarget, decode, encode


def packet(n: int, size: int = 200) -> bytes:
    out = encode(b"OPTIONS sip:x SIP/2.0\r\n" + b"x" * size, src=("10.0.0.7", 5060), dst=("10.0.0.1", 5060),
                 transport="udp", when=float(n), correlation=f"call-{n}")
    assert out is not None
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_stream(conn: socket.socket, count: int) -> list[bytes]:
    """``count`` HEP packets off a stream, delimited by their length field (as heplify-server reads them)."""
    data, out = b"", []
    conn.settimeout(5)
    while len(out) < count:
        while len(data) >= 6 and len(data) >= struct.unpack("!H", data[4:6])[0]:
            size = struct.unpack("!H", data[4:6])[0]
            out.append(data[:size])
            data = data[size:]
        if len(out) < count:
            chunk = conn.recv(65536)
            assert chunk, f"the connection closed after {len(out)} packets"
            data += chunk
    return out


def test_udp_packets_reach_the_collector_whole():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        sender = HepSender(HepTarget("udp", "127.0.0.1", collector.getsockname()[1]))
        for n in range(20):
            sender.send(packet(n))
        got = [decode(collector.recv(65536)).correlation for _ in range(20)]
        sender.close()
    assert got == [f"call-{n}" for n in range(20)] and sender.sent == 20 and not sender.dropped


def test_udp_to_nobody_drops_counts_and_warns_once_a_minute():
    clock, said = Clock(), []
    sender = HepSender(HepTarget("udp", "127.0.0.1", free_port(socket.SOCK_DGRAM)), warn=said.append,
                       clock=clock)
    for n in range(50):  # the kernel reports the refusal of one datagram on the next send
        sender.send(packet(n))
    refused = sender.dropped["collector refused (nothing listens there)"]
    assert refused >= 20 and sender.sent + refused == 50
    assert len(said) == 1 and "packets dropped (collector refused" in said[0]
    clock.now = 61.0
    for n in range(4):
        sender.send(packet(n))
    assert len(said) == 2
    sender.close()
    assert "dropped" in said[-1] and "sent" in said[-1]  # the summary at the end


def test_tcp_packets_arrive_back_to_back_on_one_connection():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(5)
        sender = HepSender(HepTarget("tcp", "127.0.0.1", server.getsockname()[1]))
        sender.send(packet(0))  # starts connecting; queued until the connection is up
        conn, _ = server.accept()
        with conn:
            for n in range(1, 100):
                sender.send(packet(n, size=n * 37))
            sender.close()
            got = read_stream(conn, 100)
    assert [decode(p).correlation for p in got] == [f"call-{n}" for n in range(100)]
    assert sender.sent == 100 and not sender.dropped


def test_tcp_to_a_collector_that_never_reads_fills_a_bounded_buffer_then_drops():
    clock, said = Clock(), []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(5)
        sender = HepSender(HepTarget("tcp", "127.0.0.1", server.getsockname()[1]), buffer=256 * 1024,
                           warn=said.append, clock=clock)
        sender.send(packet(0))  # connects
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for n in range(1, 20_000):  # ~4.5 MB: more than the kernel's buffers and faultlab's together
                sender.send(packet(n))
            assert sender.dropped["collector slow or unreachable: buffer full"] > 0
            assert sender._queued <= 256 * 1024
            assert len(said) == 1
            sender.close(linger=0.0)
    assert sender.sent + sum(sender.dropped.values()) == 20_000


def test_tcp_to_nobody_retries_later_and_delivers_once_the_collector_is_there():
    clock, said = Clock(), []
    port = free_port(socket.SOCK_STREAM)
    sender = HepSender(HepTarget("tcp", "127.0.0.1", port), warn=said.append, clock=clock, retry=5.0)
    sender.send(packet(0))
    sender.send(packet(1))  # the refusal is seen here: connection failed, packets wait
    assert said and "ECONNREFUSED" in said[0] and sender.sent == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        sender.send(packet(2))  # before the retry is due: queued, no connection attempt
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
        clock.now = 5.0
        sender.send(packet(3))
        server.settimeout(5)
        conn, _ = server.accept()
        with conn:
            sender.close()
            got = read_stream(conn, 4)
    assert [decode(p).correlation for p in got] == [f"call-{n}" for n in range(4)]


def test_a_host_that_does_not_resolve_is_refused_at_start(monkeypatch):
    def unknown(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(ValueError, match="cannot resolve 'homer.example'.*Name or service not known"):
        HepSender(HepTarget("udp", "homer.example", 9060))


def test_after_a_refusal_messages_are_dropped_unencoded_for_a_second_then_tried_again(monkeypatch):
    from faultlab.trace import Event

    clock = Clock()
    sender = HepSender(HepTarget("udp", "127.0.0.1", free_port(socket.SOCK_DGRAM)), clock=clock)
    encoded = []
    real = sender.encoder.packets
    monkeypatch.setattr(sender.encoder, "packets", lambda e: encoded.append(e) or real(e))
    message = Event(1.0, "received", flow="u1", direction="to-pbx", transport="udp", peer="10.0.0.7:5060",
                    call_id="c1", raw=b"OPTIONS sip:x SIP/2.0\r\n\r\n")
    for _ in range(3):  # the second send sees the first one's refusal
        sender(message)
    assert len(encoded) == 2 and sender.dropped["collector refused (nothing listens there)"] == 2
    sender(Event(1.0, "flow-open", flow="u2", transport="udp", peer="10.0.0.8:5060"))  # learnt, not dropped
    assert len(encoded) == 3 and sum(sender.dropped.values()) == 2
    clock.now = 1.0
    sender(message)
    assert len(encoded) == 4  # tried again
    sender.close()


def test_attached_to_a_trace_a_refusing_collector_means_no_events_are_built_for_it_but_all_are_counted():
    from faultlab.trace import Event, Trace

    clock, said = Clock(), []
    trace = Trace(keep=0)
    sender = HepSender(HepTarget("udp", "127.0.0.1", free_port(socket.SOCK_DGRAM)), clock=clock, warn=said.append)
    sender.attach(trace)
    built = 0
    for n in range(10):  # as the relay does: build the event only when the trace wants it
        if trace.wants("received"):
            built += 1
            trace.emit(Event(float(n), "received", flow="u1", direction="to-pbx", transport="udp",
                             peer="10.0.0.7:5060", call_id=f"c{n}", raw=b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    assert built == 2  # the second send saw the refusal: nothing built for it afterwards
    assert trace.wants("flow-open")  # addresses are still learnt while paused
    trace.close()
    assert sender.sent + sum(sender.dropped.values()) == 10
    assert "10 dropped" in said[-1] or f"{10 - sender.sent} dropped" in said[-1]


async def test_keep_sending_delivers_what_waits_once_the_collector_is_back_without_another_message(autojump_clock):
    """TCP, a collector that was down: the packets queued meanwhile go out when it is back, although no further
    message comes to push them (keep_sending, beside the proxy)."""
    import trio
    import trio.testing

    from faultlab.net.hep import keep_sending

    clock = Clock()
    port = free_port(socket.SOCK_STREAM)
    sender = HepSender(HepTarget("tcp", "127.0.0.1", port), clock=clock, retry=5.0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_sending, sender)
            await trio.testing.wait_all_tasks_blocked()
            sender.send(packet(0))  # refused: queued, next try in 5 s
            assert sender.pending and sender.sent == 0
            server.bind(("127.0.0.1", port))
            server.listen()
            clock.now = 5.0  # the retry is due; nothing more is sent
            for _ in range(100):  # keep_sending's pauses pass at once in virtual time; the kernel's part is real
                if not sender.pending:
                    break
                await trio.sleep(0.1)
                await trio.to_thread.run_sync(lambda: None)
            nursery.cancel_scope.cancel()
        server.settimeout(5)
        conn, _ = server.accept()
        with conn:
            got = read_stream(conn, 1)
        sender.close()
    assert decode(got[0]).correlation == "call-0" and sender.sent == 1
