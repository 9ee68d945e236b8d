"""TLSSocketStream: TLS driven straight over a real loopback TCP socket, against itself and trio.SSLStream.

Real sockets are the point here (the stream reads and writes the OS socket itself); nothing sleeps.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess

import pytest
import trio
import trio.testing
import trustme

from faultlab.ca import LabCA
from faultlab.net.close import close_in_order, is_reset
from faultlab.net.leantls import TLSSocketStream, is_tls, wrap
from faultlab.net.tls import client_context, server_context

BIG = 1024 * 1024 + 17  # far more than the sending socket buffer (made small below)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.init(tmp_path_factory.mktemp("leantls") / "lab")


@pytest.fixture(params=["TLSv1_2", "TLSv1_3"])
def version(request: pytest.FixtureRequest) -> ssl.TLSVersion:
    return getattr(ssl.TLSVersion, request.param)


@pytest.fixture
def contexts(ca: LabCA, version: ssl.TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = server_context(ca, fallback_names=["127.0.0.1"])
    server.maximum_version = version
    return server, client_context(cafile=ca.cert_path)


async def tcp_pair(small_buffers: bool = False) -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    if small_buffers:
        for stream in (client, server):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return client, server


async def connected(contexts, *, lean_client: bool = True, lean_server: bool = True, name: str = "pbx.example.test",
                    small_buffers: bool = False) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A client and a server TLS stream over loopback TCP, handshaken."""
    server_ctx, client_ctx = contexts
    client_raw, server_raw = await tcp_pair(small_buffers)
    kind = {True: TLSSocketStream, False: trio.SSLStream}
    client = kind[lean_client](client_raw, client_ctx, server_hostname=name)
    server = kind[lean_server](server_raw, server_ctx, server_side=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.do_handshake()
    return client, server


async def receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await stream.receive_some()
        assert data, f"EOF after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


@pytest.mark.parametrize("lean_client, lean_server", [(True, True), (True, False), (False, True)])
async def test_handshake_and_both_directions(contexts, version, lean_client, lean_server) -> None:
    client, server = await connected(contexts, lean_client=lean_client, lean_server=lean_server)
    assert client.version() == server.version() == version.name.replace("_", ".")
    cert = client.getpeercert()
    assert ("DNS", "pbx.example.test") in cert["subjectAltName"]  # the SNI name reached the lab CA's callback
    with trio.fail_after(5):
        for _ in range(3):  # TLS 1.3: the server's session tickets come with its first write
            await client.send_all(b"OPTIONS sip:pbx SIP/2.0\r\n\r\n")
            assert await receive_exactly(server, 27) == b"OPTIONS sip:pbx SIP/2.0\r\n\r\n"
            await server.send_all(b"SIP/2.0 200 OK\r\n\r\n")
            assert await receive_exactly(client, 18) == b"SIP/2.0 200 OK\r\n\r\n"
        await client.aclose()
        assert await server.receive_some() == b""  # close_notify: EOF, not an error
        await server.aclose()


async def test_a_write_larger_than_the_socket_buffers(contexts) -> None:
    client, server = await connected(contexts, small_buffers=True)
    data = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
    sent = trio.Event()

    async def send() -> None:
        await client.send_all(data)
        sent.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()  # the socket took part of it: the rest waits for the peer to read
            assert await receive_exactly(server, len(data)) == data


async def test_concurrent_send_and_receive_on_both_sides(contexts) -> None:
    """Both sides write more than the buffers hold while reading: a write waiting for the socket must not
    hold up the other task's reads (nor mix its bytes with theirs)."""
    client, server = await connected(contexts, small_buffers=True)
    to_server = b"a" * (BIG // 4)
    to_client = b"b" * (BIG // 4 + 5)
    got: dict[str, bytes] = {}

    async def read(name: str, stream: trio.abc.Stream, size: int) -> None:
        got[name] = await receive_exactly(stream, size)

    async def write(stream: trio.abc.Stream, data: bytes) -> None:
        for start in range(0, len(data), len(data) // 3):  # several writes, interleaved with the reads
            await stream.send_all(data[start:start + len(data) // 3])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "server", server, len(to_server))
            nursery.start_soon(read, "client", client, len(to_client))
            nursery.start_soon(write, client, to_server)
            nursery.start_soon(write, server, to_client)
    assert got == {"server": to_server, "client": to_client}


async def test_cancelling_a_pending_receive_leaves_the_stream_usable(contexts) -> None:
    client, server = await connected(contexts)
    with trio.move_on_after(0.05) as waited:
        await server.receive_some()
    assert waited.cancelled_caught
    with trio.fail_after(5):
        await client.send_all(b"REGISTER")
        assert await receive_exactly(server, 8) == b"REGISTER"
        await server.send_all(b"200")
        assert await receive_exactly(client, 3) == b"200"


async def test_a_reset_peer_breaks_the_stream(contexts) -> None:
    client, server = await connected(contexts)
    assert isinstance(client, TLSSocketStream)
    server_raw = server.transport_stream
    server_raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await server_raw.aclose()  # RST
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
        await client.receive_some()
    assert is_reset(info.value)
    await client.aclose()


async def test_writing_to_a_closed_peer_breaks_the_stream(contexts) -> None:
    client, server = await connected(contexts)
    server_raw = server.transport_stream
    server_raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await server_raw.aclose()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first write may still be taken by the kernel
            await client.send_all(b"x" * 65536)
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"more")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()


async def test_closing_the_socket_wakes_a_pending_receive(contexts) -> None:
    client, server = await connected(contexts)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.aclose_forcefully, client.transport_stream)
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some()
    await server.aclose()


@pytest.mark.parametrize("lean_client", [True, False])
async def test_an_untrusted_certificate_fails_the_handshake_as_before(lean_client) -> None:
    other = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.issue_cert("pbx.example.test").configure_cert(server_ctx)
    client_raw, server_raw = await tcp_pair()
    kind = TLSSocketStream if lean_client else trio.SSLStream
    client = kind(client_raw, client_context(), server_hostname="pbx.example.test")
    server = TLSSocketStream(server_raw, server_ctx, server_side=True)
    errors: list[BaseException] = []

    async def serve() -> None:
        try:
            await server.do_handshake()
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.do_handshake()
            await client.aclose()
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert len(errors) == 1 and isinstance(errors[0].__cause__, ssl.SSLError)  # the client's alert
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    await server.aclose()


async def test_a_peer_that_closes_during_the_handshake(contexts) -> None:
    server_ctx, _ = contexts
    client_raw, server_raw = await tcp_pair()
    server = TLSSocketStream(server_raw, server_ctx, server_side=True)
    await client_raw.send_all(b"\x16\x03\x01\x00")  # the start of a ClientHello, then FIN
    await client_raw.send_eof()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    await server.aclose()
    await client_raw.aclose()


async def test_close_in_order_sends_close_notify_then_fin(contexts) -> None:
    client, server = await connected(contexts, lean_server=False)
    with trio.fail_after(5):
        await server.send_all(b"unread")  # left for the drain
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_in_order, client)
            assert await server.receive_some() == b""  # close_notify
            await server.aclose()
    assert client.transport_stream.raw.socket.fileno() == -1  # closed after the peer's FIN


async def test_unwrap_returns_the_socket(contexts) -> None:
    client, server = await connected(contexts, lean_server=False)
    server_raw = server.transport_stream
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.unwrap)
            raw, trailing = await client.unwrap()
    assert raw is client.transport_stream and trailing == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()
    await raw.send_all(b"plain")  # the socket goes on without TLS
    assert await server_raw.receive_some() == b"plain"
    await raw.aclose()
    await server_raw.aclose()


async def test_wrap_is_lean_only_on_a_real_socket(contexts) -> None:
    server_ctx, client_ctx = contexts
    client_raw, server_raw = await tcp_pair()
    lean = wrap(client_raw, client_ctx, server_hostname="127.0.0.1")
    memory = wrap(trio.testing.memory_stream_pair()[0], server_ctx, server_side=True)
    assert isinstance(lean, TLSSocketStream) and isinstance(memory, trio.SSLStream)
    assert is_tls(lean) and is_tls(memory) and not is_tls(client_raw)
    names = [kind(client_raw, client_ctx, server_hostname="bücher.example").server_hostname
             for kind in (TLSSocketStream, trio.SSLStream)]
    assert names == ["xn--bcher-kva.example"] * 2  # the same SNI name and host name check (IDNA 2008)
    with pytest.raises(TypeError):
        TLSSocketStream(trio.testing.memory_stream_pair()[0], client_ctx)  # type: ignore[arg-type]
    await client_raw.aclose()
    await server_raw.aclose()


async def test_concurrent_receives_or_sends_are_refused(contexts) -> None:
    client, server = await connected(contexts)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.receive_some()
            await server.send_all(b"x")
    await client.aclose()
    await server.aclose()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program (Debian package openssl)")
async def test_a_key_update_the_peer_requests_is_answered(ca: LabCA) -> None:
    """TLS 1.3: openssl s_client's "K" sends a KeyUpdate asking for ours; the stream reads on under the peer's new
    keys, answers with its own KeyUpdate (OpenSSL sends it with the next write) and s_client decrypts the reply."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-CAfile", str(ca.cert_path)]
    got, out = bytearray(), bytearray()

    async def until(stream: trio.abc.ReceiveStream, buffer: bytearray, wanted: bytes) -> None:
        while wanted not in buffer:
            data = await stream.receive_some()
            assert data, f"EOF before {wanted!r}: {bytes(buffer)[-300:]!r}"
            buffer += data

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(lambda task_status: trio.run_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                task_status=task_status))
            server = TLSSocketStream(await listener.accept(), server_context(ca, fallback_names=["127.0.0.1"]),
                                     server_side=True)
            await server.do_handshake()
            await proc.stdin.send_all(b"before\n")
            await until(server, got, b"before\n")
            await proc.stdin.send_all(b"K\n")
            await until(proc.stdout, out, b"KEYUPDATE")
            await proc.stdin.send_all(b"after\n")
            await until(server, got, b"after\n")
            await server.send_all(b"reply under the new keys\n")
            await until(proc.stdout, out, b"reply under the new keys\n")
            await proc.stdin.aclose()  # s_client quits
            await server.aclose()
    await listener.aclose()
    assert got == b"before\nafter\n"


async def test_a_close_behind_a_blocked_write_waits_its_turn(contexts) -> None:
    """close_notify queued while a write waits for the socket goes out after that write's bytes, not into them."""
    client, server = await connected(contexts, small_buffers=True)
    data = b"m" * BIG

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, data)
            await trio.testing.wait_all_tasks_blocked()  # the write waits for the peer to read
            nursery.start_soon(client.aclose)
            await trio.testing.wait_all_tasks_blocked()
            assert await receive_exactly(server, len(data)) == data
            assert await server.receive_some() == b""  # then the close_notify
    await server.aclose()
