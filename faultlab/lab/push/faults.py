"""Push faults: what the lab's push gateway does to pushes it accepted. Sans-IO."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PushFaults"]


@dataclass(frozen=True)
class PushFaults:
    """What the gateway does to accepted pushes. The sender always gets 200: a lost push is silent.

    ``drop_cancel``: cancel pushes are never delivered. ``drop_all``: no push is delivered.
    ``delay``: seconds between acceptance and delivery. ``duplicate``: extra deliveries of each push.
    """

    drop_cancel: bool = False
    drop_all: bool = False
    delay: float = 0.0
    duplicate: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"push delay must be a finite number of seconds >= 0, not {self.delay!r}")
        if self.duplicate < 0:
            raise ValueError(f"duplicate is the number of extra deliveries (>= 0), not {self.duplicate!r}")

