"""Endpoint specs: ``udp:HOST:PORT``, ``tcp:HOST:PORT``, ``tls:HOST:PORT``.

HOST is an IPv4 address, a bracketed IPv6 address (``udp:[::1]:5060``) or a
host name. Everything here is pure (no sockets, no trio): host names are
resolved later, by the proxy at start (:func:`faultlab.net.resolve.resolve`),
so that a bad spec is reported before any socket is opened and with the part
that is wrong.
"""

from __future__ import annotations

import errno
import ipaddress
import re
from dataclasses import dataclass

TRANSPORTS = ("udp", "tcp", "tls")

# RFC 1123 host name: labels of letters, digits and hyphens, dot-separated.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class EndpointError(ValueError):
    """A malformed endpoint spec; the message names the part that is wrong."""


@dataclass(frozen=True)
class Endpoint:
    transport: str  # "udp" | "tcp" | "tls"
    host: str  # as written, without brackets
    port: int

    @property
    def is_ip(self) -> bool:
        return is_ip(self.host)

    def __str__(self) -> str:
        return f"{self.transport}:{format_hostport(self.host, self.port)}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_problem(host: str) -> str | None:
    """Why ``host`` (an IP address or host name, IPv6 without brackets) is unusable, or None."""
    if is_ip(host):
        return None
    if re.fullmatch(r"[0-9.]+", host):
        return f"{host!r} is not a valid IPv4 address"
    if not _HOSTNAME.match(host):
        return f"{host!r} is neither an IP address nor a host name"
    return None


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def format_host(host: str) -> str:
    """``::1`` -> ``[::1]``; other hosts unchanged (as in SIP URIs and Via)."""
    return f"[{host}]" if ":" in host else host


def format_hostport(host: str, port: int) -> str:
    return f"{format_host(host)}:{port}"


def parse_endpoint(spec: str, *, allow_port_zero: bool = True) -> Endpoint:
    """Parse ``TRANSPORT:HOST:PORT``; raise :class:`EndpointError` naming the bad part."""
    example = "udp:127.0.0.1:5060, tcp:[::1]:5060 or tls:pbx.example.com:5061"
    transport, sep, rest = spec.partition(":")
    if not sep:
        raise EndpointError(f"{spec!r}: expected TRANSPORT:HOST:PORT, e.g. {example}")
    transport = transport.lower()
    if transport not in TRANSPORTS:
        raise EndpointError(
            f"{spec!r}: unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}"
        )
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise EndpointError(f"{spec!r}: missing ']' after the IPv6 address")
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise EndpointError(f"{spec!r}: {host!r} in brackets is not an IPv6 address") from None
        if not after.startswith(":"):
            raise EndpointError(f"{spec!r}: expected ':PORT' after [{host}]")
        port_text = after[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise EndpointError(f"{spec!r}: expected HOST:PORT after '{transport}:', e.g. {example}")
        if ":" in host and not is_ipv6(host):
            raise EndpointError(f"{spec!r}: too many ':'; expected TRANSPORT:HOST:PORT, e.g. {example}")
        if ":" in host:
            raise EndpointError(
                f"{spec!r}: an IPv6 address needs brackets, e.g. {transport}:[{host}]:{port_text}"
            )
        problem = host_problem(host)
        if problem:
            raise EndpointError(f"{spec!r}: {problem}")
    if not port_text.isdigit():
        raise EndpointError(f"{spec!r}: port {port_text!r} is not a number")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise EndpointError(f"{spec!r}: port {port} is out of range {low}-65535")
    return Endpoint(transport, host, port)


def bind_hint(exc: OSError, in_use: str) -> str:
    """What to do about a failed bind; ``in_use`` is the advice for a port already taken."""
    if exc.errno == errno.EADDRINUSE:
        return f": {in_use}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return ": no interface has this address"
    if exc.errno == errno.EACCES:
        return ": ports below 1024 need root or CAP_NET_BIND_SERVICE"
    return ""


def listen_error(endpoint: Endpoint, exc: OSError) -> EndpointError:
    """A bind failure, said with the address and what to do."""
    hint = bind_hint(exc, "another program (or faultlab) holds it; choose another port or stop that program")
    return EndpointError(f"cannot listen on {endpoint}: {exc.strerror or exc}{hint}")


_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+(?:%[^\]]+)?)\](?::([0-9]{1,5}))?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_device_address(text: str) -> tuple[Network, int | None]:
    """A device as people write it (profile rules, the control API, ``--device``): ``IP``, ``IP:PORT``,
    ``[IPv6]``, ``[IPv6]:PORT``, a bare IPv6 address, or a network such as ``10.0.0.0/8`` (no port).

    Returns the network (a single address is a /32 or /128) and the port (None: any). The one parser of
    device addresses: :func:`parse_device` and the profile's ``device`` match use it. Raises ValueError
    saying what is wrong.
    """
    s = text.strip()
    m = _BRACKETED.fullmatch(s)
    if m:
        addr, port_text = m.groups()
    elif s.count(":") == 1:
        addr, port_text = s.split(":")
    else:
        addr, port_text = s, None
    port = None
    if port_text is not None:
        if not port_text.isdigit():
            raise ValueError(f"{port_text!r} is not a port number")
        port = int(port_text)
        if not 0 < port <= 65535:
            raise ValueError("port out of range")
        if "/" in addr:
            raise ValueError("a network takes no port")
    return ipaddress.ip_network(addr, strict=False), port


def device_at(device: str, peer: str | None, *, ports: bool = True) -> bool:
    """Whether ``peer`` (a hop's ``HOST:PORT``, as the trace writes it) is ``device`` as people write it
    (:func:`parse_device_address`: ``IP``, ``IP:PORT``, ``[IPv6]:PORT``, a network). A spec that does not parse,
    or a peer that is not an address, matches nothing. ``ports=False`` compares the addresses only."""
    if not peer:
        return False
    try:
        network, port = parse_device_address(device)
        peer_net, peer_port = parse_device_address(peer)
    except ValueError:
        return False
    return peer_net.num_addresses == 1 and peer_net.network_address in network and (not ports or port in (None, peer_port))


def parse_device(spec: str) -> str:
    """Normalise a device spec: ``IP`` or ``IP:PORT`` (IPv6 as ``[::1]:5060`` or bare ``::1``)."""
    text = spec.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        network, port = parse_device_address(text)
    except ValueError:
        network, port = None, None
    if network is None or port is None or "/" in text:
        raise ValueError(f"device {spec!r}: give an IP address or IP:PORT, e.g. 10.0.0.2 or 10.0.0.2:5060")
    return format_hostport(str(network.network_address), port)
