"""DueQueue: the delayed datagrams of one UDP scheduler, in one heap, served by one task (virtual time)."""

from __future__ import annotations

import trio
import trio.testing

from faultlab.net.scheduler import DueQueue


async def test_items_leave_at_their_time_in_batches_and_in_order(autojump_clock):
    fired: list[tuple[float, list[str]]] = []

    async def fire(batch):
        fired.append((trio.current_time(), batch))

    due = DueQueue(fire, lambda item: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(due.run)
        t0 = trio.current_time()
        for at, name in ((3.0, "c"), (1.0, "a1"), (1.0, "a2"), (2.0, "b"), (1.0, "a3")):
            due.put(t0 + at, name)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    # one wake-up per due time; same-time items in the order they were put in
    assert [(round(t - t0, 6), batch) for t, batch in fired] == [
        (1.0, ["a1", "a2", "a3"]), (2.0, ["b"]), (3.0, ["c"])]


async def test_an_earlier_item_wakes_a_queue_sleeping_toward_a_later_one(autojump_clock):
    fired: list[tuple[float, str]] = []

    async def fire(batch):
        fired.extend((trio.current_time(), item) for item in batch)

    due = DueQueue(fire, lambda item: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(due.run)
        t0 = trio.current_time()
        due.put(t0 + 10.0, "late")
        await trio.sleep(1)  # the queue now sleeps toward t0 + 10
        due.put(t0 + 2.0, "early")
        await trio.sleep(0.5)
        assert fired == []  # nothing before its time
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert [(round(t - t0, 6), item) for t, item in fired] == [(2.0, "early"), (10.0, "late")]


async def test_what_is_still_waiting_when_it_stops_is_given_up_not_lost(autojump_clock):
    given_up: list[str] = []

    async def fire(batch):
        raise AssertionError(f"nothing is due yet: {batch}")

    due = DueQueue(fire, given_up.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(due.run)
        t0 = trio.current_time()
        due.put(t0 + 5.0, "second")
        due.put(t0 + 4.0, "first")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert given_up == ["first", "second"] and len(due) == 0


async def test_a_thousand_pending_delays_are_one_task(autojump_clock):
    """The point of the heap: pending delays do not each take a task (and, on a real clock, a timer)."""
    fired: list[str] = []

    async def fire(batch):
        fired.extend(batch)

    due = DueQueue(fire, lambda item: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(due.run)
        await trio.testing.wait_all_tasks_blocked()
        before = len(nursery.child_tasks)
        t0 = trio.current_time()
        for i in range(1000):
            due.put(t0 + 0.01 + (i * 7919 % 1000) / 1000, i)
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == before == 1 and len(due) == 1000
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert sorted(fired) == list(range(1000)) and len(fired) == 1000
