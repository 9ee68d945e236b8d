"""Pushing out what a buffer holds when no further write comes to push it: the trace file's buffered lines, the
HEP packets waiting for their collector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

__all__ = ["keep_pushed"]


async def keep_pushed(source: Any, due: Callable[[], float | None], push: Callable[[], None]) -> None:
    """Run beside ``source`` until cancelled: whenever it says something waits (it calls ``source.on_pending``,
    which this sets), sleep ``due()`` seconds and ``push()``, again until ``due()`` is None (nothing waits).
    Sleeps only while something waits."""
    wake = trio.Event()

    def pending() -> None:
        wake.set()

    source.on_pending = pending
    if due() is not None:  # something waited before this task ran
        wake.set()
    try:
        while True:
            await wake.wait()
            wake = trio.Event()
            while (wait := due()) is not None:
                await trio.sleep(wait)
                push()
    finally:
        source.on_pending = None
