"""The one scheduler: carries out the relay's plans on the trio clock.

A plan becomes timed steps (:func:`faultlab.relay.steps`); how they are written depends on the transport:

- **FIFO per stream connection** (:class:`StreamWriter`): each direction of a TCP/TLS pair has one writer
  and a queue, so a delayed or held message holds back the ones behind it, as a real TCP path would;
- **independent per datagram** (:class:`DatagramScheduler`): a delayed or held UDP datagram holds nothing
  else back. Delayed datagrams wait in one heap per scheduler (:class:`DueQueue`), served by one task that
  wakes once per due batch (on a real clock through :func:`faultlab.net.timer.sleep_until`'s timerfd ending),
  so a thousand delays pending cost one timer, not a thousand tasks; a held one waits in a task of its own
  for its release.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable

import trio

from faultlab.addr import format_hostport
from faultlab.net import timer
from faultlab.relay import Hold, Hop, Outgoing, Plan, Relay, Step, steps

# A write that cannot finish in this time (peer not reading) fails the pair; once the writer is finishing
# (faultlab closes the connection, the proxy stops), FINISH_SEND_TIMEOUT.
SEND_TIMEOUT = 30.0
FINISH_SEND_TIMEOUT = 2.0
# Messages waiting in one direction (delayed or held ones and those behind
# them) before the reader stops reading: TCP flow control then reaches the sender.
QUEUE_SIZE = 256


async def wait_hold(relay: Relay, hold: Hold) -> bool:
    """Wait until ``hold`` is released or times out; True: forward it, False: drop it."""
    released = trio.Event()
    hold.wake = released.set
    if hold.released:
        released.set()
    if hold.timeout is None:
        await released.wait()
        return True
    with trio.move_on_after(hold.timeout):
        await released.wait()
        return True
    return relay.hold_timed_out(hold)


def seconds(value: float) -> float | str:
    return value if math.isfinite(value) else "forever"


class Closed(Exception):
    """A stream connection ended while writing or reading."""

    def __init__(self, how: str) -> None:
        self.how = how  # "eof" | "reset" | "error"


class StreamWriter:
    """The one writer of a stream: FIFO, so a delayed or held message holds
    back the ones behind it as a real TCP path would.

    A message with nothing queued before it and nothing to wait for is
    written at once by the task that has it (the common, no-fault path).
    ``end`` is called with a close step's kind ("fin", "rst" or "eof").

    :meth:`finish` (a timeout, a graceful stop) writes what is due now and gives up what still waits
    for its delay or hold; so does the end of :meth:`run` (the connection closed, or the writer was
    cancelled). Each message given up is recorded ``abandoned``, with :attr:`reason`.
    """

    def __init__(self, relay: Relay, stream: trio.abc.Stream, end: Callable[[str], None]) -> None:
        self.relay = relay
        self.stream = stream
        self.end = end
        self.pending = 0
        self.lock = trio.StrictFIFOLock()
        self.finishing = False
        self.reason = "closed"  # why what is still queued is given up
        self.done = trio.Event()  # run() has returned: nothing more is written
        self._current: Step | None = None
        self._waiting: trio.CancelScope | None = None
        self._send, self._receive = trio.open_memory_channel[Step](QUEUE_SIZE)

    async def submit(self, step: Step) -> None:
        if self.done.is_set():
            self._abandon(step)
            return
        if self.finishing:
            if _due(step) and step.out is not None:
                await self._write(step)
            else:
                self._abandon(step)
            return
        if (self.pending == 0 and step.hold is None and step.close is None
                and step.at <= trio.current_time()):
            await self._write(step)
            return
        self.pending += 1
        self.relay.waiting += 1
        try:
            await self._send.send(step)
        except trio.ClosedResourceError:  # finish() or the end of run() while the queue was full
            self.pending -= 1
            self.relay.waiting -= 1
            await self.submit(step)

    async def submit_batch(self, batch: list[Step]) -> None:
        """Messages due now, in order: one write for all when nothing is queued before them."""
        if self.pending == 0 and not self.finishing:
            await self._write(*batch)
        else:
            for step in batch:
                await self.submit(step)

    def finish(self, reason: str) -> None:
        """Write what is queued and due now, give up the rest (``reason``), then return from :meth:`run`."""
        if self.finishing:
            return
        self.finishing = True
        self.reason = reason
        if self._waiting is not None:
            self._waiting.cancel()
        self._send.close()

    async def _write(self, *batch: Step) -> None:
        data = batch[0].out.data if len(batch) == 1 else b"".join(step.out.data for step in batch)
        async with self.lock:
            # Messages are written whole or not at all, even if the relay is stopping: the scope is shielded
            # from any cancellation but its own deadline (one scope for both: this is every message's path).
            limit = FINISH_SEND_TIMEOUT if self.finishing else SEND_TIMEOUT
            with trio.CancelScope(shield=True, deadline=trio.current_time() + limit) as timeout:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    # the other side went away (a PBX that crashed): this pair ends, not the relay
                    cause = exc.__cause__ or exc.__context__
                    raise Closed("reset" if isinstance(cause, (ConnectionResetError, BrokenPipeError))
                                 else "error") from exc
        if timeout.cancelled_caught:
            raise Closed("error")
        for step in batch:
            if step.kind == "responded":
                self.relay.responded(step.out, step.dest)
            else:
                self.relay.sent(step.out, step.dest, **step.detail)

    async def run(self) -> None:
        try:
            async for step in self._receive:
                self._current = step
                if await self._wait(step) and step.out is not None:
                    await self._write(step)
                self._taken()
                if step.close is not None and not self.finishing:
                    self.end(step.close)
                    return
        finally:
            self._give_up_queued()
            self.done.set()

    async def _wait(self, step: Step) -> bool:
        """Wait until ``step`` is due; False: it is not to be written (dropped when its hold timed out,
        or given up by :meth:`finish`, both recorded)."""
        if not self.finishing:
            with trio.CancelScope() as self._waiting:
                if step.hold is not None:
                    if not await wait_hold(self.relay, step.hold):
                        return False
                else:
                    await timer.sleep_until(step.at)
            self._waiting = None
            if not self.finishing:
                return True
        if _due(step):
            return True
        self._abandon(step)
        return False

    def _taken(self) -> None:
        self._current = None
        self.pending -= 1
        self.relay.waiting -= 1

    def _abandon(self, step: Step) -> None:
        if step.out is not None:
            self.relay.abandoned(step.out, step.dest, self.reason, hold=step.hold)

    def _give_up_queued(self) -> None:
        """At the end of :meth:`run`: what it had not written is given up."""
        if self._current is not None:
            self._abandon(self._current)
            self._taken()
        while True:
            try:
                step = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._abandon(step)
            self.pending -= 1
            self.relay.waiting -= 1
        self._send.close()


def _due(step: Step) -> bool:
    """Not held (or released), and its time has come."""
    return (step.hold is None or step.hold.released) and step.at <= trio.current_time()


async def carry_out_on_stream(relay: Relay, plan: Plan, hop: Hop, forward: StreamWriter, back: StreamWriter,
                              dest: tuple[str, int]) -> float | None:
    """Queue ``plan``'s steps on the pair's writers (the response on the way back); return how long the
    reading side is to stall, if the plan says so (inf: until the pair ends)."""
    for step in steps(plan, dest, hop.peer):
        await (back if step.back else forward).submit(step)
    if plan.stall is not None:
        relay.emit("stalled", flow=hop.flow, direction=hop.direction, transport=hop.transport,
                   detail={"for": seconds(plan.stall)})
    return plan.stall


Send = Callable[[bytes], Awaitable[object]]


class DueQueue:
    """Timed items in one heap, handed to ``fire`` in batches as they fall due: one task, one timer.

    Items due at the same time leave in the order they were put in. :meth:`run` sleeps until the earliest
    item is due (woken early when an earlier one is put in), then hands over every item due by then. When
    :meth:`run` is cancelled (the proxy stops), ``give_up`` is called for each item still waiting.
    """

    def __init__(self, fire: Callable[[list], Awaitable[None]], give_up: Callable[[object], None]) -> None:
        self._fire, self._give_up = fire, give_up
        self._heap: list[tuple[float, int, object]] = []
        self._order = itertools.count()
        self._wake = trio.Event()
        self._sleep: trio.CancelScope | None = None
        self.running = False

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, at: float, item: object) -> None:
        """Hand ``item`` to ``fire`` at ``at`` (trio time)."""
        earliest = not self._heap or at < self._heap[0][0]
        heapq.heappush(self._heap, (at, next(self._order), item))
        if earliest:
            self._wake.set()
            if self._sleep is not None:
                self._sleep.cancel()  # sleeping toward a later item: start again from this one

    async def run(self) -> None:
        """Serve the queue until cancelled; whoever starts it sets :attr:`running` first (one task per queue)."""
        try:
            while True:
                if not self._heap:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                with trio.CancelScope() as self._sleep:
                    await timer.sleep_until(self._heap[0][0])
                self._sleep = None
                now = trio.current_time()
                batch = []
                while self._heap and self._heap[0][0] <= now:
                    batch.append(heapq.heappop(self._heap)[2])
                if batch:
                    await self._fire(batch)
        finally:
            self.running = False
            for _, _, item in sorted(self._heap):
                self._give_up(item)
            self._heap.clear()


class DatagramScheduler:
    """Carries out plans on UDP, where every message is on its own: a delayed
    datagram holds nothing else back."""

    def __init__(self, relay: Relay, nursery: trio.Nursery) -> None:
        self.relay = relay
        self.nursery = nursery
        self._due = DueQueue(self._send_due, self._given_up)

    async def _send(self, send: Send, out: Outgoing, dest: tuple[str, int], **detail) -> None:
        try:
            await send(out.data)
        except OSError as exc:
            self.relay.warn(f"cannot send to {format_hostport(*dest)}: {exc.strerror or exc}",
                            flow=out.hop.flow, transport="udp", summary=out.summary)
            return
        self.relay.sent(out, dest, **detail)

    def _delay(self, send: Send, step: Step) -> None:
        self.relay.waiting += 1
        self._due.put(step.at, (send, step))
        if not self._due.running:
            self._due.running = True
            self.nursery.start_soon(self._due.run)

    async def _send_due(self, batch: list) -> None:
        for i, (send, step) in enumerate(batch):
            self.relay.waiting -= 1
            try:
                await self._send(send, step.out, step.dest, **step.detail)
            except trio.Cancelled:  # stopped in the middle of a batch: the rest is given up, recorded
                for item in batch[i + 1:]:
                    self._given_up(item)
                raise

    def _given_up(self, item) -> None:  # the proxy stops: recorded, not lost without a word
        _, step = item
        self.relay.waiting -= 1
        self.relay.abandoned(step.out, step.dest, "stop", hold=step.hold)

    async def _held(self, send: Send, step: Step) -> None:
        self.relay.waiting += 1
        try:
            if not await wait_hold(self.relay, step.hold):
                return
        except trio.Cancelled:  # the proxy stops: recorded, not lost without a word
            self.relay.abandoned(step.out, step.dest, "stop", hold=step.hold)
            raise
        finally:
            self.relay.waiting -= 1
        await self._send(send, step.out, step.dest, **step.detail)

    async def _respond(self, back: Send, out: Outgoing, dest: tuple[str, int]) -> None:
        try:
            await back(out.data)
            self.relay.responded(out, dest)
        except OSError as exc:
            self.relay.warn(f"cannot send response: {exc.strerror or exc}", flow=out.hop.flow,
                            transport="udp", summary=out.summary)

    async def carry_out(self, plan: Plan, send: Send, dest: tuple[str, int], back: Send,
                        back_dest: tuple[str, int]) -> None:
        for step in steps(plan, dest, back_dest):
            if step.out is None:  # a close: streams only
                continue
            if step.back:
                await self._respond(back, step.out, step.dest)
            elif step.hold is not None:
                self.nursery.start_soon(self._held, send, step)
            elif step.copy or step.at > plan.received_at:
                self._delay(send, step)
            else:
                await self._send(send, step.out, step.dest)
