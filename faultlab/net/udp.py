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
from typing import TYPE_CHECKING

import trio

from faultlab.net.addr import Endpoint, format_hostport, listen_error, resolve
from faultlab.relay import TO_DEVICE, TO_PBX, Side
from faultlab.sip import KeepAlive, Message, SipError, parse_datagram

if TYPE_CHECKING:
    from faultlab.proxy import Hop, Proxy

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


def _parse(data: bytes) -> tuple[Message | KeepAlive | bytes, str | None]:
    try:
        return parse_datagram(data), None
    except SipError as exc:
        return data, str(exc)


@dataclass(eq=False)
class UdpFlow:
    id: str
    device: tuple[str, int]
    sock: trio.socket.SocketType
    to_pbx: Hop
    to_device: Hop
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


async def local_address_towards(family: int, dest: tuple[str, int]) -> str:
    """The local IP the kernel would use to reach ``dest`` (connects a UDP socket; sends nothing)."""
    probe = trio.socket.socket(family, socket.SOCK_DGRAM)
    with probe:
        await probe.connect(dest)
        return probe.getsockname()[0]


async def serve_udp(
    proxy: Proxy, listen: Endpoint, upstream: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    from faultlab.proxy import Hop

    up_family, up_addr = await resolve(upstream)
    family, addr = await resolve(listen)
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    idle = proxy.config.udp_idle_timeout
    flows: dict[tuple[str, int], UdpFlow] = {}
    enlarge_buffers(sock)
    with sock:
        try:
            await sock.bind(addr)
        except OSError as exc:
            raise listen_error(listen, exc) from None
        bound = sock.getsockname()[:2]
        wildcard = bound[0] in ("0.0.0.0", "::")
        proxy.emit("listening", transport="udp", peer=format_hostport(*bound),
                   detail={"upstream": f"udp:{format_hostport(*up_addr)}"})

        async def open_flow(device: tuple[str, int]) -> UdpFlow:
            up = trio.socket.socket(up_family, socket.SOCK_DGRAM)
            enlarge_buffers(up, SOCKET_BUFFER // 8)
            await up.connect(up_addr)
            pbx_side = up.getsockname()[:2]
            device_side = bound
            if wildcard:
                device_side = (await local_address_towards(family, device), bound[1])
            side = Side("udp", device=device_side, pbx=pbx_side)
            fid = proxy.new_flow_id("udp")
            flow = UdpFlow(
                fid, device, up,
                Hop(fid, TO_PBX, "udp", device, side),
                Hop(fid, TO_DEVICE, "udp", up_addr, side),
            )
            flows[device] = flow
            proxy.emit("flow-open", flow=fid, transport="udp", peer=format_hostport(*device),
                       detail={"pbx_side": format_hostport(*pbx_side),
                               "device_side": format_hostport(*device_side)})
            return flow

        async def flow_reader(flow: UdpFlow) -> None:
            try:
                with flow.scope:
                    flow.scope.deadline = trio.current_time() + idle
                    while True:
                        try:
                            data = await flow.sock.recv(MAX_DATAGRAM)
                        except OSError as exc:  # ICMP errors of earlier sends surface here
                            proxy.warn(f"upstream socket error: {exc.strerror or exc}", flow=flow.id,
                                       transport="udp")
                            continue
                        flow.scope.deadline = trio.current_time() + idle
                        item, error = _parse(data)
                        out = proxy.process(item, flow.to_device, error=error)
                        try:
                            await sock.sendto(out.data, flow.device)
                        except OSError as exc:
                            proxy.warn(f"cannot send to device: {exc.strerror or exc}", flow=flow.id,
                                       transport="udp", summary=out.summary)
                            continue
                        proxy.sent(out, flow.device)
            finally:
                flow.sock.close()
                flows.pop(flow.device, None)
                proxy.emit("flow-close", flow=flow.id, transport="udp",
                           peer=format_hostport(*flow.device), detail={"reason": "idle"})

        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            while True:
                try:
                    data, src = await sock.recvfrom(MAX_DATAGRAM)
                except OSError as exc:
                    proxy.warn(f"listen socket error: {exc.strerror or exc}", transport="udp")
                    continue
                device = src[:2]
                flow = flows.get(device)
                if flow is None:
                    flow = await open_flow(device)
                    nursery.start_soon(flow_reader, flow)
                else:
                    flow.scope.deadline = trio.current_time() + idle
                item, error = _parse(data)
                out = proxy.process(item, flow.to_pbx, error=error)
                try:
                    await flow.sock.send(out.data)
                except OSError as exc:
                    proxy.warn(f"cannot send to upstream: {exc.strerror or exc}", flow=flow.id,
                               transport="udp", summary=out.summary)
                    continue
                proxy.sent(out, up_addr)
