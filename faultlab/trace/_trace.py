"""The timeline's hub: :class:`Trace` fans every event out to its sinks (memory, a JSONL file, the console, HEP)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable

from ._event import Event

__all__ = ["Sink", "Trace"]

Sink = Callable[[Event], None]


def _never() -> float:
    return float("-inf")


class Trace:
    """Fans every event out to its sinks, and keeps the recent ones in memory.

    ``keep`` bounds the in-memory buffer (``None``: keep all, for tests and
    short runs; ``0``: keep none). A sink may ask for some kinds of event only
    (``kinds``); :meth:`wants` tells an emitter whether anyone would see an
    event of a kind, so that an event nobody reads is never built. A sink
    whose far end is gone may :meth:`pause` some kinds for a while: they are
    not built for it then, only counted (:meth:`withheld`).
    """

    def __init__(self, *, keep: int | None = None) -> None:
        self.events: collections.deque[Event] = collections.deque(maxlen=keep)
        self._sinks: list[tuple[Sink, frozenset[str] | None]] = []
        self._closers: list[Callable[[], None]] = []
        self._failed: list[Sink] = []
        self._keep_all = keep != 0
        self._all = self._keep_all  # every kind is wanted (kept in memory, or a sink of every kind)
        self._kinds: frozenset[str] = frozenset()  # kinds some sink wants
        # pause(): sink -> (the kinds it asked for, the kinds withheld, until when, its clock); withheld counts
        self._paused: dict[Sink, tuple[frozenset[str] | None, frozenset[str], float, Callable[[], float]]] = {}
        self._paused_kinds: frozenset[str] = frozenset()
        self._resume_at = float("inf")
        self._pause_clock: Callable[[], float] = _never
        self._withheld: dict[Sink, int] = {}

    def add_sink(self, sink: Sink, close: Callable[[], None] | None = None, *,
                 kinds: Iterable[str] | None = None) -> None:
        """``sink`` gets every event from now on, or only those of ``kinds``."""
        wanted = None if kinds is None else frozenset(kinds)
        self._sinks.append((sink, wanted))
        self._recount()
        if close is not None:
            self._closers.append(close)

    def _recount(self) -> None:
        self._all = self._keep_all or any(kinds is None for _, kinds in self._sinks)
        self._kinds = frozenset().union(*(kinds for _, kinds in self._sinks if kinds is not None))
        self._paused_kinds = frozenset().union(*(held for _, held, _, _ in self._paused.values()))
        first = min(self._paused.values(), key=lambda p: p[2], default=None)  # the pause that ends first
        self._resume_at, self._pause_clock = (first[2], first[3]) if first else (float("inf"), _never)

    def wants(self, kind: str) -> bool:
        """Would an event of ``kind`` be kept or seen by a sink? (False: it need not be built.)"""
        if self._all or kind in self._kinds:
            return True
        if kind in self._paused_kinds:  # only a paused sink would see it: count it for that sink, or resume
            if self._resumed():
                return self.wants(kind)
            self._withhold(kind)
        return False

    def pause(self, sink: Sink, kinds: Iterable[str], seconds: float, clock: Callable[[], float]) -> None:
        """Give ``sink`` no event of ``kinds`` for ``seconds`` of ``clock``: they are not built for it, only
        counted (:meth:`withheld`). Its other kinds still reach it. Paused again before the end, it is paused
        from both until the new end. (A sink of every kind is not paused.)"""
        for n, (each, wanted) in enumerate(self._sinks):
            if each is sink and wanted is not None:
                held = frozenset(kinds)
                if sink in self._paused:  # paused again: what it asked for, without the kinds of both pauses
                    wanted, before, _, _ = self._paused[sink]
                    held |= before
                held &= wanted
                self._sinks[n] = (sink, wanted - held)
                self._paused[sink] = (wanted, held, clock() + seconds, clock)
                self._recount()
                return

    def withheld(self, sink: Sink) -> int:
        """How many events a pause kept from ``sink`` since the last call (reset to 0)."""
        return self._withheld.pop(sink, 0)

    def _resumed(self) -> bool:
        """Whether a pause ended by now (its sink then sees its kinds again)."""
        return self._pause_clock() >= self._resume_at and self._resume_due()

    def _resume_due(self) -> bool:
        """Resume the sinks whose pause is over; whether any was."""
        due = [sink for sink, (_, _, until, clock) in self._paused.items() if clock() >= until]
        for sink in due:
            wanted = self._paused.pop(sink)[0]
            self._sinks = [(each, wanted if each is sink else kinds) for each, kinds in self._sinks]
        if due:
            self._recount()
        return bool(due)

    def _withhold(self, kind: str) -> None:
        for sink, (_, held, _, _) in self._paused.items():
            if kind in held:
                self._withheld[sink] = self._withheld.get(sink, 0) + 1

    @property
    def quiet(self) -> bool:
        """No event of any kind is kept or seen: the message path need not describe its messages."""
        return not self._all and not self._kinds

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if event.kind in self._paused_kinds and not self._resumed():
            self._withhold(event.kind)  # built for others: still withheld from the paused
        for sink, kinds in self._sinks:
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                sink(event)
            except Exception:  # a view of the timeline that fails must not take the relay down with it
                self._sink_failed(sink)

    def _sink_failed(self, sink: Sink) -> None:
        if sink in self._failed:
            return
        self._failed.append(sink)
        logging.getLogger("faultlab.trace").exception(
            "a trace sink (%s) failed on an event; the run goes on (further failures of it are not logged)",
            getattr(sink, "__qualname__", type(sink).__name__))

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()
