"""UDP relay: one upstream socket per device address, like a NAT.

A device's first datagram opens a flow: a socket of faultlab's, connected to
the PBX, that carries everything of that device from then on. The PBX sees
one source address per device and sends its own requests (INVITE, OPTIONS,
NOTIFY) back to it; faultlab hands those to that device. A flow with no
traffic either way for ``udp_idle_timeout`` seconds is closed.

Bounded: at ``max_flows`` (:mod:`faultlab.net.limits`) a new device's flow
takes the place of the flow idle longest, which is closed and recorded; when
no socket can be opened for a new flow (out of descriptors) the flow idle
longest gives its up, and if that does not help the datagram is dropped and
recorded. A datagram larger than ``max_message_size`` is not relayed: a
request is answered ``513 Message Too Large``, anything else dropped.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from faultlab.addr import Endpoint, format_hostport, listen_error
from faultlab.net import memnet
from faultlab.net.limits import Throttle, make_room, resolve as resolve_limits
from faultlab.net.reader import parse_or_raw
from faultlab.net.resolve import resolve
from faultlab.net.scheduler import DatagramScheduler, Send
from faultlab.relay import TO_DEVICE, TO_PBX, Hop, Plan, Relay, Side

MAX_DATAGRAM = 65535
# Socket buffers: a burst from many devices must not overflow the kernel's
# default (~208 KiB, a few hundred datagrams) while the relay is busy.
SOCKET_BUFFER = 4 * 1024 * 1024


def enlarge_buffers(sock: trio.socket.SocketType, size: int = SOCKET_BUFFER) -> None:
    """Ask for ``size`` bytes of receive and send buffer; as root past net.core.rmem_max."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


# Datagrams handled per wake-up before the relay yields to other tasks (a
# delayed message due meanwhile waits at most this many messages' work).
BATCH = 16


class Datagrams:
    """A non-blocking UDP socket driven straight from trio's I/O waits.

    trio's socket methods take two trips through the scheduler per call
    (a cancellation check and a yield); at relay rates that is most of the
    cost. This reads every datagram that is ready in one wake-up and writes
    without yielding when the kernel takes the datagram at once, and still
    yields once per batch, so other tasks keep their turn.
    """

    def __init__(self, family: int) -> None:
        net = memnet.current()
        if net is not None:  # the lab on an in-memory network (faultlab.net.memnet)
            self.sock = net.raw_udp(family)
            self._wait_readable = self.sock.wait_readable
        else:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self._wait_readable = lambda: trio.lowlevel.wait_readable(self.sock)
        self._real = net is None
        self._closed = False
        self._empty = False  # the last read emptied the socket: the next one waits first
        self.sock.setblocking(False)

    def close(self) -> None:
        """Close the socket now (its descriptor is free at once); a task waiting on it is woken."""
        if self._closed:
            return
        self._closed = True
        if self._real:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    async def receive_batch(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Every datagram ready now (at least one, at most BATCH), each with its source.

        Once per call it goes through the scheduler (other tasks keep their turn): by waiting for the socket
        when the last call emptied it (the kernel's queue is known empty: no read that can only fail),
        else by a checkpoint. (A socket of the memory network may return from its wait without a trip
        through the scheduler: it always takes the checkpoint.)"""
        if self._empty and self._real:
            await self._wait_readable()
        else:
            await trio.lowlevel.checkpoint()
        recvfrom = self.sock.recvfrom
        while True:
            batch = []
            try:
                for _ in range(BATCH):
                    data, addr = recvfrom(MAX_DATAGRAM)
                    batch.append((data, addr[:2]))
                self._empty = False
            except BlockingIOError:
                self._empty = True
            if batch:
                return batch
            await self._wait_readable()

    def try_send(self, data: bytes, addr: tuple[str, int] | None = None) -> bool:
        """Send now (to ``addr``, or where the socket is connected); False when the kernel cannot take it yet
        (then await :meth:`sendto` / :meth:`send`). OSError passes through."""
        try:
            if addr is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, addr)
            return True
        except BlockingIOError:
            return False

    async def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        while True:
            try:
                self.sock.sendto(data, addr)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def send(self, data: bytes) -> None:
        while True:
            try:
                self.sock.send(data)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)


K = TypeVar("K")
F = TypeVar("F")


class FlowTable(Generic[K, F]):
    """The open flows by key, ordered by their last traffic: the first is the one idle longest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._flows: dict[K, F] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[F]:
        return iter(list(self._flows.values()))

    def get(self, key: K) -> F | None:
        return self._flows.get(key)

    def add(self, key: K, flow: F) -> None:
        self._flows[key] = flow

    def touch(self, key: K) -> None:
        """Traffic on ``key``'s flow: it becomes the one idle shortest."""
        flow = self._flows.pop(key, None)
        if flow is not None:
            self._flows[key] = flow

    def remove(self, key: K, flow: F) -> None:
        if self._flows.get(key) is flow:
            del self._flows[key]

    @property
    def full(self) -> bool:
        return len(self._flows) >= self.limit

    def idlest(self) -> tuple[K, F] | None:
        """The flow idle longest, or None."""
        return next(iter(self._flows.items()), None)


def out_of_descriptors(exc: OSError) -> bool:
    return exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def plan_datagram(relay: Relay, data: bytes, hop: Hop, limit: int) -> Plan:
    """The relay's plan for one datagram: the message path, or, above ``limit`` octets, a 513 or a drop."""
    if len(data) > limit:
        return relay.too_large(data, hop, limit)
    item, error = parse_or_raw(data)
    return relay.plan(item, hop, error=error)


def drop_unflowed(relay: Relay, data: bytes, device: tuple[str, int], why: str) -> None:
    """A device's datagram that no flow could carry: recorded as received and dropped, with the reason."""
    peer = format_hostport(*device)
    fields = {"direction": TO_PBX, "transport": "udp", "peer": peer}
    relay.emit("received", raw=data, summary=f"{len(data)} bytes", **fields)
    relay.emit("dropped", summary=f"{len(data)} bytes", detail={"how": why}, **fields)


@dataclass(eq=False)
class UdpFlow:
    id: str
    device: tuple[str, int]
    sock: Datagrams
    to_pbx: Hop
    to_device: Hop
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed_because: str = "idle"
    last: float = 0.0  # trio time of its last traffic, either way

    def close(self, reason: str) -> None:
        """End the flow now: its socket is closed at once, its task ends."""
        self.closed_because = reason
        self.scope.cancel()
        self.sock.close()


async def local_address_towards(family: int, dest: tuple[str, int]) -> str:
    """The local IP the kernel would use to reach ``dest`` (connects a UDP socket; sends nothing)."""
    probe = trio.socket.socket(family, socket.SOCK_DGRAM)
    with probe:
        await probe.connect(dest)
        return probe.getsockname()[0]


async def relay_from(relay: Relay, paths: DatagramScheduler, src: Datagrams, what: str, hop: Hop,
                     touch: Callable[[], None], send: Send, dest: tuple[str, int],
                     back: Send, back_dest: tuple[str, int], *, out: Datagrams | None = None,
                     out_addr: tuple[str, int] | None = None) -> None:
    """Relay every datagram that arrives on one of a flow's sockets along ``hop``; each one ``touch``-es
    the flow (keeps it alive). Ends when the socket is closed. ``out`` (with ``out_addr`` unless it is
    connected): the socket ``send`` writes to, for the plain plan's straight path (:func:`carry_out`)."""
    limit = resolve_limits(relay.config).max_message_size
    while True:
        try:
            batch = await src.receive_batch()
        except trio.ClosedResourceError:
            return
        except OSError as exc:  # ICMP errors of earlier sends surface here
            if exc.errno == errno.EBADF:
                return
            relay.warn(f"{what} socket error: {exc.strerror or exc}", flow=hop.flow, transport="udp")
            continue
        touch()
        for data, _ in batch:
            await carry_out(relay, paths, plan_datagram(relay, data, hop, limit), out, out_addr, send, dest, back,
                            back_dest)


async def carry_out(relay: Relay, paths: DatagramScheduler, plan: Plan, out: Datagrams | None,
                    out_addr: tuple[str, int] | None, send: Send, dest: tuple[str, int], back: Send,
                    back_dest: tuple[str, int]) -> None:
    """Carry ``plan`` out: the plain one (forward at once, nothing else: the common case) straight on the
    socket ``out`` when the kernel takes it, any other through the scheduler."""
    if out is not None and plan.plain:
        forward = plan.forward
        try:
            if out.try_send(forward.data, out_addr):
                relay.sent(forward, dest)
                return
        except OSError as exc:
            relay.warn(f"cannot send to {format_hostport(*dest)}: {exc.strerror or exc}",
                       flow=forward.hop.flow, transport="udp", summary=forward.summary)
            return
    await paths.carry_out(plan, send, dest, back, back_dest)


class _UdpListener:
    """One UDP listen socket and the flows of its devices."""

    def __init__(self, relay: Relay, listener: Datagrams, family: int, bound: tuple[str, int], up_family: int,
                 up_addr: tuple[str, int]) -> None:
        self.relay = relay
        self.listener = listener
        self.bound = bound
        self.wildcard = bound[0] in ("0.0.0.0", "::")
        self.family = family
        self.up_family = up_family
        self.up_addr = up_addr
        self.idle = relay.config.udp_idle_timeout
        limits = resolve_limits(relay.config)
        self.max_message_size = limits.max_message_size
        self.flows: FlowTable[tuple[str, int], UdpFlow] = FlowTable(limits.max_flows)
        self.full = Throttle(relay)
        self.starved = Throttle(relay)
        self._opened = trio.Event()  # a flow opened (wakes close_idle when there was none)

    def touch(self, flow: UdpFlow) -> None:
        flow.last = trio.current_time()
        self.flows.touch(flow.device)

    async def close_idle(self) -> None:
        """Close each flow once it has had no traffic for the idle timeout. The table is ordered by last
        traffic, so one task waits for the idlest flow's time (no timer per flow, none reset per datagram)."""
        while True:
            now = trio.current_time()
            idlest = self.flows.idlest()
            while idlest is not None and idlest[1].last + self.idle <= now:
                key, flow = idlest
                self.flows.remove(key, flow)
                flow.close("idle")
                idlest = self.flows.idlest()
            if idlest is None:  # no flow: until one opens
                self._opened = trio.Event()
                await self._opened.wait()
            else:
                await trio.sleep_until(idlest[1].last + self.idle)

    def evict(self, reason: str) -> bool:
        """Close the flow idle longest; False when there is none."""
        idlest = self.flows.idlest()
        if idlest is None:
            return False
        _, flow = idlest
        self.flows.remove(flow.device, flow)
        flow.close(reason)
        return True

    async def open_flow(self, device: tuple[str, int]) -> UdpFlow:
        relay = self.relay
        up = Datagrams(self.up_family)
        try:
            enlarge_buffers(up.sock, SOCKET_BUFFER // 8)
            up.sock.connect(self.up_addr)  # UDP: sets the default destination, sends nothing
            pbx_side = up.sock.getsockname()[:2]
            device_side = self.bound
            if self.wildcard:
                device_side = (await local_address_towards(self.family, device), self.bound[1])
        except BaseException:
            up.close()
            raise
        side = Side("udp", device=device_side, pbx=pbx_side)
        fid = relay.new_flow_id("udp")
        flow = UdpFlow(fid, device, up, Hop(fid, TO_PBX, "udp", device, side, device),
                       Hop(fid, TO_DEVICE, "udp", self.up_addr, side, device))
        flow.last = trio.current_time()
        self.flows.add(device, flow)
        self._opened.set()
        relay.flow_opened(fid, "udp", device, pbx_side, device_side)
        return flow

    async def flow_for(self, device: tuple[str, int], data: bytes) -> UdpFlow | None:
        """The new flow of ``device`` (making room at ``max_flows``, or when out of descriptors); None when none
        can be opened (the datagram is recorded as dropped)."""
        make_room(self.flows, self.evict, self.full)
        for attempt in range(2):
            try:
                return await self.open_flow(device)
            except OSError as exc:
                if attempt == 0 and out_of_descriptors(exc) and self.evict(
                        f"out of descriptors ({exc.strerror}): this flow idle longest gave its socket up"):
                    continue
                why = f"cannot open a UDP flow: {exc.strerror or exc}"
                drop_unflowed(self.relay, data, device, why)
                self.starved.warn(f"{why}; datagrams of new devices are dropped. Raise the descriptor limit "
                                  "(ulimit -n, LimitNOFILE=) or lower --max-flows/--max-connections",
                                  transport="udp", peer=format_hostport(*device))
                return None
        return None

    async def run_flow(self, flow: UdpFlow, paths: DatagramScheduler) -> None:
        listener, up_addr = self.listener, self.up_addr

        def to_device(data: bytes):
            return listener.sendto(data, flow.device)

        try:
            with flow.scope:
                await relay_from(self.relay, paths, flow.sock, "upstream", flow.to_device,
                                 lambda: self.touch(flow), to_device, flow.device, flow.sock.send, up_addr,
                                 out=listener, out_addr=flow.device)
        finally:
            flow.sock.close()
            self.flows.remove(flow.device, flow)
            self.relay.flow_closed(flow.id, "udp", flow.device, reason=flow.closed_because)

    async def serve(self, nursery: trio.Nursery) -> None:
        relay, listener = self.relay, self.listener
        paths = DatagramScheduler(relay, nursery)
        nursery.start_soon(self.close_idle)
        while True:
            try:
                batch = await listener.receive_batch()
            except OSError as exc:
                relay.warn(f"listen socket error: {exc.strerror or exc}", transport="udp")
                continue
            for data, device in batch:
                flow = self.flows.get(device)
                if flow is None:
                    flow = await self.flow_for(device, data)
                    if flow is None:
                        continue
                    nursery.start_soon(self.run_flow, flow, paths)
                else:
                    self.touch(flow)
                plan = plan_datagram(relay, data, flow.to_pbx, self.max_message_size)
                await carry_out(relay, paths, plan, flow.sock, None, flow.sock.send, self.up_addr,
                                lambda d, dev=device: listener.sendto(d, dev), device)


async def serve_udp(
    relay: Relay, listen: Endpoint, upstream: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    up_family, up_addr = await resolve(upstream)
    family, addr = await resolve(listen)
    listener = Datagrams(family)
    sock = listener.sock
    enlarge_buffers(sock)
    with sock:
        try:
            sock.bind(addr)
        except OSError as exc:
            raise listen_error(listen, exc) from None
        bound = sock.getsockname()[:2]
        relay.emit("listening", transport="udp", peer=format_hostport(*bound),
                   detail={"upstream": f"udp:{format_hostport(*up_addr)}"})
        flows = _UdpListener(relay, listener, family, bound, up_family, up_addr)
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await flows.serve(nursery)
