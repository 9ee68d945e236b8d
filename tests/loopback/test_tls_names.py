"""Which names TLS uses on each side of `faultlab proxy`.

* Toward the PBX, ``--upstream-tls-name`` is the name its certificate is checked against: a PBX reached by IP
  whose certificate names a host fails with "IP address mismatch" without it.
* Toward the device, a listener on a wildcard address (0.0.0.0) puts the address the device connected to on the
  certificate, so a phone dialling that address verifies it (it sends no SNI for an IP address).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import trio
from cryptography import x509
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.addr import parse_endpoint
from faultlab.proxy import Proxy, ProxyConfig, serve_proxy
from tests.loopback.test_tls_upstream import tls_pbx

OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.2;branch=z9hG4bKa\r\n"
           b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


async def start(nursery: trio.Nursery, tmp_path: Path, listen: str, **config: object) -> tuple[Proxy, trio.Event]:
    """A TLS PBX on 127.0.0.1 whose certificate names pbx.lab.test only, and faultlab relaying to it by IP."""
    port, ca_file, got = await tls_pbx(nursery, tmp_path, "pbx.lab.test")
    proxy = await nursery.start(serve_proxy, ProxyConfig(
        listen=[parse_endpoint(listen)], upstream=[parse_endpoint(f"tls:127.0.0.1:{port}")],
        upstream_ca=ca_file, confdir=tmp_path / "fl", **config))
    return proxy, got


async def device(proxy: Proxy, name: str) -> trio.SSLStream[trio.SocketStream]:
    """A device that trusts the lab CA, connects to 127.0.0.1 and checks ``name``."""
    port = proxy.bound["tls"][1]
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert_path))
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=name)
    with trio.fail_after(10):
        await stream.do_handshake()
    return stream


async def closed_by_faultlab(stream: trio.SSLStream[trio.SocketStream]) -> bool:
    with trio.fail_after(10):
        try:
            return await stream.receive_some() == b""
        except trio.BrokenResourceError:
            return True


async def test_pbx_by_ip_with_a_named_certificate_fails_without_upstream_tls_name(nursery, tmp_path) -> None:
    proxy, got = await start(nursery, tmp_path, "tls:127.0.0.1:0")
    stream = await device(proxy, "127.0.0.1")
    await stream.send_all(OPTIONS)
    assert await closed_by_faultlab(stream)
    assert not got.is_set()
    warning = next(e for e in proxy.events if e.kind == "warning")
    assert "IP address mismatch" in warning.detail["message"]


async def test_upstream_tls_name_verifies_the_pbx_by_that_name(nursery, tmp_path) -> None:
    proxy, got = await start(nursery, tmp_path, "tls:127.0.0.1:0", upstream_tls_name="pbx.lab.test")
    stream = await device(proxy, "127.0.0.1")
    await stream.send_all(OPTIONS)
    with trio.fail_after(10):
        await got.wait()


async def test_wildcard_listener_names_the_address_the_device_dialled(nursery, tmp_path) -> None:
    proxy, _ = await start(nursery, tmp_path, "tls:0.0.0.0:0", upstream_tls_name="pbx.lab.test")
    stream = await device(proxy, "127.0.0.1")  # verified: the handshake checks the IP
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    await stream.aclose()


def test_upstream_tls_name_without_tls_to_the_pbx_is_refused() -> None:
    result = CliRunner().invoke(app, ["proxy", "-l", "udp:127.0.0.1:0", "-u", "udp:127.0.0.1:5060",
                                      "--upstream-tls-name", "pbx.lab.test"])
    assert result.exit_code == 2, result.output
    assert "--upstream-tls-name is for TLS to the PBX" in result.output


def test_upstream_tls_name_must_be_a_name() -> None:
    result = CliRunner().invoke(app, ["proxy", "-l", "tls:127.0.0.1:0", "-u", "tls:127.0.0.1:5061",
                                      "--upstream-tls-name", "not a name"])
    assert result.exit_code == 2, result.output
    assert "not a DNS name or IP address" in result.output and "Traceback" not in result.output
