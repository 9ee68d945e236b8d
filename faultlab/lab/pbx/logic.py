"""The embedded PBX's SIP logic, sans-IO: (message, flow, now) in, outputs out.

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
  ``pn-prid``, the PBX asks for a VoIP push (:class:`RequestPush`, type ``call``) and **holds** the INVITE
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
response came) until a final response. Retransmissions are :class:`SendBytes` actions with
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

**Lifetimes** (:mod:`.lifetimes`). Finished transactions are forgotten after RFC 3261's Timer J/K (64*T1 /
T4 over UDP, at once over TCP/TLS), finished calls 64*T1 to 2*64*T1 after they ended, expired registrations
when they expire, all from :meth:`PbxLogic.on_timer` (:meth:`PbxLogic.next_wakeup` says when it is next
needed; :meth:`PbxLogic.sizes` counts what is held), so a PBX that runs for days holds only what is live.

Outputs: :class:`SendBytes` (bytes on a flow), :class:`RequestPush` (ask the push gateway), :class:`Note` (a
decision for the timeline). Times are whatever clock the caller passes as ``now`` (trio's in
:class:`faultlab.lab.pbx.PBX`), so timers run under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from faultlab.sip import KeepAlive, Message, SipError, build_response

from .model import (
    Address,
    ELSEWHERE_REASONS,
    Binding,
    Call,
    ClientTxn,
    Flow,
    Note,
    Output,
    RequestPush,
    Retx,
    SendBytes,
    ServerTxn,
    digest,
)
from .calls import Calls
from .lifetimes import Lifetimes
from .registrar import Registrar
from .transactions import Transactions

__all__ = [
    "Output",
    "Binding",
    "Flow",
    "Note",
    "PbxLogic",
    "RequestPush",
    "SendBytes",
    "ELSEWHERE_REASONS",
]


class PbxLogic(Registrar, Calls, Transactions, Lifetimes):
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
        t4: float = 5.0,
    ) -> None:
        self.hold = hold
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.ring_timeout = ring_timeout
        self.cancel_push = cancel_push
        self.default_expires = default_expires
        self.advertise = dict(advertise or {})
        self.wall_clock = wall_clock
        self._bindings: dict[str, list[Binding]] = {}
        self._calls: dict[str, Call] = {}
        self._ringing: dict[str, dict[str, Call]] = {}  # user -> call-ID -> call, not yet confirmed or ended
        self._txns: dict[str, ClientTxn] = {}
        self._timers: dict[tuple[str, str], float] = {}  # (kind, call_id) -> deadline
        self._retx: dict[tuple[str, str], Retx] = {}  # (branch, CSeq method) -> UDP retransmissions
        self._servers: dict[tuple[str, str], ServerTxn] = {}  # (branch, method) of relayed requests
        self._seq = 0
        self._prune: list[tuple[float, int, str, object]] = []  # lifetimes.py: what to forget when
        self._prune_seq = 0
        self._aor_due: dict[str, float] = {}  # AOR -> when its earliest binding expires (a look is scheduled)

    def call_state(self, call_id: str) -> str | None:
        """``held``, ``forwarded``, ``cancelling`` (the PBX CANCELled the device after a ring timeout or
        "elsewhere"), ``confirmed``, ``late-answer`` (the device answered after the caller got its final
        response: the PBX ACKs and BYEs it), ``ended``, or ``None`` (unknown call)."""
        call = self._calls.get(call_id)
        return None if call is None else call.state

    def next_deadline(self) -> float | None:
        """When the next timer that may send or decide something is due (call timers, retransmissions)."""
        return min([*self._timers.values(), *(r.due for r in self._retx.values())], default=None)

    def next_wakeup(self) -> float | None:
        """When :meth:`on_timer` is next needed: :meth:`next_deadline`, or the next time a finished
        transaction, call or expired registration is to be forgotten (:mod:`.lifetimes`), whichever is first."""
        return min([t for t in (self.next_deadline(), self._next_prune()) if t is not None], default=None)

    def retransmitting(self) -> list[tuple[str, str]]:
        """``(branch, method)`` of every client transaction whose request is being retransmitted."""
        return list(self._retx)

    def receive(self, message: Message | KeepAlive, flow: Flow, now: float) -> list[Output]:
        """Handle one message that arrived on ``flow``."""
        if isinstance(message, KeepAlive):
            return [SendBytes(flow, b"\r\n")] if message.raw == b"\r\n\r\n" and flow.conn is not None else []
        try:
            if message.is_request:
                return self._request(message, flow, now)
            return self._response(message, flow, now)
        except SipError as exc:
            out: list[Output] = [Note({"action": "bad-message", "error": str(exc)})]
            if message.is_request and message.method != "ACK":
                try:
                    out.append(SendBytes(flow, build_response(message, 400, str(exc)[:100].replace("\r", " ")
                                                         .replace("\n", " "))))
                except ValueError:
                    pass
            return out

    def flow_closed(self, flow: Flow, now: float) -> list[Output]:
        """A TCP/TLS connection ended. A call whose INVITE went out on it and got no response at all is held
        again (as before its REGISTER), so the device's next REGISTER, on a new connection, gets the INVITE
        (RFC 5626's flow recovery, seen from the registrar); the hold timer runs again."""
        out: list[Output] = []
        for call in self._ringing_calls():
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

    def _forget_branch(self, call: Call) -> None:
        """The forwarded INVITE's client transaction is over (its flow died): a late response on it is dropped."""
        self._timers.pop(("ring", call.call_id), None)
        if call.out_branch is not None:
            self._retx.pop((call.out_branch, "INVITE"), None)
            self._retx.pop((call.out_branch, "CANCEL"), None)
            self._txns.pop(call.out_branch, None)
        call.out_branch = None
        call.callee_flow = None
        call.pending_cancel = None

    def _give_up_on_device(self, call: Call, why: str) -> list[Output]:
        """No final response will come from the device: end the call, 487 to the caller if it was cancelled (by
        the caller or the PBX), else 480."""
        self._timers.pop(("cancel", call.call_id), None)
        out: list[Output] = [Note({"action": why}, call.call_id)]
        self._forget_branch(call)
        call.state = "ended"
        call.ended_by = call.ended_by or why
        if call.final_sent is None:
            out += (self._answer_caller(call, 487) if call.cancelled
                    else self._answer_caller(call, 480, "Temporarily Unavailable"))
        return out

    def on_timer(self, now: float) -> list[Output]:
        """Fire every timer due at ``now``, and forget the records whose lifetime is over."""
        out: list[Output] = []
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
            out.append(SendBytes(retx.flow, retx.data, retransmission=retx.count))
            if retx.proceeding:
                retx.interval = self.t2
            elif retx.method == "INVITE":
                retx.interval *= 2  # Timer A: no cap
            else:
                retx.interval = min(retx.interval * 2, self.t2)  # Timer E
            retx.next_at = now + retx.interval
        self._run_prune(now)
        return out

    def push_failed(self, call_id: str, error: str, now: float) -> list[Output]:
        """The push for a held call could not be sent: 480 to the caller (RFC 8599 §5.6.2)."""
        call = self._calls.get(call_id)
        if call is None or call.state != "held":
            return []
        self._timers.pop(("hold", call_id), None)
        call.state = "ended"
        call.ended_by = "push-failed"
        return [Note({"action": "push-failed", "error": error}, call_id),
                *self._answer_caller(call, 480, "Temporarily Unavailable")]

    def cancel_elsewhere(self, call_id: str, reason: str, now: float) -> list[Output]:
        """End a ringing call as if another device of the user had answered or declined it.

        ``reason`` is ``"answered"`` (``Reason: SIP;cause=200;text="Call completed elsewhere"``),
        ``"declined"`` (``Reason: SIP;cause=600;text="Busy Everywhere"``) or ``"declined-603"``
        (``Reason: SIP;cause=603;text="Decline"``). Forwarded call: CANCEL with
        that Reason toward the device, 487 to the caller. Held call: as a CANCEL while held (487 to the
        caller, nothing to the device, cancel push if enabled). Raises ``KeyError`` for an unknown
        call and ``ValueError`` for another reason or a call no longer ringing.
        """
        if reason not in ELSEWHERE_REASONS:
            raise ValueError(f"reason must be one of {sorted(ELSEWHERE_REASONS)}, not {reason!r}")
        call = self._calls[call_id]
        if call.final_sent is not None or call.state not in ("held", "forwarded"):
            raise ValueError(f"call {call_id} is not ringing (state {call.state}, final {call.final_sent})")
        out: list[Output] = [Note({"action": "elsewhere", "reason": reason, "state": call.state}, call_id)]
        call.ended_by = f"elsewhere-{reason}"
        if call.state == "held":
            out += self._end_held(call)
        else:
            out += self._cancel_device(call, reasons=[ELSEWHERE_REASONS[reason]], now=now)
            out += self._answer_caller(call, 487)
        return out

    def _answer_caller(self, call: Call, status: int, reason: str | None = None) -> list[Output]:
        data = build_response(call.invite, status, reason, to_tag=digest("pbx-tag", call.call_id)[:10])
        call.last_response = data
        call.final_sent = status
        return [SendBytes(call.caller_flow, data)]

    def _request(self, msg: Message, flow: Flow, now: float) -> list[Output]:
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
