"""faultlab.net.memnet: UDP and TCP in memory behave as the relay and the lab actors expect of real sockets."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from faultlab.net import memnet
from faultlab.net.udp import Datagrams


async def test_udp_delivers_with_the_senders_address():
    net = memnet.install()
    a, b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM), trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await b.bind(("127.0.0.1", 5060))
    await a.sendto(b"hello", ("127.0.0.1", 5060))
    data, source = await b.recvfrom(100)
    assert data == b"hello" and source == a.getsockname() and source[0] == "127.0.0.1" and source[1] > 0
    await b.sendto(b"back", source)
    assert await a.recvfrom(100) == (b"back", ("127.0.0.1", 5060))
    # nobody bound there: gone, and counted
    await a.sendto(b"lost", ("127.0.0.1", 5999))
    assert net.undelivered == 1


async def test_connected_udp_receives_only_from_its_peer():
    memnet.install()
    server = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await server.bind(("10.0.0.1", 5060))
    flow = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await flow.connect(("10.0.0.1", 5060))
    other = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await other.sendto(b"stranger", flow.getsockname())
    await server.sendto(b"peer", flow.getsockname())
    assert await flow.recv(100) == b"peer"
    assert not flow.is_readable()


async def test_bind_conflicts_and_wildcard():
    memnet.install()
    a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await a.bind(("0.0.0.0", 7000))
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(OSError, match="in use"):
        await b.bind(("127.0.0.1", 7000))
    await b.sendto(b"x", ("192.0.2.9", 7000))  # the wildcard binding takes any address on its port
    assert (await a.recvfrom(10))[0] == b"x"
    a.close()
    c = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await c.bind(("127.0.0.1", 7000))  # free again once closed


async def test_tcp_stream_listener_eof_and_refused():
    memnet.install()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", 5061)  # nothing listens
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    assert server.socket.getpeername() == client.socket.getsockname()
    assert server.socket.getsockname() == client.socket.getpeername() == ("127.0.0.1", port)
    await client.send_all(b"INVITE")
    await client.send_all(b" sip:bob")
    assert await server.receive_some(100) == b"INVITE sip:bob"
    await client.send_eof()
    assert await server.receive_some(100) == b""
    await server.send_all(b"still open that way")
    assert await client.receive_some(100) == b"still open that way"
    await server.aclose()
    assert await client.receive_some(100) == b""


async def test_tcp_close_with_linger_zero_is_a_reset():
    memnet.install()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server = await listener.accept()
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    with pytest.raises(trio.BrokenResourceError) as info:
        await server.receive_some(100)
    assert isinstance(info.value.__cause__, ConnectionResetError)


async def test_tls_over_memory_tcp(tmp_path):
    from faultlab.ca import LabCA
    from faultlab.net.tls import client_context, server_context

    memnet.install()
    ca = LabCA.load_or_init(tmp_path)
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]

    async def serve() -> None:
        conn = trio.SSLStream(await listener.accept(), server_context(ca, fallback_names=["127.0.0.1"]),
                              server_side=True)
        await conn.send_all((await conn.receive_some(100)).upper())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), client_context(cafile=ca.cert_path),
                             server_hostname="127.0.0.1")
        await tls.send_all(b"register")
        assert await tls.receive_some(100) == b"REGISTER"


async def test_names_do_not_resolve_except_localhost():
    memnet.install()
    with pytest.raises(socket.gaierror, match="only numeric"):
        await trio.socket.getaddrinfo("pbx.example.com", 5060)
    [info] = await trio.socket.getaddrinfo("localhost", 5060, type=socket.SOCK_DGRAM)
    assert info[4] == ("127.0.0.1", 5060)


async def test_relay_datagrams_use_the_memory_network():
    memnet.install()
    listener = Datagrams(socket.AF_INET)
    listener.sock.bind(("127.0.0.1", 0))
    peer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(20):
        await peer.sendto(b"m%d" % i, listener.sock.getsockname())
    first = await listener.receive_batch()
    second = await listener.receive_batch()
    assert [d for d, _ in first + second] == [b"m%d" % i for i in range(20)]
    await listener.sendto(b"reply", peer.getsockname())
    assert (await peer.recvfrom(10))[0] == b"reply"


def test_outside_a_run_there_is_no_memory_network():
    assert memnet.current() is None


async def test_install_is_per_run_and_nothing_before_it():
    assert memnet.current() is None
    net = memnet.install()
    assert memnet.current() is net


async def test_data_sent_before_a_reset_is_read_first():
    memnet.install()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server = await listener.accept()
    await client.send_all(b"200 OK")
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    assert await server.receive_some(100) == b"200 OK"
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some(100)


async def test_a_send_to_a_closed_peer_is_taken_then_the_connection_is_reset():
    memnet.install()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server = await listener.accept()
    await server.aclose()
    await client.send_all(b"BYE")  # the kernel takes it; the peer answers RST
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"BYE again")


async def test_connected_udp_to_nobody_is_refused_on_the_next_receive():
    memnet.install()
    flow = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await flow.connect(("127.0.0.1", 5999))
    await flow.send(b"REGISTER")
    with pytest.raises(ConnectionRefusedError):
        await flow.recv(100)
    raw = Datagrams(socket.AF_INET)
    raw.sock.connect(("127.0.0.1", 5998))
    await raw.send(b"INVITE")
    with pytest.raises(ConnectionRefusedError):
        await raw.receive_batch()


async def test_closing_a_listener_resets_connections_it_never_accepted():
    memnet.install()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    await listener.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some(100)


async def test_an_address_that_leaves_cuts_its_sockets_off_without_a_word():
    """A phone leaves Wi-Fi: its sockets on that address can send nothing, what comes to them is lost, and its TCP
    peer hears nothing (no FIN on close, no RST); the address can be bound again afterwards."""
    net = memnet.install()
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.11")
    server = await listener.accept()
    assert server.socket.getpeername()[0] == "127.0.0.11"
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await udp.bind(("127.0.0.11", 5070))
    other = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await other.bind(("127.0.0.1", 5071))

    assert net.remove_address("127.0.0.11") == 2
    assert net.remove_address("127.0.0.11") == 0  # nothing left there
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"REGISTER")
    with pytest.raises(OSError):
        await udp.sendto(b"REGISTER", ("127.0.0.1", 5071))
    undelivered = net.undelivered
    await other.sendto(b"INVITE", ("127.0.0.11", 5070))
    assert net.undelivered == undelivered + 1 and not udp.is_readable()
    await server.send_all(b"INVITE")  # taken, and lost: no RST comes back
    await server.send_all(b"INVITE again")
    await client.aclose()
    assert not server.socket.is_readable()  # no FIN either: the server's side learns nothing
    again = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await again.bind(("127.0.0.11", 5070))  # the address may come back


async def test_a_delay_carries_datagrams_connections_and_bytes_one_way_in_order(autojump_clock):
    memnet.install(memnet.MemoryNetwork(delay=0.02))
    a, b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM), trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await b.bind(("127.0.0.1", 5060))
    sent = trio.current_time()
    await a.sendto(b"one", ("127.0.0.1", 5060))
    await a.sendto(b"two", ("127.0.0.1", 5060))
    assert not b.is_readable()  # still on the way
    assert (await b.recvfrom(100))[0] == b"one"
    assert trio.current_time() - sent == pytest.approx(0.02)
    assert (await b.recvfrom(100))[0] == b"two"

    [listener] = await trio.open_tcp_listeners(5070, host="127.0.0.1")
    began = trio.current_time()
    client = await trio.open_tcp_stream("127.0.0.1", 5070)
    assert trio.current_time() - began == pytest.approx(0.04)  # the handshake takes a round trip
    server = await listener.accept()
    sent = trio.current_time()
    await client.send_all(b"abc")
    await client.aclose()  # the FIN follows the bytes: it cannot overtake them
    assert await server.receive_some(100) == b"abc"
    assert trio.current_time() - sent == pytest.approx(0.02)
    assert await server.receive_some(100) == b""


def test_a_delay_is_bounded():
    for bad in (-1.0, float("nan"), 61.0):
        with pytest.raises(ValueError, match="0 to 60 seconds"):
            memnet.MemoryNetwork(delay=bad)
