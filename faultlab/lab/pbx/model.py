"""The embedded PBX's data: flows, bindings, calls, transactions, and the outputs of its logic
(:class:`SendBytes`, :class:`RequestPush`, :class:`Note`). Sans-IO."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Union

from faultlab.addr import format_hostport
from faultlab.sip import Header, Message, SipError, parse_datagram, parse_uri

__all__ = ["Address", "Binding", "ELSEWHERE_REASONS", "Flow", "MISBEHAVIOURS", "Note", "Output", "RequestPush",
           "SendBytes"]

Address = tuple[str, int]

#: ``cancel_elsewhere`` reasons and the Reason header each puts in the CANCEL (RFC 3326; §2.2 of the
#: reference: cause 200 = answered elsewhere, cause 600 or 603 = declined elsewhere).
ELSEWHERE_REASONS = {
    "answered": 'SIP;cause=200;text="Call completed elsewhere"',
    "declined": 'SIP;cause=600;text="Busy Everywhere"',
    "declined-603": 'SIP;cause=603;text="Decline"',
}

#: Known-bad PBXs for the lab's push-side checks (``PBX(misbehaviour=...)``): what each does wrong.
MISBEHAVIOURS = {
    "retries-push": "Retries a push APNs refused (3 more times, 1 s apart), keeps the token, and leaves the "
                    "caller's INVITE held until the hold runs out.",
    "stores-pushes": "Sends call pushes with apns-expiration now + 90 s (APNs stores and retries them) instead of 0.",
    "forgets-cancel-push": "Configured to send a cancel push when the caller cancels a held INVITE, never sends one.",
    "holds-forever": "Never ends a held INVITE: no 480 to the caller when the hold runs out.",
}

RR_USER = "faultlab-pbx"
"""User part of the PBX's Record-Route URIs, which is how it recognises its own Route entries."""


@dataclass(frozen=True)
class Flow:
    """Where a message came from / goes to.

    ``transport`` is ``udp``, ``tcp`` or ``tls``; ``peer`` the remote address; ``local`` the PBX's own
    address on it (the listener, used in Via and Record-Route); ``conn`` identifies a TCP/TLS
    connection (``None`` for UDP, where the flow is the source address on the listener's socket).
    """

    transport: str
    peer: Address
    local: Address
    conn: int | None = None

    def __str__(self) -> str:
        s = f"{self.transport}:{format_hostport(*self.peer)}"
        return s if self.conn is None else f"{s}#{self.conn}"


@dataclass(frozen=True)
class SendBytes:
    """Bytes on a flow; ``retransmission`` is n for the n-th retransmission of a request, else 0."""

    flow: Flow
    data: bytes
    retransmission: int = 0
    message: Message | None = field(default=None, compare=False, repr=False)  # ``data`` parsed, when at hand


@dataclass(frozen=True)
class RequestPush:
    """Ask the push gateway to push ``payload`` to device ``token`` (the binding's ``pn-prid``)."""

    token: str
    payload: dict
    call_id: str


@dataclass(frozen=True)
class Note:
    """A decision, for the timeline (``kind="pbx"``, ``detail``)."""

    detail: dict
    call_id: str | None = None


Output = Union[SendBytes, RequestPush, Note]


@dataclass
class Binding:
    user: str
    contact: str  # the Contact URI
    expires_at: float
    flow: Flow
    push: dict[str, str]
    registered_at: float

    @property
    def token(self) -> str | None:
        return self.push.get("pn-prid") or None

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


@dataclass
class Call:
    call_id: str
    user: str
    invite: Message  # as received from the caller
    caller_flow: Flow
    caller_tag: str | None
    server_branch: str | None
    state: str = "new"  # held | forwarded | confirmed | ended
    last_response: bytes | None = None
    final_sent: int | None = None  # status of the final response sent to the caller
    token: str | None = None
    callee_flow: Flow | None = None
    out_invite: Message | None = None  # as forwarded to the device
    out_branch: str | None = None
    device_final: int | None = None
    ended_by: str | None = None
    held_at: float | None = None
    cancelled: bool = False  # the PBX sent (or deferred) a CANCEL toward the device
    pending_cancel: bytes | None = None  # CANCEL waiting for the device's first provisional response
    late_ack: bytes | None = None  # the ACK for a 2xx the caller never saw (sent again on retransmissions)
    device_responded: bool = False  # the device answered the forwarded INVITE (even with 100)
    branches: set[str] = field(default_factory=set)  # the client transactions of this call
    server_keys: set[tuple[str, str]] = field(default_factory=set)  # the in-dialog requests it relayed
    ended_seen: float | None = None  # when the pruning first saw it ended (see lifetimes.py)


@dataclass
class ServerTxn:
    """A request the PBX relayed in a dialog, to recognise its retransmissions."""

    request: Message
    flow: Flow
    last_response: bytes | None = None
    final: int | None = None
    key: tuple[str, str] | None = None  # (branch, method) in the logic's table


@dataclass
class ClientTxn:
    method: str
    call_id: str | None
    in_flow: Flow | None  # where responses go (None: the PBX's own request, responses absorbed)
    server: ServerTxn | None = None
    final: int | None = None  # the first final response's status
    transport: str = "udp"  # of the flow the request went out on


@dataclass
class Retx:
    """Retransmission state of one client transaction over UDP (RFC 3261 §17.1.1.2, §17.1.2.2)."""

    branch: str
    method: str
    flow: Flow
    data: bytes
    call_id: str | None
    interval: float
    next_at: float
    timeout_at: float
    count: int = 0
    proceeding: bool = False

    @property
    def due(self) -> float:
        return min(self.next_at, self.timeout_at)


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def user_of(uri: str) -> str | None:
    try:
        parsed = parse_uri(uri)
    except SipError:
        return None
    return parsed.user or parsed.host


def set_request_uri(raw: bytes, uri: str) -> bytes:
    end = raw.index(b"\r\n")
    method, _, rest = raw[:end].partition(b" ")
    _, _, version = rest.rpartition(b" ")
    return method + b" " + uri.encode("utf-8", "surrogateescape") + b" " + version + raw[end:]


def parse_raw(raw: bytes) -> Message:
    msg = parse_datagram(raw)
    assert isinstance(msg, Message)
    return msg


def edit_top(raw: bytes, edits: Sequence[tuple[Sequence[Header], str, bool]]) -> bytes:
    """``raw`` with header lines put in, in one pass, as if one edit after the other: each edit is (the fields of
    its name in ``raw``, the lines, replace). A replacing edit takes the place of the first field, an adding one
    goes right above it (as :func:`faultlab.sip.add_top_header`); with no such field, either goes right after the
    start line, so above what earlier edits put there."""
    top = raw.index(b"\r\n") + 2
    placed = []
    for n, (fields, lines, replace) in enumerate(edits):
        data = lines.encode("utf-8", "surrogateescape")
        if fields:  # after what earlier edits put right above the same field
            placed.append((fields[0].start, 1, n, fields[0].end if replace else fields[0].start, data))
        else:  # right after the start line: above everything earlier edits put there
            placed.append((top, 0, -n, top, data))
    placed.sort()
    out, cursor = [], 0
    for start, _, _, end, data in placed:
        out += (raw[cursor:start], data)
        cursor = end
    out.append(raw[cursor:])
    return b"".join(out)


def set_header(msg: Message, name: str, value: str) -> bytes:
    """``msg.raw`` with the first ``name`` field replaced (or added after the start line)."""
    fields = msg.header_fields(name)
    raw = msg.raw
    line = f"{name}: {value}\r\n".encode()
    if fields:
        return raw[: fields[0].start] + line + raw[fields[0].end :]
    pos = raw.index(b"\r\n") + 2
    return raw[:pos] + line + raw[pos:]
