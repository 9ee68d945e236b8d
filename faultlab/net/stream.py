"""TCP and TLS relay: one upstream connection per device connection.

Each direction of a connection pair is one task that reads, frames whole
messages, and writes each before reading on, so order is kept and a slow
side holds the other back as a real TCP path would. When the framer cannot
frame a stream any more, the rest of that direction is relayed raw.

Closing follows the device or the PBX: an orderly close (FIN, or TLS
close_notify) on one side closes the other side in order; a reset (RST)
resets the other side.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from faultlab.net import timer
from faultlab.addr import Endpoint, format_hostport, listen_error
from faultlab.net.resolve import resolve
from faultlab.relay import TO_DEVICE, TO_PBX, Side
from faultlab.sip import EOF, NEED_DATA, SipError, StreamFramer

if TYPE_CHECKING:
    from faultlab.proxy import Hold, Hop, Outgoing, Plan, Proxy

RECEIVE_SIZE = 65536
# After one side closes in order, how long the other direction may still
# deliver what it has in flight before the pair is closed.
HALF_CLOSE_GRACE = 5.0
# A write that cannot finish in this time (peer not reading) fails the pair.
SEND_TIMEOUT = 30.0


class _Closed(Exception):
    def __init__(self, how: str) -> None:
        self.how = how  # "eof" | "reset" | "error"


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


def _abort(stream: trio.abc.Stream) -> None:
    """Close with RST (SO_LINGER 0), as the other side was closed."""
    try:
        _socket_of(stream).setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def _is_reset(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, (ConnectionResetError, BrokenPipeError))


# Messages waiting in one direction (delayed or held ones and those behind
# them) before the reader stops reading: TCP flow control then reaches the sender.
QUEUE_SIZE = 256


@dataclass(eq=False)
class _Item:
    at: float  # trio time before which it is not written
    out: Outgoing | None
    dest: tuple[str, int]
    hold: Hold | None = None
    close: str | None = None  # "fin" | "rst": end the pair after this item
    kind: str = "sent"  # or "responded"
    detail: dict = field(default_factory=dict)


class _Writer:
    """The one writer of a stream: FIFO, so a delayed or held message holds
    back the ones behind it as a real TCP path would.

    A message with nothing queued before it and nothing to wait for is
    written at once by the task that has it (the common, no-fault path).
    """

    def __init__(self, proxy: Proxy, stream: trio.abc.Stream, end: Callable[[str], None]) -> None:
        self.proxy = proxy
        self.stream = stream
        self.end = end
        self.pending = 0
        self.lock = trio.StrictFIFOLock()
        self._send, self._receive = trio.open_memory_channel[_Item](QUEUE_SIZE)

    async def submit(self, item: _Item) -> None:
        if (self.pending == 0 and item.hold is None and item.close is None
                and item.at <= trio.current_time()):
            await self._write(item)
            return
        self.pending += 1
        await self._send.send(item)

    async def submit_batch(self, items: list[_Item]) -> None:
        """Messages due now, in order: one write for all when nothing is queued before them."""
        if self.pending == 0:
            await self._write(*items)
        else:
            for item in items:
                await self.submit(item)

    async def _write(self, *items: _Item) -> None:
        data = items[0].out.data if len(items) == 1 else b"".join(item.out.data for item in items)
        async with self.lock:
            # Messages are written whole or not at all, even if the relay is stopping.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SEND_TIMEOUT) as timeout:
                    await self.stream.send_all(data)
        if timeout.cancelled_caught:
            raise _Closed("error")
        for item in items:
            if item.kind == "responded":
                self.proxy.responded(item.out, item.dest)
            else:
                self.proxy.sent(item.out, item.dest, **item.detail)

    async def run(self) -> None:
        async for item in self._receive:
            try:
                if item.hold is not None and not await self.proxy.wait_hold(item.hold):
                    continue
                await timer.sleep_until(item.at)
                if item.out is not None:
                    await self._write(item)
                if item.close is not None:
                    self.end(item.close)
                    return
            finally:
                self.pending -= 1


async def _pump(proxy: Proxy, src: trio.abc.Stream, forward: _Writer, back: _Writer, hop: Hop,
                dest: tuple[str, int]) -> str:
    """Read one direction until it ends; return how: "eof", "reset" or "error"."""
    framer = StreamFramer()
    raw = False

    ready: list[_Item] = []  # plain forwards of the current read, written together

    async def flush() -> None:
        if ready:
            items = ready[:]
            ready.clear()
            await forward.submit_batch(items)

    async def carry_out(plan: Plan) -> None:
        now = plan.received_at
        if (plan.forward is not None and plan.delay <= 0 and not plan.copies and plan.respond is None
                and plan.hold is None and plan.close is None and plan.stall is None):
            ready.append(_Item(now, plan.forward, dest))
            return
        await flush()
        if plan.respond is not None:
            await back.submit(_Item(now, plan.respond, hop.peer, kind="responded"))
        if plan.close is not None and plan.close_when == "before":
            await forward.submit(_Item(now, None, dest, close=plan.close))
        elif plan.hold is not None:
            await forward.submit(_Item(now, plan.hold.out, dest, hold=plan.hold, detail={"released": plan.hold.id}))
        elif plan.forward is not None:
            await forward.submit(_Item(now + plan.delay, plan.forward, dest))
            for n, delay in enumerate(plan.copies, 1):
                await forward.submit(_Item(now + delay, plan.forward, dest, detail={"copy": n}))
        if plan.close is not None and plan.close_when == "after":
            await forward.submit(_Item(now + plan.delay, None, dest, close=plan.close))
        if plan.stall is not None:
            proxy.emit("stalled", flow=hop.flow, direction=hop.direction, transport=hop.transport,
                       detail={"for": _seconds(plan.stall)})
            await trio.sleep(plan.stall)  # inf: until the pair ends

    while True:
        try:
            data = await src.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError as exc:
            if _is_reset(exc):
                return "reset"
            proxy.warn(f"connection broken: {exc.__cause__ or exc}", flow=hop.flow,
                       direction=hop.direction, transport=hop.transport)
            return "error"
        except trio.ClosedResourceError:
            return "error"
        if raw:
            if not data:
                return "eof"
            await carry_out(proxy.plan(data, hop))
            await flush()
            continue
        framer.receive_data(data)
        while True:
            try:
                event = framer.next_event()
            except SipError as exc:
                proxy.warn(f"cannot frame the stream ({exc}): relaying it raw from here on",
                           flow=hop.flow, direction=hop.direction, transport=hop.transport)
                raw = True
                leftover = framer.take_unframed()
                if leftover:
                    await carry_out(proxy.plan(leftover, hop, error=str(exc)))
                await flush()
                if not data:
                    return "eof"
                break
            if event is NEED_DATA:
                break
            if event is EOF:
                await flush()
                return "eof"
            await carry_out(proxy.plan(event, hop))
        await flush()


async def _relay_pair(proxy: Proxy, device: trio.abc.Stream, upstream: trio.abc.Stream,
                      to_pbx: Hop, to_device: Hop, up_addr: tuple[str, int]) -> str:
    """Run both directions; return how the pair ended: "eof" (in order, also when a
    profile closed it with FIN), "reset" (also a profile's RST) or "error"."""
    how = "eof"
    eofs = 0
    async with trio.open_nursery() as nursery:

        def closer(stream: trio.abc.Stream) -> Callable[[str], None]:
            """What a writer does at a close item: "eof" passes an orderly close on (TCP:
            FIN, and the other direction may finish for HALF_CLOSE_GRACE); a profile's
            "fin"/"rst" ends the pair at once."""
            def close(kind: str) -> None:
                nonlocal how, eofs
                if kind != "eof":
                    how = "reset" if kind == "rst" else "eof"
                    nursery.cancel_scope.cancel()
                    return
                eofs += 1
                if isinstance(stream, trio.SocketStream) and eofs == 1:
                    nursery.start_soon(_send_eof, stream)
                    nursery.cancel_scope.deadline = trio.current_time() + HALF_CLOSE_GRACE
                else:
                    nursery.cancel_scope.cancel()
            return close

        to_up = _Writer(proxy, upstream, closer(upstream))
        to_dev = _Writer(proxy, device, closer(device))

        async def run(src, forward, back, hop, dest) -> None:
            nonlocal how
            try:
                result = await _pump(proxy, src, forward, back, hop, dest)
            except _Closed as closed:
                result = closed.how
            proxy.emit("closed", flow=hop.flow, direction=hop.direction, transport=hop.transport,
                       detail={"how": result, "by": "device" if hop.direction == TO_PBX else "pbx"})
            if result == "eof":
                # what is queued for the other side goes first, then the close
                await forward.submit(_Item(trio.current_time(), None, dest, close="eof"))
                return
            how = result
            nursery.cancel_scope.cancel()

        async def write(writer: _Writer) -> None:
            try:
                await writer.run()
            except _Closed as closed:
                nonlocal how
                how = closed.how
                nursery.cancel_scope.cancel()

        nursery.start_soon(write, to_up)
        nursery.start_soon(write, to_dev)
        nursery.start_soon(run, device, to_up, to_dev, to_pbx, up_addr)
        nursery.start_soon(run, upstream, to_dev, to_up, to_device, to_pbx.peer)
    return how


def _seconds(value: float) -> float | str:
    return value if math.isfinite(value) else "forever"


async def _send_eof(stream: trio.SocketStream) -> None:
    """FIN to the other side; keep reading from it."""
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve_stream(
    proxy: Proxy, listen: Endpoint, upstream: Endpoint | None, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``listen``; each connection goes to ``upstream``, or with ``upstream`` None
    (transparent mode) to its original destination (SO_ORIGINAL_DST after REDIRECT)."""
    from faultlab.proxy import Hop

    transport = listen.transport
    config = proxy.config
    up_addr = None if upstream is None else (await resolve(upstream))[1]
    up_transport = transport if upstream is None else upstream.transport
    _, addr = await resolve(listen)
    server_ctx = client_ctx = None
    if transport == "tls":
        from faultlab.ca import LabCA, default_confdir
        from faultlab.net.tls import TLSConfigError, server_context

        ca = LabCA.load_or_init(config.confdir or default_confdir())
        proxy.ca_cert_path = ca.cert_path
        fallback = [config.tls_name] if config.tls_name else []
        if addr[0] not in ("0.0.0.0", "::"):
            fallback.append(addr[0])
        server_ctx = server_context(ca, default_name=config.tls_name, fallback_names=fallback or ["localhost"])
    by_destination: dict[str, ssl.SSLContext] = {}

    def device_context(target: tuple[str, int], local: tuple[str, int]) -> ssl.SSLContext:
        """The address the device connected to is on the certificate it is shown (besides the SNI name
        and --tls-name): in transparent mode the PBX's address, on a wildcard listener (0.0.0.0, ::) the
        local address the connection arrived at, otherwise the listen address (server_ctx)."""
        if upstream is not None and addr[0] not in ("0.0.0.0", "::"):
            return server_ctx
        address = target[0] if upstream is None else local[0]
        mapped = getattr(ipaddress.ip_address(address.split("%")[0]), "ipv4_mapped", None)
        address = str(mapped) if mapped is not None else address
        ctx = by_destination.get(address)
        if ctx is None:
            try:
                ctx = server_context(ca, default_name=config.tls_name, fallback_names=[address])
            except TLSConfigError:  # e.g. a link-local address with a zone: the configured names only
                ctx = server_ctx
            by_destination[address] = ctx
        return ctx
    if up_transport == "tls":
        from faultlab.net.tls import client_context

        client_ctx = client_context(cafile=config.upstream_ca, insecure=config.upstream_insecure)

    try:
        listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
    except OSError as exc:
        raise listen_error(listen, exc) from None
    bound = listeners[0].socket.getsockname()[:2]
    proxy.emit("listening", transport=transport, peer=format_hostport(*bound),
               detail={"upstream": "original destination (transparent)" if upstream is None
                       else f"{upstream.transport}:{format_hostport(*up_addr)}"})

    async def handle(conn: trio.SocketStream) -> None:
        flow = proxy.new_flow_id(transport)
        peer = conn.socket.getpeername()[:2]
        local = conn.socket.getsockname()[:2]
        device: trio.abc.Stream = conn
        up: trio.abc.Stream | None = None
        opened = False
        how = "error"
        target = up_addr
        try:
            if upstream is None:
                from faultlab.net.transparent import original_dst, was_redirected

                target = original_dst(conn.socket)
                if not was_redirected(target, local):
                    proxy.warn("connection not intercepted (made to faultlab itself, no original destination): "
                               "closed; in transparent mode devices connect to the PBX",
                               flow=flow, transport=transport, peer=format_hostport(*peer))
                    return
            decision = proxy.on_connect(flow, transport, peer)
            if decision is not None:
                if decision.close is not None:
                    how = "reset" if decision.close == "rst" else "eof"
                    return
                if decision.stall is not None:
                    # e.g. a TLS handshake that never completes: accept, then read nothing
                    proxy.emit("stalled", flow=flow, transport=transport, peer=format_hostport(*peer),
                               detail={"for": _seconds(decision.stall)})
                    await trio.sleep(decision.stall)
            if server_ctx is not None:
                device = trio.SSLStream(conn, device_context(target, local), server_side=True)
                try:
                    with trio.fail_after(config.connect_timeout):
                        await device.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                    proxy.warn(f"TLS handshake with device failed: {exc.__cause__ or 'timed out'}",
                               flow=flow, transport=transport, peer=format_hostport(*peer))
                    return
            try:
                with trio.fail_after(config.connect_timeout):
                    if upstream is None:
                        from faultlab.net.transparent import open_tcp

                        up_conn = await open_tcp(target, source_ip=peer[0] if config.spoof_source else None)
                    else:
                        up_conn = await trio.open_tcp_stream(*up_addr)
                    up = up_conn
                    if client_ctx is not None:
                        name = config.upstream_tls_name or (
                            upstream.host if upstream is not None else (config.tls_name or target[0]))
                        up = trio.SSLStream(up_conn, client_ctx, server_hostname=name)
                        await up.do_handshake()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                reason = exc.__cause__ or exc if not isinstance(exc, trio.TooSlowError) else "timed out"
                where = upstream if upstream is not None else f"{up_transport}:{format_hostport(*target)}"
                proxy.warn(f"cannot connect to upstream {where}: {reason}; closing the device connection",
                           flow=flow, transport=transport, peer=format_hostport(*peer))
                _abort(device)
                return
            pbx_side = up_conn.socket.getsockname()[:2]
            side = Side(transport, device=local, pbx=pbx_side)
            proxy.flow_opened(flow, transport, peer, pbx_side, local)
            opened = True
            how = await _relay_pair(
                proxy, device, up,
                Hop(flow, TO_PBX, transport, peer, side, peer),
                Hop(flow, TO_DEVICE, transport, target, side, peer),
                target,
            )
        finally:
            for stream in (device, up):
                if stream is None:
                    continue
                if how == "reset":
                    _abort(stream)
                    await trio.aclose_forcefully(stream)
                else:
                    with trio.move_on_after(1) as cs:
                        cs.shield = True
                        try:
                            await stream.aclose()
                        except (trio.BrokenResourceError, ssl.SSLError, OSError):
                            await trio.aclose_forcefully(stream)
            if opened:
                proxy.flow_closed(flow, transport, peer, how=how)
            else:
                proxy.emit("flow-close", flow=flow, transport=transport, peer=format_hostport(*peer),
                           detail={"how": how})

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
