"""Values with units: durations, rates (percentages) and bit rates.

Every quantity in a profile carries its unit, so that nobody has to guess
whether ``100`` means milliseconds or seconds (toxiproxy mixes ms, µs and KB/s;
STYLE.md §4). A bare number is refused.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ._errors import UnitError

__all__ = [
    "parse_duration",
    "parse_rate",
    "parse_bitrate",
    "format_duration",
    "DURATION_UNITS",
    "BITRATE_UNITS",
]

DURATION_UNITS: dict[str, float] = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
"""Accepted duration units (seconds per unit). ``m`` is minutes."""

BITRATE_UNITS: dict[str, float] = {
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bit/s": 1.0,
    "kbit/s": 1e3,
    "mbit/s": 1e6,
    "gbit/s": 1e9,
}
"""Accepted bit-rate units (bits per second per unit), case-insensitive; SI prefixes (k = 1000)."""

_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_RE = re.compile(_NUMBER + r"\s*([a-z]+)")
_RATE_RE = re.compile(_NUMBER + r"\s*%")
_BITRATE_RE = re.compile(_NUMBER + r"\s*([a-z/]+)", re.IGNORECASE)

DURATION_ALLOWED = "a duration with a unit (us, ms, s, m, h), e.g. \"250ms\", \"3s\", \"1.5s\", \"2m\""
RATE_ALLOWED = "a percentage from 0% to 100%, e.g. \"8%\", \"0.5%\""
BITRATE_ALLOWED = (
    "a bit rate with a unit (bit, kbit, mbit, gbit, or the same with /s; k = 1000), e.g. \"780kbit\", \"1mbit\""
)


def _text(value: Any, allowed: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise UnitError(value, allowed + " (a string: numbers without a unit are refused)")
    return value.strip()


def parse_duration(text: Any) -> float:
    """``"250ms"`` -> 0.25, ``"3s"`` -> 3.0, ``"2m"`` -> 120.0 (seconds).

    Units: ``us`` (µs), ``ms``, ``s``, ``m`` (minutes), ``h``. A bare number,
    a negative value or another unit raises :class:`UnitError` (a ``ValueError``).
    """
    s = _text(text, DURATION_ALLOWED)
    m = _DURATION_RE.fullmatch(s)
    if m is None or m.group(2) not in DURATION_UNITS:
        raise UnitError(text, DURATION_ALLOWED)
    value = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    if not math.isfinite(value):
        raise UnitError(text, DURATION_ALLOWED)
    return value


def parse_rate(text: Any) -> float:
    """``"8%"`` -> 0.08. From ``"0%"`` to ``"100%"``; anything else raises :class:`UnitError`."""
    s = _text(text, RATE_ALLOWED)
    m = _RATE_RE.fullmatch(s)
    if m is None:
        raise UnitError(text, RATE_ALLOWED)
    value = float(m.group(1)) / 100.0
    if not 0.0 <= value <= 1.0:
        raise UnitError(text, RATE_ALLOWED)
    return value


def parse_bitrate(text: Any) -> float:
    """``"1mbit"`` -> 1e6, ``"780kbit"`` -> 780e3 (bits per second).

    Units (case-insensitive, SI prefixes): ``bit``, ``kbit``, ``mbit``,
    ``gbit``, also written ``kbit/s`` etc. ``bps``/``kbps`` are refused on
    purpose: tc reads ``kbps`` as kilo*bytes* per second while most people
    mean kilobits, so faultlab makes you write ``kbit``. Must be > 0.
    """
    s = _text(text, BITRATE_ALLOWED)
    m = _BITRATE_RE.fullmatch(s)
    if m is None:
        raise UnitError(text, BITRATE_ALLOWED)
    unit = m.group(2).lower()
    if unit not in BITRATE_UNITS:
        if unit.endswith("bps"):
            raise UnitError(
                text,
                BITRATE_ALLOWED + "; \"bps\" is ambiguous (tc reads kbps as kilobytes/s): write kbit for kilobits",
            )
        raise UnitError(text, BITRATE_ALLOWED)
    value = float(m.group(1)) * BITRATE_UNITS[unit]
    if not (value > 0 and math.isfinite(value)):
        raise UnitError(text, BITRATE_ALLOWED + " (more than zero)")
    return value


def format_duration(seconds: float) -> str:
    """A short text for a duration: ``0.25`` -> ``"250ms"``, ``3`` -> ``"3s"``."""
    if math.isinf(seconds):
        return "forever"
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
