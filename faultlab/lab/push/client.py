"""Push senders over the network: :class:`PushClient`, an APNs client over HTTP/2 (``h2``), and
:func:`open_push_stream`, a device's subscription to a gateway's pushes (HTTP/1.1 NDJSON, ``h11``).

:meth:`PushClient.sender` is the embedded PBX's ``send_push(token, payload)`` over the network; it raises
:class:`~faultlab.lab.push.apns.PushRejected` on a non-200 answer.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

from .apns import Push, PushError, PushRejected

__all__ = ["PushClient", "open_push_stream"]


def _ssl_context(ca: str | None, insecure: bool, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context


def _split_url(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST:PORT (h2c) or https://HOST[:PORT] (h2 over TLS)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


async def _open(scheme: str, host: str, port: int, ca: str | None, insecure: bool,
                alpn: list[str]) -> trio.abc.Stream:
    context = None
    if scheme == "https":
        try:
            context = _ssl_context(ca, insecure, alpn)
        except (OSError, ssl.SSLError) as exc:
            raise PushError(f"cannot use the CA file {ca}: {exc.strerror or exc}") from exc
    try:
        if context is not None:
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context, https_compatible=True)
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return stream
        return await trio.open_tcp_stream(host, port)
    except (OSError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ or exc
        raise PushError(f"cannot connect to {host}:{port}: {cause}") from exc


class PushClient:
    """An APNs client over HTTP/2 (``h2``): h2c with prior knowledge for ``http://``, h2 over TLS (ALPN)
    for ``https://``. One connection, opened on first use and reused; requests are sent one at a time.

    ``url`` is the APNs base, e.g. ``http://127.0.0.1:2197`` or ``https://api.sandbox.push.apple.com``.
    ``authorization`` (e.g. ``"bearer <JWT>"``) is sent with every request when given.
    """

    def __init__(self, url: str, *, ca: str | None = None, insecure: bool = False,
                 authorization: str | None = None) -> None:
        self.url = url
        self.scheme, self.host, self.port, self.prefix = _split_url(url)
        self.ca = ca
        self.insecure = insecure
        self.authorization = authorization
        self._stream: trio.abc.Stream | None = None
        self._conn: h2.connection.H2Connection | None = None
        self._lock = trio.Lock()

    async def __aenter__(self) -> PushClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    async def send(
        self,
        token: str,
        payload: Mapping[str, Any],
        *,
        topic: str,
        push_type: str = "voip",
        priority: int = 10,
        expiration: int = 0,
        apns_id: str | None = None,
        collapse_id: str | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """POST one push -> ``(status, JSON body or None)``; on 200 the body is ``{"apns-id": ...}``.

        Raises :class:`PushError` when no answer could be had (connection refused or lost twice).
        """
        headers = {"apns-push-type": push_type, "apns-topic": topic, "apns-priority": str(priority),
                   "apns-expiration": str(expiration)}
        if apns_id is not None:
            headers["apns-id"] = apns_id
        if collapse_id is not None:
            headers["apns-collapse-id"] = collapse_id
        return await self.send_raw(token, payload, headers)

    def sender(self, *, topic: str, priority: int = 10, expiration: int = 0):
        """A ``send_push(token, payload)`` coroutine function for the embedded PBX: sends with these
        headers and raises :class:`PushRejected` on a non-200 answer (:class:`PushError` if unsent)."""

        async def send_push(token: str, payload: dict) -> None:
            status, body = await self.send(token, payload, topic=topic, priority=priority, expiration=expiration)
            if status != 200:
                raise PushRejected(status, body.get("reason") if isinstance(body, dict) else None)

        return send_push

    async def send_raw(self, token: str, payload: Mapping[str, Any] | bytes,
                       headers: Mapping[str, str]) -> tuple[int, dict[str, Any] | None]:
        """POST with exactly these ``apns-*`` headers (the relay passes a request's headers through)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        hdrs = dict(headers)
        if self.authorization and "authorization" not in hdrs:
            hdrs["authorization"] = self.authorization
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    try:
                        status, rheaders, rbody = await self._request(f"{self.prefix}/3/device/{token}", hdrs, body)
                    except BaseException:
                        # cancelled or failed half-way: the connection may hold a partial frame; start afresh
                        stream, self._stream, self._conn = self._stream, None, None
                        if stream is not None:
                            await trio.aclose_forcefully(stream)
                        raise
                    break
                except (PushError, trio.BrokenResourceError, trio.ClosedResourceError,
                        h2.exceptions.ProtocolError, OSError) as exc:
                    await self.aclose()
                    if fresh or attempt == 2:  # a reused connection may have been closed by the server
                        raise PushError(f"push to {self.url} failed: {exc}") from exc
        if status == 200:
            return status, {"apns-id": rheaders.get("apns-id")}
        try:
            parsed = json.loads(rbody) if rbody else None
        except ValueError:
            parsed = {"reason": rbody.decode("utf-8", "replace")}
        return status, parsed

    async def _connect(self) -> None:
        self._stream = await _open(self.scheme, self.host, self.port, self.ca, self.insecure, ["h2"])
        if self.scheme == "https":
            ssl_obj = getattr(self._stream, "selected_alpn_protocol", None)
            chosen = ssl_obj() if ssl_obj else None
            if chosen != "h2":
                await self.aclose()
                raise PushError(f"{self.url} did not agree to HTTP/2 (ALPN chose {chosen!r})")
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                          header_encoding="utf-8"))
        self._conn.initiate_connection()
        await self._stream.send_all(self._conn.data_to_send())

    async def _request(self, path: str, headers: Mapping[str, str],
                       body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._conn is None:
            await self._connect()
        conn, stream = self._conn, self._stream
        assert conn is not None and stream is not None
        authority = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", self.scheme), (":authority", authority),
                                (":path", path), ("content-length", str(len(body))), *headers.items()])
        conn.send_data(sid, body, end_stream=True)
        await stream.send_all(conn.data_to_send())
        status, rheaders, rbody = 0, {}, b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise PushError("the server closed the connection")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    rheaders = {k: v for k, v in event.headers}
                    status = int(rheaders.get(":status", "0"))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if event.stream_id == sid:
                        rbody += event.data
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    raise PushError(f"the server reset the request (error {event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    out = conn.data_to_send()
                    if out:
                        await stream.send_all(out)
                    if status and event.last_stream_id is not None and event.last_stream_id >= sid:
                        continue
                    raise PushError(f"the server ended the connection ({event.error_code})")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    out = conn.data_to_send()
                    if out:
                        await stream.send_all(out)
                    return status, rheaders, rbody
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)


@asynccontextmanager
async def open_push_stream(url: str, token: str, *, ca: str | None = None,
                           insecure: bool = False) -> AsyncIterator[AsyncIterator[Push]]:
    """Subscribe to a gateway's pushes for ``token`` (``GET /devices/<token>/pushes``, HTTP/1.1).

    On entering, the gateway has registered the device (pushes sent from now on reach it); the value is
    an async iterator of :class:`Push`. Leaving closes the connection, which unregisters the device.
    """
    scheme, host, port, prefix = _split_url(url)
    stream = await _open(scheme, host, port, ca, insecure, ["http/1.1"])
    conn = h11.Connection(h11.CLIENT)
    try:
        authority = host if port in (80, 443) else f"{host}:{port}"
        request = h11.Request(method="GET", target=f"{prefix}/devices/{token}/pushes",
                              headers=[("host", authority), ("accept", "application/x-ndjson")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))

        async def next_event() -> Any:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                return event

        response = await next_event()
        if not isinstance(response, h11.Response) or response.status_code != 200:
            raise PushError(f"push stream for {token} refused: {getattr(response, 'status_code', response)}")

        async def pushes() -> AsyncIterator[Push]:
            buffer = b""
            while True:
                event = await next_event()
                if isinstance(event, h11.Data):
                    buffer += bytes(event.data)
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield Push.from_json(json.loads(line))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return

        yield pushes()
    finally:
        await stream.aclose()
