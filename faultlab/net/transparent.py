"""Transparent mode: relaying traffic the gateway intercepted (Linux, root, IPv4).

The gateway's nftables table (:mod:`faultlab.labnet.intercept`) hands faultlab
SIP traffic that devices address to the PBX's real address. faultlab
recovers where each packet was going and relays it there, byte for byte.

TCP/TLS (``redirect``): the accepted connection's original destination is
``getsockopt(SOL_IP, SO_ORIGINAL_DST)``; faultlab connects there.

UDP (``tproxy``): the listen socket is IP_TRANSPARENT with IP_RECVORIGDSTADDR,
so ``recvmsg`` gives each datagram's original destination. A flow is keyed
by (device address, original destination) and has two sockets:

- the *device-side* socket: IP_TRANSPARENT, bound to the original
  destination (the PBX's address, which is not local: IP_TRANSPARENT allows
  it) and connected to the device. What faultlab sends the device leaves
  with the PBX's address as its source, as the device expects; and because
  it is a connected transparent socket matching the 4-tuple, tproxy hands
  the device's later datagrams of this flow straight to it.
- the *upstream* socket, connected to the original destination. Plain (the
  PBX sees the gateway's address), or with ``spoof_source`` IP_TRANSPARENT
  and bound to the device's own (ip, port): the PBX sees the device. Its
  answers are then addressed to the device; the interception table's
  ``socket transparent 1`` rule marks them so the gateway delivers them to
  this socket instead of forwarding them to the device directly.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass, field

import trio

from faultlab.addr import Endpoint, format_hostport, listen_error
from faultlab.net.limits import Throttle, make_room
from faultlab.net.limits import resolve as resolve_limits
from faultlab.net.resolve import resolve
from faultlab.net.scheduler import DatagramScheduler
from faultlab.net.udp import (
    BATCH,
    MAX_DATAGRAM,
    SOCKET_BUFFER,
    Datagrams,
    FlowTable,
    drop_unflowed,
    enlarge_buffers,
    out_of_descriptors,
    plan_datagram,
    relay_from,
)
from faultlab.relay import TO_DEVICE, TO_PBX, Hop, Relay, Side

SOL_IP = getattr(socket, "SOL_IP", 0)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR  # the control message type has the same number
SO_ORIGINAL_DST = 80


def support_problem() -> str | None:
    """Why transparent mode cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return f"--transparent needs Linux (IP_TRANSPARENT, TPROXY, SO_ORIGINAL_DST); this is {sys.platform}"
    if os.geteuid() != 0:
        return ("--transparent needs root (CAP_NET_ADMIN for IP_TRANSPARENT sockets): "
                "run it as root on the lab gateway, e.g. `sudo ip netns exec GW faultlab proxy --transparent ...`")
    return None


def parse_sockaddr_in(data: bytes) -> tuple[str, int] | None:
    """(ip, port) of a ``struct sockaddr_in``; None if it is not AF_INET."""
    if len(data) < 8 or struct.unpack_from("=H", data, 0)[0] != socket.AF_INET:
        return None
    return socket.inet_ntoa(data[4:8]), struct.unpack_from("!H", data, 2)[0]


def original_dst(sock) -> tuple[str, int] | None:
    """Where a REDIRECTed TCP connection was going (SO_ORIGINAL_DST); None if unknown."""
    try:
        return parse_sockaddr_in(sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16))
    except OSError:
        return None


_local_cache: dict[str, bool] = {}


def is_local_address(ip: str) -> bool:
    """True if ``ip`` is one of this namespace's own addresses (can be bound without IP_TRANSPARENT)."""
    known = _local_cache.get(ip)
    if known is None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((ip, 0))
            known = True
        except OSError:
            known = False
        finally:
            probe.close()
        _local_cache[ip] = known
    return known


def was_redirected(dst: tuple[str, int] | None, listening: tuple[str, int]) -> bool:
    """False when ``dst`` is faultlab's own listener (sent to it directly, not intercepted)."""
    if dst is None:
        return False
    return not (dst[1] == listening[1] and (dst[0] == listening[0] or is_local_address(dst[0])))


def make_transparent(sock: socket.socket, *, reuse: bool = True) -> None:
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)


async def open_tcp(dest: tuple[str, int], *, source_ip: str | None = None) -> trio.SocketStream:
    """A TCP connection to ``dest``; from ``source_ip`` (not local: IP_TRANSPARENT) when given."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if source_ip is not None:
            make_transparent(sock)
            await sock.bind((source_ip, 0))
        await sock.connect(dest)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


class OrigDstDatagrams(Datagrams):
    """The transparent UDP listener: every datagram with its source and original destination."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET)
        make_transparent(self.sock)
        self.sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)

    async def receive_batch_dst(self) -> list[tuple[bytes, tuple[str, int], tuple[str, int] | None]]:
        await trio.lowlevel.checkpoint()
        recvmsg = self.sock.recvmsg
        space = socket.CMSG_SPACE(16)
        while True:
            batch = []
            try:
                for _ in range(BATCH):
                    data, ancillary, _flags, addr = recvmsg(MAX_DATAGRAM, space)
                    dst = None
                    for level, kind, cdata in ancillary:
                        if level == SOL_IP and kind == IP_ORIGDSTADDR:
                            dst = parse_sockaddr_in(cdata)
                    batch.append((data, addr[:2], dst))
            except BlockingIOError:
                pass
            if batch:
                return batch
            await trio.lowlevel.wait_readable(self.sock)


@dataclass(eq=False)
class TransparentFlow:
    id: str
    device: tuple[str, int]
    dest: tuple[str, int]  # the original destination: the PBX
    dev: Datagrams  # bound to dest, connected to device
    up: Datagrams  # connected to dest
    to_pbx: Hop
    to_device: Hop
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed_because: str = "idle"

    def close(self, reason: str) -> None:
        """End the flow now: its sockets are closed at once, its tasks end."""
        self.closed_because = reason
        self.scope.cancel()
        self.dev.close()
        self.up.close()


def _flow_sockets(device: tuple[str, int], dest: tuple[str, int], spoof: bool) -> tuple[Datagrams, Datagrams]:
    """A flow's device-side socket (bound to the original destination, connected to the device) and its
    upstream socket (connected to the destination; with ``spoof`` bound to the device's own address)."""
    dev = Datagrams(socket.AF_INET)
    up = Datagrams(socket.AF_INET)
    try:
        make_transparent(dev.sock)
        dev.sock.bind(dest)
        dev.sock.connect(device)
        enlarge_buffers(up.sock, SOCKET_BUFFER // 8)
        if spoof:
            make_transparent(up.sock)
            up.sock.bind(device)
        up.sock.connect(dest)
    except BaseException:
        dev.close()
        up.close()
        raise
    return dev, up


class _TransparentUdp:
    """The transparent UDP listener's flows, keyed by (device, original destination)."""

    def __init__(self, relay: Relay, listener: OrigDstDatagrams, bound: tuple[str, int]) -> None:
        self.relay = relay
        self.listener = listener
        self.bound = bound
        self.spoof = relay.config.spoof_source
        self.idle = relay.config.udp_idle_timeout
        limits = resolve_limits(relay.config)
        self.max_message_size = limits.max_message_size
        self.flows: FlowTable[tuple[tuple[str, int], tuple[str, int]], TransparentFlow] = FlowTable(limits.max_flows)
        self.full = Throttle(relay)
        self.starved = Throttle(relay)

    def open_flow(self, device: tuple[str, int], dest: tuple[str, int]) -> TransparentFlow:
        dev, up = _flow_sockets(device, dest, self.spoof)
        pbx_side = up.sock.getsockname()[:2]
        side = Side("udp", device=dest, pbx=pbx_side)
        fid = self.relay.new_flow_id("udp")
        flow = TransparentFlow(fid, device, dest, dev, up,
                               Hop(fid, TO_PBX, "udp", device, side, device),
                               Hop(fid, TO_DEVICE, "udp", dest, side, device))
        flow.scope.deadline = trio.current_time() + self.idle
        self.flows.add((device, dest), flow)
        self.relay.flow_opened(fid, "udp", device, pbx_side, dest)
        return flow

    def touch(self, flow: TransparentFlow) -> None:
        flow.scope.deadline = trio.current_time() + self.idle
        self.flows.touch((flow.device, flow.dest))

    def evict(self, reason: str) -> bool:
        """Close the flow idle longest; False when there is none."""
        idlest = self.flows.idlest()
        if idlest is not None:
            self.flows.remove(*idlest)
            idlest[1].close(reason)
        return idlest is not None

    def flow_for(self, device: tuple[str, int], dest: tuple[str, int], data: bytes) -> TransparentFlow | None:
        """A new flow (making room at ``max_flows`` or when out of descriptors); None: the datagram is dropped."""
        make_room(self.flows, self.evict, self.full)
        for attempt in range(2):
            try:
                return self.open_flow(device, dest)
            except OSError as exc:
                if attempt == 0 and out_of_descriptors(exc) and self.evict(
                        f"out of descriptors ({exc.strerror}): this flow idle longest gave its sockets up"):
                    continue
                why = f"cannot open a transparent flow to {format_hostport(*dest)}: {exc.strerror or exc}"
                drop_unflowed(self.relay, data, device, why)
                self.starved.warn(why, transport="udp", peer=format_hostport(*device))
                return None
        return None

    async def run_flow(self, flow: TransparentFlow, paths: DatagramScheduler) -> None:
        relay = self.relay
        try:
            with flow.scope:
                async with trio.open_nursery() as readers:
                    readers.start_soon(relay_from, relay, paths, flow.up, "upstream", flow.to_device,
                                       lambda: self.touch(flow), flow.dev.send, flow.device, flow.up.send, flow.dest)
                    readers.start_soon(relay_from, relay, paths, flow.dev, "device-side", flow.to_pbx,
                                       lambda: self.touch(flow), flow.up.send, flow.dest, flow.dev.send, flow.device)
        finally:
            flow.dev.close()
            flow.up.close()
            self.flows.remove((flow.device, flow.dest), flow)
            relay.flow_closed(flow.id, "udp", flow.device, reason=flow.closed_because)

    async def serve(self, nursery: trio.Nursery) -> None:
        relay = self.relay
        paths = DatagramScheduler(relay, nursery)
        while True:
            try:
                batch = await self.listener.receive_batch_dst()
            except OSError as exc:
                relay.warn(f"listen socket error: {exc.strerror or exc}", transport="udp")
                continue
            for data, device, dest in batch:
                if not was_redirected(dest, self.bound):
                    relay.warn("datagram not intercepted (sent to faultlab itself, no original "
                               "destination): dropped; in transparent mode devices send to the PBX",
                               transport="udp", peer=format_hostport(*device))
                    continue
                flow = self.flows.get((device, dest))
                if flow is None:
                    flow = self.flow_for(device, dest, data)
                    if flow is None:
                        continue
                    nursery.start_soon(self.run_flow, flow, paths)
                else:
                    self.touch(flow)
                plan = plan_datagram(relay, data, flow.to_pbx, self.max_message_size)
                await paths.carry_out(plan, flow.up.send, dest, flow.dev.send, device)


async def serve_udp_transparent(relay: Relay, listen: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    family, addr = await resolve(listen)
    if family != socket.AF_INET:
        raise OSError(f"--listen {listen}: transparent mode supports IPv4 only")
    listener = OrigDstDatagrams()
    enlarge_buffers(listener.sock)
    with listener.sock:
        try:
            listener.sock.bind(addr)
        except OSError as exc:
            raise listen_error(listen, exc) from None
        bound = listener.sock.getsockname()[:2]
        relay.emit("listening", transport="udp", peer=format_hostport(*bound),
                   detail={"upstream": "original destination (transparent)", "spoof_source": relay.config.spoof_source})
        flows = _TransparentUdp(relay, listener, bound)
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await flows.serve(nursery)
