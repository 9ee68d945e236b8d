"""Push faults: what the lab's push gateway does to pushes it accepted (or refuses). Sans-IO."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["PushFaults", "parse_refusal"]

_REFUSAL = re.compile(r"\s*([1-5][0-9][0-9])\s+([A-Za-z]+)\s*")


def parse_refusal(text: str) -> tuple[int, str]:
    """``"410 Unregistered"`` -> ``(410, "Unregistered")``; ValueError for anything else."""
    m = _REFUSAL.fullmatch(text) if isinstance(text, str) else None
    if m is None or int(m.group(1)) < 400:
        raise ValueError(f"a refusal is an APNs status and reason, e.g. '410 Unregistered', not {text!r}")
    return int(m.group(1)), m.group(2)


@dataclass(frozen=True)
class PushFaults:
    """What the gateway does to pushes. The sender gets 200 for a push the faults lose: a lost push is silent.

    ``drop_cancel``: cancel pushes are never delivered. ``drop_all``: no push is delivered.
    ``delay``: seconds between acceptance and delivery. ``duplicate``: extra deliveries of each push.
    ``offline``: the device is out of APNs's reach for this many seconds after each push: as APNs does, a push
    whose ``apns-expiration`` is not 0 is stored and delivered then (unless it expired before), and one with
    ``apns-expiration`` 0 (or none: APNs tries once) is discarded. ``refuse``: ``(status, reason)`` APNs answers
    every push with (e.g. ``(410, "Unregistered")``), nothing delivered.
    """

    drop_cancel: bool = False
    drop_all: bool = False
    delay: float = 0.0
    duplicate: int = 0
    offline: float = 0.0
    refuse: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        for name in ("delay", "offline"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"push {name} must be a finite number of seconds >= 0, not {value!r}")
        if self.duplicate < 0:
            raise ValueError(f"duplicate is the number of extra deliveries (>= 0), not {self.duplicate!r}")
        if self.refuse is not None and not (400 <= self.refuse[0] <= 599 and self.refuse[1]):
            raise ValueError(f"refuse is (an APNs error status, its reason), not {self.refuse!r}")
