"""One device connection and its PBX connection (TCP, TLS): the two directions, the timeouts, the close.

Each direction is one task that reads, frames whole messages, and writes each before reading on
(through the direction's :class:`~faultlab.net.scheduler.StreamWriter`), so order is kept and a slow
side holds the other back as a real TCP path would. When the framer cannot frame a stream any more,
the rest of that direction is relayed raw.

**The PBX connection opens with the device's first message** in relay mode, so idle devices cost the
PBX nothing; a CRLF keep-alive ping before it is answered by faultlab (a pong, RFC 5626 §4.4.1).
Transparent mode connects at once, as the device's own connection would.

**Timeouts** (:class:`Watch`): a message begun must be complete within ``message_timeout`` (64*T1, 32 s
by default); a connection with no bytes either way (keep-alives count) closes after
``stream_idle_timeout``, or, if a registration passed on it, not before that registration expires.

**Closing** follows the device or the PBX: an orderly close (FIN, or TLS close_notify) on one side
closes the other side in order; a reset (RST) resets the other side. When faultlab closes (a timeout,
the proxy's stop) it writes what is due, records what still waits as ``abandoned``, and closes both
sides in order (:func:`faultlab.net.close.close_in_order`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from faultlab.addr import format_hostport
from faultlab.net.close import is_reset, send_eof
from faultlab.net.limits import resolve as resolve_limits
from faultlab.net.reader import SipStreamReader, Unframed
from faultlab.net.scheduler import Closed, StreamWriter, carry_out_on_stream
from faultlab.net.stop import Stopper
from faultlab.relay import TO_DEVICE, TO_PBX, Hop, Outgoing, Plan, Relay, Side, Step
from faultlab.sip import KeepAlive, Message, SipError

# After one side closes in order, how long the other direction may still
# deliver what it has in flight before the pair is closed.
HALF_CLOSE_GRACE = 5.0
# When faultlab closes a pair: how long its writers may take to write what is due.
FINISH_TIME = 2.0
# A registration keeps its connection open until it expires, plus this (a refresh that comes late).
REGISTRATION_GRACE = 32.0
DEFAULT_EXPIRES = 3600  # a 2xx to REGISTER without an expiry (RFC 3261 §10.2.1.1's usual default)
MAX_EXPIRES = 2**32 - 1  # delta-seconds (RFC 3261 §25.1)
_PONG = b"\r\n"

Connect = Callable[[], Awaitable["tuple[trio.SocketStream, trio.abc.Stream] | None"]]


class Watch:
    """A connection's timeouts: :meth:`expired` returns when no bytes came either way for ``idle`` s
    (or, after a registration, until it expires), or a message begun is not complete ``message`` s later."""

    def __init__(self, idle: float, message: float) -> None:
        self.idle = idle
        self.message = message
        self.idle_at = trio.current_time() + idle
        self.kept_until = -math.inf  # a registration on this connection keeps it open until then
        self.begun: dict[str, float] = {}  # direction -> when its message begun must be complete
        self._scope: trio.CancelScope | None = None

    def traffic(self, direction: str, partial: bool, completed: bool) -> None:
        """Bytes came from ``direction``; ``partial``: a message is begun and not complete;
        ``completed``: the read completed a message (so a partial one is a new one)."""
        now = trio.current_time()
        self.idle_at = now + self.idle
        if not partial:
            if self.begun:
                self.begun.pop(direction, None)
        elif completed or direction not in self.begun:
            at = self.begun[direction] = now + self.message
            if self._scope is not None and at < self._scope.deadline:
                self._scope.deadline = at

    def registered(self, expires: float) -> None:
        self.kept_until = max(self.kept_until, trio.current_time() + expires + REGISTRATION_GRACE)

    def _due(self) -> tuple[float, str, str | None]:
        due = (max(self.idle_at, self.kept_until), "idle-timeout", None)
        for direction, at in self.begun.items():
            if at < due[0]:
                due = (at, "message-timeout", direction)
        return due

    async def expired(self) -> tuple[str, dict]:
        """Wait for a timeout: its reason ("idle-timeout", "message-timeout") and detail."""
        while True:
            at, reason, direction = self._due()
            if trio.current_time() >= at:
                if direction is None:
                    return reason, {"after": self.idle}
                return reason, {"after": self.message, "from": "device" if direction == TO_PBX else "pbx"}
            with trio.CancelScope(deadline=at) as self._scope:
                await trio.sleep_forever()
            self._scope = None


class _Reading:
    """The cancellable waits of one direction (its reads, a stall): :meth:`stop` ends them."""

    def __init__(self) -> None:
        self.stopped = False
        self.scope: trio.CancelScope | None = None

    def wait(self) -> trio.CancelScope:
        self.scope = trio.CancelScope()
        if self.stopped:
            self.scope.cancel()
        return self.scope

    def stop(self) -> None:
        self.stopped = True
        if self.scope is not None:
            self.scope.cancel()


def registration_expires(msg: Message) -> float | None:
    """The seconds a 2xx response to REGISTER keeps the registration (its Contacts' longest ``expires``,
    else Expires); None for any other message."""
    if msg.is_request or not 200 <= (msg.status or 0) < 300:
        return None
    cseq_b = msg.transaction_key()[1]
    if cseq_b is None or b"REGISTER" not in cseq_b:  # not to a REGISTER (methods are case-sensitive): no parse
        return None
    try:
        cseq = msg.cseq
        if cseq is None or cseq.method != "REGISTER":
            return None
        values = [str(c.params.get("expires") or "") for c in msg.contacts]
        seconds = [int(v) for v in values if v.isascii() and v.isdigit()]
        if seconds:
            return min(max(seconds), MAX_EXPIRES)
        return msg.expires if msg.expires is not None else DEFAULT_EXPIRES
    except SipError:
        return None


class Pair:
    """A device connection and its PBX connection, relayed both ways (see the module docstring).

    ``connect`` makes the PBX connection (None: it could not, and said why); ``at_once``: connect before
    reading from the device (transparent mode), else when its first message arrives.
    :meth:`run` returns how the pair ended: "eof" (in order, also when faultlab or a profile closed it
    with FIN), "reset" (also a profile's RST) or "error"; :attr:`reason` says why faultlab closed it.
    """

    def __init__(self, relay: Relay, device: trio.abc.Stream, stopper: Stopper, *, flow: str, transport: str,
                 peer: tuple[str, int], local: tuple[str, int], target: tuple[str, int],
                 connect: Connect) -> None:
        config = relay.config
        self.relay, self.device, self.stopper, self.connect = relay, device, stopper, connect
        self.flow, self.transport, self.peer, self.local, self.target = flow, transport, peer, local, target
        self.watch = Watch(config.stream_idle_timeout, config.message_timeout)
        self.upstream: trio.abc.Stream | None = None
        self.hops: dict[str, Hop] = {}
        self.readers: dict[str, SipStreamReader] = {TO_PBX: self._reader(device)}
        self.reading = {TO_PBX: _Reading(), TO_DEVICE: _Reading()}
        self.to_dev = StreamWriter(relay, device, self._closer(device))
        self.to_up: StreamWriter | None = None
        self.how = "eof"
        self.reason: str | None = None  # why faultlab closed the pair: a timeout, "stop"
        self.aborted = False  # the PBX connection could not be made: the device's is reset
        self.opened = False
        self._eofs = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, at_once: bool) -> str:
        with self.stopper.closes(self):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if at_once and not await self._open():
                    return self.how
                nursery.start_soon(self._write, self.to_dev)
                nursery.start_soon(self._direction, TO_PBX)
                nursery.start_soon(self._watchdog)
                if self.stopper.closing.is_set():
                    self.finish("stop")
        return self.how

    def _reader(self, stream: trio.abc.Stream) -> SipStreamReader:
        return SipStreamReader(stream, max_message_size=resolve_limits(self.relay.config).max_message_size)

    def _hop(self, direction: str) -> Hop:
        """The hop of ``direction``; before the PBX connection, one whose PBX side is not known yet."""
        hop = self.hops.get(direction)
        if hop is None:
            side = Side(self.transport, device=self.local, pbx=self.local)
            hop = Hop(self.flow, direction, self.transport, self.peer if direction == TO_PBX else self.target,
                      side, self.peer)
        return hop

    def _end(self, how: str) -> None:
        self.how = how
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _closer(self, stream: trio.abc.Stream) -> Callable[[str], None]:
        """What a writer does at a close item: "eof" passes an orderly close on (TCP: FIN, and the other
        direction may finish for HALF_CLOSE_GRACE); a profile's "fin"/"rst" ends the pair at once."""
        def close(kind: str) -> None:
            if kind != "eof":
                self._end("reset" if kind == "rst" else "eof")
                return
            self._eofs += 1
            if isinstance(stream, trio.SocketStream) and self._eofs == 1 and self._nursery is not None:
                self._nursery.start_soon(send_eof, stream)
                self._nursery.cancel_scope.deadline = trio.current_time() + HALF_CLOSE_GRACE
            else:
                self._end("eof")
        return close

    async def _open(self) -> bool:
        """Connect to the PBX and start its direction; False (the pair ends, the device is reset) if not."""
        connected = await self.connect()
        if connected is None:
            self.aborted = True
            self.how = "error"
            return False
        up_conn, self.upstream = connected
        pbx_side = up_conn.socket.getsockname()[:2]
        side = Side(self.transport, device=self.local, pbx=pbx_side)
        self.hops = {TO_PBX: Hop(self.flow, TO_PBX, self.transport, self.peer, side, self.peer),
                     TO_DEVICE: Hop(self.flow, TO_DEVICE, self.transport, self.target, side, self.peer)}
        self.relay.flow_opened(self.flow, self.transport, self.peer, pbx_side, self.local)
        self.opened = True
        self.readers[TO_DEVICE] = self._reader(self.upstream)
        self.to_up = StreamWriter(self.relay, self.upstream, self._closer(self.upstream))
        assert self._nursery is not None
        self._nursery.start_soon(self._write, self.to_up)
        self._nursery.start_soon(self._direction, TO_DEVICE)
        if self.reason is not None:
            self.to_up.finish(self.reason)
        return True

    async def _write(self, writer: StreamWriter) -> None:
        try:
            await writer.run()
        except Closed as closed:
            self._end(closed.how)

    async def _direction(self, direction: str) -> None:
        try:
            result = await self._pump(direction)
        except Closed as closed:
            result = closed.how
        if result == "stopped":  # faultlab closes the pair (finish)
            return
        if result != "unsent":
            self.relay.emit("closed", flow=self.flow, direction=direction, transport=self.transport,
                            detail={"how": result, "by": "device" if direction == TO_PBX else "pbx"})
        forward = self.to_up if direction == TO_PBX else self.to_dev
        if result == "eof" and forward is not None:
            # what is queued for the other side goes first, then the close
            dest = self.target if direction == TO_PBX else self.peer
            await forward.submit(Step(trio.current_time(), None, dest, close="eof"))
            return
        self._end(self.how if result == "unsent" else result)

    async def _read(self, direction: str) -> list | None | str:
        """One read of ``direction``: its items, None at EOF, or how it ended ("reset", "error", "stopped")."""
        reader = self.readers[direction]
        try:
            with self.reading[direction].wait() as cs:
                batch = await reader.read_batch()
        except trio.BrokenResourceError as exc:
            if is_reset(exc):
                return "reset"
            self.relay.warn(f"connection broken: {exc.__cause__ or exc}", flow=self.flow,
                            direction=direction, transport=self.transport)
            return "error"
        except trio.ClosedResourceError:
            return "error"
        if cs.cancelled_caught:
            return "stopped"
        if batch is not None:
            self.watch.traffic(direction, not reader.raw and reader.framer.buffered > 0, bool(batch))
        return batch

    async def _pump(self, direction: str) -> str:
        """Read ``direction`` until it ends; return how: "eof", "reset", "error", "too-large" (a message over
        the size limit: the pair is closed), "stopped" (faultlab closes the pair) or "unsent" (the PBX
        connection could not be made)."""
        ready: list[Step] = []  # plain forwards of the current read, written together
        while True:
            batch = await self._read(direction)
            if batch is None:
                return "eof"
            if isinstance(batch, str):
                return batch
            for n, item in enumerate(batch):
                if isinstance(item, Unframed) and item.too_large:  # not relayed raw: the connection is closed
                    await self._flush(direction, ready)
                    limit = self.readers[direction].framer.max_message_size
                    self.relay.too_large(item.data, self._hop(direction), limit, stream=True, error=item.error)
                    return "too-large"
                if direction == TO_PBX and self.upstream is None:
                    if isinstance(item, KeepAlive):
                        await self._keep_alive(item)
                        continue
                    if not await self._open():
                        self._unsent(batch[n:])
                        return "unsent"
                if isinstance(item, Unframed):
                    if item.error is not None:
                        self.relay.warn(f"cannot frame the stream ({item.error}): relaying it raw from here on",
                                        flow=self.flow, direction=direction, transport=self.transport)
                    if not item.data:
                        continue
                    plan = self.relay.plan(item.data, self.hops[direction], error=item.error)
                else:
                    if direction == TO_DEVICE and isinstance(item, Message):
                        expires = registration_expires(item)
                        if expires is not None:
                            self.watch.registered(expires)
                    plan = self.relay.plan(item, self.hops[direction])
                await self._carry_out(plan, direction, ready)
            await self._flush(direction, ready)

    async def _flush(self, direction: str, ready: list[Step]) -> None:
        if ready:
            items = ready[:]
            ready.clear()
            await (self.to_up if direction == TO_PBX else self.to_dev).submit_batch(items)

    async def _carry_out(self, plan: Plan, direction: str, ready: list[Step]) -> None:
        forward, back = (self.to_up, self.to_dev) if direction == TO_PBX else (self.to_dev, self.to_up)
        dest = self.target if direction == TO_PBX else self.peer
        if plan.plain:
            ready.append(Step(plan.received_at, plan.forward, dest))
            return
        await self._flush(direction, ready)
        stall = await carry_out_on_stream(self.relay, plan, self.hops[direction], forward, back, dest)
        if stall is not None:
            with self.reading[direction].wait():
                await trio.sleep(stall)  # inf: until the pair ends

    async def _keep_alive(self, item: KeepAlive) -> None:
        """A keep-alive before the PBX connection: a ping is answered with a pong by faultlab."""
        fields = {"flow": self.flow, "direction": TO_PBX, "transport": self.transport}
        ping = item.raw == b"\r\n\r\n"
        self.relay.emit("received", peer=_hp(self.peer), raw=item.raw,
                        summary="keep-alive ping" if ping else "keep-alive", **fields)
        if not ping:
            self.relay.emit("dropped", peer=_hp(self.peer), summary="keep-alive",
                            detail={"how": "no PBX connection yet: a pong is not passed on", "rules": []}, **fields)
            return
        delay = self.relay.own_keep_alive(_PONG, self._hop(TO_DEVICE))  # keep-alive rules apply to it too
        if delay is None:
            return
        out = Outgoing(_PONG, self._hop(TO_DEVICE), "keep-alive pong by faultlab (no PBX connection yet)",
                       {**fields, "direction": TO_DEVICE})
        await self.to_dev.submit(Step(trio.current_time() + delay, out, self.peer, kind="responded", back=True))

    def _unsent(self, items: list) -> None:
        """Messages read while the PBX connection could not be made: recorded as abandoned."""
        for item in items:
            raw = item.data if isinstance(item, Unframed) else item.raw
            summary = item.summary() if isinstance(item, Message) else f"{len(raw)} bytes"
            self.relay.emit("abandoned", flow=self.flow, direction=TO_PBX, transport=self.transport,
                            peer=_hp(self.target), raw=raw, summary=summary,
                            detail={"reason": "no-upstream"})

    async def _watchdog(self) -> None:
        reason, detail = await self.watch.expired()
        self.finish(reason, **detail)

    def finish(self, reason: str, **detail) -> None:
        """faultlab closes the pair: no more reading, what is due is written, the rest abandoned, then
        both sides are closed in order."""
        if self.reason is not None or self._nursery is None:
            return
        self.reason = reason
        self.relay.emit("closed", flow=self.flow, transport=self.transport, peer=_hp(self.peer),
                        detail={"how": "eof", "by": "faultlab", "reason": reason, **detail})
        for reading in self.reading.values():
            reading.stop()
        for writer in (self.to_up, self.to_dev):
            if writer is not None:
                writer.finish(reason)
        try:
            self._nursery.start_soon(self._finished)
        except RuntimeError:  # its nursery has just closed (the pair ended on its own): nothing left to wait for
            pass

    async def _finished(self) -> None:
        with trio.move_on_after(FINISH_TIME):
            for writer in (self.to_dev, self.to_up):
                if writer is not None:
                    await writer.done.wait()
        self._end("eof")


def _hp(addr: tuple[str, int]) -> str:
    return format_hostport(*addr)
