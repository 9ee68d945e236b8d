"""The virtual-time watchdog: a lab run whose virtual time stops advancing fails, with evidence, instead of hanging.

Under ``trio.testing.MockClock(autojump_threshold=0)`` the clock jumps to the next deadline only when every task is
blocked. An actor that loops at one instant and keeps yielding (``await trio.sleep(0)`` in a loop that waits for a
state that never comes, or two actors answering each other at once forever) leaves a task always runnable: the
clock never moves and ``trio.run`` never returns. A loop that never yields at all hangs real time as well, and no
watchdog inside the run can see it.

:class:`Watchdog` is a trio instrument: trio calls its ``before_io_wait`` once per round of its scheduler (each
round runs every runnable task one step). It counts the rounds that pass without the virtual clock moving; at
``limit`` rounds it records the instant and the tasks that ran most in the last :data:`SAMPLE` rounds, then calls
``on_stall`` (from a callback of the run, not from inside trio's scheduler), e.g. to cancel the run. The count costs
one clock read per round and is reset by every jump of the clock; a whole lab run at one instant (start-up, a burst
of messages) takes a few hundred rounds, so the default limit, :data:`DEFAULT_LIMIT`, leaves a wide margin and
still stops a stuck run within a second or so of wall-clock time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio

__all__ = ["DEFAULT_LIMIT", "SAMPLE", "Watchdog"]

DEFAULT_LIMIT = 20_000  # scheduler rounds at one virtual instant before the run is declared stuck
SAMPLE = 200  # the last rounds whose task steps are counted, to name the busy tasks


class Watchdog(trio.abc.Instrument):
    """Count scheduler rounds at one virtual instant; past ``limit``, call ``on_stall()`` once (see the module
    docstring). Install with ``trio.lowlevel.add_instrument(watchdog)`` inside the run."""

    def __init__(self, limit: int = DEFAULT_LIMIT, *, on_stall: Callable[[], None]) -> None:
        if limit < SAMPLE * 2:
            raise ValueError(f"the watchdog's limit must be at least {SAMPLE * 2} scheduler rounds, not {limit}")
        self.limit = limit
        self.on_stall = on_stall
        self.instant: float | None = None  # the virtual time of the current count
        self.rounds = 0  # scheduler rounds at ``instant``
        self.stalled_at: float | None = None  # the instant virtual time stopped advancing, once tripped
        self.busy: Counter[str] = Counter()  # task name -> steps in the sampled rounds
        self._sampler: _Sampler | None = None
        self.t0 = 0.0  # the lab's t0 on trio's clock: :meth:`describe` gives lab times

    def before_io_wait(self, timeout: float) -> None:
        now = trio.current_time()
        if now != self.instant:
            self.instant, self.rounds = now, 0
            if self._sampler is not None:  # time moved after all: stop sampling
                trio.lowlevel.remove_instrument(self._sampler)
                self._sampler = None
                self.busy.clear()
            return
        self.rounds += 1
        if self.rounds == self.limit - SAMPLE and self._sampler is None:
            self._sampler = _Sampler(self.busy)
            trio.lowlevel.add_instrument(self._sampler)
        elif self.rounds >= self.limit and self.stalled_at is None:
            self.stalled_at = now
            self._stop_counting()
            trio.lowlevel.current_trio_token().run_sync_soon(self.on_stall)

    def _stop_counting(self) -> None:
        for instrument in (self._sampler, self):
            if instrument is not None:
                try:
                    trio.lowlevel.remove_instrument(instrument)
                except KeyError:
                    pass
        self._sampler = None

    def describe(self) -> str:
        """What the watchdog saw, for a run's error: the instant, the rounds, the busiest tasks."""
        busiest = ", ".join(f"{name} ({steps} steps)" for name, steps in self.busy.most_common(3)) or "none seen"
        return (f"virtual time stopped advancing at t={(self.stalled_at or 0.0) - self.t0:.3f} s: {self.limit} scheduler rounds "
                f"without the clock moving (an actor loops at one instant); busiest tasks in the last {SAMPLE} "
                f"rounds: {busiest}")


class _Sampler(trio.abc.Instrument):
    """Counts the steps of each task by name (only switched on just before the watchdog trips: it costs a call
    per task step)."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.counts[task.name] += 1
