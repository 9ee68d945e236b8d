"""UDP relay: one upstream socket per device address, like a NAT.

A device's first datagram opens a flow: a socket of faultlab's, connected to
the PBX, that carries everything of that device from then on. The PBX sees
one source address per device and sends its own requests (INVITE, OPTIONS,
NOTIFY) back to it; faultlab hands those to that device. A flow with no
traffic either way for ``udp_idle_timeout`` seconds is closed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import trio

from faultlab.addr import Endpoint, format_hostport, listen_error
from faultlab.net import memnet
from faultlab.net.reader import parse_or_raw
from faultlab.net.resolve import resolve
from faultlab.net.scheduler import DatagramScheduler, Send
from faultlab.relay import TO_DEVICE, TO_PBX, Hop, Relay, Side

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
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    async def receive_batch(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Every datagram ready now (at least one, at most BATCH), each with its source."""
        await trio.lowlevel.checkpoint()
        recvfrom = self.sock.recvfrom
        while True:
            batch = []
            try:
                for _ in range(BATCH):
                    data, addr = recvfrom(MAX_DATAGRAM)
                    batch.append((data, addr[:2]))
            except BlockingIOError:
                pass
            if batch:
                return batch
            await self._wait_readable()

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


@dataclass(eq=False)
class UdpFlow:
    id: str
    device: tuple[str, int]
    sock: Datagrams
    to_pbx: Hop
    to_device: Hop
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


async def local_address_towards(family: int, dest: tuple[str, int]) -> str:
    """The local IP the kernel would use to reach ``dest`` (connects a UDP socket; sends nothing)."""
    probe = trio.socket.socket(family, socket.SOCK_DGRAM)
    with probe:
        await probe.connect(dest)
        return probe.getsockname()[0]


async def relay_from(relay: Relay, paths: DatagramScheduler, src: Datagrams, what: str, hop: Hop,
                     scope: trio.CancelScope, idle: float, send: Send, dest: tuple[str, int],
                     back: Send, back_dest: tuple[str, int]) -> None:
    """Relay every datagram that arrives on one of a flow's sockets along ``hop``;
    each one keeps the flow (``scope``) alive for ``idle`` more seconds."""
    while True:
        try:
            batch = await src.receive_batch()
        except OSError as exc:  # ICMP errors of earlier sends surface here
            relay.warn(f"{what} socket error: {exc.strerror or exc}", flow=hop.flow, transport="udp")
            continue
        scope.deadline = trio.current_time() + idle
        for data, _ in batch:
            item, error = parse_or_raw(data)
            await paths.carry_out(relay.plan(item, hop, error=error), send, dest, back, back_dest)


async def serve_udp(
    relay: Relay, listen: Endpoint, upstream: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    up_family, up_addr = await resolve(upstream)
    family, addr = await resolve(listen)
    listener = Datagrams(family)
    sock = listener.sock
    enlarge_buffers(sock)
    idle = relay.config.udp_idle_timeout
    flows: dict[tuple[str, int], UdpFlow] = {}
    with sock:
        try:
            sock.bind(addr)
        except OSError as exc:
            raise listen_error(listen, exc) from None
        bound = sock.getsockname()[:2]
        wildcard = bound[0] in ("0.0.0.0", "::")
        relay.emit("listening", transport="udp", peer=format_hostport(*bound),
                   detail={"upstream": f"udp:{format_hostport(*up_addr)}"})

        async def open_flow(device: tuple[str, int]) -> UdpFlow:
            up = Datagrams(up_family)
            enlarge_buffers(up.sock, SOCKET_BUFFER // 8)
            up.sock.connect(up_addr)  # UDP: sets the default destination, sends nothing
            pbx_side = up.sock.getsockname()[:2]
            device_side = bound
            if wildcard:
                device_side = (await local_address_towards(family, device), bound[1])
            side = Side("udp", device=device_side, pbx=pbx_side)
            fid = relay.new_flow_id("udp")
            flow = UdpFlow(
                fid, device, up,
                Hop(fid, TO_PBX, "udp", device, side, device),
                Hop(fid, TO_DEVICE, "udp", up_addr, side, device),
            )
            flow.scope.deadline = trio.current_time() + idle
            flows[device] = flow
            relay.flow_opened(fid, "udp", device, pbx_side, device_side)
            return flow

        async def flow_reader(flow: UdpFlow, paths: DatagramScheduler) -> None:
            def to_device(data: bytes):
                return listener.sendto(data, flow.device)

            try:
                with flow.scope:
                    await relay_from(relay, paths, flow.sock, "upstream", flow.to_device, flow.scope, idle,
                                     to_device, flow.device, flow.sock.send, up_addr)
            finally:
                flow.sock.close()
                flows.pop(flow.device, None)
                relay.flow_closed(flow.id, "udp", flow.device, reason="idle")

        async with trio.open_nursery() as nursery:
            paths = DatagramScheduler(relay, nursery)
            task_status.started(bound)
            while True:
                try:
                    batch = await listener.receive_batch()
                except OSError as exc:
                    relay.warn(f"listen socket error: {exc.strerror or exc}", transport="udp")
                    continue
                for data, device in batch:
                    flow = flows.get(device)
                    if flow is None:
                        flow = await open_flow(device)
                        nursery.start_soon(flow_reader, flow, paths)
                    else:
                        flow.scope.deadline = trio.current_time() + idle
                    item, error = parse_or_raw(data)
                    plan = relay.plan(item, flow.to_pbx, error=error)
                    await paths.carry_out(plan, flow.sock.send, up_addr,
                                          lambda d, dev=device: listener.sendto(d, dev), device)
