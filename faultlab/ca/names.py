"""Certificate names: the canonical form of the names a leaf is issued for, and their subjectAltName entries."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from cryptography import x509

# A DNS name: labels of letters, digits, hyphens (underscores tolerated, as in
# SRV-style names some labs use), at most 63 octets each, 253 in all.
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def normalize_names(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical form of certificate names, in order, without duplicates.

    IP addresses (IPv4 or IPv6, any spelling) become their compressed form
    (``0:0::1`` -> ``::1``); DNS names are lower-cased and lose a trailing dot.
    A single leading ``*.`` label is allowed (wildcard). Raises :class:`ValueError`
    naming the bad entry.
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of names, not a single str")
    out: list[str] = []
    for raw in names:
        name = _normalize_name(raw)
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("a certificate needs at least one name")
    return tuple(out)


def _normalize_name(raw: str) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"certificate name must be str, not {type(raw).__name__}")
    name = raw.strip()
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    name = name.lower().removesuffix(".")
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if not (
        name
        and len(name) <= 253
        and labels
        and all(_DNS_LABEL.match(label) for label in labels)
    ):
        raise ValueError(
            f"not a DNS name or IP address: {raw!r} "
            "(expected e.g. 'pbx.example.com', '192.0.2.10' or '2001:db8::10')"
        )
    return name


def general_names(name: str) -> list[x509.GeneralName]:
    """subjectAltName entries for one normalized name.

    A DNS name is one DNS entry. An IP address is an IP entry *and* a DNS entry with the same text: mbedTLS
    2.x (Debian 12 ships 2.28; linphone-sdk builds on mbedTLS, and so do many VoIP apps on iOS and Android)
    compares the name given to ``mbedtls_ssl_set_hostname`` only with the DNS entries of subjectAltName and,
    when that extension is present, never with the commonName: with the IP entry alone it reports "CN
    mismatch". OpenSSL, Python, Apple's trustd and recent mbedTLS 3.x match an address against the IP entry.
    """
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return [x509.DNSName(name)]
    return [x509.IPAddress(address), x509.DNSName(str(address))]
