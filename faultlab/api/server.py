"""Serving the control API inside the proxy's trio run (hypercorn's trio worker).

:func:`serve_api` is a trio task in the style of ``trio.serve_listeners``: start it with
``await nursery.start(serve_api, control, host, port, token=...)``, which returns ``(host, bound_port)``
once the socket listens (``port`` 0 picks a free one), and cancel it to stop.

The default port is :data:`DEFAULT_API_PORT` = 5099, not Toxiproxy's 8474, so that faultlab and a
Toxiproxy (which a lab may run for the push gateway's HTTP) can run side by side with their defaults.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from faultlab.addr import bind_hint, format_hostport, host_problem, is_ipv6

if TYPE_CHECKING:
    from .protocol import Control

__all__ = [
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "ApiAddressError",
    "ApiBindError",
    "check_api_bind",
    "is_loopback",
    "parse_api_address",
    "serve_api",
]

log = logging.getLogger("faultlab.api")

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 5099



class ApiAddressError(ValueError):
    """A malformed ``--api`` address; the message names the part that is wrong."""


class ApiBindError(ValueError):
    """The control API will not (or cannot) listen where asked; the message says why and what to do."""


def parse_api_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or ``PORT`` -> ``(host, port)``.

    A missing host is 127.0.0.1 and a missing port :data:`DEFAULT_API_PORT`; port 0 picks a free port.
    """
    example = f"127.0.0.1:{DEFAULT_API_PORT}, [::1]:{DEFAULT_API_PORT} or {DEFAULT_API_PORT}"
    text = spec.strip()
    if not text:
        raise ApiAddressError(f"empty API address; expected HOST:PORT, e.g. {example}")
    if "://" in text:
        raise ApiAddressError(f"{spec!r}: give the address to listen on, not a URL; e.g. {example}")
    if text.isdigit():
        host, port_text = DEFAULT_API_HOST, text
    elif text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket:
            raise ApiAddressError(f"{spec!r}: missing ']' after the IPv6 address")
        if not is_ipv6(host):
            raise ApiAddressError(f"{spec!r}: {host!r} in brackets is not an IPv6 address")
        if after and not after.startswith(":"):
            raise ApiAddressError(f"{spec!r}: expected ':PORT' after [{host}]")
        port_text = after[1:] if after else str(DEFAULT_API_PORT)
    elif text.count(":") > 1:
        hint = f"[{text}]:{DEFAULT_API_PORT}" if is_ipv6(text) else example
        raise ApiAddressError(f"{spec!r}: an IPv6 address needs brackets, e.g. {hint}")
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = str(DEFAULT_API_PORT)
        if not host:
            host = DEFAULT_API_HOST
        problem = host_problem(host)
        if problem:
            raise ApiAddressError(f"{spec!r}: {problem}")
    if not port_text.isdigit():
        raise ApiAddressError(f"{spec!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ApiAddressError(f"{spec!r}: port {port} is out of range 0-65535")
    return host, port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x); host names are not."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def check_api_bind(host: str, token: str | None) -> None:
    """Refuse, with :class:`ApiBindError`, what :func:`serve_api` refuses: an empty token, or a
    non-loopback address without a token (anyone who can reach it could change the faults)."""
    if token is not None and not token.strip():
        raise ApiBindError("the API token is empty: give --api-token a secret string, or leave it out on 127.0.0.1")
    if token is None and not is_loopback(host):
        shown = host or "all addresses"
        raise ApiBindError(
            f"the control API on {shown} would let anyone on the network change faults: "
            "give --api-token TOKEN, or bind 127.0.0.1"
        )


async def serve_api(
    control: Control,
    host: str,
    port: int,
    *,
    token: str | None,
    ca_confdir: Path | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API on ``host:port`` until cancelled; ``task_status.started((host, bound_port))``.

    ``ca_confdir`` holds the lab CA that ``GET /ca`` offers devices (None: ``$FAULTLAB_HOME`` or ``~/.faultlab``).

    Raises :class:`ApiBindError` before listening when :func:`check_api_bind` refuses, or when the
    address cannot be bound (in use, not on this machine).
    """
    # hypercorn and Starlette load only when an API is served: `faultlab proxy` without --api starts faster
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from .app import create_app

    check_api_bind(host, token)
    config = Config()
    config.bind = [format_hostport(host, port)]
    config.accesslog = None
    config.errorlog = log  # hypercorn's "Running on ..." is info; errors go to faultlab's logging
    config.graceful_timeout = 1.0
    app = create_app(control, token=token, ca_confdir=ca_confdir)
    status = _Started(host, task_status)
    try:
        await serve(app, config, mode="asgi", task_status=status)  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        if status.done:
            raise
        oserror = _only(group, OSError)
        if oserror is None:
            raise
        raise ApiBindError(_bind_message(host, port, oserror)) from None
    except OSError as exc:
        if status.done:
            raise
        raise ApiBindError(_bind_message(host, port, exc)) from None


class _Started:
    """The task status handed to hypercorn: turns its ``["http://HOST:PORT"]`` into ``(host, port)``."""

    def __init__(self, host: str, outer: trio.TaskStatus[tuple[str, int]]) -> None:
        self.host = host
        self.outer = outer
        self.done = False

    def started(self, binds: Any = None) -> None:
        port = urlsplit(binds[0]).port
        assert port is not None, binds
        self.done = True
        self.outer.started((self.host, port))


def _only(group: BaseExceptionGroup, kind: type[OSError]) -> OSError | None:
    """The single ``kind`` leaf of a nested group, if that is all it holds."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None


def _bind_message(host: str, port: int, exc: OSError) -> str:
    hint = bind_hint(exc, "another program (or another faultlab) holds it; choose another port with --api HOST:PORT")
    return f"cannot listen for the control API on {format_hostport(host, port)}: {exc.strerror or exc}{hint}"


