"""A guided scenario with a real iPhone: prompts from the scenario's script, then the verdict. Pure functions.

The web page (:mod:`faultlab.api.web`) starts a run with a catalogue scenario's faults switched on; from then on
:func:`status` reads the proxy's timeline and says where the run is:

- ``waiting``: no call yet. Prompt: call the device's AOR (from the REGISTER faultlab last relayed).
- ``ringing`` / ``in-call``: the call is on. t0 is the device's ``reported`` event (the app reported the call to
  CallKit), or the INVITE faultlab delivered when no report came; prompts are due at the scenario's scripted
  times from there (``answer_at``, ``decline_at``, ``cancel_at``, ``elsewhere_at``; ``hang_up_after`` from the
  device's 200 OK).
- ``done``: the device's ``ended`` event for the call arrived, or the scenario's ``duration`` passed since t0.
  The verdict is then built once (:func:`verdict`) and kept.

Which call: the Call-ID of the first INVITE faultlab delivered to the device after the start (for a run for one
device, to that device: the hop's peer). Device events (posted by the app to ``POST /events``) belong to it when
they carry that Call-ID, or carry a CallKit uuid seen with that Call-ID. An event with only a uuid that no Call-ID
came with is the call's only while a single phone is plausible: no device event has named a Call-ID yet and
faultlab has delivered no other call's INVITE to a device yet. Device events of other calls are left out and
counted. With no INVITE at all (the scenario keeps it from the device), the call is the one the device's first
event names.

The verdict runs :func:`~faultlab.lab.checks.check_end`, :func:`~faultlab.lab.checks.check_early_answer` (when
the scenario exercises an early answer), :func:`~faultlab.lab.checks.check_invariants` and the SIP duties
(:func:`~faultlab.lab.duties.check_duties`, judged as for a device of one's own: the app's ring timeout is not
known) over the timeline since the start. Check 3 (the same outcome with cancel pushes dropped) needs a second run with faultlab's push gateway
in the path: a guided run says it is not judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from faultlab.addr import device_at
from faultlab.lab.checks import check_early_answer, check_end, check_invariants
from faultlab.lab.duties import check_duties
from faultlab.lab.scenario import Scenario
from faultlab.sip import SipError, parse_message, parse_uri
from faultlab.trace import Event

__all__ = ["GuidedRun", "device_aor", "due_prompts", "pick_call", "scenario_json", "status", "verdict"]

RELAY = "proxy"


@dataclass
class GuidedRun:
    """One guided run: the scenario, when it started (proxy time), the device its faults apply to (None: all)."""

    scenario: Scenario
    started_at: float
    device: str | None = None
    stopped_at: float | None = None
    result: dict[str, Any] | None = None  # the verdict, once the run is done
    notes: list[str] = field(default_factory=list)  # what this run cannot apply (push gateway faults, ...)
    prompted: set[str] = field(default_factory=set)  # the steps published as prompts (due_prompts)


def scenario_json(s: Scenario) -> dict[str, Any]:
    """A scenario as the page lists it: id, title, the script, the faults and what a correct device does."""
    script = {k: getattr(s, k) for k in ("cancel_at", "answer_at", "decline_at", "elsewhere", "hang_up_after")
              if getattr(s, k) is not None}
    if s.elsewhere is not None:
        script["elsewhere_at"] = s.elsewhere_at
    script["duration"] = s.duration
    return {
        "id": s.id, "slug": s.slug, "title": s.title, "summary": s.summary, "transports": list(s.transports),
        "faults": s.faults.name if s.faults is not None else None,
        "rules": [r.name for r in s.faults.rules] if s.faults is not None else [],
        "script": script,
        "expect": {"end": list(s.end), "by": [b.describe() for b in s.by], "early_answer": s.early_answer,
                   "cancel_push": s.cancel_push_check},
        "needs_push_gateway": needs_push_gateway(s),
    }


def needs_push_gateway(s: Scenario) -> list[str]:
    """The parts of ``s`` only faultlab's push gateway and PBX apply (not faultlab's relay on its own)."""
    out = []
    if s.push_drop_cancel:
        out.append("cancel pushes dropped")
    if s.push_delay:
        out.append(f"pushes delayed {s.push_delay:g} s")
    if s.push_duplicate:
        out.append(f"each push delivered {s.push_duplicate + 1} times")
    if s.push_offline:
        out.append(f"the phone out of APNs's reach {s.push_offline:g} s (stored pushes delivered late)")
    if s.push_refuse:
        out.append(f"every push refused {s.push_refuse[0]} {s.push_refuse[1]}")
    if s.pbx_apns_expiration or s.pbx_payload_size:
        out.append("the embedded PBX's push settings (apns-expiration, payload size)")
    return out


# -- reading the timeline -------------------------------------------------------------------------

def _sip(e: Event):
    if e.raw is None:
        return None
    try:
        return parse_message(e.raw)
    except (SipError, ValueError):
        return None


def device_aor(events: Iterable[Event], device: str | None = None) -> dict[str, str] | None:
    """The AOR the device registered through faultlab (its last REGISTER): ``{"aor", "user", "from"}``."""
    found = None
    for e in events:
        if e.source == RELAY and e.kind == "received" and e.direction == "to-pbx" and e.method == "REGISTER" \
                and (device is None or device_at(device, e.peer, ports=False)):
            msg = _sip(e)
            if msg is None or msg.to_addr is None:
                continue
            try:
                uri = parse_uri(msg.to_addr.uri)
            except (SipError, ValueError):
                continue
            found = {"aor": msg.to_addr.uri, "user": uri.user or "", "from": e.peer or ""}
    return found


def _initial_invite(e: Event, since: float, device: str | None = None) -> bool:
    """An INVITE faultlab delivered to a device since ``since`` (to ``device`` when given: the hop's peer)."""
    return (e.source == RELAY and e.kind == "sent" and e.direction == "to-device" and e.method == "INVITE"
            and e.t >= since and e.call_id is not None and (device is None or device_at(device, e.peer)))


def pick_call(events: Sequence[Event], since: float, device: str | None = None) -> tuple[str | None, str]:
    """The guided call: ``(call_id, how)``, from the first INVITE faultlab delivered since ``since`` (to
    ``device``, when the run is for one device), else from the first device event since then (its Call-ID, or
    ``uuid:UUID``); ``(None, ...)`` when there is neither."""
    for e in events:
        if _initial_invite(e, since, device):
            return e.call_id, "the INVITE faultlab delivered to the device"
    elsewhere = {e.call_id for e in events if _initial_invite(e, since)}  # calls of other devices
    for e in events:
        if e.kind == "device" and e.t >= since:
            if e.call_id:
                if e.call_id in elsewhere:
                    continue
                return e.call_id, "the device's first event (no INVITE reached the device)"
            if e.detail.get("uuid") and not elsewhere:
                return f"uuid:{e.detail['uuid']}", "the device's first event, by CallKit uuid (no INVITE, no Call-ID)"
    return None, "no call yet"


def attribute(events: Sequence[Event], since: float, call_id: str) -> tuple[list[Event], list[str]]:
    """The timeline since ``since`` with the device events of the guided call carrying ``call_id``; the calls of
    the device events left out (their Call-ID, else ``uuid:UUID``).

    A device event is the guided call's when it carries ``call_id``, or a CallKit uuid seen on an event carrying
    ``call_id``. An event with neither a Call-ID nor a known uuid (the app posts the uuid only) is the guided
    call's only while nothing says another phone or call is about: no device event has named any Call-ID yet and
    faultlab has delivered no other call's INVITE to a device yet; its uuid is then the guided call's from there
    on. Anything else is another call's."""
    mine = [e for e in events if e.t >= since]
    uuids = {e.detail.get("uuid") for e in mine if e.kind == "device" and e.call_id == call_id} - {None}
    foreign = {e.detail.get("uuid"): e.call_id for e in mine
               if e.kind == "device" and e.call_id is not None and e.call_id != call_id and e.detail.get("uuid")}
    if call_id.startswith("uuid:"):
        uuids.add(call_id[5:])
    named = other_invite = False
    out, other = [], []
    for e in mine:
        if _initial_invite(e, since) and e.call_id != call_id:
            other_invite = True
        if e.kind == "device" and e.call_id is not None:
            named = True  # the app named a Call-ID itself
        if e.kind == "device" and e.call_id != call_id:
            uuid = e.detail.get("uuid")
            if e.call_id is not None:
                other.append(e.call_id)
            elif uuid in uuids:
                e = replace(e, call_id=call_id)
            elif uuid in foreign:
                other.append(foreign[uuid])
            elif not named and not other_invite:
                if uuid:
                    uuids.add(uuid)
                e = replace(e, call_id=call_id)
            else:
                other.append(f"uuid:{uuid}" if uuid else "(no Call-ID, no uuid)")
        out.append(e)
    return out, other


# -- the run --------------------------------------------------------------------------------------

def _first(events: Iterable[Event], pred) -> Event | None:
    return next((e for e in events if pred(e)), None)


def _dev(events: Sequence[Event], call_id: str, name: str) -> Event | None:
    return _first(events, lambda e: e.kind == "device" and e.call_id == call_id and e.detail.get("event") == name)


def _relay(events: Sequence[Event], call_id: str, kind: str, direction: str, pred) -> Event | None:
    return _first(events, lambda e: e.source == RELAY and e.kind == kind and e.direction == direction
                  and e.call_id == call_id and pred(e))


def status(run: GuidedRun, events: Sequence[Event], now: float) -> dict[str, Any]:
    """Where the run is: ``{"scenario", "phase", "prompt", "steps", "call", "device", "verdict", ...}``; once done,
    also stores the verdict in ``run.result``."""
    s = run.scenario
    events = list(events)
    aor = device_aor(events, run.device)
    call_id, how = pick_call(events, run.started_at, run.device)
    out: dict[str, Any] = {
        "scenario": scenario_json(s), "started_at": run.started_at, "now": now, "device": run.device,
        "aor": aor, "call": None, "phase": "waiting", "steps": [], "notes": list(run.notes),
        "verdict": run.result,
    }
    who = f"{aor['aor']}" if aor else "the iPhone's number"
    call_step = {"id": "call", "text": f"Call {who} from another phone now", "due": None, "done": False}
    if aor is None:
        call_step["hint"] = ("no REGISTER from the iPhone has passed through faultlab yet: check that the app "
                             "registers through faultlab, then call its number")
    if call_id is None:
        out["steps"] = [call_step]
        out["prompt"] = call_step["text"]
        if run.stopped_at is not None:
            out["phase"] = "stopped"
            out["prompt"] = "Stopped before any call: no verdict"
        return out

    timeline, others = attribute(events, run.started_at, call_id)
    reported = _dev(timeline, call_id, "reported")
    invite = _relay(timeline, call_id, "sent", "to-device", lambda e: e.method == "INVITE")
    origin = reported or invite
    t0 = origin.t if origin is not None else None
    ok = _relay(timeline, call_id, "received", "to-pbx", lambda e: e.status == 200 and e.cseq_method == "INVITE")
    ended = _dev(timeline, call_id, "ended")
    tapped = _dev(timeline, call_id, "answer-tapped")
    cancel = _relay(timeline, call_id, "received", "to-device", lambda e: e.method == "CANCEL")
    bye = _relay(timeline, call_id, "received", "to-device", lambda e: e.method == "BYE")
    uuid = next((e.detail["uuid"] for e in timeline if e.kind == "device" and e.call_id == call_id
                 and isinstance(e.detail.get("uuid"), str)), None)
    out["call"] = {"call_id": call_id, "uuid": uuid, "picked_from": how, "t0": t0,
                   "t0_from": "reported" if reported else ("invite" if invite else None),
                   "other_calls_ignored": sorted(set(others))}
    call_step["done"] = True
    steps = [call_step]

    def step(sid: str, text: str, due: float | None, done: bool, wait: str | None = None) -> None:
        steps.append({"id": sid, "text": text, "due": due, "done": done, "wait": wait})

    if t0 is not None:
        if s.answer_at is not None:
            step("answer", "Tap Answer on the iPhone now", t0 + s.answer_at, tapped is not None or ended is not None,
                 "Let it ring: do not answer yet")
        if s.decline_at is not None:
            step("decline", "Tap Decline on the iPhone now", t0 + s.decline_at, ended is not None,
                 "Let it ring: do not decline yet")
        if s.cancel_at is not None:
            step("cancel", "Now hang up the caller (before anyone answers)", t0 + s.cancel_at,
                 cancel is not None or ended is not None, "Keep the caller ringing")
        if s.elsewhere is not None:
            verb = "Answer" if s.elsewhere == "answered" else "Decline"
            step("elsewhere", f"{verb} the call on the other phone registered as {who} now", t0 + s.elsewhere_at,
                 cancel is not None or ended is not None, "Let both phones ring")
        if s.answer_at is not None and s.hang_up_after is not None:
            due = ok.t + s.hang_up_after if ok is not None else None
            step("hang-up", "Now hang up the caller", due, bye is not None or ended is not None,
                 "Stay in the call" if ok is not None else "Waiting for the call to connect")
        if not any(st["id"] != "call" for st in steps):
            step("hands-off", "Do not touch the iPhone: let the call run its course", None, ended is not None)

    done_at, why = _end_of(run, ended, t0, now)
    out["steps"] = steps
    if done_at is not None:
        out["phase"] = "done"
        if run.result is None:
            run.result = verdict(s, timeline, call_id, why)
        out["verdict"] = run.result
        out["prompt"] = "Done: " + why
        return out
    out["phase"] = "in-call" if ok is not None else "ringing"
    _prompt(out, steps, now)
    return out


_ACTIONS = {"call": "call", "answer": "answer", "decline": "decline", "hang-up": "hang-up", "cancel": "hang-up"}


def due_prompts(run: GuidedRun, out: dict[str, Any]) -> list[dict[str, Any]]:
    """The machine-readable prompts (:mod:`faultlab.lab.prompts`) of ``out`` (a :func:`status` of ``run``) that
    are due and not yet published: the steps ``call`` (at once), ``answer``, ``decline``, ``hang-up`` and
    ``cancel`` (the caller hangs up before anyone answers: action ``hang-up``) once their time has come and while
    they are not done, each once per run (``run.prompted``). Each: ``{"action", "text", "due"`` (proxy time, None
    for now), ``"call_id", "uuid", "scenario"}``. Nothing once the run is done or stopped."""
    if out.get("phase") not in ("waiting", "ringing", "in-call"):
        return []
    call = out.get("call") or {}
    call_id, uuid = call.get("call_id"), call.get("uuid")
    if isinstance(call_id, str) and call_id.startswith("uuid:"):
        call_id, uuid = None, uuid or call_id[5:]
    found = []
    for st in out.get("steps", []):
        action = _ACTIONS.get(st["id"])
        if action is None or st["id"] in run.prompted or st["done"]:
            continue
        if (st["due"] is None and action != "call") or (st["due"] is not None and out["now"] < st["due"]):
            continue  # not yet (a hang-up's time is known once the call is connected)
        run.prompted.add(st["id"])
        found.append({"action": action, "text": st["text"], "due": st["due"], "scenario": run.scenario.id,
                      "call_id": None if action == "call" else call_id, "uuid": None if action == "call" else uuid})
    return found


def _end_of(run: GuidedRun, ended: Event | None, t0: float | None, now: float) -> tuple[float | None, str]:
    """When the guided call ended and why: the iPhone ended it, the scenario's time ran out, or the page stopped
    the run; ``(None, "")`` while it goes on."""
    s = run.scenario
    if ended is not None:
        return ended.t, f"the iPhone ended the call ({ended.detail.get('reason')})"
    if t0 is not None and now >= t0 + s.duration:
        return t0 + s.duration, f"the scenario's {s.duration:g} s passed without an end from the iPhone"
    if run.stopped_at is not None:
        return run.stopped_at, "stopped from the page before the iPhone ended the call"
    return None, ""


def _prompt(out: dict[str, Any], steps: list[dict[str, Any]], now: float) -> None:
    """What to tell the person now: the first step not done (or what to wait for until it is due)."""
    pending = [st for st in steps if not st["done"]]
    current = pending[0] if pending else None
    if current is None:
        out["prompt"] = "Waiting for the iPhone to end the call"
    elif current["due"] is not None and now < current["due"]:
        out["prompt"] = current["wait"] or current["text"]
        out["next"] = {"text": current["text"], "in": round(current["due"] - now, 3)}
    elif current["due"] is None and current.get("wait") and current["id"] == "hang-up":
        out["prompt"] = current["wait"]
    else:
        out["prompt"] = current["text"]


def verdict(s: Scenario, events: Sequence[Event], call_id: str, why: str) -> dict[str, Any]:
    """The checks over the guided call: ``{"passed", "why", "call_id", "checks": [CheckResult JSON + "judged"]}``."""
    checks = [check_end(events, call_id, s).to_json()]
    if s.early_answer:
        checks.append(check_early_answer(events, call_id, s).to_json())
    checks.append(check_invariants(events, call_id, s).to_json())
    checks.append(check_duties(events, call_id, s, known_device=False).to_json())
    for c in checks:
        c["judged"] = True
    if s.cancel_push_check:
        checks.append({"check": "cancel-push", "judged": False, "passed": None, "evidence": [], "times": {},
                       "message": "not judged in a guided run: it needs a second run of this scenario with cancel "
                                  "pushes dropped, through faultlab's push gateway (faultlab lab run)"})
    passed = all(c["passed"] for c in checks if c["judged"])
    return {"passed": passed, "why": why, "call_id": call_id, "checks": checks}
