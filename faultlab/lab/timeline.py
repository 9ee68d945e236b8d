"""The timeline the lab's actors share: one :class:`~faultlab.trace.Trace`, one t0.

Actors emit events with ``source`` naming the actor (``"pbx"``, ``"push"``,
``"device:alice"``, ``"caller"``) and times on trio's clock relative to t0, so
that a run under ``trio.testing.MockClock`` (virtual time) and a real run give
the same timeline.
"""

from __future__ import annotations

import trio

from faultlab.trace import Event, Trace


class Timeline:
    def __init__(self, trace: Trace | None = None, *, t0: float | None = None) -> None:
        self.trace = trace if trace is not None else Trace()
        self.t0 = trio.current_time() if t0 is None else t0

    @property
    def events(self):
        return self.trace.events

    def now(self) -> float:
        return trio.current_time() - self.t0

    def emit(self, kind: str, *, source: str, **fields) -> Event:
        event = Event(self.now(), kind, source=source, **fields)
        self.trace.emit(event)
        return event
