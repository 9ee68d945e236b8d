"""TLS contexts for faultlab's two sides of a SIP-over-TLS connection.

Both functions return a plain :class:`ssl.SSLContext`, to be used with
:class:`trio.SSLStream` over any trio stream (TCP socket, memory stream), or with
:func:`faultlab.net.leantls.wrap`, as the proxy does (the same, cheaper on a real socket)::

    device_side = trio.SSLStream(stream, server_context(ca, fallback_names=[listen_ip]),
                                 server_side=True)
    pbx_side = trio.SSLStream(stream, client_context(), server_hostname="pbx.example.com")

**Which name the device sees** (:func:`server_context`). The device is given a
certificate, signed by the lab CA, whose subjectAltName covers:

1. the SNI name the device sent, if any (it is then also the commonName), and
2. always, the *configured names*: ``default_name`` (the ``--tls-name`` option)
   followed by ``fallback_names`` (the proxy passes the address the device
   connected to: its listen address; on a wildcard listener, the local address
   of the connection; in transparent mode, the PBX's address), or, when neither
   is given, :data:`DEFAULT_FALLBACK_NAMES`.

So ``--tls-name`` never hides the SNI name and SNI never hides ``--tls-name``:
one certificate satisfies a device that checks the name it connected to and one
that checks its configured SIP domain (RFC 5922 lets a client connect to the host
of an SRV record yet match the certificate against the SIP domain). This matters
because SIP phones often connect to an IP address, and TLS sends no SNI for IP
literals (RFC 6066 section 3): then the configured names are all faultlab knows,
and the device checks the IP address against an IP subjectAltName (or, with
mbedTLS 2.x, against the DNS entry with the same text that
:meth:`faultlab.ca.LabCA.issue_leaf` adds for every address). An SNI name
that is not a valid DNS name is ignored (the configured names are used), rather
than failing the handshake.

Certificates are issued inside the handshake (about half a millisecond for an EC
P-256 leaf), and kept: :class:`faultlab.ca.LabCA` caches leaves, and this module
caches one ``SSLContext`` per leaf.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from faultlab.ca import LabCA, normalize_names

__all__ = [
    "DEFAULT_FALLBACK_NAMES",
    "MINIMUM_TLS_VERSION",
    "TLSConfigError",
    "certificate_names",
    "client_context",
    "server_context",
]

log = logging.getLogger(__name__)

#: TLS 1.0 and 1.1 are deprecated (RFC 8996); iOS and current SIP stacks do 1.2+.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2

#: Names in the certificate when neither ``default_name`` nor ``fallback_names``
#: is given: enough for a lab on one machine (connect to localhost or loopback).
DEFAULT_FALLBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

#: Server contexts kept per :func:`server_context` (one per distinct leaf).
CONTEXT_CACHE_SIZE = 100


class TLSConfigError(ValueError):
    """A TLS setting cannot be used (bad name, unreadable CA file). The message says why."""


def certificate_names(server_name: str | None, configured: Sequence[str]) -> tuple[str, ...]:
    """The names of the certificate to present for a client that sent ``server_name`` (SNI).

    ``configured`` are the (already normalized) configured names. The SNI name
    comes first when it is usable; a missing or invalid SNI name gives the
    configured names alone.
    """
    if server_name:
        try:
            return normalize_names([server_name, *configured])
        except ValueError:
            log.debug("ignoring unusable SNI name %r", server_name)
    return normalize_names(configured)


def server_context(
    ca: LabCA,
    *,
    default_name: str | None = None,
    fallback_names: Sequence[str] = (),
) -> ssl.SSLContext:
    """A TLS server context presenting lab-CA certificates chosen per handshake.

    See the module docstring for which names the certificate covers. Raises
    :class:`TLSConfigError` if ``default_name`` or a fallback name is not a DNS
    name or IP address. TLS 1.2 minimum; no client certificate is requested.
    """
    if isinstance(fallback_names, str):
        raise TypeError("fallback_names must be a sequence of names, not a single str")
    wanted = ([default_name] if default_name else []) + list(fallback_names)
    try:
        configured = normalize_names(wanted or DEFAULT_FALLBACK_NAMES)
    except ValueError as exc:
        raise TLSConfigError(f"cannot serve TLS for these names: {exc}") from None

    contexts: OrderedDict[bytes, ssl.SSLContext] = OrderedDict()

    def context_for(names: tuple[str, ...]) -> ssl.SSLContext:
        cert_pem, key_pem = ca.issue_leaf(names)
        ctx = contexts.get(cert_pem)
        if ctx is None:
            ctx = _new_server_context()
            _load_cert_chain(ctx, cert_pem, key_pem)
            contexts[cert_pem] = ctx
            while len(contexts) > CONTEXT_CACHE_SIZE:
                contexts.popitem(last=False)
        else:
            contexts.move_to_end(cert_pem)
        return ctx

    def on_sni(
        sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        # Called by OpenSSL on every ClientHello, with server_name None when the
        # client sent no SNI. An exception here would only surface as an opaque
        # handshake failure, so log it and send a proper alert instead.
        try:
            sslobj.context = context_for(certificate_names(server_name, configured))
        except Exception:
            log.exception("cannot issue a TLS certificate for SNI name %r", server_name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    base = _new_server_context()
    # The base context holds the configured names' certificate too, so it is
    # complete on its own even before any callback runs.
    cert_pem, key_pem = ca.issue_leaf(configured)
    _load_cert_chain(base, cert_pem, key_pem)
    base.sni_callback = on_sni
    return base


def client_context(*, cafile: Path | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A TLS client context for faultlab's connection to the PBX (TLS 1.2 minimum).

    By default the PBX certificate is verified against the system's CAs and the
    host name checked (pass ``server_hostname`` to :class:`trio.SSLStream`). With
    ``cafile`` (a PEM bundle) it is verified against those CAs *instead* of the
    system's, e.g. a lab PBX's private CA. ``insecure=True`` turns verification
    and the host name check off; it is never the default and cannot be combined
    with ``cafile``.
    """
    if insecure:
        if cafile is not None:
            raise TLSConfigError(
                f"insecure=True turns certificate verification off, so the CA file {cafile} "
                "would be ignored: use one or the other"
            )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cafile is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify + check_hostname by default
        try:
            ctx.load_verify_locations(cafile=os.fspath(cafile))
        except FileNotFoundError:
            raise TLSConfigError(f"CA file {cafile} does not exist") from None
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"CA file {cafile} holds no usable PEM certificate ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise TLSConfigError(f"cannot read CA file {cafile}: {exc.strerror or exc}") from None
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = MINIMUM_TLS_VERSION
    return ctx


def _new_server_context() -> ssl.SSLContext:
    # PROTOCOL_TLS_SERVER has the secure defaults (no SSLv2/3, no compression,
    # OpenSSL's default cipher list) and verify_mode CERT_NONE: no client cert.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_TLS_VERSION
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load an in-memory certificate and key into ``ctx``.

    :meth:`ssl.SSLContext.load_cert_chain` only reads files, so the PEMs go
    through a private temporary directory (mode 0700, key file 0600) that is
    removed right after.
    """
    with tempfile.TemporaryDirectory(prefix="faultlab-tls-") as tmp:
        cert_file = os.path.join(tmp, "leaf.crt")
        key_file = os.path.join(tmp, "leaf.key")
        for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_file, key_file)
