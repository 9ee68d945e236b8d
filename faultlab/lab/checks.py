"""The three checks and the invariants of a lab run: pure functions over the timeline.

Each check reads :class:`~faultlab.trace.Event` lists and a :class:`~faultlab.lab.scenario.Scenario`, and returns a
:class:`CheckResult` whose ``evidence`` lists the events and times that decided it, so a failure says what happened,
not only that something did:

1. :func:`check_end` -- the device ends the call exactly once, with an accepted CallKit reason, by the deadline;
2. :func:`check_early_answer` -- an answer tapped before the INVITE is held: the 200 OK follows the INVITE within a
   bound, the answer is fulfilled only once the call connects (after the 200), and the call does not end before;
   the whole answered call is covered: when the script hangs up (``call.hang_up_after``) the end must follow the
   caller's BYE, otherwise no end within :data:`CALL_SETTLE` seconds of connecting; with no INVITE at all, the
   answer fails and is never fulfilled;
3. :func:`check_cancel_push` -- a pair of runs of one scenario, cancel pushes delivered and dropped: the same end
   reason and end times within a bound of each other. It fails only when the two runs differ: two runs that fail
   check 1 alike are check 1's failure, not the cancel push's. A scenario check 3 applies to whose run had no
   cancel push to drop fails check 3 as not exercised (:mod:`faultlab.lab.runner`), never passes silently;

plus :func:`check_invariants`: the report inside the PushKit callback (≤ 0.5 s after the push), one ``reported`` per
call push (duplicates included), at most one ``ended`` per call, every milestone of the scenario met.

Check 1 bounds the end from both sides: no later than the deadline (``expect.by``), not before what causes it (the
anchors of ``expect.by``: the BYE, the CANCEL, the REGISTER's answer...) and, where the scenario says so, not before
the earliest right moment (``expect.not_before``: a device must not give up waiting sooner than the reference's
deadline).

**Anchors the device prevents.** A deadline is the minimum of its terms ``anchor + within``. When a term's anchor
never happened, the term does not vanish if the call script says when it would have come (:func:`stand_ins`):

* ``cancel-at-device``: the caller's CANCEL as sent (it never reached the device: e.g. the device had already
  rejected the INVITE); with no CANCEL sent (the device's 480 ended the INVITE first), the scripted time, the
  caller's INVITE + ``call.cancel_at``; for a second device's answer or decline, the caller's 180 +
  ``call.elsewhere_at``;
* ``cancel``: the caller's INVITE + ``call.cancel_at``;
* ``bye-at-device``: the caller's BYE as sent; with none, and ``bye``: the caller's 2xx + ``call.hang_up_after``;
* every other anchor (``register-ok``, ``invite``, ``register-final``, ``reregister``...) is the device's or the
  network's own doing, with no scripted time: its term drops, the other terms decide, and with no term left the
  check fails ("no deadline").

So a device that gives up before the script's anchor is judged against the time that anchor would have come: it
passes when another cause allowed its end (S24's ``push + total`` term: an ``unanswered`` end at the INVITE
deadline) and fails, with the stand-in in the evidence, when every cause of the end was still to come ("the device
ended the call before anything that should end it"). Stand-ins only ever tighten ``expect.by``; ``not_before``
terms are never stood in for (a term that drops there can only make the earliest moment later).

**Declared deadlines.** Bounds with ``deadline = NAME`` are the app's declared deadlines
(:mod:`faultlab.lab.deadlines`); they are numbers by the time the checks see them.

Times are the timeline's (seconds from the lab's t0). :func:`faultlab.lab.anchors.anchors` finds the named events
of :data:`faultlab.lab.scenario.ANCHORS` for one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from faultlab.lab.anchors import anchors, call_push_delivered, device_events, first as _first
from faultlab.lab.scenario import Bound, Scenario
from faultlab.trace import Event

__all__ = ["CheckResult", "EARLY_ANSWER_BOUND", "CANCEL_PUSH_BOUND", "anchors", "check_cancel_push",
           "check_early_answer", "check_end", "check_invariants", "device_events"]

EARLY_ANSWER_BOUND = 0.5  # INVITE -> 200 OK, and 200/ACK -> fulfilment (reference §6 S17)
CANCEL_PUSH_BOUND = 0.5  # end times with and without cancel pushes (reference §6, check 3)
_ELSEWHERE = {"answered": "answer", "declined": "decline"}
CALL_SETTLE = 2.0  # check 2: a connected call the script does not hang up stays up at least this long
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


def _deadline(bounds: Sequence[Bound], found: dict[str, Event],
              stand_ins: dict[str, tuple[float, str]] | None = None) -> tuple[float | None, list[str]]:
    """min over the bounds whose anchor happened or has a stand-in (``None`` when none), and how each term came out.

    ``stand_ins``: anchor -> (time, what) when the anchor would have come (see the module docstring)."""
    terms, notes = [], []
    for b in bounds:
        anchor = found.get(b.after)
        if anchor is not None:
            terms.append(anchor.t + b.within)
            notes.append(f"{b.after} + {b.within:g} s = {anchor.t + b.within:.3f}")
        elif stand_ins and b.after in stand_ins:
            t, what = stand_ins[b.after]
            terms.append(t + b.within)
            notes.append(f"{b.after} + {b.within:g} s = {t + b.within:.3f}: no {b.after} on the timeline; it would "
                         f"have come at {t:.3f} ({what})")
        else:
            notes.append(f"{b.after} + {b.within:g} s: no {b.after} on the timeline")
    return (min(terms) if terms else None), notes


def stand_ins(events: Sequence[Event], call_id: str, scenario: Scenario,
              found: dict[str, Event] | None = None) -> dict[str, tuple[float, str]]:
    """When the anchors the call script causes would have come, for those that never happened: anchor ->
    (time, what). The caller's CANCEL or BYE as sent stands in for it at the device; with none sent, the script's
    time (the caller's INVITE + ``call.cancel_at``; its 180 + ``call.elsewhere_at``; its 2xx +
    ``call.hang_up_after``)."""
    found = anchors(events, call_id) if found is None else found
    out: dict[str, tuple[float, str]] = {}
    mine = [e for e in events if e.source == "caller" and e.call_id == call_id]
    invite = _first(mine, lambda e: e.kind == "sent" and e.method == "INVITE")
    ringing = _first(mine, lambda e: e.kind == "received" and e.cseq_method == "INVITE" and e.status == 180)
    ok = _first(mine, lambda e: e.kind == "received" and e.cseq_method == "INVITE" and e.status is not None
                and 200 <= e.status < 300)
    if scenario.cancel_at is not None and invite is not None:
        out["cancel"] = (invite.t + scenario.cancel_at, f"the scripted CANCEL, call.cancel_at {scenario.cancel_at:g} "
                         "s after the INVITE")
    if "cancel" in found:
        out["cancel-at-device"] = (found["cancel"].t, "the caller's CANCEL, which never reached the device")
    elif "cancel" in out:
        out["cancel-at-device"] = out["cancel"]
    elif scenario.elsewhere is not None and ringing is not None:
        out["cancel-at-device"] = (ringing.t + scenario.elsewhere_at, f"the second device's scripted "
                                   f"{_ELSEWHERE.get(scenario.elsewhere, scenario.elsewhere)}, call.elsewhere_at "
                                   f"{scenario.elsewhere_at:g} s after "
                                   "the 180")
    if scenario.hang_up_after is not None and ok is not None:
        out["bye"] = (ok.t + scenario.hang_up_after, f"the scripted hang-up, call.hang_up_after "
                      f"{scenario.hang_up_after:g} s after the 2xx")
    if "bye" in found:
        out["bye-at-device"] = (found["bye"].t, "the caller's BYE, which never reached the device")
    elif "bye" in out:
        out["bye-at-device"] = out["bye"]
    return {name: value for name, value in out.items() if name not in found}


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
        what = "call push delivered" if found["push"].source == "push" else "device reported (no push gateway: t0)"
        evidence.insert(0, f"{_fmt(found['push'].t)} {what}")
    standing = stand_ins(events, call_id, scenario, found)
    deadline, notes = _deadline(scenario.by, found, standing)
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
    # ... nor before every cause, counting those it prevented at the time they would have come
    starts = [found[b.after].t if b.after in found else standing[b.after][0] for b in scenario.by
              if b.after in found or b.after in standing]
    if starts and min(starts) > end.t:
        name = next(b.after for b in scenario.by if b.after not in found and b.after in standing)
        return CheckResult("ends-right", False, f"ended {reason} at {_fmt(end.t)}, before {name} would have come "
                           f"({standing[name][0]:.3f}, {standing[name][1]}): the device ended the call before "
                           "anything that should end it", evidence, times)
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
                       bound: float = EARLY_ANSWER_BOUND, settle: float = CALL_SETTLE) -> CheckResult:
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
    dropped = _dropped(found, ends, connected, scenario, settle)
    if dropped is not None:
        return CheckResult("early-answer", False, dropped, evidence, times)
    return CheckResult("early-answer", True, f"answer held {invite.t - tapped.t:.3f} s until the INVITE; 200 OK "
                       f"{ok.t - invite.t:.3f} s after it; fulfilled at {_fmt(first.t)}", evidence, times)


def _dropped(found: dict[str, Event], ends: list[Event], connected: float, scenario: Scenario,
             settle: float) -> str | None:
    """Why the connected call was dropped, or None: it must stay up until the caller's BYE when the script hangs
    up, else for ``settle`` seconds."""
    if not ends:
        return None
    end = ends[0]
    what = f"ended {end.detail.get('reason')} at {_fmt(end.t)}, {end.t - connected:.3f} s after the call connected"
    if scenario.hang_up_after is not None:
        bye = found["bye"].t if "bye" in found else connected + scenario.hang_up_after  # else: when it was due
        if end.t < bye:
            sent = "sent" if "bye" in found else "scripted"
            return (f"{what} and before the caller's BYE ({sent} at t={bye:.3f}): the answered call was "
                    "dropped")
        return None
    if end.t < connected + settle:
        return f"{what} (no end for {settle:g} s; the script does not hang up): the answered call was dropped"
    return None


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
    r_d = results["delivered"][1]["end"].detail.get("reason") if "end" in results["delivered"][1] else None
    r_x = results["dropped"][1]["end"].detail.get("reason") if "end" in results["dropped"][1] else None
    if r_d != r_x:
        why = f"with the cancel push, {ok_d.message}; without it, {ok_x.message}"
        return CheckResult("cancel-push", False, f"ends {r_d or 'never'} with the cancel push but {r_x or 'never'} "
                           f"without it: the end depends on the cancel push ({why})", evidence, times)
    if len(times) == 2:
        diff = abs(times["end (delivered)"] - times["end (dropped)"])
        if diff > bound:
            return CheckResult("cancel-push", False, f"ends {diff:.3f} s apart with and without the cancel push "
                               f"(bound {bound:g} s): the end depends on the cancel push", evidence, times)
    elif len(times) == 1:  # one run's end has no push to measure from: not comparable, so not the same end
        return CheckResult("cancel-push", False, "only one of the two runs has an end time after its push: "
                           "cannot show the end does not depend on the cancel push", evidence, times)
    same = f"same end ({r_d or 'none'}) with and without the cancel push"
    if not (ok_d.passed and ok_x.passed):  # identical both ways: check 1 fails on its own, not the cancel push
        return CheckResult("cancel-push", True, f"{same}; both runs fail check 1 alike, so the failure is not "
                           "the cancel push's (see check 1)", evidence, times)
    return CheckResult("cancel-push", True, same, evidence, times)


# ---------------------------------------------------------------------------------------------- invariants


def check_invariants(events: Sequence[Event], call_id: str, scenario: Scenario) -> CheckResult:
    """One ``reported`` per call (however many times its push was delivered), at most one ``ended``, and every
    milestone of the scenario (``expect.milestones``) met."""
    found = anchors(events, call_id)
    dev = device_events(events, call_id)
    deliveries = [e for e in events if call_push_delivered(e, call_id)]
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
