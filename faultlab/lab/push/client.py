"""Push senders over the network: :class:`PushClient`, an APNs client over HTTP/2, and :func:`open_push_stream`,
a device's subscription to a gateway's pushes (HTTP/1.1 NDJSON). Both run on ``httpx`` (HTTP/2 through ``h2``),
which runs on trio, so they work on the lab's in-memory network and under trio's mock clock too.

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

import httpx
import trio

from .apns import Push, PushError, PushRejected

__all__ = ["PushClient", "open_push_stream"]


def _split_url(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST:PORT (h2c) or https://HOST[:PORT] (h2 over TLS)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def _verify(url: str, ca: str | None, insecure: bool) -> ssl.SSLContext | bool:
    if urlsplit(url).scheme != "https":
        return True
    if insecure:
        return False
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise PushError(f"cannot use the CA file {ca}: {exc.strerror or exc}") from exc


def _why(exc: httpx.TransportError, host: str, port: int) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {host}:{port}: {exc}"
    return str(exc) or type(exc).__name__


class PushClient:
    """An APNs client over HTTP/2: h2c with prior knowledge for ``http://``, h2 over TLS (ALPN) for ``https://``.
    One connection, opened on first use and reused; requests are sent one at a time.

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
        self._client: httpx.AsyncClient | None = None
        self._lock = trio.Lock()
        self.connections = 0  # connections opened so far (one, reused, while the server keeps it)

    async def _trace(self, event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete":
            self.connections += 1

    async def __aenter__(self) -> PushClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()

    def _open(self) -> httpx.AsyncClient:
        if self._client is None:
            # APNs speaks HTTP/2 only: no HTTP/1.1 fallback (h2c by prior knowledge over http://).
            self._client = httpx.AsyncClient(http1=False, http2=True, verify=_verify(self.url, self.ca, self.insecure),
                                             timeout=None, limits=httpx.Limits(max_connections=1))
        return self._client

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
        headers and raises :class:`PushRejected` on a non-200 answer (:class:`PushError` if unsent).
        ``expiration_at`` (UNIX seconds) replaces ``expiration`` for one push."""

        async def send_push(token: str, payload: dict, expiration_at: int | None = None) -> None:
            sent = expiration if expiration_at is None else expiration_at
            status, body = await self.send(token, payload, topic=topic, priority=priority, expiration=sent)
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
                fresh = self._client is None
                client = self._open()
                try:
                    response = await client.post(f"{self.url.rstrip('/')}/3/device/{token}", headers=hdrs,
                                                 content=body, extensions={"trace": self._trace})
                    break
                except httpx.TransportError as exc:
                    await self.aclose()
                    if fresh or attempt == 2:  # a reused connection may have been closed by the server
                        raise PushError(f"push to {self.url} failed: {_why(exc, self.host, self.port)}") from exc
        status, rheaders, rbody = response.status_code, response.headers, response.content
        if status == 200:
            return status, {"apns-id": rheaders.get("apns-id")}
        try:
            parsed = json.loads(rbody) if rbody else None
        except ValueError:
            parsed = {"reason": rbody.decode("utf-8", "replace")}
        return status, parsed

@asynccontextmanager
async def open_push_stream(url: str, token: str, *, ca: str | None = None,
                           insecure: bool = False) -> AsyncIterator[AsyncIterator[Push]]:
    """Subscribe to a gateway's pushes for ``token`` (``GET /devices/<token>/pushes``, HTTP/1.1).

    On entering, the gateway has registered the device (pushes sent from now on reach it); the value is
    an async iterator of :class:`Push`. Leaving closes the connection, which unregisters the device.
    """
    _, host, port, prefix = _split_url(url)
    parts = urlsplit(url)
    target = f"{parts.scheme}://{parts.netloc}{prefix}/devices/{token}/pushes"
    try:
        async with httpx.AsyncClient(http1=True, http2=False, verify=_verify(url, ca, insecure), timeout=None) as client:
            async with client.stream("GET", target, headers={"accept": "application/x-ndjson"}) as response:
                if response.status_code != 200:
                    raise PushError(f"push stream for {token} refused: {response.status_code}")

                async def pushes() -> AsyncIterator[Push]:
                    try:
                        async for line in response.aiter_lines():
                            if line.strip():
                                obj = json.loads(line)
                                if obj.get("kind") != "prompt":  # the lab's prompts: for a person (or an app)
                                    yield Push.from_json(obj)
                    except httpx.TransportError:  # the gateway went away: the stream is over
                        return

                yield pushes()
    except httpx.TransportError as exc:
        raise PushError(_why(exc, host, port)) from exc
