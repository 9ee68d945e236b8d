"""The embedded PBX's SIP logic, sans-IO: (message, flow, now) in, actions out.

:class:`PbxLogic` is a small stateful proxy and registrar (RFC 3261 §10, §16) that speaks RFC 8599 push:

* **Registrar.** REGISTER binds the To user to each Contact (``expires`` contact parameter, else the
  Expires header, else :attr:`PbxLogic.default_expires`); ``Expires: 0`` (or ``;expires=0``) removes a
  binding, ``Contact: *`` with ``Expires: 0`` removes them all. A Contact carrying RFC 8599 parameters
  (``pn-provider``, ``pn-prid``, ``pn-param``) is a *push binding*; a refresh with the same ``pn-prid``
  replaces it even when its URI changed (a new port after a wake-up). The 200 lists every binding with
  its remaining ``expires``. Each binding remembers the **flow** its REGISTER came on (transport and
  source address, or the TCP/TLS connection): requests for the user go back on that flow, as Kamailio
  does with NAT handling, whatever the Contact says.
* **Calls.** An INVITE for a registered user is answered 100 Trying. If the newest binding has a
  ``pn-prid``, the PBX asks for a VoIP push (:class:`Push`, type ``call``) and **holds** the INVITE
  until a REGISTER with a non-zero expiry arrives from that user, then forwards it on that REGISTER's
  flow; after :attr:`PbxLogic.hold` seconds without one, the caller gets 480. A binding without push
  parameters gets the INVITE at once. A user without bindings gets 404.
* **Forwarding.** The PBX retargets the Request-URI to the binding's Contact URI, adds its Via,
  decrements Max-Forwards and Record-Routes itself (two entries when the two legs use different
  transports or listeners, RFC 5658 style), so in-dialog requests (ACK, BYE, re-INVITE) come back
  through it. It relays responses on the flow the request came from. In-dialog requests are routed by
  dialog state: its own Route entries are removed, and the request goes to the other party's flow
  (the caller is recognised by its From tag).
* **CANCEL.** While the INVITE is held: 200 to the CANCEL, 487 to the INVITE, nothing sent to the
  device, and (when :attr:`PbxLogic.cancel_push` is on, the default) a ``cancel`` push. After forwarding:
  200 to the CANCEL, and a CANCEL toward the device carrying the caller's Reason header(s) byte for
  byte; the device's 487 is relayed to the caller (and ACKed by the PBX, hop by hop).
* **Flow lost.** When the TCP/TLS connection an INVITE was forwarded on ends before the device answered
  anything, the INVITE is held again (:meth:`PbxLogic.flow_closed`), and the device's next REGISTER gets it
  on its new connection; a REGISTER on a new connection that comes first takes the unanswered INVITE along.
  A connection that ends after the device answered something (or while the INVITE is being cancelled) ends
  the call for the caller: 487 if it was cancelled, else 480.
* **CANCEL deadline.** A forwarded INVITE that has no final response 64*T1 after the PBX's CANCEL (or whose
  CANCEL times out) is ended by the PBX: 487 to the caller (RFC 3261 §9.1).
* **Ring timeout.** :attr:`PbxLogic.ring_timeout` seconds after forwarding without a final response:
  CANCEL toward the device (no Reason), 480 to the caller at once.
* **Elsewhere.** :meth:`PbxLogic.cancel_elsewhere` plays "a second device answered / declined":
  CANCEL toward the device with ``Reason: SIP;cause=200;text="Call completed elsewhere"`` (answered)
  or ``Reason: SIP;cause=600;text="Busy Everywhere"`` (declined), and **487** to the caller at once
  (kept simple: the lab has no second device, so the caller is told the request was terminated; the
  Reason is what the device under test judges). On a held INVITE it acts as a CANCEL while held.
  The device's 487 is ACKed and absorbed.

Non-2xx final responses from the device are ACKed by the PBX (RFC 3261 §17.1.1.3); the caller's ACK
to a non-2xx final response is absorbed. A device that answers 2xx after the caller already got its
final response (the CANCEL crossed the 200) is ACKed and sent a BYE (and ACKed again if it retransmits
that 2xx).

**Retransmissions** (RFC 3261 §17.1). Every request the PBX sends over UDP (the forwarded INVITE,
CANCEL, in-dialog requests it relays either way, its own BYE; not ACK) is a client transaction keyed by
``(branch, CSeq method)`` with timers on the ``now`` the driver passes: an INVITE is retransmitted per
Timer A (:attr:`PbxLogic.t1`, doubling without cap) until any response with its branch; any other
request per Timer E (T1 doubling, capped at :attr:`PbxLogic.t2`, and every T2 once a provisional
response came) until a final response. Retransmissions are :class:`Send` actions with
``retransmission`` = 1, 2, ... After 64*T1 without the response that ends it (Timer B / F) the
transaction times out (a ``timeout`` note): a forwarded INVITE gets the caller 408 (487 if the caller
had cancelled), a relayed request gets its sender 408, a BYE ends the call. Over TCP/TLS nothing is
retransmitted and nothing times out (the ring timeout still applies). A CANCEL toward a device whose
INVITE is still being retransmitted (no response yet) waits for its first provisional response (§9.1;
``cancel-deferred`` note) and is dropped if a final response or Timer B comes first.

As a stateful element the PBX absorbs retransmissions: a retransmitted INVITE gets the last response
the caller got again (the PBX's own or one it relayed); a retransmitted CANCEL gets 200 again and
nothing more toward the device; a retransmitted in-dialog request (BYE, re-INVITE, ...) gets the
response already relayed for it, or nothing while its forwarded copy is still pending (the PBX
retransmits that copy itself); a retransmitted final response to a non-INVITE request the PBX
forwarded is absorbed; a retransmitted non-2xx final response from the device is ACKed again and not
relayed. A retransmitted 2xx to the INVITE is relayed to the caller again (§13.3.1.4: the UAS
retransmits 2xx end to end until the caller's ACK reaches it).

Not handled (the lab does not need them): forking to several bindings (the newest binding gets the
call), authentication, 423 Interval Too Brief, hop-by-hop ACK of a non-2xx answer to a re-INVITE
(re-INVITEs are relayed like any in-dialog request), strict routers, and a failing flow (a send on a
closed connection is a timeline warning; the caller then gets 480 at the ring timeout).

Actions: :class:`Send` (bytes on a flow), :class:`Push` (ask the push gateway), :class:`Note` (a
decision for the timeline). Times are whatever clock the caller passes as ``now`` (trio's in
:class:`faultlab.lab.pbx.PBX`), so timers run under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

from faultlab.addr import format_hostport
from faultlab.sip import (
    MAGIC_COOKIE,
    KeepAlive,
    Message,
    SipError,
    add_top_header,
    build_response,
    format_via,
    parse_datagram,
    parse_uri,
    push_params,
    remove_top_value,
)

__all__ = [
    "Action",
    "Binding",
    "Flow",
    "Note",
    "PbxLogic",
    "Push",
    "Send",
    "ELSEWHERE_REASONS",
]

Address = tuple[str, int]

#: ``cancel_elsewhere`` reasons and the Reason header each puts in the CANCEL (RFC 3326; §2.2 of the
#: reference: cause 200 = answered elsewhere, cause 600 = declined elsewhere).
ELSEWHERE_REASONS = {
    "answered": 'SIP;cause=200;text="Call completed elsewhere"',
    "declined": 'SIP;cause=600;text="Busy Everywhere"',
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
class Send:
    """Bytes on a flow; ``retransmission`` is n for the n-th retransmission of a request, else 0."""

    flow: Flow
    data: bytes
    retransmission: int = 0


@dataclass(frozen=True)
class Push:
    """Ask the push gateway to push ``payload`` to device ``token`` (the binding's ``pn-prid``)."""

    token: str
    payload: dict
    call_id: str


@dataclass(frozen=True)
class Note:
    """A decision, for the timeline (``kind="pbx"``, ``detail``)."""

    detail: dict
    call_id: str | None = None


Action = Union[Send, Push, Note]


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
class _Call:
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


@dataclass
class _ServerTxn:
    """A request the PBX relayed in a dialog, to recognise its retransmissions."""

    request: Message
    flow: Flow
    last_response: bytes | None = None
    final: int | None = None


@dataclass
class _ClientTxn:
    method: str
    call_id: str | None
    in_flow: Flow | None  # where responses go (None: the PBX's own request, responses absorbed)
    server: _ServerTxn | None = None
    final: int | None = None  # the first final response's status


@dataclass
class _Retx:
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


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def _user_of(uri: str) -> str | None:
    try:
        parsed = parse_uri(uri)
    except SipError:
        return None
    return parsed.user or parsed.host


def _set_request_uri(raw: bytes, uri: str) -> bytes:
    end = raw.index(b"\r\n")
    method, _, rest = raw[:end].partition(b" ")
    _, _, version = rest.rpartition(b" ")
    return method + b" " + uri.encode("utf-8", "surrogateescape") + b" " + version + raw[end:]


def _parse(raw: bytes) -> Message:
    msg = parse_datagram(raw)
    assert isinstance(msg, Message)
    return msg


def _set_header(msg: Message, name: str, value: str) -> bytes:
    """``msg.raw`` with the first ``name`` field replaced (or added after the start line)."""
    fields = msg.header_fields(name)
    raw = msg.raw
    line = f"{name}: {value}\r\n".encode()
    if fields:
        return raw[: fields[0].start] + line + raw[fields[0].end :]
    pos = raw.index(b"\r\n") + 2
    return raw[:pos] + line + raw[pos:]


class PbxLogic:
    """The PBX state machine. Not thread- or task-safe by itself: one driver calls it."""

    def __init__(
        self,
        *,
        hold: float = 8.0,
        ring_timeout: float = 45.0,
        cancel_push: bool = True,
        default_expires: int = 3600,
        advertise: Mapping[str, Address] | None = None,
        wall_clock: Callable[[], float] = time.time,
        t1: float = 0.5,
        t2: float = 4.0,
    ) -> None:
        self.hold = hold
        self.t1 = t1
        self.t2 = t2
        self.ring_timeout = ring_timeout
        self.cancel_push = cancel_push
        self.default_expires = default_expires
        self.advertise = dict(advertise or {})
        self.wall_clock = wall_clock
        self._bindings: dict[str, list[Binding]] = {}
        self._calls: dict[str, _Call] = {}
        self._txns: dict[str, _ClientTxn] = {}
        self._timers: dict[tuple[str, str], float] = {}  # (kind, call_id) -> deadline
        self._retx: dict[tuple[str, str], _Retx] = {}  # (branch, CSeq method) -> UDP retransmissions
        self._servers: dict[tuple[str, str], _ServerTxn] = {}  # (branch, method) of relayed requests
        self._seq = 0

    # ------------------------------------------------------------------ queries

    def bindings(self, user: str, now: float) -> list[Binding]:
        """The user's unexpired bindings, oldest first."""
        live = [b for b in self._bindings.get(user, []) if b.expires_at > now]
        if live:
            self._bindings[user] = live
        else:
            self._bindings.pop(user, None)
        return list(live)

    def call_state(self, call_id: str) -> str | None:
        """``held``, ``forwarded``, ``cancelling`` (the PBX CANCELled the device after a ring timeout or
        "elsewhere"), ``confirmed``, ``late-answer`` (the device answered after the caller got its final
        response: the PBX ACKs and BYEs it), ``ended``, or ``None`` (unknown call)."""
        call = self._calls.get(call_id)
        return None if call is None else call.state

    def next_deadline(self) -> float | None:
        return min([*self._timers.values(), *(r.due for r in self._retx.values())], default=None)

    def retransmitting(self) -> list[tuple[str, str]]:
        """``(branch, method)`` of every client transaction whose request is being retransmitted."""
        return list(self._retx)

    # ------------------------------------------------------------------ entry points

    def receive(self, message: Message | KeepAlive, flow: Flow, now: float) -> list[Action]:
        """Handle one message that arrived on ``flow``."""
        if isinstance(message, KeepAlive):
            return [Send(flow, b"\r\n")] if message.raw == b"\r\n\r\n" and flow.conn is not None else []
        try:
            if message.is_request:
                return self._request(message, flow, now)
            return self._response(message, flow, now)
        except SipError as exc:
            out: list[Action] = [Note({"action": "bad-message", "error": str(exc)})]
            if message.is_request and message.method != "ACK":
                try:
                    out.append(Send(flow, build_response(message, 400, str(exc)[:100].replace("\r", " ")
                                                         .replace("\n", " "))))
                except ValueError:
                    pass
            return out

    def flow_closed(self, flow: Flow, now: float) -> list[Action]:
        """A TCP/TLS connection ended. A call whose INVITE went out on it and got no response at all is held
        again (as before its REGISTER), so the device's next REGISTER, on a new connection, gets the INVITE
        (RFC 5626's flow recovery, seen from the registrar); the hold timer runs again."""
        out: list[Action] = []
        for call in list(self._calls.values()):
            if call.callee_flow != flow or call.state not in ("forwarded", "cancelling") or call.device_final:
                continue
            if not call.device_responded and not call.cancelled and call.final_sent is None:
                self._forget_branch(call)
                call.state = "held"
                call.held_at = now
                self._timers[("hold", call.call_id)] = now + self.hold
                out.append(Note({"action": "rehold", "flow": str(flow), "hold": self.hold}, call.call_id))
            else:  # the device had answered something, or the call was being cancelled: nothing more will come
                out += self._give_up_on_device(call, "flow-lost")
        return out

    def _forget_branch(self, call: _Call) -> None:
        """The forwarded INVITE's client transaction is over (its flow died): a late response on it is dropped."""
        self._timers.pop(("ring", call.call_id), None)
        if call.out_branch is not None:
            self._retx.pop((call.out_branch, "INVITE"), None)
            self._retx.pop((call.out_branch, "CANCEL"), None)
            self._txns.pop(call.out_branch, None)
        call.out_branch = None
        call.callee_flow = None
        call.pending_cancel = None

    def _give_up_on_device(self, call: _Call, why: str) -> list[Action]:
        """No final response will come from the device: end the call, 487 to the caller if it was cancelled (by
        the caller or the PBX), else 480."""
        self._timers.pop(("cancel", call.call_id), None)
        out: list[Action] = [Note({"action": why}, call.call_id)]
        self._forget_branch(call)
        call.state = "ended"
        call.ended_by = call.ended_by or why
        if call.final_sent is None:
            out += (self._answer_caller(call, 487) if call.cancelled
                    else self._answer_caller(call, 480, "Temporarily Unavailable"))
        return out

    def on_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``."""
        out: list[Action] = []
        for key, deadline in sorted(self._timers.items(), key=lambda kv: kv[1]):
            if deadline > now or self._timers.get(key) != deadline:
                continue
            del self._timers[key]
            kind, call_id = key
            call = self._calls.get(call_id)
            if call is None:
                continue
            if kind == "hold" and call.state == "held":
                out.append(Note({"action": "hold-timeout", "user": call.user, "hold": self.hold}, call_id))
                call.state = "ended"
                call.ended_by = "hold-timeout"
                out += self._answer_caller(call, 480, "Temporarily Unavailable")
            elif kind == "cancel" and call.device_final is None and call.state in ("forwarded", "cancelling"):
                out += self._give_up_on_device(call, "cancel-timeout")
            elif kind == "ring" and call.state == "forwarded" and call.final_sent is None:
                out.append(Note({"action": "ring-timeout", "ring_timeout": self.ring_timeout}, call_id))
                call.ended_by = "ring-timeout"
                out += self._cancel_device(call, reasons=[], now=now)
                out += self._answer_caller(call, 480, "Temporarily Unavailable")
        for key, retx in sorted(self._retx.items(), key=lambda kv: kv[1].due):
            if retx.due > now or self._retx.get(key) is not retx:
                continue
            if retx.timeout_at <= now:
                del self._retx[key]
                out += self._txn_timeout(retx, now)
                continue
            retx.count += 1
            out.append(Send(retx.flow, retx.data, retransmission=retx.count))
            if retx.proceeding:
                retx.interval = self.t2
            elif retx.method == "INVITE":
                retx.interval *= 2  # Timer A: no cap
            else:
                retx.interval = min(retx.interval * 2, self.t2)  # Timer E
            retx.next_at = now + retx.interval
        return out

    def push_failed(self, call_id: str, error: str, now: float) -> list[Action]:
        """The push for a held call could not be sent: 480 to the caller (RFC 8599 §5.6.2)."""
        call = self._calls.get(call_id)
        if call is None or call.state != "held":
            return []
        self._timers.pop(("hold", call_id), None)
        call.state = "ended"
        call.ended_by = "push-failed"
        return [Note({"action": "push-failed", "error": error}, call_id),
                *self._answer_caller(call, 480, "Temporarily Unavailable")]

    def cancel_elsewhere(self, call_id: str, reason: str, now: float) -> list[Action]:
        """End a ringing call as if another device of the user had answered or declined it.

        ``reason`` is ``"answered"`` (``Reason: SIP;cause=200;text="Call completed elsewhere"``) or
        ``"declined"`` (``Reason: SIP;cause=600;text="Busy Everywhere"``). Forwarded call: CANCEL with
        that Reason toward the device, 487 to the caller. Held call: as a CANCEL while held (487 to the
        caller, nothing to the device, cancel push if enabled). Raises ``KeyError`` for an unknown
        call and ``ValueError`` for another reason or a call no longer ringing.
        """
        if reason not in ELSEWHERE_REASONS:
            raise ValueError(f"reason must be one of {sorted(ELSEWHERE_REASONS)}, not {reason!r}")
        call = self._calls[call_id]
        if call.final_sent is not None or call.state not in ("held", "forwarded"):
            raise ValueError(f"call {call_id} is not ringing (state {call.state}, final {call.final_sent})")
        out: list[Action] = [Note({"action": "elsewhere", "reason": reason, "state": call.state}, call_id)]
        call.ended_by = f"elsewhere-{reason}"
        if call.state == "held":
            out += self._end_held(call)
        else:
            out += self._cancel_device(call, reasons=[ELSEWHERE_REASONS[reason]], now=now)
            out += self._answer_caller(call, 487)
        return out

    # ------------------------------------------------------------------ helpers

    def _local(self, flow: Flow) -> Address:
        return self.advertise.get(flow.transport, flow.local)

    def _new_branch(self, *parts: str) -> str:
        self._seq += 1
        return MAGIC_COOKIE + "pbx" + _digest(str(self._seq), *parts)

    def _via(self, flow: Flow, branch: str) -> str:
        host, port = self._local(flow)
        return format_via(flow.transport.upper(), host, port, branch, rport=True)

    def _rr(self, flow: Flow) -> str:
        host, port = self._local(flow)
        uri = f"sip:{RR_USER}@{format_hostport(host, port)}"
        if flow.transport != "udp":
            uri += f";transport={flow.transport}"
        return f"<{uri};lr>"

    def _respond(self, request: Message, flow: Flow, status: int, reason: str | None = None,
                 **kwargs) -> Send:
        return Send(flow, build_response(request, status, reason, **kwargs))

    def _answer_caller(self, call: _Call, status: int, reason: str | None = None) -> list[Action]:
        data = build_response(call.invite, status, reason, to_tag=_digest("pbx-tag", call.call_id)[:10])
        call.last_response = data
        call.final_sent = status
        return [Send(call.caller_flow, data)]

    def _start_retx(self, send: Send, branch: str, method: str, call_id: str | None, now: float) -> None:
        """Retransmit ``send`` (a request) until its transaction ends, when its flow is UDP."""
        if send.flow.transport != "udp" or method == "ACK":
            return
        self._retx[(branch, method)] = _Retx(branch, method, send.flow, send.data, call_id, interval=self.t1,
                                             next_at=now + self.t1, timeout_at=now + 64 * self.t1)

    def _txn_response(self, branch: str, method: str, status: int) -> None:
        """A response for client transaction ``(branch, method)``: stop or slow its retransmissions."""
        retx = self._retx.get((branch, method))
        if retx is None:
            return
        if method == "INVITE" or status >= 200:
            del self._retx[(branch, method)]
        else:
            retx.proceeding = True  # Timer E now fires every T2

    def _txn_timeout(self, retx: _Retx, now: float) -> list[Action]:
        """Timer B / F: the client transaction got no (final) response in 64*T1 (RFC 3261 §17.1)."""
        out: list[Action] = [Note({"action": "timeout", "timer": "B" if retx.method == "INVITE" else "F",
                                   "method": retx.method, "branch": retx.branch, "flow": str(retx.flow),
                                   "retransmissions": retx.count}, retx.call_id)]
        call = self._calls.get(retx.call_id or "")
        txn = self._txns.get(retx.branch)
        if retx.method == "CANCEL":
            if call is not None and call.device_final is None and call.state in ("forwarded", "cancelling"):
                out += self._give_up_on_device(call, "cancel-timeout")  # the device answers nothing any more
            return out
        if retx.method == "INVITE" and call is not None and retx.branch == call.out_branch:
            self._timers.pop(("ring", call.call_id), None)
            call.pending_cancel = None
            call.device_final = 408
            if call.final_sent is None:
                call.ended_by = call.ended_by or "timeout"
                call.state = "ended"
                if call.cancelled:
                    out += self._answer_caller(call, 487)
                else:
                    out += self._answer_caller(call, 408, "Request Timeout")
            elif call.state in ("forwarded", "cancelling"):
                call.state = "ended"
            return out
        if txn is not None:
            txn.final = 408
            server = txn.server
            if server is not None and server.final is None:  # tell the sender (RFC 3261 §16.7 step 6)
                data = build_response(server.request, 408, "Request Timeout")
                server.last_response = data
                server.final = 408
                out.append(Send(server.flow, data))
        if retx.method == "BYE" and call is not None:
            call.state = "ended"
        return out

    def _forward(self, msg: Message, out_flow: Flow, in_flow: Flow | None, *, request_uri: str | None,
                 record_route: bool, call_id: str | None, now: float,
                 server: _ServerTxn | None = None) -> tuple[Message, str, Send]:
        raw = msg.raw
        if request_uri is not None:
            raw = _set_request_uri(raw, request_uri)
        m = _parse(raw)
        mf = m.get("max-forwards")
        hops = int(mf) - 1 if mf is not None and mf.strip().isdigit() else 69
        m = _parse(_set_header(m, "Max-Forwards", str(max(hops, 0))))
        if record_route:
            assert in_flow is not None
            m = _parse(add_top_header(m, "Record-Route", self._rr(in_flow)))
            if (in_flow.transport, self._local(in_flow)) != (out_flow.transport, self._local(out_flow)):
                m = _parse(add_top_header(m, "Record-Route", self._rr(out_flow)))
        branch = self._new_branch(msg.get("call-id") or "", msg.get("cseq") or "", str(out_flow))
        m = _parse(add_top_header(m, "Via", self._via(out_flow, branch)))
        send = Send(out_flow, m.raw)
        if msg.method != "ACK":
            method = msg.cseq.method if msg.cseq else (msg.method or "")
            self._txns[branch] = _ClientTxn(method, call_id, in_flow, server)
            self._start_retx(send, branch, method, call_id, now)
        return m, branch, send

    # ------------------------------------------------------------------ requests

    def _request(self, msg: Message, flow: Flow, now: float) -> list[Action]:
        method = msg.method
        if method == "REGISTER":
            return self._register(msg, flow, now)
        if method == "CANCEL":
            return self._cancel(msg, flow, now)
        if method == "INVITE" and msg.to_tag is None:
            return self._invite(msg, flow, now)
        if msg.to_tag is not None or method == "ACK":
            return self._in_dialog(msg, flow, now)
        if method == "OPTIONS":
            return [self._respond(msg, flow, 200, headers=[("Allow", "INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS")])]
        return [self._respond(msg, flow, 405, headers=[("Allow", "INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS")])]

    def _register(self, msg: Message, flow: Flow, now: float) -> list[Action]:
        to = msg.to_addr
        user = _user_of(to.uri) if to is not None else None
        if user is None:
            return [self._respond(msg, flow, 400, "Bad To")]
        header_expires = msg.expires
        contacts = msg.contacts
        out: list[Action] = []
        refreshed: Binding | None = None
        bindings = self.bindings(user, now)
        if any(c.uri == "*" for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return [self._respond(msg, flow, 400, "Invalid Contact *")]
            self._bindings.pop(user, None)
            out.append(Note({"action": "unregister", "user": user, "contact": "*"}))
            bindings = []
        for contact in contacts:
            if contact.uri == "*":
                continue
            param = contact.params.get("expires")
            if param is not None:
                if not param.isdigit():
                    return [self._respond(msg, flow, 400, "Bad expires")]
                expires = int(param)
            else:
                expires = header_expires if header_expires is not None else self.default_expires
            pn = push_params(contact)
            token = pn.get("pn-prid")
            same = [b for b in bindings if b.contact == contact.uri or (token and b.token == token)]
            bindings = [b for b in bindings if b not in same]
            if expires == 0:
                out.append(Note({"action": "unregister", "user": user, "contact": contact.uri}))
                continue
            binding = Binding(user, contact.uri, now + expires, flow, pn, now)
            bindings.append(binding)
            refreshed = binding
            out.append(Note({"action": "register", "user": user, "contact": contact.uri, "expires": expires,
                             "flow": str(flow), "push": pn, "refresh": bool(same)}))
        if bindings:
            self._bindings[user] = bindings
        else:
            self._bindings.pop(user, None)
        listed = [("Contact", f"<{b.contact}>;expires={b.remaining(now)}") for b in bindings]
        out.append(self._respond(msg, flow, 200, headers=listed))
        if refreshed is not None:
            for call in list(self._calls.values()):
                if (call.state == "forwarded" and call.user == user and not call.device_responded
                        and not call.cancelled and call.callee_flow is not None and call.callee_flow.conn is not None
                        and call.callee_flow != flow):
                    # the device registered on a new connection before the PBX learnt the old one died: the INVITE
                    # sent there got no answer, so it goes on the new one (and the old branch is forgotten)
                    out.append(Note({"action": "reforward", "from_flow": str(call.callee_flow), "flow": str(flow)},
                                    call.call_id))
                    self._forget_branch(call)
                    out += self._forward_invite(call, refreshed, now)
                    continue
                if call.state == "held" and call.user == user:
                    self._timers.pop(("hold", call.call_id), None)
                    held_for = None if call.held_at is None else round(now - call.held_at, 6)
                    out.append(Note({"action": "release", "user": user, "flow": str(flow),
                                     "held_for": held_for}, call.call_id))
                    out += self._forward_invite(call, refreshed, now)
        return out

    def _invite(self, msg: Message, flow: Flow, now: float) -> list[Action]:
        call_id = msg.call_id
        if call_id is None or msg.cseq is None:
            return [self._respond(msg, flow, 400, "Missing Call-ID or CSeq")]
        branch = msg.top_via.branch if msg.top_via else None
        call = self._calls.get(call_id)
        if call is not None:
            if call.server_branch == branch and call.last_response is not None:
                return [Send(call.caller_flow, call.last_response)]  # a retransmission
            if call.state != "ended":
                return [self._respond(msg, flow, 482, "Loop Detected")]
        mf = msg.get("max-forwards")
        if mf is not None and mf.strip() == "0":
            return [self._respond(msg, flow, 483)]
        user = _user_of(msg.request_uri or "")
        bindings = self.bindings(user, now) if user else []
        if not bindings:
            return [Note({"action": "no-binding", "user": user}, call_id), self._respond(msg, flow, 404)]
        call = _Call(call_id, user, msg, flow, msg.from_tag, branch)
        self._calls[call_id] = call
        trying = build_response(msg, 100)
        call.last_response = trying
        out: list[Action] = [Send(flow, trying)]
        binding = bindings[-1]
        if binding.token:
            call.state = "held"
            call.token = binding.token
            call.held_at = now
            self._timers[("hold", call_id)] = now + self.hold
            payload = self._payload("call", call)
            out.append(Note({"action": "hold", "user": user, "token": binding.token, "hold": self.hold,
                             "provider": binding.push.get("pn-provider")}, call_id))
            out.append(Push(binding.token, payload, call_id))
        else:
            out += self._forward_invite(call, binding, now)
        return out

    def _payload(self, kind: str, call: _Call) -> dict:
        frm = call.invite.from_addr
        return {
            "aps": {},
            "type": kind,
            "call-id": call.call_id,
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, "faultlab-call:" + call.call_id)),
            "from-uri": frm.uri if frm else "",
            "display-name": (frm.display if frm and frm.display else (_user_of(frm.uri) if frm else "")) or "",
            "send-time": self.wall_clock(),
        }

    def _forward_invite(self, call: _Call, binding: Binding, now: float) -> list[Action]:
        fwd, branch, send = self._forward(call.invite, binding.flow, call.caller_flow, request_uri=binding.contact,
                                          record_route=True, call_id=call.call_id, now=now)
        call.state = "forwarded"
        call.callee_flow = binding.flow
        call.out_invite = fwd
        call.out_branch = branch
        self._timers[("ring", call.call_id)] = now + self.ring_timeout
        return [Note({"action": "forward", "user": call.user, "flow": str(binding.flow),
                      "contact": binding.contact}, call.call_id), send]

    def _cancel(self, msg: Message, flow: Flow, now: float) -> list[Action]:
        call = self._calls.get(msg.call_id or "")
        branch = msg.top_via.branch if msg.top_via else None
        if call is None or call.server_branch != branch:
            return [self._respond(msg, flow, 481)]
        out: list[Action] = [self._respond(msg, flow, 200)]
        if call.final_sent is not None or call.cancelled:
            return out  # too late (the INVITE already has its final response), or a retransmitted CANCEL
        reasons = msg.get_all("reason")
        call.ended_by = "cancel"
        if call.state == "held":
            out.append(Note({"action": "cancel-held", "reason": reasons}, call.call_id))
            out += self._end_held(call)
        elif call.state == "forwarded":
            out.append(Note({"action": "forward-cancel", "reason": reasons}, call.call_id))
            out += self._cancel_device(call, reasons=[h.value for h in msg.header_fields("reason")],
                                       relay_487=True, now=now)
        return out

    def _end_held(self, call: _Call) -> list[Action]:
        self._timers.pop(("hold", call.call_id), None)
        call.state = "ended"
        out = self._answer_caller(call, 487)
        if self.cancel_push and call.token:
            out.append(Note({"action": "cancel-push", "token": call.token}, call.call_id))
            out.append(Push(call.token, self._payload("cancel", call), call.call_id))
        return out

    def _cancel_device(self, call: _Call, *, reasons: list[str], now: float,
                       relay_487: bool = False) -> list[Action]:
        """CANCEL the forwarded INVITE (same branch, Request-URI, Route; RFC 3261 §9.1).

        While the INVITE is still retransmitted without any response, the CANCEL waits for the first
        provisional response (§9.1: no CANCEL before a provisional response)."""
        self._timers.pop(("ring", call.call_id), None)
        inv = call.out_invite
        assert inv is not None and call.callee_flow is not None
        lines = [f"CANCEL {inv.request_uri} SIP/2.0", f"Via: {inv.get_all('via')[0]}", "Max-Forwards: 70"]
        lines += [f"Route: {r}" for r in inv.get_all("route")]
        lines += [f"From: {inv.get('from')}", f"To: {inv.get('to')}", f"Call-ID: {inv.call_id}",
                  f"CSeq: {inv.cseq.number} CANCEL"]
        lines += [f"Reason: {r}" for r in reasons]
        data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")
        if not relay_487:
            call.state = "cancelling"
        call.cancelled = True
        # RFC 3261 §9.1: if the INVITE gets no final response within 64*T1 of the CANCEL, the PBX ends it itself
        self._timers[("cancel", call.call_id)] = now + 64 * self.t1
        assert call.out_branch is not None
        if (call.out_branch, "INVITE") in self._retx:
            call.pending_cancel = data
            return [Note({"action": "cancel-deferred", "why": "no response to the INVITE yet"}, call.call_id)]
        send = Send(call.callee_flow, data)
        self._start_retx(send, call.out_branch, "CANCEL", call.call_id, now)
        return [send]

    def _in_dialog(self, msg: Message, flow: Flow, now: float) -> list[Action]:
        call = self._calls.get(msg.call_id or "")
        if msg.method == "ACK" and call is not None and call.final_sent is not None and call.final_sent >= 300:
            branch = msg.top_via.branch if msg.top_via else None
            if branch == call.server_branch:
                return []  # ACK to our own non-2xx final response: absorbed (hop by hop)
        if call is None or call.callee_flow is None:
            if msg.method == "ACK":
                return [Note({"action": "drop", "why": "ACK outside any dialog"}, msg.call_id)]
            return [self._respond(msg, flow, 481)]
        m = msg
        while True:
            routes = m.get_all("route")
            if not routes or f"sip:{RR_USER}@" not in routes[0]:
                break
            m = _parse(remove_top_value(m, "Route"))
        from_caller = msg.from_tag == call.caller_tag
        out_flow = call.callee_flow if from_caller else call.caller_flow
        server = None
        if msg.method != "ACK":
            branch = msg.top_via.branch if msg.top_via else None
            key = (branch or "", msg.cseq.method if msg.cseq else (msg.method or ""))
            known = self._servers.get(key) if branch else None
            if known is not None and known.flow == flow:  # a retransmission of a request already relayed
                return [Send(flow, known.last_response)] if known.last_response is not None else []
            server = _ServerTxn(msg, flow)
            if branch:
                self._servers[key] = server
        _, _, send = self._forward(m, out_flow, None if msg.method == "ACK" else flow, request_uri=None,
                                   record_route=False, call_id=call.call_id, now=now, server=server)
        out: list[Action] = [send]
        if msg.method == "BYE":
            out.insert(0, Note({"action": "bye", "from": "caller" if from_caller else "callee"}, call.call_id))
        return out

    # ------------------------------------------------------------------ responses

    def _response(self, msg: Message, flow: Flow, now: float) -> list[Action]:
        via = msg.top_via
        txn = self._txns.get(via.branch) if via is not None and via.branch else None
        if txn is None:
            return [Note({"action": "drop", "why": "response to no transaction of the PBX",
                          "status": msg.status}, msg.call_id)]
        status = msg.status
        if msg.cseq is not None and msg.cseq.method == "CANCEL":
            self._txn_response(via.branch, "CANCEL", status)
            return []  # the device's answer to the PBX's CANCEL (same branch as the INVITE, §9.1)
        self._txn_response(via.branch, txn.method, status)
        stripped = _parse(remove_top_value(msg, "Via"))
        out: list[Action] = []
        call = self._calls.get(txn.call_id or "")
        if txn.method == "INVITE" and call is not None and via.branch == call.out_branch:
            call.device_responded = True
            if call.pending_cancel is not None:  # the first response to the INVITE: the deferred CANCEL goes
                data, call.pending_cancel = call.pending_cancel, None
                if status < 200 and call.callee_flow is not None:
                    send = Send(call.callee_flow, data)
                    self._start_retx(send, via.branch, "CANCEL", call.call_id, now)
                    out.append(send)
            if status == 100:
                return out
            if status >= 200:
                self._timers.pop(("ring", call.call_id), None)
                self._timers.pop(("cancel", call.call_id), None)
                call.device_final = status
            if status >= 300:
                out.append(self._ack_device(call, msg))
            if call.final_sent is not None:
                if 200 <= status < 300 and call.final_sent == status:
                    return [Send(call.caller_flow, stripped.raw)]  # a 2xx retransmission
                if 200 <= status < 300 and call.late_ack is not None and call.callee_flow is not None:
                    return [Send(call.callee_flow, call.late_ack)]  # the late 2xx again: ACK it again
                if 200 <= status < 300 and call.state != "late-answer":
                    # the device answered as the CANCEL crossed it: close its dialog (ACK, then BYE)
                    call.state = "late-answer"
                    out.append(Note({"action": "late-answer", "status": status,
                                     "caller_got": call.final_sent}, call.call_id))
                    out += self._ack_and_bye_device(call, msg, now)
                return out  # the caller already has its final response (timeout, elsewhere)
            if status >= 200:
                call.final_sent = status
                call.state = "confirmed" if status < 300 else "ended"
            call.last_response = stripped.raw  # what a retransmitted INVITE gets
            out.append(Send(call.caller_flow, stripped.raw))
            return out
        if status >= 200 and txn.method != "INVITE":
            if txn.final is not None:
                return out  # a retransmitted final response: absorbed (RFC 3261 §17.1.2.2)
            txn.final = status
        if txn.in_flow is None:  # response to the PBX's own CANCEL or BYE
            if txn.method == "BYE" and status >= 200 and call is not None:
                call.state = "ended"
            return out
        if txn.method == "BYE" and status >= 200 and call is not None:
            call.state = "ended"
        if txn.server is not None and (status > 100 or txn.server.last_response is None):
            txn.server.last_response = stripped.raw
            if status >= 200:
                txn.server.final = status
        out.append(Send(txn.in_flow, stripped.raw))
        return out

    def _ack_and_bye_device(self, call: _Call, response: Message, now: float) -> list[Action]:
        """ACK a 2xx the caller will never see, and hang up that dialog (RFC 3261 §13.2.2.4, §15)."""
        inv = call.out_invite
        assert inv is not None and call.callee_flow is not None
        contacts = response.contacts
        target = contacts[0].uri if contacts else inv.request_uri
        out: list[Action] = []
        for method, number in (("ACK", inv.cseq.number), ("BYE", inv.cseq.number + 1)):
            branch = self._new_branch(call.call_id, method)
            lines = [f"{method} {target} SIP/2.0", f"Via: {self._via(call.callee_flow, branch)}",
                     "Max-Forwards: 70", f"From: {inv.get('from')}", f"To: {response.get('to')}",
                     f"Call-ID: {inv.call_id}", f"CSeq: {number} {method}"]
            if method == "BYE":
                lines.append('Reason: SIP;cause=487;text="Request Terminated"')
                self._txns[branch] = _ClientTxn("BYE", call.call_id, None)
            data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")
            send = Send(call.callee_flow, data)
            if method == "ACK":
                call.late_ack = data
            else:
                self._start_retx(send, branch, method, call.call_id, now)
            out.append(send)
        return out

    def _ack_device(self, call: _Call, response: Message) -> Send:
        """ACK a non-2xx final response from the device (RFC 3261 §17.1.1.3)."""
        inv = call.out_invite
        assert inv is not None and call.callee_flow is not None
        lines = [f"ACK {inv.request_uri} SIP/2.0", f"Via: {inv.get_all('via')[0]}", "Max-Forwards: 70"]
        lines += [f"Route: {r}" for r in inv.get_all("route")]
        lines += [f"From: {inv.get('from')}", f"To: {response.get('to')}", f"Call-ID: {inv.call_id}",
                  f"CSeq: {inv.cseq.number} ACK", "Content-Length: 0"]
        return Send(call.callee_flow, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
