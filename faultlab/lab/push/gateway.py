"""The lab's push gateway: an APNs-compatible HTTP/2 endpoint (trio, served by hypercorn) that validates
requests as APNs would (:mod:`.apns`), applies push faults (:mod:`.faults`), and delivers.

Delivery: a device in the same process takes :meth:`PushGateway.channel`; a device in another process
reads ``GET /devices/<token>/pushes`` on the same port (HTTP/1.1, NDJSON, one :meth:`Push.to_json` per
line; see :func:`open_push_stream`); the lab's prompts for that device come on the same stream as lines with
``"kind": "prompt"`` (:meth:`PushGateway.send_prompt`, :mod:`faultlab.lab.prompts`). In relay mode pushes for tokens without a local device go to a
real (or mock) APNs over HTTP/2 with :class:`PushClient`, with the sender's ``authorization`` header, or
the gateway's own provider token when it has the team's key (``relay_auth``, :mod:`faultlab.lab.push.auth`).

Senders: :class:`PushClient` (HTTP/2, one reused connection) and, for the embedded PBX's
``send_push(token, payload)``, :meth:`PushClient.sender` over the network or :meth:`PushGateway.local_sender`
in the same process (no sockets; works under ``MockClock``). Both raise :class:`PushRejected` on a non-200.

Every request is a timeline event ``kind="push"``, ``source="push"``, with detail ``push_kind``,
``token``, ``status``, ``reason``, ``outcome`` (``delivered``, ``dropped``, ``delayed``, ``duplicated``,
``relayed``, ``stored`` or ``discarded`` (the device offline), or ``rejected`` for a 4xx), ``apns_id``,
``expiration`` (the ``apns-expiration`` header as sent, ``None`` when absent), ``size`` (payload bytes),
``delay``/``copies`` where they apply, and ``lint`` (the lint messages). Lints are also ``kind="warning"`` events
(``detail["message"]``). A delayed or stored push adds a ``kind="push-delivered"`` event when it is finally handed
over (``status`` 200, or 410 when the device is gone by then).

Faults (:class:`PushFaults`) that refuse (``refuse``) answer the sender with that status and reason, as APNs
would (410 with a ``timestamp``). ``offline`` plays a device out of APNs's reach: pushes with a non-zero
``apns-expiration`` (or none) are stored and delivered when it comes back, if they have not expired by then
(``wall_clock``, UNIX seconds, decides); pushes with ``apns-expiration: 0`` are discarded.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import trio

from ..prompts import Prompt
from ..timeline import Timeline
from .apns import (
    DEVICE_PATH,
    MAX_PAYLOAD,
    ApnsRequest,
    Push,
    PushError,
    PushRejected,
    Refused,
    call_id_of,
    error_response,
    is_token,
    lint,
    validate,
)
from .auth import ApnsSigner
from .client import PushClient
from .faults import PushFaults

__all__ = ["PushGateway", "serve_push_gateway"]

_STREAM_PATH = re.compile(r"/devices/([^/]+)/pushes")
_KEPT_BODY = 4 * MAX_PAYLOAD  # bytes of a request body read at most: an oversize push's call is still named


@dataclass
class _Device:
    send: trio.MemorySendChannel[Push]
    receive: trio.MemoryReceiveChannel[Push]
    topic: str | None = None
    streamed: bool = False  # a GET /devices/<token>/pushes reader: prompts go there too (send_prompt)


class PushGateway:
    """APNs semantics (:meth:`handle`), push faults, and delivery to devices' channels or to a relay.

    ``relay_auth``: sign relayed pushes with APNs token authentication (``authorization: bearer <JWT>`` from
    :class:`~faultlab.lab.push.auth.ApnsSigner`), replacing any ``authorization`` the sender sent; without it
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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeline = timeline
        self.wall_clock = wall_clock
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

    def send_prompt(self, token: str, prompt: Prompt) -> bool:
        """Put ``prompt`` on the push stream of the device with ``token`` (a ``"kind": "prompt"`` line); False
        when no device reads its pushes from the stream (in-process channels get pushes only)."""
        device = self._devices.get(token.lower())
        if device is None or not device.streamed:
            return False
        try:
            device.send.send_nowait(prompt)  # type: ignore[arg-type]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def local_sender(self, *, topic: str, priority: int = 10, expiration: int = 0):
        """A ``send_push(token, payload)`` for a PBX in the same trio process: straight to :meth:`handle`,
        no sockets (so a whole lab can run on memory streams under ``MockClock``). Raises
        :class:`PushRejected` on a non-200 answer, as :meth:`PushClient.sender` does. ``expiration_at``
        (UNIX seconds) replaces ``expiration`` for one push."""

        async def send_push(token: str, payload: dict, expiration_at: int | None = None) -> None:
            sent = expiration if expiration_at is None else expiration_at
            headers = {"apns-push-type": "voip", "apns-topic": topic, "apns-priority": str(priority),
                       "apns-expiration": str(sent)}
            body = json.dumps(payload, separators=(",", ":")).encode()
            status, _, answer = await self.handle("POST", DEVICE_PATH + token, headers, body)
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
        request = ApnsRequest()
        try:
            validate(request, method, path, headers, body, topic_suffix=self.topic_suffix, topic_of=self._topic_of)
            device = self._devices.get(request.token or "")
            if device is None and self._relay is None:
                raise Refused(410, "Unregistered")
            if self.faults.refuse is not None:
                raise Refused(*self.faults.refuse)
        except Refused as refused:
            self._record(request.token, request.kind, request.call_id, request.apns_id, refused.status,
                         refused.reason, "rejected", [], expiration=request.expiration, size=len(body),
                         **({"fault": "refuse"} if self.faults.refuse is not None else {}))
            extra = {"timestamp": int(time.time() * 1000)} if refused.status == 410 else {}
            return error_response(refused.status, refused.reason, **extra)

        assert request.token and request.kind and request.apns_id and request.payload is not None
        assert request.headers is not None
        warnings = lint(request.priority, request.expiration)
        kept = {k: v for k, v in request.headers.items() if k.startswith("apns-") or k == "authorization"}
        push = Push(token=request.token, kind=request.kind, payload=request.payload, headers=kept,
                    received_at=self.timeline.now(), apns_id=request.apns_id)
        return await self._dispatch(push, device, request.call_id, warnings,
                                    {"expiration": request.expiration, "size": len(body)})

    def _topic_of(self, token: str) -> str | None:
        device = self._devices.get(token)
        return device.topic if device is not None else None

    async def _dispatch(self, push: Push, device: _Device | None, call_id: str | None,
                        lint: list[str], meta: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        faults = self.faults
        ok = (200, {"apns-id": push.apns_id}, b"")
        copies = 1 + faults.duplicate
        if faults.drop_all or (faults.drop_cancel and push.kind == "cancel"):
            self._record(push.token, push.kind, call_id, push.apns_id, 200, None, "dropped", lint,
                         fault="drop_all" if faults.drop_all else "drop_cancel", **meta)
            return ok
        later = self._later(push, meta)
        if later is not None:
            outcome, delay = later
            if outcome == "discarded":
                self._record(push.token, push.kind, call_id, push.apns_id, 200, None, outcome, lint,
                             fault="offline", offline=faults.offline, **meta)
                return ok
            if self._nursery is None:
                raise RuntimeError("a push delay needs the gateway's nursery: start PushGateway.run first")
            self._record(push.token, push.kind, call_id, push.apns_id, 200, None, outcome, lint,
                         delay=delay, copies=copies, **meta)
            self._nursery.start_soon(self._deliver_later, push, call_id, copies, delay)
            return ok
        if device is None:  # relay mode
            status, reason, extra = await self._forward(push, copies)
            self._record(push.token, push.kind, call_id, push.apns_id, status, reason, "relayed", lint,
                         relay=self.relay_url, copies=copies, **extra, **meta)
            if status == 200:
                return ok
            return error_response(status, reason or "InternalServerError", **extra)
        outcome = "duplicated" if copies > 1 else "delivered"
        delivered = self._put(device, push, copies)
        if not delivered:
            self._record(push.token, push.kind, call_id, push.apns_id, 410, "Unregistered", "rejected", lint, **meta)
            return error_response(410, "Unregistered", timestamp=int(time.time() * 1000))
        self._record(push.token, push.kind, call_id, push.apns_id, 200, None, outcome, lint, copies=copies, **meta)
        return ok

    def _later(self, push: Push, meta: dict[str, Any]) -> tuple[str, float] | None:
        """What the ``offline`` and ``delay`` faults do with an accepted push: ``("discarded", 0)``,
        ``("stored", seconds)``, ``("delayed", seconds)``, or None (deliver now)."""
        faults = self.faults
        if faults.offline > 0:
            expiration = meta.get("expiration")
            if expiration == "0":
                return "discarded", 0.0  # APNs tries once, does not store
            if expiration is not None and int(expiration) <= self.wall_clock() + faults.offline:
                return "discarded", 0.0  # stored, but expired before the device came back
            return "stored", faults.offline + faults.delay
        if faults.delay > 0:
            return "delayed", faults.delay
        return None

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
                self.timeline.emit("warning", source="push", call_id=call_id_of(push.payload),
                                   detail={"message": f"relay to {self.relay_url} failed: {exc}"})
                return 502, "RelayFailed", {}
        reason = body.get("reason") if isinstance(body, dict) else None
        extra = {"timestamp": body["timestamp"]} if isinstance(body, dict) and "timestamp" in body else {}
        return status, reason, extra

    async def _deliver_later(self, push: Push, call_id: str | None, copies: int, delay: float) -> None:
        await trio.sleep(delay)
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
                                   "delay": delay})

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
            if len(body) > _KEPT_BODY:  # enough to know it is too large (and, mostly, whose call); stop buffering
                body = body[:_KEPT_BODY]
            if not message.get("more_body"):
                break
        status, headers, out = await self.handle(scope["method"], path, scope["headers"], body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": out})

    async def _stream(self, token: str, receive: Any, send: Any) -> None:
        token = unquote(token)
        if not is_token(token):
            status, headers, body = error_response(400, "BadDeviceToken")
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
            await send({"type": "http.response.body", "body": body})
            return
        token = token.lower()
        self.unregister(token)  # a reconnecting device replaces its old stream
        channel = self.channel(token)
        self._devices[token].streamed = True
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
