"""The PBX's side of push, judged over the timeline: pure functions, no I/O.

:func:`check_push_side` reads the push gateway's events (``source="push"``, ``kind="push"``: one per request the
PBX made, with ``push_kind``, ``status``, ``reason``, ``outcome``, ``expiration``, ``size``), the caller's INVITEs
and answers, and what faultlab relayed toward the device, and returns one :class:`~faultlab.lab.checks.CheckResult`
(``"push-side"``) whose evidence lists the pushes and times that decided it. The rules, for every INVITE the
caller sent:

1. **One push per INVITE.** The PBX asks APNs for exactly one call push (the gateway's duplicates are the
   gateway's, not the PBX's). None: the PBX does not push, so an app asleep in the background never hears of the
   call. After APNs said the device's token is gone (410 Unregistered or ExpiredToken, 400 BadDeviceToken or
   DeviceTokenNotForTopic), none: the PBX must drop the token (RFC 8599), and answer that INVITE at once.
2. **A refused push ends the call for the caller, at once, and is not retried.** After a 400, 403, 410 or 413
   (APNs: do not retry these), no second push for that call; the caller gets 480 within
   :data:`REFUSAL_ANSWER_BOUND` of its INVITE (RFC 8599 §5.6.2); nothing of that call reaches the device.
3. **apns-expiration 0** on every call push (deliver now or never: a stored push rings a call long over), unless
   the scenario sets ``pbx.apns_expiration``.
4. **The hold ends by its deadline.** An INVITE held for a push is forwarded to the device or answered to the
   caller within the scenario's ``pbx.hold`` (+ :data:`HOLD_SLACK`).
5. **A cancel push after a CANCEL, where configured** (the embedded PBX with ``pbx.cancel_push``): a CANCEL of a
   held INVITE brings one cancel push within :data:`CANCEL_PUSH_BOUND`. Whatever the PBX, a cancel push for a
   call nobody cancelled is wrong.

A scenario built on a refusal (``push.refuse``, or an oversize ``pbx.payload_size``) also fails when no push was
refused: it was not exercised. A PBX that sent no push at all (e.g. one without RFC 8599 push) fails rule 1 with
that said plainly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from faultlab.lab.checks import CheckResult
from faultlab.lab.push.apns import MAX_PAYLOAD
from faultlab.lab.scenario import Scenario
from faultlab.trace import Event

__all__ = ["CANCEL_PUSH_BOUND", "HOLD_SLACK", "NO_RETRY", "REFUSAL_ANSWER_BOUND", "TOKEN_GONE", "check_push_side",
           "expects_refusal"]

REFUSAL_ANSWER_BOUND = 1.0  # seconds: the caller's INVITE -> its 480 when APNs refused the push (reference §6 S27)
CANCEL_PUSH_BOUND = 1.0  # seconds: the caller's CANCEL of a held INVITE -> the cancel push
HOLD_SLACK = 0.5  # seconds beyond pbx.hold for the held INVITE's forward or answer (network round trips)
NO_RETRY = frozenset({400, 403, 410, 413})  # APNs statuses a sender must not retry (reference §5)
TOKEN_GONE = frozenset({"Unregistered", "ExpiredToken", "BadDeviceToken", "DeviceTokenNotForTopic"})
_INVITE_RESPONSE = re.compile(r" cseq=\d+ INVITE ")


def _fmt(t: float | None) -> str:
    return "never" if t is None else f"t={t:.3f}"


@dataclass
class _Call:
    """One INVITE the caller sent, and what became of it."""

    call_id: str
    invite: float  # when the caller sent it
    final: tuple[float, int] | None = None  # the caller's final response: (t, status)
    cancel: float | None = None  # the caller's CANCEL
    at_device: float | None = None  # the INVITE relayed toward the device (faultlab received it from the PBX)
    device: float | None = None  # the device's first event for the call (reported...)
    pushes: list[Event] = field(default_factory=list)  # call pushes the PBX asked for
    cancel_pushes: list[Event] = field(default_factory=list)
    elsewhere: bool = False  # the embedded PBX played "answered/declined elsewhere" (it may send a cancel push)


def expects_refusal(scenario: Scenario) -> bool:
    """The scenario is built on APNs refusing the call push (a refusal fault, or an oversize payload)."""
    return scenario.push_refuse is not None or (scenario.pbx_payload_size or 0) > MAX_PAYLOAD


def _calls(events: Sequence[Event]) -> list[_Call]:
    calls: dict[str, _Call] = {}
    for e in events:
        if e.call_id is None:
            continue
        if e.source == "caller" and e.kind == "sent" and e.method == "INVITE" and e.call_id not in calls:
            calls[e.call_id] = _Call(e.call_id, e.t)
        call = calls.get(e.call_id)
        if call is None:
            continue
        if (e.source == "caller" and e.kind == "received" and e.status is not None and e.status >= 200
                and call.final is None and _INVITE_RESPONSE.search(e.summary or "")):
            call.final = (e.t, e.status)
        elif e.source == "caller" and e.kind == "sent" and e.method == "CANCEL" and call.cancel is None:
            call.cancel = e.t
        elif (e.source == "proxy" and e.kind == "received" and e.direction == "to-device" and e.method == "INVITE"
              and call.at_device is None):
            call.at_device = e.t
        elif e.kind == "device" and call.device is None:
            call.device = e.t
        elif e.source == "pbx" and e.kind == "pbx" and e.detail.get("action") == "elsewhere":
            call.elsewhere = True
        elif e.source == "push" and e.kind == "push":
            (call.cancel_pushes if e.detail.get("push_kind") == "cancel" else call.pushes).append(e)
    return list(calls.values())


def _describe(push: Event) -> str:
    d = push.detail
    status = f"{d.get('status')} {d.get('reason') or ''}".strip()
    return (f"{_fmt(push.t)} {d.get('push_kind') or '?'} push {d.get('outcome')} ({status}), apns-expiration "
            f"{d.get('expiration')!s}, {d.get('size')} bytes, token {str(d.get('token'))[:8]}")


def _gone_tokens(events: Sequence[Event]) -> list[tuple[float, str, str]]:
    """(t, token, "410 Unregistered") for every refusal that says the token is no longer valid."""
    return [(e.t, str(e.detail.get("token")), f"{e.detail.get('status')} {e.detail.get('reason')}")
            for e in events if e.source == "push" and e.kind == "push" and e.detail.get("outcome") == "rejected"
            and e.detail.get("reason") in TOKEN_GONE]


def _one_push(call: _Call, gone: list[tuple[float, str, str]]) -> list[str]:
    """Rule 1 (and the token half of rule 2)."""
    earlier = [g for g in gone if g[0] < call.invite]
    if earlier:
        t, token, why = earlier[0]
        again = [p for p in call.pushes if str(p.detail.get("token")) == token]
        problems = [f"call {call.call_id}: pushed again to token {token[:8]} at {_fmt(again[0].t)} although APNs "
                    f"answered {why} at {_fmt(t)}: the PBX must drop that token"] if again else []
        if call.final is None or call.final[0] > call.invite + REFUSAL_ANSWER_BOUND:
            problems.append(f"call {call.call_id}: no answer to the caller within {REFUSAL_ANSWER_BOUND:g} s of its "
                            f"INVITE ({_fmt(call.invite)}; answer {_fmt(call.final[0] if call.final else None)}), "
                            "although the user's only push binding is gone")
        return problems
    if not call.pushes:
        if call.at_device is not None or call.device is not None:
            seen = call.at_device if call.at_device is not None else call.device
            return [f"call {call.call_id}: the PBX sent no VoIP push for the INVITE ({_fmt(call.invite)}) and passed "
                    f"it straight to the device's registered flow ({_fmt(seen)}): it does not push (RFC 8599), so an "
                    "app asleep in the background would never hear of this call"]
        return [f"call {call.call_id}: the PBX sent no VoIP push for the INVITE ({_fmt(call.invite)}): one push per "
                "INVITE"]
    first = call.pushes[0]
    if len(call.pushes) > 1 and first.detail.get("outcome") != "rejected":
        return [f"call {call.call_id}: {len(call.pushes)} call pushes for one INVITE "
                f"({', '.join(_fmt(p.t) for p in call.pushes)}): one push per INVITE"]
    return []


def _refused(call: _Call) -> list[str]:
    """Rule 2: a refused push is not retried, the caller gets 480 at once, the device gets nothing."""
    if not call.pushes or call.pushes[0].detail.get("outcome") != "rejected":
        return []
    first = call.pushes[0]
    status, reason = first.detail.get("status"), first.detail.get("reason")
    problems = []
    if status in NO_RETRY and len(call.pushes) > 1:
        problems.append(f"call {call.call_id}: APNs refused the push with {status} {reason} at {_fmt(first.t)}, "
                        f"and the PBX retried it {len(call.pushes) - 1} time(s) "
                        f"({', '.join(_fmt(p.t) for p in call.pushes[1:])}): {status} {reason} must not be retried")
    deadline = call.invite + REFUSAL_ANSWER_BOUND
    if call.final is None or call.final[0] > deadline or call.final[1] != 480:
        got = f"{call.final[1]} at {_fmt(call.final[0])}" if call.final else "no final response"
        problems.append(f"call {call.call_id}: APNs refused the push ({status} {reason}); the caller must get 480 "
                        f"within {REFUSAL_ANSWER_BOUND:g} s of its INVITE (by {_fmt(deadline)}), got {got}")
    if call.at_device is not None or call.device is not None:
        seen = call.at_device if call.at_device is not None else call.device
        problems.append(f"call {call.call_id}: the call reached the device at {_fmt(seen)} although its push was "
                        "refused")
    return problems


def _expiration(call: _Call, scenario: Scenario) -> list[str]:
    """Rule 3."""
    if scenario.pbx_apns_expiration:
        return []
    bad = [p for p in call.pushes if p.detail.get("expiration") != "0"]
    if not bad:
        return []
    value = bad[0].detail.get("expiration")
    sent = "no apns-expiration header" if value is None else f"apns-expiration {value}"
    return [f"call {call.call_id}: the call push at {_fmt(bad[0].t)} had {sent}, not 0: APNs stores such a push "
            "and may deliver it long after the call is over (a ghost call)"]


def _hold(call: _Call, scenario: Scenario) -> list[str]:
    """Rule 4: an INVITE held for an accepted push is forwarded or answered by its hold deadline."""
    if not call.pushes or call.pushes[0].detail.get("outcome") == "rejected":
        return []
    ends = [t for t in (call.at_device, call.final[0] if call.final else None, call.cancel) if t is not None]
    released = min(ends) if ends else None
    deadline = call.invite + scenario.pbx_hold + HOLD_SLACK
    if released is None or released > deadline:
        return [f"call {call.call_id}: the INVITE ({_fmt(call.invite)}) was still held at its hold deadline "
                f"{_fmt(deadline)} (pbx.hold {scenario.pbx_hold:g} s): neither forwarded to the device nor answered "
                f"(first of either: {_fmt(released)})"]
    return []


def _cancel_push(call: _Call, scenario: Scenario, embedded: bool) -> list[str]:
    """Rule 5."""
    if call.cancel_pushes and call.cancel is None and not call.elsewhere:
        return [f"call {call.call_id}: a cancel push at {_fmt(call.cancel_pushes[0].t)} although nobody cancelled "
                "the call"]
    held = call.cancel is not None and (call.at_device is None or call.at_device > call.cancel)
    accepted = bool(call.pushes) and call.pushes[0].detail.get("outcome") != "rejected"
    if not (embedded and scenario.pbx_cancel_push and held and accepted):
        return []
    assert call.cancel is not None
    due = call.cancel + CANCEL_PUSH_BOUND
    after = [p for p in call.cancel_pushes if call.cancel <= p.t <= due]
    if not after:
        return [f"call {call.call_id}: the caller cancelled the held INVITE at {_fmt(call.cancel)} and the PBX, "
                f"configured to (pbx.cancel_push), sent no cancel push by {_fmt(due)}"]
    if len(call.cancel_pushes) > 1:
        return [f"call {call.call_id}: {len(call.cancel_pushes)} cancel pushes for one CANCEL"]
    return []


def _no_push_at_all(calls: list[_Call]) -> str:
    """What to say of a PBX that never asked for a push: one line, not one per INVITE."""
    reached = [c for c in calls if c.at_device is not None or c.device is not None]
    what = f"this PBX sent no VoIP push at all ({len(calls)} INVITE(s)): the push-side rules cannot be met"
    if reached:
        c = reached[0]
        seen = c.at_device if c.at_device is not None else c.device
        what += (f"; it passed the INVITE ({_fmt(c.invite)}) straight to the device's registered flow ({_fmt(seen)}):"
                 " it does not push (RFC 8599), so an app asleep in the background would never hear of the call")
    return what


def check_push_side(events: Sequence[Event], call_id: str | None, scenario: Scenario) -> CheckResult:
    """The push-side rules (module docstring) over one run's timeline; ``call_id``: the run's first call."""
    events = list(events)
    calls = _calls(events)
    embedded = any(e.source == "pbx" for e in events)
    gone = _gone_tokens(events)
    evidence: list[str] = []
    problems: list[str] = []
    for call in calls:
        evidence.append(f"{_fmt(call.invite)} caller INVITE {call.call_id}")
        evidence += [_describe(p) for p in call.pushes + call.cancel_pushes]
        if call.cancel is not None:
            evidence.append(f"{_fmt(call.cancel)} caller CANCEL")
        if call.at_device is not None:
            evidence.append(f"{_fmt(call.at_device)} INVITE on its way to the device")
        if call.final is not None:
            evidence.append(f"{_fmt(call.final[0])} caller got {call.final[1]}")
        problems += _one_push(call, gone) + _refused(call) + _expiration(call, scenario) + _hold(call, scenario)
        problems += _cancel_push(call, scenario, embedded)
    evidence.sort(key=lambda line: float(line.split()[0][2:]) if line.startswith("t=") else float("inf"))
    times = {}
    first = next((c for c in calls if c.call_id == call_id), calls[0] if calls else None)
    if first is not None and first.pushes:
        times["push-sent"] = first.pushes[0].t - first.invite
    if first is not None and first.final is not None:
        times["caller-final"] = first.final[0] - first.invite
    if not calls:
        problems.append("the caller sent no INVITE: nothing to judge")
    refusals = [p for c in calls for p in c.pushes if p.detail.get("outcome") == "rejected"]
    if expects_refusal(scenario) and not refusals:
        problems.append("the scenario is about APNs refusing the call push, but no push was refused (none was "
                        "sent?): not exercised")
    if not any(c.pushes or c.cancel_pushes for c in calls) and calls and not gone:
        problems = [_no_push_at_all(calls)] + [p for p in problems if "sent no VoIP push for the INVITE" not in p]
    if problems:
        return CheckResult("push-side", False, "; ".join(problems), evidence, times)
    what = (f"{len(calls)} INVITE(s), {sum(len(c.pushes) for c in calls)} call push(es)"
            + (f", {len(refusals)} refused and answered at once" if refusals else "")
            + ("" if scenario.pbx_apns_expiration else ", apns-expiration 0"))
    return CheckResult("push-side", True, f"{what}; held INVITEs ended by their deadline", evidence, times)
