"""Sweep parameters: what ``--param KEY=VALUES`` means (:func:`parse_param`), the grid (:func:`points`), and a
scenario with a grid point's values put in (:func:`apply`). Pure."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from faultlab.faults import Link, Profile, parse_bitrate, parse_duration
from faultlab.lab.scenario import Scenario, load_scenario, override

__all__ = ["ALIASES", "Param", "SweepError", "apply", "duration_text", "parse_param", "points"]

ALIASES = {"device.register_wait": "device.register_deadline", "device.invite_wait": "device.invite_deadline",
           "device.total_wait": "device.total_deadline"}
LINK_TIME = ("delay", "jitter")
LINK_RATIO = ("loss", "duplicate", "reorder")


class SweepError(ValueError):
    """A parameter or sweep setting that cannot work, said so a person can fix it."""


@dataclass(frozen=True)
class Param:
    key: str  # canonical, e.g. device.invite_deadline
    values: tuple[float, ...]
    unit: str  # "s", "ms", "%", "bit/s": how values are written back

    def label(self, value: float) -> str:
        return f"{value:g}%" if self.unit == "%" else f"{value:g} {self.unit}"


def _numbers(text: str, parse: Callable[[str], float]) -> tuple[float, ...]:
    if ".." in text:
        span, _, step_text = text.partition(":")
        lo_text, _, hi_text = span.partition("..")
        lo, hi = parse(lo_text), parse(hi_text)
        step = parse(step_text) if step_text else None
        if step is None or step <= 0 or hi < lo:
            raise SweepError(f"{text!r}: a range is LO..HI:STEP with LO <= HI and STEP > 0, e.g. 0..20:5")
        count = int(math.floor((hi - lo) / step + 1e-9)) + 1
        if count > 1000:
            raise SweepError(f"{text!r}: {count} values; keep a parameter under 1000 values")
        return tuple(round(lo + i * step, 9) for i in range(count))
    values = tuple(parse(v) for v in text.split(",") if v.strip())
    if not values:
        raise SweepError(f"{text!r}: no values; write a list (2,4,8) or a range (0..20:5)")
    return values


def _seconds(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return parse_duration(text)


def _millis(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return parse_duration(text) * 1000


def _percent(text: str) -> float:
    text = text.strip().rstrip("%")
    return float(text)


def duration_text(seconds: float) -> str:
    """``seconds`` as a duration :func:`override` reads back exactly: ``1e-05`` -> ``"0.00001s"`` (positional
    digits of the shortest repr, never an exponent, which parse_duration refuses)."""
    return f"{Decimal(repr(float(seconds))):f}s"


def _checked(text: str, key: str, values: tuple[float, ...], *, durations: bool) -> tuple[float, ...]:
    """``values`` without repeats (first kept, in order); every value finite, and not negative for a duration."""
    for v in values:
        if not math.isfinite(v):
            raise SweepError(f"--param {text!r}: {v} is not a number")
        if durations and v < 0:
            raise SweepError(f"--param {text!r}: {v:g} is negative; {key} is a duration, 0 or more")
    return tuple(dict.fromkeys(values))


def parse_param(text: str) -> Param:
    """``KEY=VALUES`` (see the module docstring) -> :class:`Param`; :class:`SweepError` says what is wrong.
    Every value is checked (not only the first), repeated values are dropped."""
    key, sep, values = text.partition("=")
    key = ALIASES.get(key.strip(), key.strip())
    if not sep or not key or not values.strip():
        raise SweepError(f"--param {text!r}: write KEY=VALUES, e.g. device.invite_deadline=2,4,8 or link.loss=0..20:5")
    section, _, name = key.partition(".")
    try:
        if section == "link" and name in LINK_TIME:
            return Param(key, _checked(text, key, _numbers(values, _millis), durations=True), "ms")
        if section == "link" and name in LINK_RATIO:
            parsed = _checked(text, key, _numbers(values, _percent), durations=False)
            if any(not 0 <= v <= 100 for v in parsed):
                raise SweepError(f"--param {text!r}: {name} is a percentage from 0 to 100")
            return Param(key, parsed, "%")
        if section == "link" and name == "rate":
            return Param(key, _checked(text, key, _numbers(values, parse_bitrate), durations=True), "bit/s")
        if section == "link":
            raise SweepError(f"--param {text!r}: link fields are delay, jitter, loss, duplicate, reorder, rate")
        if section == "rule" and key.endswith(".delay") and key.count(".") >= 2:
            return Param(key, _checked(text, key, _numbers(values, _seconds), durations=True), "s")
        if section in ("device", "call", "pbx", "push") or key in ("expect.tolerance", "network.rtt"):
            parsed = _checked(text, key, _numbers(values, _seconds), durations=True)
            s01 = load_scenario("S01")
            for value in parsed:  # the key must be one override() knows, and take every value
                override(s01, key, duration_text(value))
            return Param(key, parsed, "s")
    except ValueError as exc:
        if isinstance(exc, SweepError):
            raise
        raise SweepError(f"--param {text!r}: {exc}") from None
    raise SweepError(f"--param {text!r}: unknown parameter {key!r}; use device.*, link.*, rule.NAME.delay, call.*, "
                     "pbx.hold, push.delay or network.rtt (faultlab sweep --help)")


def apply(scenario: Scenario, values: dict[str, float]) -> Scenario:
    """``scenario`` with the grid point's values set (see the module docstring)."""
    link_changes: dict[str, Any] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section == "link":
            if name in LINK_TIME:
                link_changes[name] = value / 1000
            elif name in LINK_RATIO:
                link_changes[name] = value / 100
            else:
                link_changes["rate_bps"] = value
        elif section == "rule":
            rule_name = key[len("rule."):-len(".delay")]
            scenario = _set_rule_delay(scenario, rule_name, value)
        else:
            scenario = override(scenario, key, duration_text(value))
    if link_changes:
        faults = scenario.faults or Profile(name=f"{scenario.slug}-sweep", summary="sweep")
        base = faults.link or Link()
        link = replace(base, to_pbx=replace(base.to_pbx, **link_changes),
                       to_device=replace(base.to_device, **link_changes))
        scenario = replace(scenario, faults=replace(faults, link=link, text=""))
    return scenario


def _set_rule_delay(scenario: Scenario, name: str, value: float) -> Scenario:
    faults = scenario.faults
    names = [r.name for r in faults.rules] if faults else []
    if name not in names:
        raise SweepError(f"rule.{name}.delay: {scenario.id} has no fault rule {name!r} "
                         f"(its rules: {', '.join(names) or 'none'})")
    rules = []
    for rule in faults.rules:
        if rule.name == name:
            if rule.action.delay is None:
                raise SweepError(f"rule.{name}.delay: that rule does not delay ({rule.action.kind})")
            rule = replace(rule, action=replace(rule.action, delay=replace(rule.action.delay, delay=value)))
        rules.append(rule)
    return replace(scenario, faults=replace(faults, rules=tuple(rules), text=""))


def points(params: Sequence[Param]) -> list[dict[str, float]]:
    """Every combination of the parameters' values, in order."""
    return [dict(zip([p.key for p in params], combo)) for combo in itertools.product(*(p.values for p in params))]

