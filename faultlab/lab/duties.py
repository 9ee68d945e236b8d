"""The SIP the device owes: duties of a SIP user agent, judged over the timeline with evidence (check "sip-duties").

Pure functions over the :class:`~faultlab.trace.Event` lists that :mod:`faultlab.lab.checks` reads. The device's
SIP is what faultlab's relay saw on its way to and from the device: a request or response ``sent`` (or
``responded``, when a fault answered in the PBX's place) ``to-device`` reached the device, one ``received``
``to-pbx`` is what the device sent. Each duty applies only where its trigger happened in the run, and then says
which message, when, and what was expected:

* **cancel** (RFC 3261 §9.2): a CANCEL that reached the device while its INVITE had no final response gets
  ``200`` and the INVITE gets ``487``, both within :data:`DUTY_BOUND`. A 2xx to the INVITE that arrives within
  :data:`CROSSING` of the CANCEL crossed it (answer/CANCEL glare, S19): then the CANCEL has nothing to cancel;
* **ring-timeout**: an INVITE that rings unanswered (no CANCEL reached the device, the user did nothing) gets
  ``480`` when the device's ring timeout expires (``[device] ring_timeout``, 45 s by default), and the call ends
  ``unanswered``. For a device whose configuration the lab does not know (``--device external``) only the code
  is judged, when the device gives up ringing;
* **decline**: a call the user declined (the device ended it ``declined``) has its INVITE answered ``603``
  (RFC 3261 §21.6.2), whether the INVITE was ringing or arrived after the decline;
* **late-invite**: an INVITE that arrives after the device gave up on the call (it ended, not declined) gets one
  of the scenario's ``[expect] late_invite`` codes (410 or 480 by default; an empty list turns the duty off),
  within :data:`DUTY_BOUND`;
* **register-403**: after a ``403`` to a REGISTER, no new REGISTER transaction (a retransmission of the refused
  one is not a retry) for the rest of the run (RFC 3261 §21.4.4: "the request SHOULD NOT be repeated");
* **retry-after**: after a REGISTER failure with ``Retry-After: N`` (S12, S12b: 503), no new REGISTER
  transaction sooner than N seconds after it (RFC 3261 §21.5.4, §20.33);
* **register-on-push** (RFC 8599 §4.1.3): each delivered call push is followed by a REGISTER from the device, or
  a connection to faultlab for one, within the device's register deadline (8 s by default).

An INVITE counts as having reached the device when the device answered it at all (100 Trying, 180...) or the
connection it went on stayed up: one sent on a TCP/TLS connection that then died unanswered may never have arrived
(S24), and a CANCEL for it rightly gets 481. Where the lab cannot see a trigger (no push gateway on the timeline: a real phone through faultlab alone; a CANCEL
lost on its way), the duty does not apply and the result says so, rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from faultlab.lab.anchors import call_push_delivered
from faultlab.lab.checks import CheckResult, anchors, device_events
from faultlab.lab.deadlines import device_settings
from faultlab.lab.device.logic import RING_TIMEOUT, DeviceConfig
from faultlab.lab.scenario import Scenario
from faultlab.sip import SipError, parse_message
from faultlab.trace import Event

__all__ = ["CHECK", "CROSSING", "DUTY_BOUND", "Duty", "check_duties", "duties"]

CHECK = "sip-duties"
DUTY_BOUND = 0.5  # a duty's response follows its cause within this (the reference's 0.5 s end-report budget)
CROSSING = 0.5  # a 2xx to the INVITE this soon after the CANCEL reached the device may have crossed it


@dataclass
class Duty:
    """One duty in one run: whether it applied, was met, and the evidence."""

    name: str
    applies: bool
    met: bool = True
    message: str = ""
    evidence: list[str] = field(default_factory=list)


def _t(e: Event | None) -> str:
    return "never" if e is None else f"t={e.t:.3f}"


def _to_device(e: Event) -> bool:
    return e.source == "proxy" and e.kind in ("sent", "responded") and e.direction == "to-device"


def _from_device(e: Event) -> bool:
    return e.source == "proxy" and e.kind == "received" and e.direction == "to-pbx"


def _chrono(lines: list[str]) -> list[str]:
    """Evidence lines in time order (``t=...`` first; lines without a time keep their place at the end)."""
    def key(line: str) -> float:
        head = line.split(" ", 1)[0]
        try:
            return float(head[2:]) if head.startswith("t=") else float("inf")
        except ValueError:
            return float("inf")
    return sorted(lines, key=key)


def _first(events: Sequence[Event], pred: Callable[[Event], bool], start: int = 0) -> tuple[int, Event | None]:
    for i in range(start, len(events)):
        if pred(events[i]):
            return i, events[i]
    return len(events), None


class _Call:
    """The call's messages to and from the device, in timeline order."""

    def __init__(self, events: Sequence[Event], call_id: str, scenario: Scenario) -> None:
        self.events = list(events)
        self.call_id = call_id
        self.found = anchors(self.events, call_id)
        origin = self.found.get("push") or self.found.get("reported")
        self.start = next((i for i, e in enumerate(self.events) if e is origin), 0)
        if origin is not None and origin.kind == "device":  # no push gateway: from the call's first INVITE
            self.start = min([self.start] + [i for i, e in enumerate(self.events) if _to_device(e)
                                             and e.method == "INVITE" and e.call_id == call_id])
        self.invite_at, self.invite = _first(self.events, lambda e: _to_device(e) and e.method == "INVITE"
                                             and e.call_id == call_id and e.status is None)
        self.final_at, self.final = _first(self.events, lambda e: _from_device(e) and e.call_id == call_id
                                           and e.cseq_method == "INVITE" and e.status is not None
                                           and e.status >= 200, self.invite_at)
        self.cancel_at, self.cancel = _first(self.events, lambda e: _to_device(e) and e.method == "CANCEL"
                                             and e.call_id == call_id and e.status is None, self.invite_at)
        dev = device_events(self.events, call_id)
        self.end = next((e for e in dev if e.detail.get("event") == "ended"), None)
        self.end_at = next((i for i, e in enumerate(self.events) if e is self.end), len(self.events))
        self.tapped = next((e for e in dev if e.detail.get("event") == "answer-tapped"), None)
        self.tolerance = scenario.tolerance
        # the INVITE reached the device: it answered it somehow, or the connection it went on stayed up (an INVITE
        # sent on a TCP/TLS connection that was then closed or reset may have died with it, S24)
        _, self._answered = _first(self.events, lambda e: _from_device(e) and e.call_id == call_id
                                   and e.cseq_method == "INVITE" and e.status is not None, self.invite_at)
        _, self._closed = _first(self.events, lambda e: e.source == "proxy" and e.kind == "flow-close"
                                 and self.invite is not None and e.flow == self.invite.flow, self.invite_at)
        self.reached = self.reached_by(None)

    def reached_by(self, t: float | None) -> bool:
        """Whether the INVITE reached the device (by time ``t``; None: in the run)."""
        if self.invite is None:
            return False
        if self._answered is not None and (t is None or self._answered.t <= t):
            return True
        return self._closed is None or (t is not None and self._closed.t > t)

    def final_line(self) -> str:
        f = self.final
        return f"{_t(f)} the device answered the INVITE {f.status}" if f is not None else \
            "the device never sent a final response to the INVITE"

    def invite_line(self) -> str:
        return f"{_t(self.invite)} INVITE reached the device"


# ---------------------------------------------------------------------------------------------- call duties


def _cancel(c: _Call) -> Duty:
    """RFC 3261 §9.2: 200 to the CANCEL, 487 to its INVITE."""
    d = Duty("cancel", False)
    if c.cancel is None or not c.reached_by(c.cancel.t):  # a CANCEL for an INVITE the device never had: 481
        return d
    if c.final is not None and c.final_at < c.cancel_at:
        return d  # the INVITE had its final response before the CANCEL reached the device (S19): nothing to cancel
    d.evidence = [c.invite_line(), f"{_t(c.cancel)} CANCEL reached the device, the INVITE not answered yet"]
    f = c.final
    if f is not None and 200 <= f.status < 300 and f.t <= c.cancel.t + CROSSING:
        return Duty("cancel", False, evidence=d.evidence + [c.final_line() + ": crossed the CANCEL (glare)"])
    d.applies = True
    _, reply = _first(c.events, lambda e: _from_device(e) and e.call_id == c.call_id and e.cseq_method == "CANCEL"
                      and e.status is not None and e.status >= 200, c.cancel_at)
    d.evidence.append(f"{_t(reply)} the device answered the CANCEL {reply.status}" if reply is not None
                      else "the device never answered the CANCEL")
    d.evidence.append(c.final_line())
    by = c.cancel.t + DUTY_BOUND + c.tolerance
    problems = []
    if reply is None or reply.status != 200 or reply.t > by:
        problems.append("no 200 to the CANCEL" if reply is None else
                        f"{reply.status} to the CANCEL" if reply.status != 200 else
                        f"200 to the CANCEL only at {_t(reply)}")
    if f is None or f.status != 487 or f.t > by:
        problems.append("no 487 to the INVITE" if f is None else
                        f"{f.status} to the INVITE instead of 487" if f.status != 487 else
                        f"487 to the INVITE only at {_t(f)}")
    if problems:
        d.met = False
        d.message = (f"{' and '.join(problems)} after the CANCEL reached the device at {_t(c.cancel)}: expected "
                     f"200 to the CANCEL and 487 to its INVITE within {DUTY_BOUND:g} s (RFC 3261 §9.2)")
    return d


def _declined(c: _Call) -> bool:
    return c.end is not None and c.end.detail.get("reason") == "declined"


def _ring_timeout(c: _Call, ring_timeout: float | None) -> Duty:
    """An INVITE ringing unanswered gets 480 at the device's ring timeout, and the call ends unanswered."""
    d = Duty("ring-timeout", False)
    if not c.reached or _declined(c) or (c.end is not None and c.end_at < c.invite_at):
        return d  # no INVITE, the user declined, or a late INVITE (other duties)
    f = c.final
    until = f.t if f is not None else c.events[-1].t
    if (c.cancel is not None and c.cancel.t <= until) or (c.tapped is not None and c.tapped.t <= until):
        return d  # a CANCEL or the user decided the INVITE
    if f is not None and 200 <= f.status < 300:
        return d
    expiry = c.invite.t + ring_timeout if ring_timeout is not None else None
    gave_up = c.end is not None and c.end_at > c.invite_at  # ended while the INVITE rang
    if expiry is None:  # a device of one's own: it rang out when it ended the call while the INVITE rang
        rang_out = gave_up
    elif f is not None:  # a final response with no cause before the ring timeout is not judged here
        rang_out = f.t >= expiry - c.tolerance
    else:
        rang_out = (gave_up and c.end.t >= expiry - c.tolerance) or c.events[-1].t > expiry + DUTY_BOUND + c.tolerance
    if not rang_out:
        return d
    d.applies = True
    d.evidence = [c.invite_line()]
    if expiry is not None:
        d.evidence.append(f"t={expiry:.3f} the ring timeout expires (INVITE + {ring_timeout:g} s)")
    d.evidence.append(c.final_line())
    if c.end is not None:
        d.evidence.append(f"{_t(c.end)} the device ended the call {c.end.detail.get('reason')}")
    when = f"at the ring timeout (t={expiry:.3f})" if expiry is not None else "when it gives up ringing"
    problem = None
    if f is None:
        problem = "the INVITE rang out with no final response"
    elif f.status != 480:
        problem = f"the INVITE rang out with {f.status} at {_t(f)}"
    elif expiry is not None and f.t > expiry + DUTY_BOUND + c.tolerance:
        problem = f"480 at {_t(f)}, {f.t - expiry:.3f} s after the ring timeout"
    elif c.end is not None and c.end.detail.get("reason") != "unanswered":
        problem = f"480 sent, but the call ended {c.end.detail.get('reason')}"
    if problem is not None:
        d.met = False
        d.message = f"{problem}: expected 480 to the INVITE {when}, and the call ended unanswered"
    return d


def _decline(c: _Call) -> Duty:
    """The user declined: the INVITE (ringing, or arriving later) is answered 603."""
    d = Duty("decline", False)
    if not _declined(c) or not c.reached:
        return d
    if c.final is not None and (200 <= c.final.status < 300 or (c.cancel is not None and c.cancel_at < c.final_at)):
        return d  # answered first, or a CANCEL decided the INVITE (the cancel duty)
    d.applies = True
    late = " (it arrived after the decline)" if c.end_at < c.invite_at else ""
    d.evidence = _chrono([f"{_t(c.end)} the user declined (device ended declined)", c.invite_line() + late,
                          c.final_line()])
    f = c.final
    by = max(c.invite.t, c.end.t) + DUTY_BOUND + c.tolerance
    if f is None or f.status != 603 or f.t > by:
        what = "no final response" if f is None else f"{f.status}" if f.status != 603 else f"603 only at {_t(f)}"
        d.met = False
        d.message = (f"the user declined at {_t(c.end)} and the INVITE got {what}: expected 603 Decline within "
                     f"{DUTY_BOUND:g} s (RFC 3261 §21.6.2; 486 Busy Here tells the caller to try again)")
    return d


def _late_invite(c: _Call, codes: Sequence[int]) -> Duty:
    """An INVITE after the device gave up on the call gets one of ``codes``."""
    d = Duty("late-invite", False)
    if not c.reached or c.end is None or c.end_at > c.invite_at or _declined(c) or not codes:
        return d
    d.applies = True
    f = c.final
    accepted = " or ".join(str(x) for x in codes)
    d.evidence = [f"{_t(c.end)} the device ended the call {c.end.detail.get('reason')}",
                  c.invite_line() + " after that", c.final_line()]
    if f is None or f.status not in codes or f.t > c.invite.t + DUTY_BOUND + c.tolerance:
        what = "no final response" if f is None else f"{f.status} at {_t(f)}"
        d.met = False
        d.message = (f"the late INVITE (at {_t(c.invite)}, after the device gave up at {_t(c.end)}) got {what}: "
                     f"expected {accepted} within {DUTY_BOUND:g} s ([expect] late_invite)")
    return d


# ---------------------------------------------------------------------------------------------- REGISTER duties


def _register_failures(c: _Call) -> list[tuple[int, Event]]:
    """The final non-2xx responses to REGISTERs that reached the device from the push on."""
    return [(i, e) for i, e in enumerate(c.events) if i >= c.start and _to_device(e) and e.cseq_method == "REGISTER"
            and e.status is not None and e.status >= 300]


def _new_register(c: _Call, after: int) -> tuple[int, Event | None]:
    """The first REGISTER transaction the device started after index ``after`` (retransmissions of an earlier
    one, same Call-ID and CSeq, are not new)."""
    seen = {(e.call_id, e.cseq) for e in c.events[:after + 1] if _from_device(e) and e.method == "REGISTER"}
    return _first(c.events, lambda e: _from_device(e) and e.method == "REGISTER" and (e.call_id, e.cseq) not in seen,
                  after + 1)


def _retry_after(e: Event) -> float | None:
    """The seconds of a response's Retry-After header (None: none, or not readable)."""
    if not e.raw:
        return None
    try:
        value = parse_message(e.raw).get("Retry-After")
    except (SipError, ValueError):
        return None
    m = re.match(r"\s*(\d{1,9})", value or "")
    return float(m.group(1)) if m else None


def _register_403(c: _Call) -> Duty:
    d = Duty("register-403", False)
    for i, e in _register_failures(c):
        if e.status != 403:
            continue
        d.applies = True
        _, retry = _new_register(c, i)
        d.evidence.append(f"{_t(e)} 403 to the device's REGISTER (CSeq {e.cseq})")
        if retry is not None:
            d.evidence.append(f"{_t(retry)} the device sent a new REGISTER (CSeq {retry.cseq})")
            d.met = False
            d.message = (f"the device retried its REGISTER at {_t(retry)} after the 403 at {_t(e)}: expected no "
                         "retry after 403 Forbidden (RFC 3261 §21.4.4: the request SHOULD NOT be repeated)")
            return d
        d.evidence.append("no new REGISTER after it")
    return d


def _retry_after_duty(c: _Call) -> Duty:
    d = Duty("retry-after", False)
    for i, e in _register_failures(c):
        wait = _retry_after(e)
        if wait is None:
            continue
        d.applies = True
        _, retry = _new_register(c, i)
        d.evidence.append(f"{_t(e)} {e.status} with Retry-After: {wait:g} to the device's REGISTER")
        d.evidence.append(f"{_t(retry)} the device's next REGISTER" if retry is not None
                          else "no new REGISTER in the run")
        if retry is not None and retry.t < e.t + wait - c.tolerance:
            d.met = False
            d.message = (f"the device retried its REGISTER at {_t(retry)}, {e.t + wait - retry.t:.3f} s before "
                         f"the {e.status}'s Retry-After: {wait:g} allowed (not before t={e.t + wait:.3f}; "
                         "RFC 3261 §21.5.4)")
            return d
    return d


def _register_on_push(c: _Call, deadline: float) -> Duty:
    """RFC 8599 §4.1.3: a UA that receives a push MUST send a binding-refresh REGISTER."""
    d = Duty("register-on-push", False)
    for i, push in enumerate(c.events):
        if not (push.kind == "push" and call_push_delivered(push, c.call_id)):
            continue
        d.applies = True
        flows = {e.flow for e in c.events[:i] if e.source == "proxy" and e.flow is not None}
        _, attempt = _first(c.events, lambda e: e.source == "proxy" and (
            (_from_device(e) and e.method == "REGISTER")
            or (e.kind in ("flow-open", "fault") and e.flow is not None and e.flow not in flows)), i + 1)
        d.evidence.append(f"{_t(push)} call push delivered")
        if attempt is not None and attempt.t <= push.t + deadline + c.tolerance:
            what = "REGISTER" if attempt.method == "REGISTER" else "connection for a REGISTER"
            d.evidence.append(f"{_t(attempt)} the device's {what}, {attempt.t - push.t:.3f} s after the push")
            continue
        d.evidence.append(f"{_t(attempt)} the device's next REGISTER" if attempt is not None
                          else "no REGISTER from the device after the push")
        d.met = False
        d.message = (f"no REGISTER from the device within {deadline:g} s of the call push at {_t(push)}: a device "
                     "woken by a push MUST send a binding-refresh REGISTER (RFC 8599 §4.1.3)")
        return d
    return d


# ---------------------------------------------------------------------------------------------- the check


def duties(events: Sequence[Event], call_id: str, scenario: Scenario, *, known_device: bool = True) -> list[Duty]:
    """Every duty of one call, applied or not. ``known_device``: the device runs the scenario's ``[device]``
    settings (the reference device), so its ring timeout and register deadline are known; a device of one's own
    (``--device external``) is judged on the codes it sends, with its declared deadlines (``--deadline``) or else
    the reference's register deadline (and no ring timeout)."""
    c = _Call(events, call_id, scenario)
    declared = {"ring_timeout": RING_TIMEOUT, "register_deadline": DeviceConfig.register_deadline,
                **device_settings(scenario.app_deadlines)}  # the app's declared deadlines, else the reference's
    settings = {**declared, **scenario.device} if known_device else declared
    ring = settings["ring_timeout"] if known_device or "ring" in scenario.app_deadlines else None
    register = settings["register_deadline"]
    if not c.events:
        return []
    return [_cancel(c), _ring_timeout(c, ring), _decline(c), _late_invite(c, scenario.late_invite),
            _register_403(c), _retry_after_duty(c), _register_on_push(c, register)]


def check_duties(events: Sequence[Event], call_id: str, scenario: Scenario, *, known_device: bool = True) \
        -> CheckResult:
    """The "sip-duties" check: every duty that applied was met (see the module docstring)."""
    found = duties(events, call_id, scenario, known_device=known_device)
    applied = [d for d in found if d.applies]
    failed = [d for d in applied if not d.met]
    evidence = [f"{d.name}: {line}" for d in applied for line in d.evidence]
    evidence += [f"{d.name}: {line} (does not apply)" for d in found if not d.applies for line in d.evidence]
    skipped = [d.name for d in found if not d.applies]
    if failed:
        return CheckResult(CHECK, False, "; ".join(f"{d.name}: {d.message}" for d in failed), evidence)
    if not applied:
        return CheckResult(CHECK, True, "no SIP duty applied in this run", evidence)
    return CheckResult(CHECK, True, f"met: {', '.join(d.name for d in applied)}"
                       + (f" (not applicable: {', '.join(skipped)})" if skipped else ""), evidence)
