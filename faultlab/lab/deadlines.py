"""The app's own deadlines: declared by a team, given to the reference device and used by the checks.

An iOS VoIP app has four waits of its own (seconds):

* ``register`` -- push -> REGISTER 2xx (else the call ends ``failed``);
* ``invite`` -- REGISTER 2xx -> INVITE (else ``unanswered``);
* ``total`` -- push -> INVITE, the hard cap;
* ``ring`` -- INVITE -> no user action -> 480, ``unanswered``.

By default they are the reference device's (:data:`REFERENCE`: 8 s, 5 s, 15 s, 45 s). A team whose app waits less
(or more) declares its values -- ``faultlab lab run --deadline invite=4.5s,register=8s``, the pytest plugin's
``--faultlab-deadline``, or a ``[deadlines]`` table in ``faultlab.toml`` in the directory it runs from::

    [deadlines]
    invite = "4.5s"
    register = "8s"
    total = "15s"

A scenario's bounds name a deadline instead of a number where the right moment is the app's deadline
(``{ after = "register-ok", deadline = "invite" }``): :func:`apply_deadlines` sets those bounds from the declared
values and hands the values to the reference device, so an app that meets its declared (legal) deadline passes,
and one that misses its own declared deadline fails.

:func:`advisories` says where a declared value strays from the recommended range (:data:`RANGES`), with why.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from faultlab.faults import parse_duration

__all__ = ["CONFIG_FILE", "DeadlineError", "NAMES", "RANGES", "REFERENCE", "advisories", "apply_deadlines",
           "device_settings", "load_config", "parse_deadlines"]

CONFIG_FILE = "faultlab.toml"
# name -> the reference device's setting (DeviceConfig field, scenario [device] key)
NAMES = {"register": "register_deadline", "invite": "invite_deadline", "total": "total_deadline",
         "ring": "ring_timeout"}
REFERENCE = {"register": 8.0, "invite": 5.0, "total": 15.0, "ring": 45.0}
# name -> (lowest, highest recommended, why)
RANGES: dict[str, tuple[float, float, str]] = {
    "register": (7.5, 10.0, "UDP sends the REGISTER at 0, 0.5, 1.5, 3.5 and 7.5 s (Timer E): under 7.5 s the last "
                 "retransmission is cut off; the budget also absorbs a TLS handshake and a digest challenge at "
                 "200-600 ms round trips. Longer serves little: proxies hold the INVITE 6-8 s for the REGISTER"),
    "invite": (3.0, 10.0, "proxies forward the held INVITE right after the REGISTER 2xx (about one round trip); "
               "5 s allows INVITE retransmissions (0.5, 1.5, 3.5 s) and a slow B2BUA. Shipping apps use 3 s "
               "(Acrobits) to 10 s (Telnyx, linphone)"),
    "total": (10.0, 20.0, "15 s is linphone's push_incoming_call_timeout; much shorter cuts into the REGISTER "
              "and INVITE budgets (8 s + 5 s), much longer keeps a ghost call ringing after the caller and the "
              "proxies have given up"),
    "ring": (30.0, 55.0, "45 s (linphone) ends an unanswered call with 480 before iOS's own cap of about 60 s; "
             "much shorter cuts callers off before a user can answer"),
}
_HELP = "NAME=DURATION[,NAME=DURATION...], NAME one of register, invite, total, ring: invite=4.5s,register=8s"


class DeadlineError(ValueError):
    """Declared deadlines that are not valid: ``"<where>: <what is wrong> — <what is allowed>"``."""


def parse_deadlines(text: str, *, where: str = "--deadline") -> dict[str, float]:
    """``"invite=4.5s,register=8s"`` -> ``{"invite": 4.5, "register": 8.0}``; :class:`DeadlineError` if invalid."""
    out: dict[str, float] = {}
    for part in filter(str.strip, text.split(",")):
        name, sep, value = part.partition("=")
        out.update(_one(name.strip(), value.strip() if sep else None, where))
    if not out:
        raise DeadlineError(f"{where}: {text!r} — {_HELP}")
    return out


def _one(name: str, value: object, where: str) -> dict[str, float]:
    if name not in NAMES:
        raise DeadlineError(f"{where}: {name!r} is not a deadline — {_HELP}")
    seconds = None
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9.]+\s*[a-z]*\s*", value):
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = None
    if seconds is None or not 0 < seconds < 3600:
        raise DeadlineError(f"{where}: {name}={value!r} — a duration with a unit, more than 0 and under an hour: "
                            "4.5s, 8s, 1500ms")
    return {name: seconds}


def load_config(directory: Path | None = None) -> dict[str, float]:
    """The ``[deadlines]`` table of ``faultlab.toml`` in ``directory`` (default: the current one); ``{}`` when
    there is no such file or table."""
    path = (directory or Path.cwd()) / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeadlineError(f"{path}: cannot read it: {exc}") from None
    table = data.get("deadlines", {})
    if not isinstance(table, dict):
        raise DeadlineError(f"{path}: deadlines: a table, e.g. [deadlines] invite = \"4.5s\"")
    out: dict[str, float] = {}
    for name, value in table.items():
        out.update(_one(name, value, f"{path}: [deadlines]"))
    return out


def advisories(declared: dict[str, float]) -> list[str]:
    """One line per declared deadline outside its recommended range (and per pair that contradicts itself)."""
    lines = []
    for name, value in declared.items():
        low, high, why = RANGES[name]
        if not low <= value <= high:
            lines.append(f"advisory: the declared {name} deadline {value:g} s is outside the recommended "
                         f"{low:g}-{high:g} s ({why})")
    full = {**REFERENCE, **declared}
    if full["total"] < full["register"]:
        lines.append(f"advisory: the total deadline {full['total']:g} s is shorter than the register deadline "
                     f"{full['register']:g} s: the register deadline never applies")
    return lines


def device_settings(declared: dict[str, float]) -> dict[str, float]:
    """The reference device's settings (``DeviceConfig`` keywords) for declared deadlines."""
    return {NAMES[name]: value for name, value in declared.items()}


def _resolve(bounds: tuple[Any, ...], full: dict[str, float]) -> tuple[Any, ...]:
    return tuple(replace(b, within=full[b.deadline]) if b.deadline else b for b in bounds)


def apply_deadlines(scenario: Any, declared: dict[str, float]) -> Any:
    """``scenario`` (a :class:`faultlab.lab.scenario.Scenario`) judged against the app's declared deadlines (the
    reference's for the ones not declared): every
    bound that names a deadline takes its value, and the reference device is given them (the scenario's own
    ``[device]`` settings still win for the device: they script a device, not the app's declaration)."""
    full = {**REFERENCE, **declared}
    return replace(scenario, app_deadlines=dict(declared), by=_resolve(scenario.by, full),
                   not_before=_resolve(scenario.not_before, full), milestones=_resolve(scenario.milestones, full))
