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

import socket
import ssl
import struct
from typing import TYPE_CHECKING

import trio

from faultlab.net.addr import Endpoint, format_hostport, listen_error, resolve
from faultlab.relay import TO_DEVICE, TO_PBX, Side
from faultlab.sip import EOF, NEED_DATA, SipError, StreamFramer

if TYPE_CHECKING:
    from faultlab.proxy import Hop, Proxy

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


async def _pump(proxy: Proxy, src: trio.abc.Stream, dst: trio.abc.Stream, hop: Hop,
                dest: tuple[str, int]) -> str:
    """Relay one direction until it ends; return how: "eof", "reset" or "error"."""
    framer = StreamFramer()
    raw = False

    async def send(data: bytes) -> None:
        # A message is written whole or not at all, even if the relay is stopping.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SEND_TIMEOUT) as timeout:
                await dst.send_all(data)
        if timeout.cancelled_caught:
            raise _Closed("error")

    async def relay_raw(data: bytes, error: str | None = None) -> None:
        out = proxy.process(data, hop, error=error)
        await send(out.data)
        proxy.sent(out, dest)

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
            await relay_raw(data)
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
                    await relay_raw(leftover, str(exc))
                if not data:
                    return "eof"
                break
            if event is NEED_DATA:
                break
            if event is EOF:
                return "eof"
            out = proxy.process(event, hop)
            await send(out.data)
            proxy.sent(out, dest)


async def _relay_pair(proxy: Proxy, device: trio.abc.Stream, upstream: trio.abc.Stream,
                      to_pbx: Hop, to_device: Hop, up_addr: tuple[str, int]) -> str:
    """Run both directions; return how the pair ended."""
    how = "eof"
    eofs = 0
    async with trio.open_nursery() as nursery:

        async def run(src, dst, hop, dest) -> None:
            nonlocal how, eofs
            try:
                result = await _pump(proxy, src, dst, hop, dest)
            except _Closed as closed:
                result = closed.how
            proxy.emit("closed", flow=hop.flow, direction=hop.direction, transport=hop.transport,
                       detail={"how": result, "by": "device" if hop.direction == TO_PBX else "pbx"})
            if result == "eof" and isinstance(dst, trio.SocketStream):
                eofs += 1
                if eofs == 1:
                    try:
                        await dst.send_eof()  # FIN to the other side, keep reading from it
                    except trio.BrokenResourceError:
                        pass
                    nursery.cancel_scope.deadline = trio.current_time() + HALF_CLOSE_GRACE
                    return
            if result != "eof":
                how = result
            nursery.cancel_scope.cancel()

        nursery.start_soon(run, device, upstream, to_pbx, up_addr)
        nursery.start_soon(run, upstream, device, to_device, to_pbx.peer)
    return how


async def serve_stream(
    proxy: Proxy, listen: Endpoint, upstream: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    from faultlab.proxy import Hop

    transport = listen.transport
    config = proxy.config
    _, up_addr = await resolve(upstream)
    _, addr = await resolve(listen)
    server_ctx = client_ctx = None
    if transport == "tls":
        from faultlab.ca import LabCA, default_confdir
        from faultlab.net.tls import server_context

        ca = LabCA.load_or_init(config.confdir or default_confdir())
        proxy.ca_cert_path = ca.cert_path
        fallback = [config.tls_name] if config.tls_name else []
        if addr[0] not in ("0.0.0.0", "::"):
            fallback.append(addr[0])
        server_ctx = server_context(ca, default_name=config.tls_name, fallback_names=fallback or ["localhost"])
    if upstream.transport == "tls":
        from faultlab.net.tls import client_context

        client_ctx = client_context(cafile=config.upstream_ca, insecure=config.upstream_insecure)

    try:
        listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
    except OSError as exc:
        raise listen_error(listen, exc) from None
    bound = listeners[0].socket.getsockname()[:2]
    proxy.emit("listening", transport=transport, peer=format_hostport(*bound),
               detail={"upstream": f"{upstream.transport}:{format_hostport(*up_addr)}"})

    async def handle(conn: trio.SocketStream) -> None:
        flow = proxy.new_flow_id(transport)
        peer = conn.socket.getpeername()[:2]
        local = conn.socket.getsockname()[:2]
        device: trio.abc.Stream = conn
        up: trio.abc.Stream | None = None
        how = "error"
        try:
            if server_ctx is not None:
                device = trio.SSLStream(conn, server_ctx, server_side=True)
                try:
                    with trio.fail_after(config.connect_timeout):
                        await device.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                    proxy.warn(f"TLS handshake with device failed: {exc.__cause__ or 'timed out'}",
                               flow=flow, transport=transport, peer=format_hostport(*peer))
                    return
            try:
                with trio.fail_after(config.connect_timeout):
                    up_conn = await trio.open_tcp_stream(*up_addr)
                    up = up_conn
                    if client_ctx is not None:
                        up = trio.SSLStream(up_conn, client_ctx, server_hostname=upstream.host)
                        await up.do_handshake()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                reason = exc.__cause__ or exc if not isinstance(exc, trio.TooSlowError) else "timed out"
                proxy.warn(f"cannot connect to upstream {upstream}: {reason}; closing the device connection",
                           flow=flow, transport=transport, peer=format_hostport(*peer))
                _abort(device)
                return
            pbx_side = up_conn.socket.getsockname()[:2]
            side = Side(transport, device=local, pbx=pbx_side)
            proxy.emit("flow-open", flow=flow, transport=transport, peer=format_hostport(*peer),
                       detail={"pbx_side": format_hostport(*pbx_side), "device_side": format_hostport(*local)})
            how = await _relay_pair(
                proxy, device, up,
                Hop(flow, TO_PBX, transport, peer, side),
                Hop(flow, TO_DEVICE, transport, up_addr, side),
                up_addr,
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
            proxy.emit("flow-close", flow=flow, transport=transport, peer=format_hostport(*peer),
                       detail={"how": how})

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
