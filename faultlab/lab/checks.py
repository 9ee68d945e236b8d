"""The three checks and the invariants of a lab run: pure functions over the timeline.

Each check reads :class:`~faultlab.trace.Event` lists and a :class:`~faultlab.lab.scenario.Scenario`, and returns a
:class:`CheckResult` whose ``evidence`` lists the events and times that decided it, so a failure says what happened,
not only that something did:

1. :func:`check_end` -- the device ends the call exactly once, with an accepted CallKit reason, by the deadline;
2. :func:`check_early_answer` -- an answer tapped before the INVITE is held: the 200 OK follows the INVITE within a
   bound, the answer is fulfilled only once the call connects (after the 200), and the call does not end before;
   with no INVITE at all, the answer fails and is never fulfilled;
3. :func:`check_cancel_push` -- a pair of runs of one scenario, cancel pushes delivered and dropped: both pass
   check 1, with the same end reason and end times within a bound of each other;

plus :func:`check_invariants`: the report inside the PushKit callback (≤ 0.5 s after the push), one ``reported`` per
call push (duplicates included), at most one ``ended`` per call, every milestone of the scenario met.

Check 1 bounds the end from both sides: no later than the deadline (``expect.by``), not before what causes it (the
anchors of ``expect.by``: the BYE, the CANCEL, the REGISTER's answer...) and, where the scenario says so, not before
the earliest right moment (``expect.not_before``: a device must not give up waiting sooner than the reference's
deadline).

Times are the timeline's (seconds from the lab's t0). :func:`anchors` finds the named events of
:data:`faultlab.lab.scenario.ANCHORS` for one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from faultlab.lab.scenario import Bound, Scenario
from faultlab.trace import Event

__all__ = ["CheckResult", "EARLY_ANSWER_BOUND", "CANCEL_PUSH_BOUND", "anchors", "check_cancel_push",
           "check_early_answer", "check_end", "check_invariants", "device_events"]

EARLY_ANSWER_BOUND = 0.5  # INVITE -> 200 OK, and 200/ACK -> fulfilment (reference §6 S17)
CANCEL_PUSH_BOUND = 0.5  # end times with and without cancel pushes (reference §6, check 3)
REPORT_BOUND = 0.5  # push -> reportNewIncomingCall, inside the PushKit callback (reference §7 D_report)


@dataclass
class CheckResult:
    check: str  # "ends-right" | "early-answer" | "cancel-push" | "invariants"
    passed: bool
    message: str
    evidence: list[str] = field(default_factory=list)  # "t=3.000 device ended remoteEnded", ...
    times: dict[str, float] = field(default_factory=dict)  # the key times (relative to the push)

    def to_json(self) -> dict:
        return {"check": self.check, "passed": self.passed, "message": self.message, "evidence": self.evidence,
                "times": {k: round(v, 6) for k, v in self.times.items()}}


def _fmt(t: float | None) -> str:
    return "never" if t is None else f"t={t:.3f}"


def device_events(events: Iterable[Event], call_id: str) -> list[Event]:
    """The device's events (``reported``, ``answer-tapped``, ... ``ended``) for one call."""
    return [e for e in events if e.kind == "device" and e.call_id == call_id]


def _first(events: Sequence[Event], pred, start: int = 0) -> Event | None:
    for e in events[start:]:
        if pred(e):
            return e
    return None


def anchors(events: Sequence[Event], call_id: str) -> dict[str, Event]:
    """The named events of one call (:data:`faultlab.lab.scenario.ANCHORS`) that happened: name -> first event.

    Events about the device's REGISTERs and its connection count from the call push on (in timeline order, so an
    earlier REGISTER at the same instant does not count). A timeline with no push gateway on it (a real iPhone
    through faultlab alone) takes the device's ``reported`` as ``push``, and counts from the call's first INVITE
    when that came before the report (an app in the foreground); one with no caller on it takes ``cancel`` and
    ``bye`` as faultlab received them on their way to the device."""
    events = list(events)
    found: dict[str, Event] = {}

    def put(name: str, event: Event | None) -> None:
        if event is not None:
            found[name] = event

    dev = device_events(events, call_id)
    put("push", _first(events, lambda e: _call_push_delivered(e, call_id)))
    put("reported", _first(dev, lambda e: e.detail.get("event") == "reported"))
    sources = {e.source for e in events}
    if "push" not in found and "push" not in sources and "reported" in found:
        # no push gateway on this timeline (a real iPhone through faultlab alone): the report stands in for t0
        found["push"] = found["reported"]
    put("answer-tapped", _first(dev, lambda e: e.detail.get("event") == "answer-tapped"))
    put("end", _first(dev, lambda e: e.detail.get("event") == "ended"))
    origin = found.get("push") or found.get("reported")
    start = next((i for i, e in enumerate(events) if e is origin), 0)
    if origin is not None and origin.kind == "device":  # no push: an app in the foreground reports on the INVITE
        start = min([start] + [i for i, e in enumerate(events[:start]) if e.source == "proxy" and e.kind == "sent"
                               and e.direction == "to-device" and e.method == "INVITE" and e.call_id == call_id])

    def proxy(kind: str, direction: str, pred, begin: int = start) -> Event | None:
        return _first(events, lambda e: e.source == "proxy" and e.kind == kind and e.direction == direction
                      and pred(e), begin)

    put("register-sent", proxy("received", "to-pbx", lambda e: e.method == "REGISTER"))
    put("register-ok", proxy("sent", "to-device", lambda e: e.cseq_method == "REGISTER"
                             and e.status is not None and 200 <= e.status < 300))
    put("register-final", _first(events, lambda e: e.source == "proxy" and e.kind in ("sent", "responded")
                                 and e.direction == "to-device" and e.cseq_method == "REGISTER"
                                 and e.status is not None and e.status >= 200, start))
    put("invite", proxy("sent", "to-device", lambda e: e.method == "INVITE" and e.call_id == call_id))
    put("ok", proxy("received", "to-pbx", lambda e: e.call_id == call_id and e.status == 200
                    and e.cseq_method == "INVITE"))
    put("ack", proxy("sent", "to-device", lambda e: e.method == "ACK" and e.call_id == call_id))
    put("invite-rejected", proxy("received", "to-pbx", lambda e: e.call_id == call_id and e.cseq_method == "INVITE"
                                 and e.status is not None and e.status >= 400))
    put("cancel-at-device", proxy("sent", "to-device", lambda e: e.method == "CANCEL" and e.call_id == call_id))
    put("bye-at-device", proxy("sent", "to-device", lambda e: e.method == "BYE" and e.call_id == call_id))
    # the caller's CANCEL and BYE as it sent them; with no caller on this timeline, as faultlab received them
    caller = "caller" in sources
    for name, method in (("cancel", "CANCEL"), ("bye", "BYE")):
        put(name, _first(events, lambda e: e.call_id == call_id and e.method == method and (
            (e.source == "caller" and e.kind == "sent") if caller else
            (e.source == "proxy" and e.kind == "received" and e.direction == "to-device"))))
    device_flows = {e.flow for e in events if e.source == "proxy" and e.kind in ("received", "sent")
                    and e.direction == "to-pbx" and e.method == "REGISTER"}
    # closed by faultlab: a reset, or a close/reset fault on that flow
    faulted = {e.flow for e in events if e.source == "proxy" and e.kind == "fault"
               and e.detail.get("action") in ("close", "reset")}
    lost = _first(events, lambda e: e.source == "proxy" and e.kind == "flow-close" and e.flow in device_flows
                  and (e.detail.get("how") == "reset" or e.flow in faulted), start)
    put("flow-lost", lost)
    if lost is not None:
        put("reregister", proxy("received", "to-pbx", lambda e: e.method == "REGISTER", events.index(lost)))
    _flow_anchors(events, found, start, call_id)
    return found


def _flow_anchors(events: list[Event], found: dict[str, Event], start: int, call_id: str) -> None:
    """``ping``, ``address-change``, ``register-new-flow`` and ``invite-new-flow`` (S25, S26), from ``start`` on."""
    def put(name: str, event: Event | None) -> None:
        if event is not None:
            found[name] = event

    put("ping", _first(events, lambda e: e.source == "proxy" and e.kind == "received" and e.direction == "to-pbx"
                       and e.summary == "keep-alive ping", start))
    put("address-change", _first(events, lambda e: e.kind == "network"
                                 and e.detail.get("event") == "address-change", start))
    first = found.get("register-sent")
    if first is None:
        return
    moved = _first(events, lambda e: e.source == "proxy" and e.kind == "received" and e.direction == "to-pbx"
                   and e.method == "REGISTER" and e.flow != first.flow, events.index(first))
    put("register-new-flow", moved)
    if moved is not None:
        put("invite-new-flow", _first(events, lambda e: e.source == "proxy" and e.kind == "sent"
                                      and e.direction == "to-device" and e.method == "INVITE"
                                      and e.call_id == call_id and e.flow == moved.flow, events.index(moved)))


def _call_push_delivered(e: Event, call_id: str) -> bool:
    """The push gateway delivered the call push (once, or with copies)."""
    return (e.source == "push" and e.kind == "push" and e.call_id == call_id and e.detail.get("push_kind") == "call"
            and e.detail.get("outcome") in ("delivered", "duplicated"))


def _deadline(bounds: Sequence[Bound], found: dict[str, Event]) -> tuple[float | None, list[str]]:
    """min over the bounds whose anchor happened (``None`` when none did), and how each term came out."""
    terms, notes = [], []
    for b in bounds:
        anchor = found.get(b.after)
        if anchor is None:
            notes.append(f"{b.after} + {b.within:g} s: no {b.after} on the timeline")
        else:
            terms.append(anchor.t + b.within)
            notes.append(f"{b.after} + {b.within:g} s = {anchor.t + b.within:.3f}")
    return (min(terms) if terms else None), notes


def _rel(found: dict[str, Event], names: Iterable[str]) -> dict[str, float]:
    t0 = found["push"].t if "push" in found else 0.0
    return {n: found[n].t - t0 for n in names if n in found}


# ---------------------------------------------------------------------------------------------- check 1


def check_end(events: Sequence[Event], call_id: str, scenario: Scenario) -> CheckResult:
    """Check 1: exactly one end, with a reason from ``scenario.end``, by the deadline (+ tolerance)."""
    found = anchors(events, call_id)
    ends = [e for e in device_events(events, call_id) if e.detail.get("event") == "ended"]
    evidence = [f"{_fmt(e.t)} device ended {e.detail.get('reason')}" for e in ends]
    times = _rel(found, ("register-ok", "invite", "cancel-at-device", "bye", "end"))
    if "push" in found:
        what = "call push delivered" if found["push"].kind == "push" else "device reported (no push gateway: t0)"
        evidence.insert(0, f"{_fmt(found['push'].t)} {what}")
    deadline, notes = _deadline(scenario.by, found)
    evidence += [f"deadline term: {n}" for n in notes]
    expected = " or ".join(scenario.end) if scenario.end else "no end"
    if not scenario.end:
        if ends:
            return CheckResult("ends-right", False, f"expected no end, but the device ended the call "
                               f"{ends[0].detail.get('reason')} at {_fmt(ends[0].t)}", evidence, times)
        return CheckResult("ends-right", True, "no end, as expected", evidence, times)
    if not ends:
        where = f"by {deadline:.3f}" if deadline is not None else "at all"
        return CheckResult("ends-right", False, f"the device never ended the call (expected {expected} {where})",
                           evidence, times)
    if len(ends) > 1:
        return CheckResult("ends-right", False, f"the device ended the call {len(ends)} times (exactly one end "
                           "per call)", evidence, times)
    end = ends[0]
    reason = end.detail.get("reason")
    if reason not in scenario.end:
        return CheckResult("ends-right", False, f"ended {reason} at {_fmt(end.t)}; expected {expected}",
                           evidence, times)
    if deadline is None:
        return CheckResult("ends-right", False, "no deadline: none of its anchors "
                           f"({', '.join(b.after for b in scenario.by)}) happened", evidence, times)
    if end.t > deadline + scenario.tolerance:
        late = end.t - deadline
        return CheckResult("ends-right", False, f"ended {reason} at {_fmt(end.t)}, {late:.3f} s after the deadline "
                           f"{deadline:.3f} ({'; '.join(b.describe() for b in scenario.by)})", evidence, times)
    # an end cannot come before what causes it: the BYE, the CANCEL, the REGISTER's answer... (the anchors of `by`)
    causes = [(b.after, found[b.after]) for b in scenario.by if b.after in found and found[b.after].t > end.t]
    if causes:
        name, cause = causes[0]
        return CheckResult("ends-right", False, f"ended {reason} at {_fmt(end.t)}, before {name} "
                           f"({_fmt(cause.t)}): the end came before what should cause it", evidence, times)
    earliest, early_notes = _deadline(scenario.not_before, found)
    evidence += [f"earliest term: {n}" for n in early_notes]
    if earliest is not None and end.t < earliest - scenario.tolerance:
        return CheckResult("ends-right", False, f"ended {reason} at {_fmt(end.t)}, {earliest - end.t:.3f} s before "
                           f"the earliest right moment {earliest:.3f} "
                           f"({'; '.join(b.describe().replace('≤', '≥') for b in scenario.not_before)}): "
                           "gave up too soon", evidence, times)
    return CheckResult("ends-right", True, f"ended {reason} at {_fmt(end.t)}, by the deadline {deadline:.3f}",
                       evidence, times)


# ---------------------------------------------------------------------------------------------- check 2


def check_early_answer(events: Sequence[Event], call_id: str, scenario: Scenario,
                       bound: float = EARLY_ANSWER_BOUND) -> CheckResult:
    """Check 2: an answer tapped before the INVITE waits for it, then connects promptly (see the module docstring)."""
    found = anchors(events, call_id)
    dev = device_events(events, call_id)
    times = _rel(found, ("answer-tapped", "invite", "ok", "ack", "end"))
    tapped = found.get("answer-tapped")
    invite = found.get("invite")
    fulfilled = [e for e in dev if e.detail.get("event") == "answer-fulfilled"]
    failed = [e for e in dev if e.detail.get("event") == "answer-failed"]
    ends = [e for e in dev if e.detail.get("event") == "ended"]
    evidence = [f"{_fmt(e.t)} device {e.detail.get('event')}" + (f" {e.detail['reason']}" if "reason" in e.detail
                else "") for e in dev]
    for name in ("invite", "ok", "ack"):
        if name in found:
            evidence.append(f"{_fmt(found[name].t)} {name} (faultlab)")
    evidence.sort(key=lambda line: float(line.split()[0][2:]) if line.startswith("t=") else math.inf)
    if tapped is None:
        return CheckResult("early-answer", False, "the user never tapped Answer: the scenario did not run as "
                           "scripted", evidence, times)
    if invite is not None and invite.t <= tapped.t:
        return CheckResult("early-answer", False, f"the INVITE arrived at {_fmt(invite.t)}, before the answer at "
                           f"{_fmt(tapped.t)}: this run did not exercise an early answer", evidence, times)
    if invite is None:
        # no INVITE: the answer must fail, never be fulfilled
        if fulfilled:
            return CheckResult("early-answer", False, f"answer fulfilled at {_fmt(fulfilled[0].t)} although no "
                               "INVITE ever arrived: a call that does not exist was connected", evidence, times)
        if not failed:
            return CheckResult("early-answer", False, "no INVITE arrived and the answer action never failed",
                               evidence, times)
        # held until the INVITE could no longer come: not before the earliest right end (else the deadline)
        hold_until, _ = _deadline(scenario.not_before or scenario.by, found)
        if hold_until is not None and failed[0].t < hold_until - scenario.tolerance:
            return CheckResult("early-answer", False, f"the answer failed at {_fmt(failed[0].t)}, "
                               f"{hold_until - failed[0].t:.3f} s before the INVITE stopped being possible "
                               f"({hold_until:.3f}): the early answer was not held", evidence, times)
        return CheckResult("early-answer", True, f"no INVITE; the answer failed at {_fmt(failed[0].t)} and was "
                           "never fulfilled", evidence, times)
    ok = found.get("ok")
    premature = [e for e in ends + failed if e.t < (ok.t if ok is not None else math.inf)]
    if premature:
        e = premature[0]
        return CheckResult("early-answer", False, f"{e.detail.get('event')} at {_fmt(e.t)}, before the call "
                           "connected: the early answer was not held until the INVITE", evidence, times)
    if ok is None:
        return CheckResult("early-answer", False, f"the INVITE arrived at {_fmt(invite.t)} but the device never "
                           "sent 200 OK", evidence, times)
    if ok.t > invite.t + bound + scenario.tolerance:
        return CheckResult("early-answer", False, f"200 OK at {_fmt(ok.t)}, {ok.t - invite.t:.3f} s after the "
                           f"INVITE (bound {bound:g} s)", evidence, times)
    if not fulfilled:
        return CheckResult("early-answer", False, "the call connected but the answer was never fulfilled",
                           evidence, times)
    first = fulfilled[0]
    if first.t < ok.t - scenario.tolerance:  # the device fulfils as it sends the 200; faultlab sees it a moment later
        return CheckResult("early-answer", False, f"answer fulfilled at {_fmt(first.t)}, before the 200 OK at "
                           f"{_fmt(ok.t)}: fulfilled before the call connected", evidence, times)
    connected = max(ok.t, found["ack"].t) if "ack" in found else ok.t
    if first.t > connected + bound + scenario.tolerance:
        return CheckResult("early-answer", False, f"answer fulfilled at {_fmt(first.t)}, "
                           f"{first.t - connected:.3f} s after the call connected (bound {bound:g} s)", evidence, times)
    return CheckResult("early-answer", True, f"answer held {invite.t - tapped.t:.3f} s until the INVITE; 200 OK "
                       f"{ok.t - invite.t:.3f} s after it; fulfilled at {_fmt(first.t)}", evidence, times)


# ---------------------------------------------------------------------------------------------- check 3


def check_cancel_push(delivered: tuple[Sequence[Event], str], dropped: tuple[Sequence[Event], str],
                      scenario: Scenario, bound: float = CANCEL_PUSH_BOUND) -> CheckResult:
    """Check 3 over two runs ``(events, call_id)``: cancel pushes delivered and dropped (see the module docstring)."""
    results = {}
    for label, (events, call_id) in (("delivered", delivered), ("dropped", dropped)):
        found = anchors(events, call_id)
        pushes = [e for e in events if e.source == "push" and e.kind == "push" and e.call_id == call_id
                  and e.detail.get("push_kind") == "cancel"]
        results[label] = (check_end(events, call_id, scenario), found, pushes)
    evidence = []
    times = {}
    for label, (result, found, pushes) in results.items():
        outcomes = ", ".join(f"{_fmt(p.t)} {p.detail.get('outcome')}" for p in pushes) or "none sent"
        end = found.get("end")
        rel = end.t - found["push"].t if end is not None and "push" in found else None
        evidence.append(f"cancel pushes {label}: {outcomes}; {result.message}")
        if rel is not None:
            times[f"end ({label})"] = rel
    ok_d, ok_x = results["delivered"][0], results["dropped"][0]
    if not (ok_d.passed and ok_x.passed):
        if ok_d.passed:
            what = f"passes only with the cancel push: without it, {ok_x.message}"
        elif ok_x.passed:
            what = f"fails with the cancel push ({ok_d.message}) and passes without it"
        else:
            what = f"with the cancel push, {ok_d.message}; without it, {ok_x.message}"
        return CheckResult("cancel-push", False, what, evidence, times)
    r_d = results["delivered"][1]["end"].detail.get("reason") if "end" in results["delivered"][1] else None
    r_x = results["dropped"][1]["end"].detail.get("reason") if "end" in results["dropped"][1] else None
    if r_d != r_x:
        return CheckResult("cancel-push", False, f"ends {r_d} with the cancel push but {r_x} without it",
                           evidence, times)
    if len(times) == 2:
        diff = abs(times["end (delivered)"] - times["end (dropped)"])
        if diff > bound:
            return CheckResult("cancel-push", False, f"ends {diff:.3f} s apart with and without the cancel push "
                               f"(bound {bound:g} s)", evidence, times)
    return CheckResult("cancel-push", True, f"same end ({r_d}) with and without the cancel push", evidence, times)


# ---------------------------------------------------------------------------------------------- invariants


def check_invariants(events: Sequence[Event], call_id: str, scenario: Scenario) -> CheckResult:
    """One ``reported`` per call (however many times its push was delivered), at most one ``ended``, and every
    milestone of the scenario (``expect.milestones``) met."""
    found = anchors(events, call_id)
    dev = device_events(events, call_id)
    deliveries = [e for e in events if _call_push_delivered(e, call_id)]
    reports = [e for e in dev if e.detail.get("event") == "reported"]
    ends = [e for e in dev if e.detail.get("event") == "ended"]
    evidence = [f"{_fmt(e.t)} call push delivered" for e in deliveries]
    evidence += [f"{_fmt(e.t)} device reported" for e in reports]
    evidence += [f"{_fmt(e.t)} device ended {e.detail.get('reason')}" for e in ends]
    problems = []
    if deliveries and reports and reports[0].t > deliveries[0].t + REPORT_BOUND + scenario.tolerance:
        problems.append(f"reported {reports[0].t - deliveries[0].t:.3f} s after the push (must be inside the PushKit "
                        f"callback: ≤ {REPORT_BOUND:g} s)")
    if deliveries and len(reports) != 1:
        problems.append(f"{len(reports)} reports for {len(deliveries)} deliveries of one call push (exactly one)")
    if len(ends) > 1:
        problems.append(f"{len(ends)} ends of one call (at most one)")
    times = {}
    for m in scenario.milestones:
        anchor, event = found.get(m.after), found.get(m.event)
        if anchor is None:
            problems.append(f"milestone {m.describe()}: no {m.after}")
            continue
        if event is None:
            problems.append(f"milestone {m.describe()}: no {m.event}")
            evidence.append(f"{_fmt(anchor.t)} {m.after}, and no {m.event} after it")
            continue
        times[f"{m.event}-{m.after}"] = event.t - anchor.t
        evidence.append(f"{_fmt(event.t)} {m.event}, {event.t - anchor.t:.3f} s after {m.after}")
        if event.t > anchor.t + m.within + scenario.tolerance:
            problems.append(f"milestone {m.describe()}: {event.t - anchor.t:.3f} s")
    if problems:
        return CheckResult("invariants", False, "; ".join(problems), evidence, times)
    return CheckResult("invariants", True, "reported in time, one report per push, at most one end, milestones met",
                       evidence, times)
