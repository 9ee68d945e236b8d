"""``--set KEY=VALUE``: one field of a scenario set from text, as the command line and sweeps give it.
Sans-IO, like :mod:`faultlab.lab.scenario`."""

from __future__ import annotations

import re
from dataclasses import replace

from faultlab.lab.deadlines import REFERENCE as DEADLINES
from faultlab.lab.device.logic import REASONS
from faultlab.lab.scenario import _DEVICE, ANCHORS, MAX_RTT, Bound, Scenario, ScenarioError, _duration

__all__ = ["override"]

# --set KEY: the scenario field each settable duration is
_SET_DURATIONS = {"expect.tolerance": "tolerance", "pbx.hold": "pbx_hold", "push.delay": "push_delay",
                  **{f"call.{n}": n for n in ("cancel_at", "answer_at", "decline_at", "elsewhere_at",
                                               "hang_up_after", "duration", "move_at")}}

def override(scenario: Scenario, key: str, value: str) -> Scenario:
    """``scenario`` with one field set from text, as ``--set KEY=VALUE`` gives it (e.g. ``expect.end=failed``,
    ``device.invite_deadline=3s``, ``call.cancel_at=2s``, ``expect.by=push+15s``)."""
    section, _, name = key.partition(".")
    src = f"--set {key}"
    if section == "expect" and name == "end":
        reasons = [r.strip() for r in value.split(",") if r.strip()]
        bad = [r for r in reasons if r not in REASONS]
        if bad:
            raise ScenarioError(src, "", bad[0], f"a CallKit end reason: {', '.join(REASONS)}")
        return replace(scenario, end=tuple(reasons))
    if section == "expect" and name in ("by", "not_before"):
        bounds = []
        for part in filter(str.strip, value.split(",")):
            m = re.fullmatch(r"\s*([a-z-]+)\s*\+\s*(\S+)\s*", part)
            if not m or m.group(1) not in ANCHORS:
                raise ScenarioError(src, "", part, f"ANCHOR+DURATION or ANCHOR+DEADLINE (e.g. register-ok+5s, "
                                    f"register-ok+invite); anchors: {', '.join(ANCHORS)}")
            name_ = m.group(2)
            full = {**DEADLINES, **scenario.app_deadlines}
            bounds.append(Bound(m.group(1), full[name_], deadline=name_) if name_ in DEADLINES
                          else Bound(m.group(1), _duration(src, name_)))
        if name == "by" and not bounds and scenario.end:
            raise ScenarioError(src, "", value, "at least one ANCHOR+DURATION: the deadline")
        return replace(scenario, **{name: tuple(bounds)})
    if section == "expect" and name == "late_invite":
        codes = [c.strip() for c in value.split(",") if c.strip()]
        if any(not c.isdigit() or not 300 <= int(c) <= 699 for c in codes):
            raise ScenarioError(src, "", value, "final response codes 300-699, comma-separated (empty: not judged)")
        return replace(scenario, late_invite=tuple(int(c) for c in codes))
    if section == "expect" and name == "cancel_push":
        if value not in ("true", "false"):
            raise ScenarioError(src, "", value, "true or false: whether check 3 (the cancel-push pair) applies")
        return replace(scenario, cancel_push_check=value == "true", cancel_push_required=value == "true")
    if key in _SET_DURATIONS:
        return replace(scenario, **{_SET_DURATIONS[key]: _duration(src, value)})
    if section == "device" and name in _DEVICE - {"new_connection"}:
        return replace(scenario, device={**scenario.device, name: _duration(src, value)})
    if key == "call.media":
        if value not in ("true", "false"):
            raise ScenarioError(src, "", value, "true or false: whether the call carries RTP")
        return replace(scenario, media=value == "true")
    if section == "network" and name == "rtt":
        rtt = _duration(src, value)
        if not 0 <= rtt <= MAX_RTT:
            raise ScenarioError(src, "", value, f"a round trip of 0 to {MAX_RTT:g}s, e.g. 40ms")
        return replace(scenario, rtt=rtt)
    allowed = ("expect.end, expect.by, expect.not_before (empty: none), expect.tolerance, expect.late_invite, "
               "expect.cancel_push, device.{register_deadline,invite_deadline,total_deadline,ring_timeout,"
               "media_timeout,keepalive_interval,keepalive_timeout}, call.{cancel_at,answer_at,decline_at,"
               "elsewhere_at,hang_up_after,duration,move_at,media}, pbx.hold, push.delay, network.rtt")
    raise ScenarioError(src, "", key, f"not a field that can be set; use one of {allowed}")
