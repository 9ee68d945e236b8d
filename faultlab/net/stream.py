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
import socket
import ssl
import struct
from collections.abc import Callable

import trio

from faultlab.addr import Endpoint, format_hostport, listen_error
from faultlab.ca import LabCA, default_confdir
from faultlab.net.limits import resolve as resolve_limits
from faultlab.net.limits import serve_bounded, slots_of
from faultlab.net.reader import SipStreamReader, Unframed
from faultlab.net.resolve import resolve
from faultlab.net.scheduler import Closed, StreamWriter, carry_out_on_stream, seconds
from faultlab.net.tls import TLSConfigError, client_context, server_context
from faultlab.net.transparent import open_tcp, original_dst, was_redirected
from faultlab.relay import TO_DEVICE, TO_PBX, Hop, Plan, Relay, Side, Step

# After one side closes in order, how long the other direction may still
# deliver what it has in flight before the pair is closed.
HALF_CLOSE_GRACE = 5.0


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


async def _pump(relay: Relay, src: trio.abc.Stream, forward: StreamWriter, back: StreamWriter, hop: Hop,
                dest: tuple[str, int]) -> str:
    """Read one direction until it ends; return how: "eof", "reset", "error" or "too-large" (a message
    over the size limit: the pair is closed)."""
    reader = SipStreamReader(src, max_message_size=resolve_limits(relay.config).max_message_size)
    ready: list[Step] = []  # plain forwards of the current read, written together

    async def flush() -> None:
        if ready:
            items = ready[:]
            ready.clear()
            await forward.submit_batch(items)

    async def carry_out(plan: Plan) -> None:
        if plan.plain:
            ready.append(Step(plan.received_at, plan.forward, dest))
            return
        await flush()
        await carry_out_on_stream(relay, plan, hop, forward, back, dest)

    while True:
        try:
            batch = await reader.read_batch()
        except trio.BrokenResourceError as exc:
            if _is_reset(exc):
                return "reset"
            relay.warn(f"connection broken: {exc.__cause__ or exc}", flow=hop.flow,
                       direction=hop.direction, transport=hop.transport)
            return "error"
        except trio.ClosedResourceError:
            return "error"
        if batch is None:
            return "eof"
        for item in batch:
            if not isinstance(item, Unframed):
                await carry_out(relay.plan(item, hop))
                continue
            if item.too_large:  # not relayed raw: the connection is closed
                await flush()
                relay.too_large(item.data, hop, reader.framer.max_message_size, stream=True, error=item.error)
                return "too-large"
            if item.error is not None:
                relay.warn(f"cannot frame the stream ({item.error}): relaying it raw from here on",
                           flow=hop.flow, direction=hop.direction, transport=hop.transport)
            if item.data:
                await carry_out(relay.plan(item.data, hop, error=item.error))
        await flush()


async def _relay_pair(relay: Relay, device: trio.abc.Stream, upstream: trio.abc.Stream,
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

        to_up = StreamWriter(relay, upstream, closer(upstream))
        to_dev = StreamWriter(relay, device, closer(device))

        async def run(src, forward, back, hop, dest) -> None:
            nonlocal how
            try:
                result = await _pump(relay, src, forward, back, hop, dest)
            except Closed as closed:
                result = closed.how
            relay.emit("closed", flow=hop.flow, direction=hop.direction, transport=hop.transport,
                       detail={"how": result, "by": "device" if hop.direction == TO_PBX else "pbx"})
            if result == "eof":
                # what is queued for the other side goes first, then the close
                await forward.submit(Step(trio.current_time(), None, dest, close="eof"))
                return
            how = result
            nursery.cancel_scope.cancel()

        async def write(writer: StreamWriter) -> None:
            try:
                await writer.run()
            except Closed as closed:
                nonlocal how
                how = closed.how
                nursery.cancel_scope.cancel()

        nursery.start_soon(write, to_up)
        nursery.start_soon(write, to_dev)
        nursery.start_soon(run, device, to_up, to_dev, to_pbx, up_addr)
        nursery.start_soon(run, upstream, to_dev, to_up, to_device, to_pbx.peer)
    return how


async def _send_eof(stream: trio.SocketStream) -> None:
    """FIN to the other side; keep reading from it."""
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


_WILDCARD = ("0.0.0.0", "::")


class _DeviceTLS:
    """The certificates a TLS listener shows devices, from the lab CA."""

    def __init__(self, relay: Relay, addr: tuple[str, int], transparent: bool) -> None:
        config = relay.config
        self.ca = LabCA.load_or_init(config.confdir or default_confdir())
        relay.ca_cert_path = self.ca.cert_path
        self.tls_name = config.tls_name
        self.addr = addr
        self.transparent = transparent
        fallback = [config.tls_name] if config.tls_name else []
        if addr[0] not in _WILDCARD:
            fallback.append(addr[0])
        self.default = server_context(self.ca, default_name=config.tls_name, fallback_names=fallback or ["localhost"])
        self.by_destination: dict[str, ssl.SSLContext] = {}

    def context(self, target: tuple[str, int], local: tuple[str, int]) -> ssl.SSLContext:
        """The address the device connected to is on the certificate it is shown (besides the SNI name
        and --tls-name): in transparent mode the PBX's address, on a wildcard listener (0.0.0.0, ::) the
        local address the connection arrived at, otherwise the listen address (the default context)."""
        if not self.transparent and self.addr[0] not in _WILDCARD:
            return self.default
        address = target[0] if self.transparent else local[0]
        mapped = getattr(ipaddress.ip_address(address.split("%")[0]), "ipv4_mapped", None)
        address = str(mapped) if mapped is not None else address
        ctx = self.by_destination.get(address)
        if ctx is None:
            try:
                ctx = server_context(self.ca, default_name=self.tls_name, fallback_names=[address])
            except TLSConfigError:  # e.g. a link-local address with a zone: the configured names only
                ctx = self.default
            self.by_destination[address] = ctx
        return ctx


async def _close_all(how: str, *streams: trio.abc.Stream | None) -> None:
    """Close the pair's streams as the pair ended: with RST after a reset, else in order (at most 1 s)."""
    for stream in streams:
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


class _StreamListener:
    """Accepted connections of one listen endpoint, each relayed to its upstream connection."""

    def __init__(self, relay: Relay, transport: str, upstream: Endpoint | None, up_addr: tuple[str, int] | None,
                 device_tls: _DeviceTLS | None, client_ctx: ssl.SSLContext | None) -> None:
        self.relay = relay
        self.config = relay.config
        self.transport = transport
        self.upstream = upstream  # None: transparent mode, each connection's original destination
        self.up_addr = up_addr
        self.up_transport = transport if upstream is None else upstream.transport
        self.device_tls = device_tls
        self.client_ctx = client_ctx

    async def _connect(self, flow: str, peer: tuple[str, int], target: tuple[str, int]):
        """The upstream connection (TCP, and TLS over it); None (warned) when it cannot be made."""
        config, upstream = self.config, self.upstream
        up: trio.abc.Stream | None = None
        try:
            with trio.fail_after(config.connect_timeout):
                if upstream is None:
                    up_conn = await open_tcp(target, source_ip=peer[0] if config.spoof_source else None)
                else:
                    up_conn = await trio.open_tcp_stream(*self.up_addr)
                up = up_conn
                if self.client_ctx is not None:
                    name = config.upstream_tls_name or (
                        upstream.host if upstream is not None else (config.tls_name or target[0]))
                    up = trio.SSLStream(up_conn, self.client_ctx, server_hostname=name)
                    await up.do_handshake()
                return up_conn, up
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            reason = exc.__cause__ or exc if not isinstance(exc, trio.TooSlowError) else "timed out"
            where = upstream if upstream is not None else f"{self.up_transport}:{format_hostport(*target)}"
            self.relay.warn(f"cannot connect to upstream {where}: {reason}; closing the device connection",
                            flow=flow, transport=self.transport, peer=format_hostport(*peer))
            await _close_all("error", up)  # a connection whose TLS handshake failed
            return None

    async def handle(self, conn: trio.SocketStream) -> None:
        relay, transport = self.relay, self.transport
        flow = relay.new_flow_id(transport)
        peer = conn.socket.getpeername()[:2]
        local = conn.socket.getsockname()[:2]
        device: trio.abc.Stream = conn
        up: trio.abc.Stream | None = None
        opened = False
        how = "error"
        target = self.up_addr
        try:
            if self.upstream is None:
                target = original_dst(conn.socket)
                if not was_redirected(target, local):
                    relay.warn("connection not intercepted (made to faultlab itself, no original destination): "
                               "closed; in transparent mode devices connect to the PBX",
                               flow=flow, transport=transport, peer=format_hostport(*peer))
                    return
            decision = relay.on_connect(flow, transport, peer)
            if decision is not None:
                if decision.close is not None:
                    how = "reset" if decision.close == "rst" else "eof"
                    return
                if decision.stall is not None:
                    # e.g. a TLS handshake that never completes: accept, then read nothing
                    relay.emit("stalled", flow=flow, transport=transport, peer=format_hostport(*peer),
                               detail={"for": seconds(decision.stall)})
                    await trio.sleep(decision.stall)
            if self.device_tls is not None:
                device = trio.SSLStream(conn, self.device_tls.context(target, local), server_side=True)
                try:
                    with trio.fail_after(self.config.connect_timeout):
                        await device.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                    relay.warn(f"TLS handshake with device failed: {exc.__cause__ or 'timed out'}",
                               flow=flow, transport=transport, peer=format_hostport(*peer))
                    return
            connected = await self._connect(flow, peer, target)
            if connected is None:
                _abort(device)
                return
            up_conn, up = connected
            pbx_side = up_conn.socket.getsockname()[:2]
            side = Side(transport, device=local, pbx=pbx_side)
            relay.flow_opened(flow, transport, peer, pbx_side, local)
            opened = True
            how = await _relay_pair(relay, device, up, Hop(flow, TO_PBX, transport, peer, side, peer),
                                    Hop(flow, TO_DEVICE, transport, target, side, peer), target)
        finally:
            await _close_all(how, device, up)
            if opened:
                relay.flow_closed(flow, transport, peer, how=how)
            else:
                relay.emit("flow-close", flow=flow, transport=transport, peer=format_hostport(*peer),
                           detail={"how": how})


async def serve_stream(
    relay: Relay, listen: Endpoint, upstream: Endpoint | None, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``listen``; each connection goes to ``upstream``, or with ``upstream`` None
    (transparent mode) to its original destination (SO_ORIGINAL_DST after REDIRECT)."""
    transport = listen.transport
    config = relay.config
    up_addr = None if upstream is None else (await resolve(upstream))[1]
    up_transport = transport if upstream is None else upstream.transport
    _, addr = await resolve(listen)
    device_tls = _DeviceTLS(relay, addr, transparent=upstream is None) if transport == "tls" else None
    client_ctx = None
    if up_transport == "tls":
        client_ctx = client_context(cafile=config.upstream_ca, insecure=config.upstream_insecure)
    try:
        listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
    except OSError as exc:
        raise listen_error(listen, exc) from None
    bound = listeners[0].socket.getsockname()[:2]
    relay.emit("listening", transport=transport, peer=format_hostport(*bound),
               detail={"upstream": "original destination (transparent)" if upstream is None
                       else f"{upstream.transport}:{format_hostport(*up_addr)}"})
    listener = _StreamListener(relay, transport, upstream, up_addr, device_tls, client_ctx)
    slots = slots_of(relay, resolve_limits(config).max_connections)
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await serve_bounded(relay, transport, listener.handle, listeners, slots, nursery)
