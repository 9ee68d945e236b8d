"""The lab's push gateway: an APNs-compatible HTTP/2 endpoint, push faults, and a push client.

APNs, as far as the lab needs it (``../shared/reference/voip-push.md`` §5)::

    POST /3/device/<hex token>          HTTP/2; h2c (prior knowledge) on plain TCP, h2 via ALPN over TLS
    apns-push-type: voip                required (400 InvalidPushType)
    apns-topic: <bundle id>.voip        required (400 MissingTopic, BadTopic, DeviceTokenNotForTopic)
    apns-priority: 10 | 5 | 1           optional, 10 when absent (400 BadPriority); lint when not 10
    apns-expiration: UNIX seconds       optional, numeric (400 BadExpirationDate); lint when not 0
    apns-id: canonical UUID             optional (400 BadMessageId); echoed, generated when absent
    apns-collapse-id: <= 64 bytes       optional (400 BadCollapseId)
    body: JSON object, <= 5120 bytes    400 PayloadEmpty (empty, or not a JSON object: a GUESS), 413 PayloadTooLarge

    200, empty body, ``apns-id`` header          accepted (whatever the faults then do with it)
    4xx, ``{"reason": "..."}``                   refused; 410 Unregistered also has ``"timestamp"`` (ms)

The PBX payload (what faultlab's embedded PBX sends, and what the reference device reads)::

    {"aps": {}, "type": "call" | "cancel", "call-id": SIP Call-ID, "uuid": CallKit UUID,
     "from-uri": "sip:bob@example.com", "display-name": "Bob", "send-time": UNIX seconds}

A push is a *cancel push* when ``"type"`` is ``"cancel"``, or when the payload has ``"cancel": true``
(the aps-less form some PBXs send); anything else is a *call push*. The Call-ID is read from
``"call-id"`` (or ``aps["call-id"]``, Flexisip's shape).

Delivery: a device in the same process takes :meth:`PushGateway.channel`; a device in another process
reads ``GET /devices/<token>/pushes`` on the same port (HTTP/1.1, NDJSON, one :meth:`Push.to_json` per
line; see :func:`open_push_stream`). In relay mode pushes for tokens without a local device go to a
real (or mock) APNs over HTTP/2 with :class:`PushClient`, with the sender's ``authorization`` header, or
the gateway's own provider token when it has the team's key (``relay_auth``, :mod:`faultlab.lab.apns_auth`).

Senders: :class:`PushClient` (HTTP/2, one reused connection) and, for the embedded PBX's
``send_push(token, payload)``, :meth:`PushClient.sender` over the network or :meth:`PushGateway.local_sender`
in the same process (no sockets; works under ``MockClock``). Both raise :class:`PushRejected` on a non-200.

Every request is a timeline event ``kind="push"``, ``source="push"``, with detail ``push_kind``,
``token``, ``status``, ``reason``, ``outcome`` (``delivered``, ``dropped``, ``delayed``, ``duplicated``,
``relayed``, or ``rejected`` for a 4xx), ``apns_id``, ``delay``/``copies`` where they apply, and ``lint``
(the lint messages). Lints are also ``kind="warning"`` events (``detail["message"]``). A delayed push
adds a ``kind="push-delivered"`` event when it is finally handed over.
"""

from __future__ import annotations

import json
import logging
import math
import re
import ssl
import time
import uuid
from collections.abc import Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

from .apns_auth import ApnsSigner
from .timeline import Timeline

__all__ = [
    "MAX_PAYLOAD",
    "Push",
    "PushClient",
    "PushError",
    "PushRejected",
    "PushFaults",
    "PushGateway",
    "open_push_stream",
    "push_kind",
    "serve_push_gateway",
]

MAX_PAYLOAD = 5120  # bytes, for VoIP pushes
MAX_COLLAPSE_ID = 64
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DEVICE_PATH = "/3/device/"
_STREAM_PATH = re.compile(r"/devices/([^/]+)/pushes")
_STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                410: "Gone", 413: "Payload Too Large", 500: "Internal Server Error", 502: "Bad Gateway"}


class PushError(Exception):
    """A push that could not be sent at all (connection refused, protocol error); not an APNs refusal."""


class PushRejected(PushError):
    """APNs (or the lab gateway) answered a push with an error status; raised by :meth:`PushClient.sender`."""

    def __init__(self, status: int, reason: str | None) -> None:
        super().__init__(f"{status} {reason or ''}".strip())
        self.status = status
        self.reason = reason


def push_kind(payload: Mapping[str, Any]) -> str:
    """``"cancel"`` for a cancel push (``"type": "cancel"`` or ``"cancel": true``), else ``"call"``."""
    if payload.get("type") == "cancel" or payload.get("cancel") is True:
        return "cancel"
    return "call"


def _call_id(payload: Mapping[str, Any]) -> str | None:
    value = payload.get("call-id")
    if value is None and isinstance(payload.get("aps"), Mapping):
        value = payload["aps"].get("call-id")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Push:
    """One accepted push, as handed to a device. ``received_at`` is timeline time (seconds since t0)."""

    token: str
    kind: str  # "call" | "cancel"
    payload: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    apns_id: str

    @property
    def call_id(self) -> str | None:
        return _call_id(self.payload)

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "kind": self.kind, "payload": self.payload, "headers": self.headers,
                "received_at": self.received_at, "apns_id": self.apns_id}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Push:
        return cls(token=obj["token"], kind=obj["kind"], payload=dict(obj["payload"]),
                   headers=dict(obj.get("headers", {})), received_at=float(obj["received_at"]),
                   apns_id=obj["apns_id"])


@dataclass(frozen=True)
class PushFaults:
    """What the gateway does to accepted pushes. The sender always gets 200: a lost push is silent.

    ``drop_cancel``: cancel pushes are never delivered. ``drop_all``: no push is delivered.
    ``delay``: seconds between acceptance and delivery. ``duplicate``: extra deliveries of each push.
    """

    drop_cancel: bool = False
    drop_all: bool = False
    delay: float = 0.0
    duplicate: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"push delay must be a finite number of seconds >= 0, not {self.delay!r}")
        if self.duplicate < 0:
            raise ValueError(f"duplicate is the number of extra deliveries (>= 0), not {self.duplicate!r}")


@dataclass
class _Device:
    send: trio.MemorySendChannel[Push]
    receive: trio.MemoryReceiveChannel[Push]
    topic: str | None = None


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _error(status: int, reason: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"reason": reason, **extra}).encode()
    return status, {"content-type": "application/json"}, body


def _headers(headers: Mapping[str, str] | Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """Lower-cased single-valued headers; a repeated header raises 400 DuplicateHeaders."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        key = name.lower()
        if key in out:
            raise _Refused(400, "DuplicateHeaders")
        out[key] = value
    return out


class PushGateway:
    """APNs semantics (:meth:`handle`), push faults, and delivery to devices' channels or to a relay.

    ``relay_auth``: sign relayed pushes with APNs token authentication (``authorization: bearer <JWT>`` from
    :class:`~faultlab.lab.apns_auth.ApnsSigner`), replacing any ``authorization`` the sender sent; without it
    the sender's header is passed on as it came.

    Delayed deliveries run in the gateway's own nursery: run :meth:`run` (``await nursery.start(gw.run)``)
    before sending delayed pushes; :func:`serve_push_gateway` does it for you.
    """

    def __init__(
        self,
        timeline: Timeline,
        *,
        faults: PushFaults = PushFaults(),
        topic_suffix: str = ".voip",
        relay_url: str | None = None,
        relay_ca: str | None = None,
        relay_auth: ApnsSigner | None = None,
    ) -> None:
        self.timeline = timeline
        self.faults = faults
        self.topic_suffix = topic_suffix
        self.relay_url = relay_url
        self.relay_auth = relay_auth
        self._relay = PushClient(relay_url, ca=relay_ca) if relay_url else None
        self._devices: dict[str, _Device] = {}
        self._nursery: trio.Nursery | None = None

    # --- devices ---------------------------------------------------------------------------------

    def channel(self, token: str, *, topic: str | None = None) -> trio.MemoryReceiveChannel[Push]:
        """The push channel of the device with ``token`` (created on first use).

        With ``topic``, pushes for another topic are refused with 400 DeviceTokenNotForTopic.
        Closing the channel (or :meth:`unregister`) makes the token unknown again (410 Unregistered).
        """
        token = token.lower()
        device = self._devices.get(token)
        if device is None:
            send, receive = trio.open_memory_channel[Push](math.inf)
            device = self._devices[token] = _Device(send, receive, topic)
        elif topic is not None:
            device.topic = topic
        return device.receive

    def unregister(self, token: str) -> None:
        device = self._devices.pop(token.lower(), None)
        if device is not None:
            device.send.close()

    @property
    def tokens(self) -> list[str]:
        return list(self._devices)

    def local_sender(self, *, topic: str, priority: int = 10, expiration: int = 0):
        """A ``send_push(token, payload)`` for a PBX in the same trio process: straight to :meth:`handle`,
        no sockets (so a whole lab can run on memory streams under ``MockClock``). Raises
        :class:`PushRejected` on a non-200 answer, as :meth:`PushClient.sender` does."""

        async def send_push(token: str, payload: dict) -> None:
            headers = {"apns-push-type": "voip", "apns-topic": topic, "apns-priority": str(priority),
                       "apns-expiration": str(expiration)}
            body = json.dumps(payload, separators=(",", ":")).encode()
            status, _, answer = await self.handle("POST", _DEVICE_PATH + token, headers, body)
            if status != 200:
                raise PushRejected(status, json.loads(answer).get("reason"))

        return send_push

    # --- the nursery for delayed deliveries ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery that delayed deliveries run in, until cancelled; closes the relay client."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._relay is not None:
                with trio.CancelScope(shield=True):
                    await self._relay.aclose()

    # --- APNs --------------------------------------------------------------------------------------

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[Any, Any]],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        """One APNs request -> ``(status, response headers, response body)``."""
        token = None
        kind = None
        call_id = None
        apns_id = None
        try:
            hdrs = _headers(headers)
            if method.upper() != "POST":
                raise _Refused(405, "MethodNotAllowed")
            if not path.startswith(_DEVICE_PATH):
                raise _Refused(404, "BadPath")
            token = unquote(path[len(_DEVICE_PATH):])
            if not token:
                raise _Refused(400, "MissingDeviceToken")
            if "/" in token:
                raise _Refused(404, "BadPath")
            if not _HEX.fullmatch(token) or len(token) % 2:
                raise _Refused(400, "BadDeviceToken")
            token = token.lower()
            if hdrs.get("apns-push-type") != "voip":
                raise _Refused(400, "InvalidPushType")
            topic = hdrs.get("apns-topic")
            if topic is None:
                raise _Refused(400, "MissingTopic")
            if not topic or any(c.isspace() for c in topic) or not topic.endswith(self.topic_suffix):
                raise _Refused(400, "BadTopic")
            device = self._devices.get(token)
            if device is not None and device.topic is not None and device.topic != topic:
                raise _Refused(400, "DeviceTokenNotForTopic")
            priority = hdrs.get("apns-priority", "10")
            if priority not in ("1", "5", "10"):
                raise _Refused(400, "BadPriority")
            expiration = hdrs.get("apns-expiration")
            if expiration is not None and not re.fullmatch(r"[0-9]+", expiration):
                raise _Refused(400, "BadExpirationDate")
            if "apns-id" in hdrs:
                if not _UUID.fullmatch(hdrs["apns-id"]):
                    raise _Refused(400, "BadMessageId")
                apns_id = hdrs["apns-id"].lower()
            else:
                apns_id = str(uuid.uuid4())
            if len(hdrs.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID:
                raise _Refused(400, "BadCollapseId")
            if not body:
                raise _Refused(400, "PayloadEmpty")
            if len(body) > MAX_PAYLOAD:
                raise _Refused(413, "PayloadTooLarge")
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                payload = None
            if not isinstance(payload, dict):
                raise _Refused(400, "PayloadEmpty")
            kind = push_kind(payload)
            call_id = _call_id(payload)
            if device is None and self._relay is None:
                raise _Refused(410, "Unregistered")
        except _Refused as refused:
            self._record(token, kind, call_id, apns_id, refused.status, refused.reason, "rejected", [])
            extra = {"timestamp": int(time.time() * 1000)} if refused.status == 410 else {}
            return _error(refused.status, refused.reason, **extra)

        lint = self._lint(priority, expiration)
        kept = {k: v for k, v in hdrs.items() if k.startswith("apns-") or k == "authorization"}
        push = Push(token=token, kind=kind, payload=payload, headers=kept,
                    received_at=self.timeline.now(), apns_id=apns_id)
        return await self._dispatch(push, device, call_id, lint)

    def _lint(self, priority: str, expiration: str | None) -> list[str]:
        lint = []
        if expiration is None:
            lint.append("apns-expiration is missing: send 0 for VoIP pushes (deliver now or never)")
        elif expiration != "0":
            lint.append(f"apns-expiration is {expiration}, not 0: APNs stores and retries a VoIP push "
                        "for a call that may be long over")
        if priority != "10":
            lint.append(f"apns-priority is {priority}, not 10: a VoIP push should be delivered immediately")
        return lint

    async def _dispatch(self, push: Push, device: _Device | None, call_id: str | None,
                        lint: list[str]) -> tuple[int, dict[str, str], bytes]:
        faults = self.faults
        ok = (200, {"apns-id": push.apns_id}, b"")
        copies = 1 + faults.duplicate
        if faults.drop_all or (faults.drop_cancel and push.kind == "cancel"):
            self._record(push.token, push.kind, call_id, push.apns_id, 200, None, "dropped", lint,
                         fault="drop_all" if faults.drop_all else "drop_cancel")
            return ok
        if faults.delay > 0:
            if self._nursery is None:
                raise RuntimeError("a push delay needs the gateway's nursery: start PushGateway.run first")
            self._record(push.token, push.kind, call_id, push.apns_id, 200, None, "delayed", lint,
                         delay=faults.delay, copies=copies)
            self._nursery.start_soon(self._deliver_later, push, call_id, copies)
            return ok
        if device is None:  # relay mode
            status, reason, extra = await self._forward(push, copies)
            self._record(push.token, push.kind, call_id, push.apns_id, status, reason, "relayed", lint,
                         relay=self.relay_url, copies=copies, **extra)
            if status == 200:
                return ok
            return _error(status, reason or "InternalServerError", **extra)
        outcome = "duplicated" if copies > 1 else "delivered"
        delivered = self._put(device, push, copies)
        if not delivered:
            self._record(push.token, push.kind, call_id, push.apns_id, 410, "Unregistered", "rejected", lint)
            return _error(410, "Unregistered", timestamp=int(time.time() * 1000))
        self._record(push.token, push.kind, call_id, push.apns_id, 200, None, outcome, lint, copies=copies)
        return ok

    def _put(self, device: _Device, push: Push, copies: int) -> bool:
        try:
            for _ in range(copies):
                device.send.send_nowait(push)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._devices.pop(push.token, None)
            return False
        return True

    async def _forward(self, push: Push, copies: int) -> tuple[int, str | None, dict[str, Any]]:
        assert self._relay is not None
        passed = {k: v for k, v in push.headers.items()
                  if k.startswith("apns-") or k == "authorization"}
        passed["apns-id"] = push.apns_id
        if self.relay_auth is not None:  # the gateway's own provider token replaces the sender's
            passed["authorization"] = self.relay_auth.authorization()
        status, body = 502, None
        for _ in range(copies):
            try:
                status, body = await self._relay.send_raw(push.token, push.payload, passed)
            except PushError as exc:
                self.timeline.emit("warning", source="push", call_id=_call_id(push.payload),
                                   detail={"message": f"relay to {self.relay_url} failed: {exc}"})
                return 502, "RelayFailed", {}
        reason = body.get("reason") if isinstance(body, dict) else None
        extra = {"timestamp": body["timestamp"]} if isinstance(body, dict) and "timestamp" in body else {}
        return status, reason, extra

    async def _deliver_later(self, push: Push, call_id: str | None, copies: int) -> None:
        await trio.sleep(self.faults.delay)
        device = self._devices.get(push.token)
        if device is not None:
            ok = self._put(device, push, copies)
            status, reason = (200, None) if ok else (410, "Unregistered")
        elif self._relay is not None:
            status, reason, _ = await self._forward(push, copies)
        else:
            status, reason = 410, "Unregistered"
        self.timeline.emit("push-delivered", source="push", call_id=call_id,
                           summary=f"{push.kind} push delivered late to {push.token[:8]}",
                           detail={"push_kind": push.kind, "token": push.token, "apns_id": push.apns_id,
                                   "status": status, "reason": reason, "copies": copies,
                                   "delay": self.faults.delay})

    def _record(self, token: str | None, kind: str | None, call_id: str | None, apns_id: str | None,
                status: int, reason: str | None, outcome: str, lint: list[str], **extra: Any) -> None:
        for message in lint:
            self.timeline.emit("warning", source="push", call_id=call_id,
                               detail={"message": message, "token": token, "apns_id": apns_id})
        detail = {"push_kind": kind, "token": token, "status": status, "reason": reason,
                  "outcome": outcome, "apns_id": apns_id, "lint": lint, **extra}
        summary = f"{kind or '?'} push {outcome}" + (f" ({status} {reason})" if reason else "")
        self.timeline.emit("push", source="push", call_id=call_id, summary=summary, detail=detail)

    # --- ASGI ---------------------------------------------------------------------------------------

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app hypercorn serves: APNs on any path, plus the NDJSON push stream."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        match = _STREAM_PATH.fullmatch(path)
        if match and scope["method"] == "GET":
            await self._stream(match.group(1), receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_PAYLOAD + 1:  # enough to know it is too large; stop buffering
                body = body[: MAX_PAYLOAD + 1]
            if not message.get("more_body"):
                break
        status, headers, out = await self.handle(scope["method"], path, scope["headers"], body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": out})

    async def _stream(self, token: str, receive: Any, send: Any) -> None:
        token = unquote(token)
        if not _HEX.fullmatch(token) or len(token) % 2:
            status, headers, body = _error(400, "BadDeviceToken")
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
            await send({"type": "http.response.body", "body": body})
            return
        token = token.lower()
        self.unregister(token)  # a reconnecting device replaces its old stream
        channel = self.channel(token)
        self.timeline.emit("push-subscribe", source="push", detail={"token": token})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]})
        # hypercorn sends the status line with the first body message: send it now, so the device
        # knows it is registered as soon as it has the headers.
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        try:
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                async for push in channel:
                    line = json.dumps(push.to_json()).encode() + b"\n"
                    await send({"type": "http.response.body", "body": line, "more_body": True})
                nursery.cancel_scope.cancel()
        finally:
            if self._devices.get(token) is not None and self._devices[token].receive is channel:
                self.unregister(token)
            self.timeline.emit("push-unsubscribe", source="push", detail={"token": token})


# --- serving ----------------------------------------------------------------------------------------


async def serve_push_gateway(
    gateway: PushGateway,
    host: str,
    port: int,
    *,
    tls: bool = False,
    certfile: str | None = None,
    keyfile: str | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``gateway`` on ``host:port`` until cancelled; ``task_status.started((host, bound_port))``.

    Plain TCP: HTTP/2 with prior knowledge (h2c) and HTTP/1.1 on the same port. TLS (``certfile`` and
    ``keyfile`` PEM): ALPN h2 and http/1.1. Also runs :meth:`PushGateway.run`.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from faultlab.addr import format_hostport

    if tls and not (certfile and keyfile):
        raise ValueError("TLS needs a certificate and a key (certfile=, keyfile=)")
    config = Config()
    config.bind = [format_hostport(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("faultlab.push")
    config.graceful_timeout = 0.5
    config.keep_alive_timeout = 3600  # a device stream and a PBX's push connection stay open
    if tls:
        config.certfile = certfile
        config.keyfile = keyfile
        config.alpn_protocols = ["h2", "http/1.1"]

    class _Started:
        def started(self, binds: Any = None) -> None:
            bound = urlsplit(binds[0]).port
            assert bound is not None, binds
            task_status.started((host, bound))

    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        await serve(gateway.asgi, config, mode="asgi", task_status=_Started())  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


# --- clients ----------------------------------------------------------------------------------------


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
