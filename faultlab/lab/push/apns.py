"""APNs as the lab needs it: what a request must look like, what it should look like (lint), and the push it
becomes. Sans-IO: no trio, no sockets.

APNs, as far as the lab needs it (docs/callkit-and-sip.md §5)::

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
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

__all__ = ["MAX_PAYLOAD", "MAX_COLLAPSE_ID", "DEVICE_PATH", "ApnsRequest", "Push", "PushError", "PushRejected",
           "Refused", "call_id_of", "error_response", "is_token", "lint", "push_kind", "validate"]

MAX_PAYLOAD = 5120  # bytes, for VoIP pushes
MAX_COLLAPSE_ID = 64
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DEVICE_PATH = "/3/device/"


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


def call_id_of(payload: Mapping[str, Any]) -> str | None:
    """The SIP Call-ID a push payload carries (``"call-id"``, or ``aps["call-id"]``, Flexisip's shape)."""
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
        return call_id_of(self.payload)

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "kind": self.kind, "payload": self.payload, "headers": self.headers,
                "received_at": self.received_at, "apns_id": self.apns_id}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Push:
        return cls(token=obj["token"], kind=obj["kind"], payload=dict(obj["payload"]),
                   headers=dict(obj.get("headers", {})), received_at=float(obj["received_at"]),
                   apns_id=obj["apns_id"])


class Refused(Exception):
    """A request APNs would refuse: ``status`` and APNs's ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, reason: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
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
            raise Refused(400, "DuplicateHeaders")
        out[key] = value
    return out


def is_token(token: str) -> bool:
    """A device token as APNs takes it: hex digits, an even number of them."""
    return bool(_HEX.fullmatch(token)) and len(token) % 2 == 0


@dataclass
class ApnsRequest:
    """What :func:`validate` read from one request, filled in as far as it got (a refusal keeps the parts known)."""

    token: str | None = None
    kind: str | None = None
    call_id: str | None = None
    apns_id: str | None = None
    topic: str | None = None
    priority: str = "10"
    expiration: str | None = None
    headers: dict[str, str] | None = None
    payload: dict[str, Any] | None = None


def validate(request: ApnsRequest, method: str, path: str, headers: Mapping[str, str] | Iterable[tuple[Any, Any]],
             body: bytes, *, topic_suffix: str, topic_of: Any = lambda token: None) -> None:
    """Check one request as APNs would, filling ``request``; raises :class:`Refused` at the first fault, in APNs's
    order. ``topic_of(token)``: the topic the device with that token registered with, or None."""
    hdrs = request.headers = _headers(headers)
    if method.upper() != "POST":
        raise Refused(405, "MethodNotAllowed")
    if not path.startswith(DEVICE_PATH):
        raise Refused(404, "BadPath")
    token = unquote(path[len(DEVICE_PATH):])
    if not token:
        raise Refused(400, "MissingDeviceToken")
    if "/" in token:
        raise Refused(404, "BadPath")
    if not is_token(token):
        raise Refused(400, "BadDeviceToken")
    token = request.token = token.lower()
    if hdrs.get("apns-push-type") != "voip":
        raise Refused(400, "InvalidPushType")
    topic = request.topic = hdrs.get("apns-topic")
    if topic is None:
        raise Refused(400, "MissingTopic")
    if not topic or any(c.isspace() for c in topic) or not topic.endswith(topic_suffix):
        raise Refused(400, "BadTopic")
    registered = topic_of(token)
    if registered is not None and registered != topic:
        raise Refused(400, "DeviceTokenNotForTopic")
    priority = request.priority = hdrs.get("apns-priority", "10")
    if priority not in ("1", "5", "10"):
        raise Refused(400, "BadPriority")
    expiration = request.expiration = hdrs.get("apns-expiration")
    if expiration is not None and not re.fullmatch(r"[0-9]+", expiration):
        raise Refused(400, "BadExpirationDate")
    if "apns-id" in hdrs:
        if not _UUID.fullmatch(hdrs["apns-id"]):
            raise Refused(400, "BadMessageId")
        request.apns_id = hdrs["apns-id"].lower()
    else:
        request.apns_id = str(uuid.uuid4())
    if len(hdrs.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID:
        raise Refused(400, "BadCollapseId")
    _check_body(request, body)


def _check_body(request: ApnsRequest, body: bytes) -> None:
    if not body:
        raise Refused(400, "PayloadEmpty")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; JSON nested too deep
        payload = None
    if isinstance(payload, dict):  # known also for an oversize push, so that its refusal names its call
        request.kind = push_kind(payload)
        request.call_id = call_id_of(payload)
    if len(body) > MAX_PAYLOAD:
        raise Refused(413, "PayloadTooLarge")
    if not isinstance(payload, dict):
        raise Refused(400, "PayloadEmpty")
    request.payload = payload


def lint(priority: str, expiration: str | None) -> list[str]:
    """What a sender should fix although APNs accepts it (a VoIP push: expiration 0, priority 10)."""
    lint = []
    if expiration is None:
        lint.append("apns-expiration is missing: send 0 for VoIP pushes (deliver now or never)")
    elif expiration != "0":
        lint.append(f"apns-expiration is {expiration}, not 0: APNs stores and retries a VoIP push "
                    "for a call that may be long over")
    if priority != "10":
        lint.append(f"apns-priority is {priority}, not 10: a VoIP push should be delivered immediately")
    return lint
