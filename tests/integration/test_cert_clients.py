"""faultlab's lab-CA certificate for an IP address, as strict TLS clients check it.

Phones often dial the PBX (so faultlab) by IP address. The certificate faultlab presents then has to satisfy
every TLS stack a VoIP app may use, and they do not check an address the same way:

* mbedTLS 2.x (liblinphone / linphone-sdk and other mbedTLS-based SIP stacks; Debian 12 ships 2.28) compares
  the name given to ``mbedtls_ssl_set_hostname`` with the *DNS* entries of subjectAltName only, and ignores
  the commonName once subjectAltName exists: an IP entry alone fails with "CN mismatch";
* OpenSSL (``openssl s_client -verify_ip``), Python's ``ssl`` and Apple's trustd match the IP entry.

The mbedTLS client is tests/tools/mbedtls_verify.c, built here with gcc against Debian's libmbedtls-dev.
The server is faultlab's own TLS server context on loopback, as ``faultlab proxy --listen tls:ADDR:PORT``
uses it. Marker integration: needs gcc, libmbedtls-dev and openssl; under CI=true a skip is a failure.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from faultlab.ca import LabCA
from faultlab.net.tls import client_context, server_context

pytestmark = pytest.mark.integration

CLIENT_SOURCE = Path(__file__).resolve().parents[1] / "tools" / "mbedtls_verify.c"
TIMEOUT = 30


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


ADDRESSES = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not _ipv6_loopback(), reason="no IPv6 loopback on this machine"))]


@pytest.fixture(scope="module")
def mbedtls_verify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/tools/mbedtls_verify.c, compiled."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the mbedTLS test client (apt-get install gcc)")
    if not Path("/usr/include/mbedtls/ssl.h").exists():
        pytest.skip("needs the mbedTLS headers and libraries (apt-get install libmbedtls-dev)")
    out = tmp_path_factory.mktemp("mbedtls") / "mbedtls_verify"
    build = subprocess.run([gcc, "-Wall", "-Werror", "-o", str(out), str(CLIENT_SOURCE),
                            "-lmbedtls", "-lmbedx509", "-lmbedcrypto"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, f"cannot build {CLIENT_SOURCE.name}:\n{build.stderr}"
    return out


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.init(tmp_path_factory.mktemp("certs") / "lab")


@asynccontextmanager
async def tls_server(ctx: ssl.SSLContext, host: str) -> AsyncIterator[int]:
    """A TLS server on ``host`` (loopback) doing handshakes with ``ctx``; yields its port."""

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, ctx, server_side=True)
        try:
            await tls.do_handshake()
            await tls.receive_some()  # until the client closes
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a client that rejected the certificate
        finally:
            await trio.aclose_forcefully(tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=host))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(argv, stdin=b"", capture_stdout=True, capture_stderr=True, check=False)


def faultlab_listener(ca: LabCA, address: str) -> ssl.SSLContext:
    """The server context of ``faultlab proxy --listen tls:ADDRESS:PORT`` (the listen address is its name)."""
    return server_context(ca, fallback_names=[address])


def leaf_context(cert_pem: bytes, key_pem: bytes, tmp_path: Path) -> ssl.SSLContext:
    """A plain server context that always presents this one leaf (whatever SNI the client sends)."""
    (tmp_path / "leaf.crt").write_bytes(cert_pem)
    (tmp_path / "leaf.key").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    return ctx


def ip_entry_only_leaf(ca: LabCA, address: str) -> tuple[bytes, bytes]:
    """A lab-CA leaf as faultlab issued it before: commonName and a single IP entry in subjectAltName."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


# -- mbedTLS ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ADDRESSES)
async def test_mbedtls_verifies_faultlab_certificate_for_an_ip(
        mbedtls_verify: Path, ca: LabCA, address: str) -> None:
    async with tls_server(faultlab_listener(ca, address), address) as port:
        done = await run([str(mbedtls_verify), str(ca.cert_path), address, str(port), address])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(b"verify ok")


async def test_mbedtls_verifies_the_leaf_itself_and_refuses_another_address(
        mbedtls_verify: Path, ca: LabCA, tmp_path: Path) -> None:
    """The leaf for 127.0.0.1 passes for 127.0.0.1 and not for 127.0.0.2: the check is real.

    A plain server with the one leaf: mbedTLS 2.x sends the address as SNI (RFC 6066 says not to), and
    faultlab's own listener would then issue a certificate naming that address too."""
    async with tls_server(leaf_context(*ca.issue_leaf(["127.0.0.1"]), tmp_path), "127.0.0.1") as port:
        good = await run([str(mbedtls_verify), str(ca.cert_path), "127.0.0.1", str(port), "127.0.0.1"])
        done = await run([str(mbedtls_verify), str(ca.cert_path), "127.0.0.1", str(port), "127.0.0.2"])
    assert good.returncode == 0, good.stdout + good.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert b"cn-mismatch" in done.stdout


async def test_mbedtls_rejects_a_leaf_with_only_the_ip_entry(
        mbedtls_verify: Path, ca: LabCA, tmp_path: Path) -> None:
    """Why the DNS entry is there: commonName and IP entry alone fail in mbedTLS 2.x ("CN mismatch")."""
    async with tls_server(leaf_context(*ip_entry_only_leaf(ca, "127.0.0.1"), tmp_path), "127.0.0.1") as port:
        done = await run([str(mbedtls_verify), str(ca.cert_path), "127.0.0.1", str(port), "127.0.0.1"])
    if b"mbedTLS 2." not in done.stdout:
        pytest.skip(f"this mbedTLS matches IP entries itself: {done.stdout.decode(errors='replace').strip()}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert b"cn-mismatch" in done.stdout


async def test_mbedtls_verifies_a_host_name(mbedtls_verify: Path, ca: LabCA) -> None:
    """`localhost` (faultlab's default names) and --tls-name style DNS names keep working."""
    async with tls_server(server_context(ca, default_name="pbx.lab.test", fallback_names=["127.0.0.1"]),
                          "127.0.0.1") as port:
        for name in ("pbx.lab.test", "127.0.0.1"):
            done = await run([str(mbedtls_verify), str(ca.cert_path), "127.0.0.1", str(port), name])
            assert done.returncode == 0, (name, done.stdout + done.stderr)


# -- OpenSSL and Python's ssl ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ADDRESSES)
async def test_openssl_verify_ip(ca: LabCA, address: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command (apt-get install openssl)")
    connect = f"[{address}]" if ":" in address else address

    async def s_client(port: int, ip: str) -> subprocess.CompletedProcess[bytes]:
        return await run([openssl, "s_client", "-connect", f"{connect}:{port}", "-CAfile", str(ca.cert_path),
                          "-verify_ip", ip, "-verify_return_error", "-brief"])

    async with tls_server(faultlab_listener(ca, address), address) as port:
        ok = await s_client(port, address)
        wrong = await s_client(port, "192.0.2.1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"Verification: OK" in ok.stderr
    assert wrong.returncode != 0 and b"IP address mismatch" in wrong.stderr + wrong.stdout


@pytest.mark.parametrize("address", ADDRESSES)
async def test_python_ssl_checks_the_ip(ca: LabCA, address: str) -> None:
    async def handshake(port: int, name: str) -> None:
        with trio.fail_after(TIMEOUT):
            tcp = await trio.open_tcp_stream(address, port)
            stream = trio.SSLStream(tcp, client_context(cafile=ca.cert_path), server_hostname=name)
            try:
                await stream.do_handshake()
            finally:
                await trio.aclose_forcefully(stream)

    async with tls_server(faultlab_listener(ca, address), address) as port:
        await handshake(port, address)
        with pytest.raises(trio.BrokenResourceError) as info:
            await handshake(port, "192.0.2.1")  # a phone that dialled another address
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(info.value.__cause__)
