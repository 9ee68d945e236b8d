"""The timeline the lab's actors share: one :class:`~faultlab.trace.Trace`, one t0.

Actors emit events with ``source`` naming the actor (``"pbx"``, ``"push"``,
``"device:alice"``, ``"caller"``) and times on trio's clock relative to t0, so
that a run under ``trio.testing.MockClock`` (virtual time) and a real run give
the same timeline.
"""

from __future__ import annotations

import trio

from collections.abc import Callable

from faultlab.trace import Event, Trace


class Timeline:
    def __init__(self, trace: Trace | None = None, *, t0: float | None = None) -> None:
        self.trace = trace if trace is not None else Trace()
        self.t0 = trio.current_time() if t0 is None else t0
        self._changed: trio.Event | None = None

    def _on_emit(self, event: Event) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Return at the next event put on the timeline (by any actor)."""
        if self._changed is None:
            self._changed = trio.Event()
            self.trace.add_sink(self._on_emit)
        await self._changed.wait()

    async def wait_for(self, predicate: Callable[[Event], bool], *, start: int = 0) -> Event:
        """The first event from index ``start`` on (already there, or the next ones) for which ``predicate`` holds.
        Bound it with ``trio.fail_after`` / ``trio.move_on_after``."""
        seen = start
        while True:
            events = self.events
            for event in list(events)[seen:]:
                if predicate(event):
                    return event
            seen = max(seen, len(events))
            await self.changed()

    @property
    def events(self):
        return self.trace.events

    def now(self) -> float:
        return trio.current_time() - self.t0

    def emit(self, kind: str, *, source: str, **fields) -> Event:
        event = Event(self.now(), kind, source=source, **fields)
        self.trace.emit(event)
        return event
