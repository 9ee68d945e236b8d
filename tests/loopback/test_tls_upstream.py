"""TLS toward the PBX: verified by the upstream's host name, refused when the
certificate does not match, accepted only when insecure is asked for."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from faultlab.addr import parse_endpoint
from faultlab.proxy import ProxyConfig, serve_proxy

OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.2;branch=z9hG4bKa\r\n"
           b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


async def tls_pbx(nursery: trio.Nursery, tmp_path: Path, cert_name: str) -> tuple[int, Path, trio.Event]:
    """A TLS "PBX" on 127.0.0.1 whose certificate (from its own CA) names ``cert_name``: its port, the CA file,
    and an event set when an OPTIONS reaches it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_name).configure_cert(server_ctx)
    ca_file = tmp_path / "pbx-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    got = trio.Event()

    async def pbx(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        try:
            if b"OPTIONS" in await tls.receive_some():
                got.set()
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, pbx, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], ca_file, got


async def run_case(nursery, tmp_path, cert_name, **config):
    port, ca_file, got = await tls_pbx(nursery, tmp_path, cert_name)
    if not config.get("upstream_insecure"):
        config["upstream_ca"] = ca_file
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint("tls:127.0.0.1:0")],
        upstream=[parse_endpoint(f"tls:localhost:{port}")],
        confdir=tmp_path / "fl", **config))
    device_ctx = ssl.create_default_context(cafile=str(proxy.ca_cert_path))
    stream = trio.SSLStream(await trio.open_tcp_stream(*proxy.bound["tls"]), device_ctx,
                            server_hostname="pbx.lab.test")
    with trio.fail_after(10):
        await stream.send_all(OPTIONS)
        closed = False
        with trio.move_on_after(5) as waited:
            try:
                closed = await stream.receive_some() == b""
            except trio.BrokenResourceError:
                closed = True
    return proxy, got, closed


async def test_upstream_verified_by_host_name(nursery, tmp_path):
    proxy, got, _ = await run_case(nursery, tmp_path, "localhost")
    with trio.fail_after(5):
        await got.wait()


async def test_wrong_upstream_certificate_closes_the_device_connection(nursery, tmp_path):
    proxy, got, closed = await run_case(nursery, tmp_path, "other.test")
    assert closed and not got.is_set()
    warning = next(e for e in proxy.events if e.kind == "warning")
    assert "cannot connect to upstream tls:localhost" in warning.detail["message"]
    assert "CERTIFICATE_VERIFY_FAILED" in warning.detail["message"]


async def test_upstream_insecure_accepts_any_certificate(nursery, tmp_path):
    proxy, got, _ = await run_case(nursery, tmp_path, "other.test", upstream_insecure=True)
    with trio.fail_after(5):
        await got.wait()
