"""TLS contexts: lab-CA certificates per SNI name, fallback names, client verification.

Handshakes run over trio memory streams (and once over loopback TCP), with real
OpenSSL on both sides. Nothing sleeps.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from faultlab.ca import LabCA
from faultlab.net.tls import (
    DEFAULT_FALLBACK_NAMES,
    TLSConfigError,
    certificate_names,
    client_context,
    server_context,
)

# -- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.init(tmp_path_factory.mktemp("tls") / "lab")


@pytest.fixture
def lab_client(ca: LabCA) -> ssl.SSLContext:
    """A device that trusts the lab CA (and checks host names)."""
    return client_context(cafile=ca.cert_path)


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


class Handshake:
    def __init__(self) -> None:
        self.client: trio.SSLStream[trio.abc.Stream] | None = None
        self.server: trio.SSLStream[trio.abc.Stream] | None = None
        self.server_error: BaseException | None = None

    @property
    def peer_cert(self) -> x509.Certificate:
        assert self.client is not None
        der = self.client.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


async def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str | None,
    *,
    lockstep: bool = False,
) -> Handshake:
    """Handshake both sides over an in-memory stream pair; the client's error propagates,
    the server's is recorded."""
    pair = trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    client_raw, server_raw = pair
    result = Handshake()
    client = trio.SSLStream(client_raw, client_ctx, server_hostname=server_hostname)
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)

    async def serve() -> None:
        try:
            await server.do_handshake()
            result.server = server
            await server.send_all(b"SIP/2.0 200 OK\r\n\r\n")
        except trio.BrokenResourceError as exc:
            result.server_error = exc
            await server_raw.aclose()  # as a server would: the client sees the connection end

    client_error: trio.BrokenResourceError | None = None
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                await client.do_handshake()
                assert await client.receive_some() == b"SIP/2.0 200 OK\r\n\r\n"
                result.client = client
            except trio.BrokenResourceError as exc:
                client_error = exc
                await client_raw.aclose()  # unblock the server
    if client_error is not None:
        raise client_error
    return result


def common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def san_names(cert: x509.Certificate) -> list[str]:
    """The names in subjectAltName, each once (an IP address is there as an IP and as a DNS entry)."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(dict.fromkeys(str(n.value) for n in san))


def load_leaf(ca: LabCA, names: list[str], tmp_path: Path) -> ssl.SSLContext:
    """A plain server context holding ``ca.issue_leaf(names)``: tests the leaf alone."""
    cert_pem, key_pem = ca.issue_leaf(names)
    (tmp_path / "leaf.crt").write_bytes(cert_pem)
    (tmp_path / "leaf.key").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    return ctx


# -- lab CA leaves verify with Python's ssl -----------------------------------------------


@pytest.mark.parametrize("name", ["pbx.example.test", "192.0.2.10", "2001:db8::10"])
async def test_leaf_verifies_against_the_lab_ca(
    ca: LabCA, lab_client: ssl.SSLContext, tmp_path: Path, name: str
) -> None:
    hs = await handshake(load_leaf(ca, [name], tmp_path), lab_client, name)
    assert hs.client is not None and hs.server_error is None
    assert san_names(hs.peer_cert) == [name]


async def test_leaf_for_another_name_fails_the_host_name_check(
    ca: LabCA, lab_client: ssl.SSLContext, tmp_path: Path
) -> None:
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake(load_leaf(ca, ["192.0.2.10"], tmp_path), lab_client, "192.0.2.11")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(info.value.__cause__)


# -- server_context: SNI and fallback names ------------------------------------------------


async def test_sni_name_gets_its_own_certificate(ca: LabCA, lab_client: ssl.SSLContext) -> None:
    ctx = server_context(ca, fallback_names=["192.0.2.10"])
    hs = await handshake(ctx, lab_client, "pbx.example.test")
    assert common_name(hs.peer_cert) == "pbx.example.test"
    # The configured names stay in the certificate, after the SNI name.
    assert san_names(hs.peer_cert) == ["pbx.example.test", "192.0.2.10"]
    hs = await handshake(ctx, lab_client, "sip.other.test")
    assert common_name(hs.peer_cert) == "sip.other.test"


async def test_sni_name_is_normalized(ca: LabCA, lab_client: ssl.SSLContext) -> None:
    hs = await handshake(server_context(ca), lab_client, "PBX.Example.Test")
    assert common_name(hs.peer_cert) == "pbx.example.test"


async def test_no_sni_gets_the_fallback_names(ca: LabCA) -> None:
    """A phone connecting by IP sends no SNI: it gets the configured names."""
    client = client_context(cafile=ca.cert_path)
    client.check_hostname = False
    ctx = server_context(ca, default_name="sip.lab.test", fallback_names=["192.0.2.10", "2001:db8::10"])
    hs = await handshake(ctx, client, None)
    assert common_name(hs.peer_cert) == "sip.lab.test"
    assert san_names(hs.peer_cert) == ["sip.lab.test", "192.0.2.10", "2001:db8::10"]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_connecting_by_ip_verifies_the_fallback_ip(ca: LabCA, lab_client: ssl.SSLContext, address: str) -> None:
    # server_hostname is an IP literal: Python sends no SNI and checks the IP SAN.
    hs = await handshake(server_context(ca, fallback_names=["127.0.0.1", "::1"]), lab_client, address)
    assert common_name(hs.peer_cert) == "127.0.0.1"
    assert ipaddress.ip_address(address) in [
        n.value
        for n in hs.peer_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if isinstance(n, x509.IPAddress)
    ]


async def test_default_fallback_names(ca: LabCA, lab_client: ssl.SSLContext) -> None:
    hs = await handshake(server_context(ca), lab_client, "localhost")
    assert san_names(hs.peer_cert) == list(DEFAULT_FALLBACK_NAMES)


async def test_tls_name_and_sni_both_in_the_certificate(ca: LabCA, lab_client: ssl.SSLContext) -> None:
    """RFC 5922: a client may connect to the SRV target yet check the SIP domain."""
    ctx = server_context(ca, default_name="example.test")
    hs = await handshake(ctx, lab_client, "sip1.example.test")
    assert san_names(hs.peer_cert) == ["sip1.example.test", "example.test"]
    hs = await handshake(ctx, lab_client, "example.test")
    assert san_names(hs.peer_cert) == ["example.test"]


async def test_unusable_sni_name_falls_back(ca: LabCA) -> None:
    client = client_context(cafile=ca.cert_path)
    client.check_hostname = False
    hs = await handshake(server_context(ca, default_name="sip.lab.test"), client, "bad_label-.test")
    assert san_names(hs.peer_cert) == ["sip.lab.test"]


async def test_handshake_over_lockstep_stream(ca: LabCA, lab_client: ssl.SSLContext) -> None:
    hs = await handshake(server_context(ca), lab_client, "pbx.example.test", lockstep=True)
    assert common_name(hs.peer_cert) == "pbx.example.test"


async def test_handshake_over_loopback_tcp(ca: LabCA, lab_client: ssl.SSLContext) -> None:
    ctx = server_context(ca, fallback_names=["127.0.0.1"])
    received: list[bytes] = []

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        received.append(await stream.receive_some())
        await stream.send_all(b"SIP/2.0 200 OK\r\n\r\n")
        await stream.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_ssl_over_tcp, handler, 0, ctx, host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            for server_hostname in ("127.0.0.1", "pbx.example.test"):
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
                client = trio.SSLStream(tcp, lab_client, server_hostname=server_hostname)
                await client.send_all(b"OPTIONS sip:pbx SIP/2.0\r\n\r\n")
                assert await client.receive_some() == b"SIP/2.0 200 OK\r\n\r\n"
                der = client.getpeercert(binary_form=True)
                assert der is not None
                assert common_name(x509.load_der_x509_certificate(der)) == server_hostname
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert received == [b"OPTIONS sip:pbx SIP/2.0\r\n\r\n"] * 2


def test_server_context_settings(ca: LabCA) -> None:
    ctx = server_context(ca)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE  # no client certificate required


async def test_certificate_failure_ends_the_handshake_with_an_alert(
    ca: LabCA, lab_client: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = server_context(ca)

    def broken(names: object) -> tuple[bytes, bytes]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ca, "issue_leaf", broken)
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake(ctx, lab_client, "pbx.example.test")
    assert "cannot issue a TLS certificate for SNI name 'pbx.example.test'" in caplog.text


def test_server_context_rejects_bad_configured_names(ca: LabCA) -> None:
    with pytest.raises(TLSConfigError, match="not a DNS name or IP address: 'not a name'"):
        server_context(ca, default_name="not a name")
    with pytest.raises(TypeError):
        server_context(ca, fallback_names="192.0.2.1")


def test_certificate_names() -> None:
    configured = ("sip.lab.test", "192.0.2.10")
    assert certificate_names(None, configured) == configured
    assert certificate_names("", configured) == configured
    assert certificate_names("PBX.test", configured) == ("pbx.test", *configured)
    assert certificate_names("192.0.2.10", configured) == ("192.0.2.10", "sip.lab.test")
    assert certificate_names("no spaces allowed", configured) == configured


# -- client_context --------------------------------------------------------------------------


def trustme_server(other_ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other_ca.issue_cert(name).configure_cert(ctx)
    return ctx


async def test_client_rejects_an_untrusted_server(other_ca: trustme.CA) -> None:
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake(trustme_server(other_ca, "pbx.example.test"), client_context(), "pbx.example.test")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_client_with_cafile_trusts_that_ca(other_ca: trustme.CA, tmp_path: Path) -> None:
    cafile = tmp_path / "pbx-ca.pem"
    other_ca.cert_pem.write_to_path(str(cafile))
    client = client_context(cafile=cafile)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    hs = await handshake(trustme_server(other_ca, "pbx.example.test"), client, "pbx.example.test")
    assert hs.client is not None
    # ... and only that CA: a server from another CA is refused.
    with pytest.raises(trio.BrokenResourceError):
        await handshake(trustme_server(trustme.CA(), "pbx.example.test"), client, "pbx.example.test")


async def test_client_with_cafile_checks_the_host_name(other_ca: trustme.CA, tmp_path: Path) -> None:
    cafile = tmp_path / "pbx-ca.pem"
    other_ca.cert_pem.write_to_path(str(cafile))
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake(trustme_server(other_ca, "pbx.example.test"), client_context(cafile=cafile), "evil.test")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_client_insecure_accepts_anything(other_ca: trustme.CA) -> None:
    client = client_context(insecure=True)
    assert client.verify_mode == ssl.CERT_NONE and not client.check_hostname
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    hs = await handshake(trustme_server(other_ca, "pbx.example.test"), client, "another.name.test")
    assert hs.client is not None


def test_client_default_verifies() -> None:
    client = client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_cafile_errors(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="does not exist"):
        client_context(cafile=tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("no certificates here\n")
    with pytest.raises(TLSConfigError, match="no usable PEM certificate"):
        client_context(cafile=tmp_path / "empty.pem")
    with pytest.raises(TLSConfigError, match="use one or the other"):
        client_context(cafile=tmp_path / "empty.pem", insecure=True)
