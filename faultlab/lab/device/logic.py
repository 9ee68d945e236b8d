"""The reference device's CallKit/app logic for one call, sans-IO.

:class:`DeviceLogic` is a small state machine with no sockets, no trio and no
clock: every input takes ``now`` (seconds, any origin) and returns a list of
outputs, which the trio driver (:class:`faultlab.lab.device.Device`) performs
in order:

* :class:`Emit` -- a device event (``reported``, ``answer-tapped``,
  ``answer-fulfilled``, ``answer-failed``, ``ended`` with a reason);
* :class:`SendRegister` / :class:`StopRegister` -- start the binding-refresh
  REGISTER transaction (the driver retransmits it per Timer E), or stop it;
* :class:`Reply` -- answer a SIP request the driver handed in (``ref`` is the
  driver's opaque handle on that request: the logic only passes it back).

Timers: :meth:`DeviceLogic.next_timer` is the earliest time at which the logic
wants :meth:`DeviceLogic.on_timer` to be called (``None``: no timer). The
driver sleeps until then (or until the next input) and calls ``on_timer``.

The rules (``docs/reference-device.md``; the facts in ``docs/callkit-and-sip.md``, the
catalogue in ``docs/integrating-your-app.md`` §6):

* a call push: report at once, REGISTER; a duplicate push (same uuid or
  Call-ID) is not reported again;
* a stale call push (S23: ``send-time`` over ``total_deadline`` old): reported,
  ended ``unanswered`` at once; its REGISTER still goes out (RFC 8599 §4.1.3);
* deadlines: REGISTER 2xx by ``t0 + register_deadline`` (else ``failed``);
  INVITE by ``min(tR + invite_deadline, t0 + total_deadline)`` (else
  ``unanswered`` when the REGISTER succeeded, ``failed`` when it did not);
* definitive REGISTER failures end the call at once (``failed``): 403, 404,
  other 4xx-6xx, 503 whose Retry-After does not fit the budget, transport
  failure. A 503 whose Retry-After fits is retried once after it;
* an answer tapped before the INVITE is held; on the INVITE the 200 goes out
  at once and ``answer-fulfilled`` follows it; with no INVITE by the deadline
  the action fails (``answer-failed``) and the call ends ``failed``;
* CANCEL before the final response: 200 + 487, reason from the Reason
  header's SIP cause (200 -> answeredElsewhere, 600/603 ->
  declinedElsewhere, anything else or none -> remoteEnded); CANCEL after the
  final response: 200 only; BYE: 200, ``remoteEnded``;
* flow recovery (RFC 5626, S24-S26): :meth:`DeviceLogic.flow_lost` (the network closed or reset the connection)
  and :meth:`DeviceLogic.path_changed` (a new address): waiting for the INVITE after a REGISTER 2xx, re-REGISTER at
  once; the new 2xx is the new ``tR`` (the cap never moves). The details: docs/reference-device.md, Flow recovery;
* a connected call whose RTP stops for ``media_timeout`` (S21: its BYE lost) ends ``failed`` (:mod:`.silence`);
* a cancel push is ignored for the outcome (the device never depends on it);
* an INVITE for a call that has already ended gets 480 (603 if the user
  declined it);
* ``ended`` is emitted exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from faultlab.lab.device.behaviours import BEHAVIOURS  # the known-bad behaviours (re-exported here)
from faultlab.lab.device.reasons import cancel_reason
from faultlab.lab.device.silence import MEDIA_TIMEOUT, Silence

# CXCallEndedReason values (reference §1.1) plus "declined": the user's own end
# action (CXEndCallAction), which CallKit does not report with a reason.
REASONS = ("failed", "remoteEnded", "unanswered", "answeredElsewhere", "declinedElsewhere", "declined")
EVENTS = ("reported", "answer-tapped", "answer-fulfilled", "answer-failed", "ended")

RING_TIMEOUT = 45.0  # reference §7: local ring timeout after the INVITE -> 480, unanswered
MAX_FLOW_RECOVERIES = 3  # re-REGISTERs after a lost flow, per call (a network that kills every flow cannot loop us)


@dataclass(frozen=True)
class DeviceConfig:
    """Deadlines (seconds, reference §7), the scripted user and the behaviour."""

    register_deadline: float = 8.0  # push -> REGISTER 2xx
    invite_deadline: float = 5.0  # REGISTER 2xx -> INVITE
    total_deadline: float = 15.0  # push -> INVITE, hard cap
    ring_timeout: float = RING_TIMEOUT  # INVITE -> no user action -> 480, unanswered
    answer_after: float | None = None  # user taps answer this long after the report
    decline_after: float | None = None  # user taps decline this long after the report
    behaviour: str | None = None  # None: well-behaved; else a key of BEHAVIOURS
    slow_end_delay: float = 3.0  # for behaviour "slow-end"
    media_timeout: float = MEDIA_TIMEOUT  # connected, no RTP for this long -> failed
    keepalive_interval: float = 90.0  # TCP/TLS: a CRLF CRLF ping this often (0: none); RFC 5626: <= 120 s, pjsip 90 s
    keepalive_timeout: float = 10.0  # no CRLF pong this long after a ping: the flow failed (RFC 5626 §4.4.1)

    def __post_init__(self) -> None:
        if self.behaviour is not None and self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}; use one of {', '.join(BEHAVIOURS)}")
        if self.answer_after is not None and self.decline_after is not None:
            raise ValueError("answer_after and decline_after are exclusive")
        for name in (f.name for f in fields(self) if f.type == "float"):  # every duration that must be given
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Emit:
    """A device event at time ``t``."""

    t: float
    event: str
    reason: str | None = None


@dataclass(frozen=True)
class SendRegister:
    """Start the binding-refresh REGISTER (the driver retransmits it on UDP per Timer E)."""


@dataclass(frozen=True)
class StopRegister:
    """Stop the REGISTER transaction (the logic gave up on it)."""


@dataclass(frozen=True)
class Reply:
    """Answer the request the driver passed in as ``ref`` with ``status``."""

    ref: Any
    status: int
    what: str  # "INVITE" | "CANCEL" | "BYE": which request ``ref`` is


Output = Emit | SendRegister | StopRegister | Reply


# ---------------------------------------------------------------- the state machine


@dataclass
class DeviceLogic:
    """One call on the reference device. See the module docstring for the rules."""

    config: DeviceConfig = field(default_factory=DeviceConfig)

    # what the call is
    uuid: str | None = None
    call_id: str | None = None
    # times (None: not yet)
    t0: float | None = None  # reported (push handled, or INVITE with no push)
    t_registered: float | None = None
    t_invite: float | None = None
    # state
    registered: bool = False
    register_failed: bool = False
    registering: bool = False
    invite: Any = None  # ref of the INVITE, once received
    final_sent: int | None = None  # status of the final response to the INVITE
    acked: bool = False
    answer_held: bool = False  # tapped before the INVITE, not yet fulfilled or failed
    fulfilled: bool = False
    declined: bool = False
    ended: bool = False  # the end is decided (emitted, or pending for slow-end)
    end_reason: str | None = None
    end_emitted: bool = False
    _pending_end: float | None = None  # slow-end: when the end event goes out
    _reregister_at: float | None = None  # 503 with Retry-After inside the budget
    _retried_503: bool = False
    _retried_403: bool = False  # behaviour register-retry-after-403
    _answer_at: float | None = None
    _decline_at: float | None = None
    _deadline_passed: bool = False  # the INVITE deadline fired (depends-on-cancel-push keeps waiting)
    flow_recoveries: int = 0  # re-REGISTERs sent after a lost flow (S24)
    _lost_while_registering: bool = False  # the flow died with a REGISTER in flight: its 2xx came on a dead flow
    silence: Silence = field(default_factory=Silence)  # connected with media: when RTP was last heard (S21)

    # ------------------------------------------------------------ helpers

    @property
    def behaviour(self) -> str | None:
        return self.config.behaviour

    def matches(self, call_id: str | None = None, uuid: str | None = None) -> bool:
        """Whether a push or INVITE with this Call-ID / uuid belongs to this call."""
        return (call_id is not None and call_id == self.call_id) or (uuid is not None and uuid == self.uuid)

    @property
    def invite_deadline(self) -> float | None:
        """When the INVITE must have arrived, or None while it does not apply."""
        if self.t0 is None or self.invite is not None:
            return None
        cap = self.t0 + self.config.total_deadline
        if self.t_registered is not None:
            return min(self.t_registered + self.config.invite_deadline, cap)
        return min(self.t0 + self.config.register_deadline, cap)

    def _report(self, now: float) -> list[Output]:
        self.t0 = now
        c = self.config
        if c.answer_after is not None:
            self._answer_at = now + c.answer_after
        if c.decline_after is not None:
            self._decline_at = now + c.decline_after
        return [Emit(now, "reported")]

    def _end(self, now: float, reason: str) -> list[Output]:
        """Decide the end (once); emit it now, late (slow-end) or never (never-ends)."""
        if self.ended:
            return []
        self.ended = True
        self.end_reason = reason
        self._answer_at = self._decline_at = self._reregister_at = None
        out: list[Output] = []
        if self.registering:
            self.registering = False
            out.append(StopRegister())
        if self.behaviour == "never-ends":
            return out
        if self.behaviour == "slow-end":
            self._pending_end = now + self.config.slow_end_delay
            return out
        self.end_emitted = True
        out.append(Emit(now, "ended", reason))
        return out

    def _no_invite_end(self, now: float) -> list[Output]:
        """The INVITE did not come in time."""
        out: list[Output] = []
        if self.behaviour == "depends-on-cancel-push":
            # The deviation: wait for a cancel push instead of ending on the deadline.
            if self.registering:
                self.registering = False
                out.append(StopRegister())
            return out
        reason = "unanswered" if self.registered else "failed"
        if self.answer_held:  # S18: fail the held answer action; CallKit ends the call
            self.answer_held = False
            out.append(Emit(now, "answer-failed"))
            reason = "failed"
        return out + self._end(now, reason)

    def _send_200(self, now: float) -> list[Output]:
        self.final_sent = 200
        out: list[Output] = [Reply(self.invite, 200, "INVITE")]
        if not self.fulfilled:
            self.fulfilled = True
            out.append(Emit(now, "answer-fulfilled"))
        return out

    # ------------------------------------------------------------ inputs

    def push(self, now: float, kind: str, payload: dict, age: float | None = None) -> list[Output]:
        """A VoIP push (``kind`` "call" or "cancel") with its payload; ``age``: seconds since its ``send-time``."""
        call_id, uuid = payload.get("call-id"), payload.get("uuid")
        if kind == "cancel":
            # Well-behaved: a hint only, ignored for the outcome (Apple: don't rely on a second push).
            if self.behaviour == "depends-on-cancel-push" and self.t0 is not None and self.matches(call_id, uuid):
                if self.invite is None and not self.ended:
                    out: list[Output] = []
                    if self.answer_held:
                        self.answer_held = False
                        out.append(Emit(now, "answer-failed"))
                    return out + self._end(now, "remoteEnded")
            return []
        if self.t0 is not None:
            return []  # duplicate push for this call (S22), or another call's push: not ours to report
        self.uuid, self.call_id = uuid, call_id
        out = self._report(now)
        if age is not None and age > self.config.total_deadline and self.behaviour != "rings-stale-push":
            out += self._end(now, "unanswered")  # the call it announced is over; the REGISTER still goes out
            return out + ([SendRegister()] if self.behaviour != "no-register-on-push" else [])
        self.registering = self.behaviour != "no-register-on-push"
        return out + ([SendRegister()] if self.registering else [])

    def register_response(self, now: float, status: int, retry_after: float | None = None) -> list[Output]:
        """The final response to the REGISTER (1xx are not passed in)."""
        if self.ended or self.registered or not self.registering:
            return []
        self.registering = False
        if 200 <= status < 300:
            self.registered = True
            self.t_registered = now
            if self._lost_while_registering:  # the 2xx was read just before the flow's reset: recover now
                self._lost_while_registering = False
                return self.flow_lost(now)
            if self.flow_recoveries and self.behaviour == "unanswered-after-reregister":
                return self._end(now, "unanswered")  # the deviation: gives up instead of waiting on the new flow
            return []
        if status == 403 and self.behaviour == "register-retry-after-403" and not self._retried_403:
            self._retried_403 = self.registering = True
            return [SendRegister()]
        if self.behaviour == "ignores-retry-after" and retry_after is not None:
            retry_after = 0.0
        if status == 503 and retry_after is not None and not self._retried_503:
            deadline = self.invite_deadline  # before a 2xx: min(t0 + register_deadline, t0 + total_deadline)
            if deadline is not None and now + retry_after < deadline:  # S12b: the retry fits the budget
                self._retried_503 = True
                self._reregister_at = now + retry_after
                return []
        # 401/407 too: this device has no credentials, so a challenge is final.
        self.register_failed = True
        return self._register_failure(now)

    def register_timeout(self, now: float) -> list[Output]:
        """The REGISTER transaction timed out (Timer F) before the app's deadline."""
        return self.transport_failed(now)

    def transport_failed(self, now: float) -> list[Output]:
        """The connection (TCP refused, TLS failure, ...) or the REGISTER transaction failed."""
        if self.ended or self.registered or self.t0 is None:
            return []
        self.registering = False
        self._lost_while_registering = False
        self.register_failed = True
        return self._register_failure(now)

    def flow_lost(self, now: float) -> list[Output]:
        """The TCP/TLS connection to the proxy was closed or reset by the network (not by the device).

        Waiting for the INVITE after a REGISTER 2xx: re-REGISTER at once on a new connection (S24; see the module
        docstring for the deadlines). Otherwise nothing: a REGISTER in flight fails on its own
        (``transport_failed``), a 503 retry still to come connects anew, and after the INVITE the loss ends nothing.
        """
        if self.ended or self.t0 is None or self.invite is not None or self._deadline_passed:
            return []
        if self.registering:  # the REGISTER's response may already be read (2xx then reset): see register_response
            self._lost_while_registering = True
            return []
        if not self.registered or self.flow_recoveries >= MAX_FLOW_RECOVERIES:
            return []
        self.flow_recoveries += 1
        self.registered = False
        self.registering = True
        return [SendRegister()]

    def path_changed(self, now: float) -> list[Output]:
        """A new address (S26): a REGISTER in flight starts again from it; otherwise as :meth:`flow_lost`."""
        restart = self.registering and not self.ended and self.t0 is not None
        return [StopRegister(), SendRegister()] if restart else self.flow_lost(now)

    def _register_failure(self, now: float) -> list[Output]:
        if self.invite is not None:
            return []  # the INVITE came anyway (it did not need our binding): carry on
        out: list[Output] = []
        if self.answer_held:
            self.answer_held = False
            out.append(Emit(now, "answer-failed"))
        return out + self._end(now, "failed")

    def invite_received(self, now: float, ref: Any, call_id: str | None = None) -> list[Output]:
        """An initial INVITE (retransmissions are absorbed by the driver)."""
        if self.ended:
            late = 486 if self.behaviour == "late-invite-486" else 480
            return [Reply(ref, self._decline_code() if self.declined else late, "INVITE")]  # S03: a late INVITE
        if self.invite is not None:
            return [Reply(ref, 482, "INVITE")]  # a second initial INVITE for this call (merged request, §8.2.2.2)
        out: list[Output] = []
        if self.t0 is None:  # no push (app in the foreground): report on the INVITE
            self.call_id = call_id
            out += self._report(now)
        if self.call_id is None:
            self.call_id = call_id
        self.invite = ref
        self.t_invite = now
        if self.registering:  # the INVITE is proof enough of the binding
            self.registering = False
            out.append(StopRegister())
        self._reregister_at = None
        out.append(Reply(ref, 180, "INVITE"))
        if self.answer_held or (self.fulfilled and self.behaviour == "fulfills-before-invite"):
            self.answer_held = False
            out += self._send_200(now)
        return out

    def ack_received(self, now: float) -> list[Output]:
        self.acked = True
        if self.behaviour == "drops-after-connect" and self.final_sent == 200:
            return self._end(now, "failed")  # the deviation: the connected call is dropped at once
        return []

    def cancel_received(self, now: float, ref: Any, reason: Any = None) -> list[Output]:
        """A CANCEL for the INVITE; ``reason`` is its parsed Reason header (or None)."""
        if self.invite is None:
            return [Reply(ref, 481, "CANCEL")]
        out: list[Output] = [Reply(ref, 200, "CANCEL")]
        if self.final_sent is not None:
            return out  # S19: CANCEL after the final response has no effect
        self.final_sent = 487
        if self.behaviour != "no-487":
            out.append(Reply(self.invite, 487, "INVITE"))
        mapped = "remoteEnded" if self.behaviour == "wrong-reason-mapping" else cancel_reason(reason)
        return out + self._end(now, mapped)

    def bye_received(self, now: float, ref: Any) -> list[Output]:
        out: list[Output] = [Reply(ref, 200, "BYE")]
        return out + self._end(now, "remoteEnded")

    def tap_answer(self, now: float) -> list[Output]:
        """The user taps answer (CXAnswerCallAction)."""
        if self.ended or self.t0 is None or self.fulfilled or self.answer_held or self.declined:
            return []
        self._answer_at = None
        out: list[Output] = [Emit(now, "answer-tapped")]
        if self.invite is not None:
            if self.final_sent is not None:
                return out
            return out + self._send_200(now)
        # early answer: no INVITE yet
        if self.behaviour == "rejects-early-answer":
            return out + [Emit(now, "answer-failed")] + self._end(now, "failed")
        if self.behaviour == "fulfills-before-invite":
            self.fulfilled = True
            return out + [Emit(now, "answer-fulfilled")]
        self.answer_held = True
        return out

    def tap_decline(self, now: float) -> list[Output]:
        """The user taps decline (CXEndCallAction before answering)."""
        if self.ended or self.t0 is None or self.fulfilled or self.answer_held:
            return []
        self._decline_at = None
        self.declined = True
        out: list[Output] = []
        if self.invite is not None and self.final_sent is None:
            self.final_sent = self._decline_code()
            out.append(Reply(self.invite, self.final_sent, "INVITE"))
        return out + self._end(now, "declined")

    def _decline_code(self) -> int:
        return 486 if self.behaviour == "decline-486" else 603

    # ------------------------------------------------------------ timers

    def _silent_until(self) -> float | None:  # the media-silence timeout (S21), while it applies
        return None if self.behaviour == "no-media-timeout" else self.silence.deadline(self.config.media_timeout)

    def next_timer(self) -> float | None:
        """The earliest time :meth:`on_timer` has something to do, or None."""
        times: list[float] = []
        if self._pending_end is not None:
            times.append(self._pending_end)
        if not self.ended:
            for t in (self._answer_at, self._decline_at, self._reregister_at):
                if t is not None:
                    times.append(t)
            if self.t0 is not None and self.invite is None:
                dl = self.invite_deadline
                if dl is not None and not self._deadline_passed:
                    times.append(dl)
            if self.invite is not None and self.final_sent is None:
                times.append(self.t_invite + self.config.ring_timeout)
            times += [t for t in (self._silent_until(),) if t is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        if self._pending_end is not None and now >= self._pending_end:
            self._pending_end = None
            self.end_emitted = True
            out.append(Emit(now, "ended", self.end_reason))
        if self.ended:
            return out
        if self._reregister_at is not None and now >= self._reregister_at:
            self._reregister_at = None
            self.registering = True
            out.append(SendRegister())
        if self._decline_at is not None and now >= self._decline_at:
            out += self.tap_decline(now)
        if self._answer_at is not None and now >= self._answer_at:
            out += self.tap_answer(now)
        if self.ended:
            return out
        dl = self.invite_deadline
        if dl is not None and now >= dl and not self._deadline_passed:
            if not self.registered:  # the register deadline (or the cap) passed before a REGISTER 2xx
                self.register_failed = True
            self._deadline_passed = True
            out += self._no_invite_end(now)
        if self.invite is not None and self.final_sent is None and now >= self.t_invite + self.config.ring_timeout:
            self.final_sent = 480
            if self.behaviour != "no-480-at-ring-timeout":
                out.append(Reply(self.invite, 480, "INVITE"))
            out += self._end(now, "unanswered")
        if (silent := self._silent_until()) is not None and now >= silent:  # S21: RTP stopped, no BYE came
            out += self._end(now, "failed")
        return out
