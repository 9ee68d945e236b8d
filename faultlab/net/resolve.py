"""Resolving an endpoint's host name: the one part of endpoint handling that needs the network."""

from __future__ import annotations

import socket

import trio

from faultlab.addr import Endpoint, EndpointError


async def resolve(endpoint: Endpoint) -> tuple[int, tuple[str, int]]:
    """Resolve an endpoint to ``(family, (ip, port))``; IP literals resolve to themselves."""
    socktype = socket.SOCK_DGRAM if endpoint.transport == "udp" else socket.SOCK_STREAM
    try:
        infos = await trio.socket.getaddrinfo(endpoint.host, endpoint.port, type=socktype)
    except socket.gaierror as exc:
        raise EndpointError(f"{endpoint}: cannot resolve {endpoint.host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, (sockaddr[0], sockaddr[1])
