"""TCP and TLS relay: one upstream connection per device connection.

The listener accepts, applies the profile's connect-time faults, shows TLS devices a certificate of
the lab CA, and hands each connection to a :class:`~faultlab.net.pair.Pair`, which relays it (opening
the PBX connection with the device's first message in relay mode), times it out and closes it.
"""

from __future__ import annotations

import ipaddress
import ssl
from functools import partial

import trio

from faultlab.addr import Endpoint, format_hostport, listen_error
from faultlab.ca import LabCA, default_confdir
from faultlab.net.close import abort, close_all
from faultlab.net.leantls import wrap as wrap_tls
from faultlab.net.limits import resolve as resolve_limits
from faultlab.net.limits import serve_bounded, slots_of
from faultlab.net.pair import Pair
from faultlab.net.resolve import resolve
from faultlab.net.scheduler import seconds
from faultlab.net.stop import stopper_of
from faultlab.net.tls import TLSConfigError, client_context, server_context
from faultlab.net.transparent import open_tcp, original_dst, was_redirected
from faultlab.relay import Relay

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
                    up = wrap_tls(up_conn, self.client_ctx, server_hostname=name)
                    await up.do_handshake()
                return up_conn, up
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            reason = exc.__cause__ or exc if not isinstance(exc, trio.TooSlowError) else "timed out"
            where = upstream if upstream is not None else f"{self.up_transport}:{format_hostport(*target)}"
            self.relay.warn(f"cannot connect to upstream {where}: {reason}; closing the device connection",
                            flow=flow, transport=self.transport, peer=format_hostport(*peer))
            await close_all("error", up)  # a connection whose TLS handshake failed
            return None

    async def handle(self, conn: trio.SocketStream) -> None:
        relay, transport = self.relay, self.transport
        flow = relay.new_flow_id(transport)
        peer = conn.socket.getpeername()[:2]
        local = conn.socket.getsockname()[:2]
        device: trio.abc.Stream = conn
        pair: Pair | None = None
        how, reason = "error", None
        target = self.up_addr
        stopper = stopper_of(relay)
        with stopper.connection():
            try:
                if self.upstream is None:
                    target = original_dst(conn.socket)
                    if not was_redirected(target, local):
                        relay.warn("connection not intercepted (made to faultlab itself, no original destination): "
                                   "closed; in transparent mode devices connect to the PBX",
                                   flow=flow, transport=transport, peer=format_hostport(*peer))
                        return
                with stopper.until_closing() as opening:
                    how, reason = await self._on_connect(flow, peer)
                    if how == "open" and self.device_tls is not None:
                        device = wrap_tls(conn, self.device_tls.context(target, local), server_side=True)
                        reason = await self._handshake(device, flow, peer)
                        how = "open" if reason is None else "error"
                if opening.cancelled_caught:
                    how, reason = "eof", "stop"
                if how != "open":
                    return
                how = "error"
                pair = Pair(relay, device, stopper, flow=flow, transport=transport, peer=peer, local=local,
                            target=target, connect=partial(self._connect, flow, peer, target))
                how = await pair.run(at_once=self.upstream is None)
                reason = pair.reason
            finally:
                await self._closed(flow, peer, device, pair, how, reason)

    async def _on_connect(self, flow: str, peer: tuple[str, int]) -> tuple[str, str | None]:
        """The profile's connect-time faults: ("open", None) to go on, else how the connection ends
        (a refusal: "reset" or "eof"; a stall as long as the idle timeout: "eof", "idle-timeout")."""
        relay = self.relay
        decision = relay.on_connect(flow, self.transport, peer)
        if decision is None:
            return "open", None
        if decision.close is not None:
            return ("reset" if decision.close == "rst" else "eof"), None
        if decision.stall is not None:
            # e.g. a TLS handshake that never completes: accept, then read nothing
            relay.emit("stalled", flow=flow, transport=self.transport, peer=format_hostport(*peer),
                       detail={"for": seconds(decision.stall)})
            idle = self.config.stream_idle_timeout
            await trio.sleep(min(decision.stall, idle))
            if decision.stall >= idle:
                return "eof", "idle-timeout"
        return "open", None

    async def _handshake(self, device: trio.abc.Stream, flow: str, peer: tuple[str, int]) -> str | None:
        """The device's TLS handshake; None when done, else why not ("tls-handshake-timeout", "tls-handshake")."""
        try:
            with trio.fail_after(self.config.connect_timeout):
                await device.do_handshake()  # type: ignore[attr-defined]
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            self.relay.warn(f"TLS handshake with device failed: {exc.__cause__ or 'timed out'}",
                            flow=flow, transport=self.transport, peer=format_hostport(*peer))
            return "tls-handshake-timeout" if isinstance(exc, trio.TooSlowError) else "tls-handshake"
        return None

    async def _closed(self, flow: str, peer: tuple[str, int], device: trio.abc.Stream, pair: Pair | None,
                      how: str, reason: str | None) -> None:
        """Close the connection (and the PBX's) as it ended, and record it."""
        up = pair.upstream if pair is not None else None
        if pair is not None and pair.aborted:
            abort(device)
            how = "reset"
        discarded = await close_all(how, device, up)
        if pair is not None and pair.aborted:
            how = "error"
        detail: dict = {"how": how}
        if reason is not None:
            detail["reason"] = reason
        if discarded:
            detail["discarded"] = discarded  # bytes read after faultlab's FIN, while the peer closed
        if pair is not None and pair.opened:
            self.relay.flow_closed(flow, self.transport, peer, **detail)
        else:
            self.relay.emit("flow-close", flow=flow, transport=self.transport, peer=format_hostport(*peer),
                            detail=detail)


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
        with stopper_of(relay).accepting():  # until the proxy stops; its connections then close in order
            await serve_bounded(relay, transport, listener.handle, listeners, slots, nursery)
