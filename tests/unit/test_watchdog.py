"""faultlab.lab.watchdog: a run whose virtual time stops advancing is stopped with evidence; a busy run whose time
moves is left alone, however many scheduler rounds it takes in all."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from faultlab.lab.watchdog import SAMPLE, Watchdog


def watched(body, limit: int = 1000) -> tuple[Watchdog, bool]:
    """Run ``body`` under the mock clock with a watchdog that cancels it; -> (the watchdog, body finished)."""
    finished = []

    async def main() -> Watchdog:
        with trio.CancelScope() as scope:
            dog = Watchdog(limit, on_stall=scope.cancel)
            dog.t0 = 1.0  # the lab's t0: times in the evidence are relative to it
            trio.lowlevel.add_instrument(dog)
            await body()
            finished.append(True)
        return dog

    dog = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return dog, bool(finished)


def test_a_loop_at_one_instant_is_stopped_with_the_instant_and_the_busy_task():
    async def body():
        await trio.sleep(4)  # time passes, then an actor spins without letting it pass again

        async def spin():
            while True:
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin, name="the-spinning-actor")
            await trio.sleep(1)  # never: the clock cannot jump while the spinner is runnable

    dog, finished = watched(body)
    assert not finished and dog.stalled_at == 4.0
    text = dog.describe()
    assert "virtual time stopped advancing at t=3.000 s" in text and "1000 scheduler rounds" in text
    assert "the-spinning-actor" in text


def test_busy_work_spread_over_time_is_not_a_stall():
    async def body():
        for _ in range(300):  # 300 instants x 20 rounds: far more rounds than the limit, never at one instant
            for _ in range(20):
                await trio.sleep(0)
            await trio.sleep(0.001)

    dog, finished = watched(body, limit=SAMPLE * 2)
    assert finished and dog.stalled_at is None


def test_the_limit_leaves_room_to_name_the_busy_tasks():
    with pytest.raises(ValueError, match=f"at least {SAMPLE * 2} scheduler rounds"):
        Watchdog(10, on_stall=lambda: None)
