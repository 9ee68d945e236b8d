"""How long ``faultlab lab run --device external`` will take, before the first call. Pure functions.

A case of an external run is a scenario x a profile on the transport the device registered over: one call, or two
when check 3 applies (the second with cancel pushes dropped); a scenario that cannot run against a real device is
skipped (:func:`skip_reason`). Each call takes the scenario's typical lab seconds (:func:`typical_seconds`: when
its script or the device's expected end closes the call, plus the ``SETTLE`` seconds the lab watches for a second
end; at most its ``duration``), then the lab pauses ``--pause`` seconds before the next call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faultlab.lab.pushside import expects_refusal
from faultlab.lab.scenario import Scenario

__all__ = ["CaseEstimate", "Estimate", "approx", "estimate", "skip_reason", "typical_seconds"]

SETTLE = 2.0  # as faultlab.lab.runner.SETTLE: the lab watches this long after the device's end
SETUP = 0.3  # push -> REGISTER -> INVITE -> the call shows: a few round trips on a lab network
REGISTERED = 2.0  # push -> the device's REGISTER answered, in a scenario whose end is bound to it (faults on it)
REGISTER_DEADLINE = 8.0  # the reference app's D_register: a device that cannot register gives up this late
def skip_reason(scenario: Scenario, transport: str) -> str | None:
    """Why the external lab skips ``scenario`` for a device registered over ``transport`` (None: it runs)."""
    if transport not in scenario.transports:
        return (f"skipped, it applies to {', '.join(scenario.transports)} and the device registered over "
                f"{transport}")
    if expects_refusal(scenario):  # it would also make the PBX forget the device's push binding
        return ("skipped, it judges the PBX's side of push (APNs refusing the push), not the device: run it "
                "with the reference device")
    if scenario.media:  # a real phone would get an SDP offer on 127.0.0.1: its RTP could never reach the caller
        return ("skipped, its call carries RTP and the caller's media is on 127.0.0.1, which a device elsewhere "
                "cannot reach")
    if scenario.move_at is not None:
        return "skipped, the lab cannot change a real device's address"
    return None


def typical_seconds(scenario: Scenario) -> float:
    """Lab seconds of one call of ``scenario`` when the device does what the scenario expects: from the push to
    the earliest end its script (decline, answered or declined elsewhere, answer then hang-up) or its ``[expect]
    by`` bounds give, plus ``SETTLE``; the scenario's ``duration`` at most. An estimate: the faults' effect on
    the REGISTER is taken as ``REGISTERED`` seconds."""
    s = scenario
    shown = s.push_delay + s.push_offline + SETUP  # a push held by the gateway shows the call that much later
    talk = shown + s.answer_at + s.hang_up_after if s.answer_at is not None and s.hang_up_after is not None \
        else None
    cancel = s.cancel_at if s.cancel_at is not None else (shown + s.elsewhere_at if s.elsewhere else None)
    anchors = {"push": 0.0, "invite": shown, "reported": shown, "register-ok": REGISTERED,
               "register-final": REGISTER_DEADLINE, "cancel-at-device": cancel, "bye": talk, "bye-at-device": talk}
    ends = [shown + s.decline_at] if s.decline_at is not None else []
    if s.elsewhere is not None:
        ends.append(shown + s.elsewhere_at)
    if talk is not None:
        ends.append(talk)
    for bound in s.by:
        anchor = anchors.get(bound.after)
        if bound.event == "end" and anchor is not None:
            ends.append(anchor + bound.within)
    if not ends:
        return s.duration
    return min(min(ends) + SETTLE, s.duration)


@dataclass(frozen=True)
class CaseEstimate:
    scenario: Scenario
    profile: Any  # a Profile or None
    calls: int  # 2 with check 3 (the second with cancel pushes dropped); 0 when skipped
    seconds: float  # lab seconds of one call
    skipped: str | None = None


@dataclass(frozen=True)
class Estimate:
    cases: tuple[CaseEstimate, ...]
    pause: float

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self.cases)

    @property
    def seconds(self) -> float:
        """The whole run: every call's lab seconds and the pause after it."""
        return sum(c.calls * (c.seconds + self.pause) for c in self.cases)

    def case_seconds(self, case: CaseEstimate) -> float:
        return case.calls * (case.seconds + self.pause)

    def lines(self) -> list[str]:
        """What to tell the person before the first call: each case, then the total."""
        out = []
        for c in self.cases:
            profile = f" x {c.profile.name}" if c.profile is not None else ""
            if c.skipped:
                out.append(f"  {c.scenario.name}{profile}: {c.skipped}")
                continue
            second = " (the second with cancel pushes dropped)" if c.calls == 2 else ""
            out.append(f"  {c.scenario.name}{profile}: {c.calls} call{'s' if c.calls > 1 else ''}{second}, "
                       f"~{c.seconds:.0f} s each + {self.pause:g} s pause")
        ran = [c for c in self.cases if not c.skipped]
        out.append(f"estimate: {len(ran)} case{'s' if len(ran) != 1 else ''}, {self.calls} call"
                   f"{'s' if self.calls != 1 else ''}, about {approx(self.seconds)}")
        return out


def estimate(todo: Sequence[tuple[Scenario, Any]], transport: str, pause: float) -> Estimate:
    """The cases of ``todo`` (scenario, profile) on ``transport``, each with its calls and typical seconds."""
    cases = []
    for scenario, profile in todo:
        why = skip_reason(scenario, transport)
        calls = 0 if why else (2 if scenario.cancel_push_check else 1)
        cases.append(CaseEstimate(scenario, profile, calls, typical_seconds(scenario), why))
    return Estimate(tuple(cases), pause)


def approx(seconds: float) -> str:
    """``45 s`` under 90 s, else whole minutes (``12 min``)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
