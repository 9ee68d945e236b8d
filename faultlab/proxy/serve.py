"""The proxy: serves the relay (``faultlab.relay``) on the listeners of ``faultlab.net``, with the
timeline (``faultlab.trace``), and starts the services it is given (such as the control API, which
``faultlab.api.run`` composes beside it) once every listener is bound.

Every message takes the one path of the design::

    bytes -> framer -> Message + Hop -> trace "received" -> engine -> rewrite -> scheduler -> writer -> trace "sent"
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from faultlab.addr import Endpoint
from faultlab.net import limits
from faultlab.net.hep import HepSender, keep_sending
from faultlab.net.pending import keep_pushed
from faultlab.net.stop import stopper_of
from faultlab.net.stream import serve_stream
from faultlab.net.transparent import serve_udp_transparent
from faultlab.net.udp import serve_udp
from faultlab.proxy.config import ConfigError, ProxyConfig
from faultlab.proxy.control import ProxyControl
from faultlab.relay import Relay
from faultlab.trace import ConsolePrinter, JsonlWriter


class Proxy(Relay):
    """A running proxy: the relay, its bound addresses, its control API."""

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__(config, clock=trio.current_time)
        self.bound: dict[str, tuple[str, int]] = {}  # transport -> first bound address
        self.api_address: tuple[str, int] | None = None  # set by the control API's service, when it runs
        self.control: ProxyControl | None = None  # likewise
        self.listeners: list[tuple[Endpoint, tuple[str, int]]] = []
        self.limits: limits.Limits = limits.resolve(config)  # set again at start, after raising the descriptor limit


# A service runs beside the relay: started with ``await nursery.start(service, proxy)`` once every listener is
# bound, it calls ``task_status.started()`` when it is up, and runs until the proxy stops.
Service = Callable[..., Awaitable[None]]


async def serve_proxy(config: ProxyConfig, *, services: Sequence[Service] = (),
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the relay until cancelled (or SIGINT/SIGTERM with ``handle_signals``).

    ``task_status.started(proxy)`` reports the :class:`Proxy` once every listener is bound and every one of
    ``services`` has started; ``proxy.bound`` maps each transport to its address.
    """
    config.validate()
    if config.api is not None and not services:
        raise ConfigError("ProxyConfig.api: the proxy alone serves no control API; start it with "
                          "faultlab.api.run.serve_proxy_with_api")
    proxy = Proxy(config)
    proxy.limits = limits.resolve(config, limits.raise_descriptor_limit())
    writer = hep = None
    if config.trace_path is not None:
        writer = JsonlWriter(config.trace_path)
        proxy.trace.add_sink(writer, writer.close)
    if not config.quiet:
        proxy.trace.add_sink(ConsolePrinter(verbose=config.verbose))
    if config.hep is not None:
        try:
            hep = HepSender(config.hep, capture_id=config.hep_id, password=config.hep_password, warn=proxy.warn)
        except ValueError as exc:
            raise ConfigError(f"--hep: {exc}") from None
        hep.attach(proxy.trace)
    proxy.emit("start", detail={
        "wall_clock": time.time(),
        "listen": [str(ep) for ep in config.listen],
        "upstream": [str(ep) for ep in config.upstream],
        "record_route": config.record_route and not config.transparent,
        "transparent": config.transparent,
        "spoof_source": config.spoof_source,
        "seed": proxy.seed,
        "profile": config.profile.name if config.profile else None,
        "limits": proxy.limits.as_detail(),
    })
    _check_budget(proxy)
    try:
        async with trio.open_nursery() as nursery:
            if writer is not None:
                nursery.start_soon(keep_flushed, writer)
            if hep is not None and hep.target.transport == "tcp":
                nursery.start_soon(keep_sending, hep)
            if config.handle_signals:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope, proxy)
            for ep in config.listen:
                upstream = config.upstream_for(ep.transport)
                if ep.transport == "udp" and config.transparent:
                    addr = await nursery.start(serve_udp_transparent, proxy, ep)
                elif ep.transport == "udp":
                    addr = await nursery.start(serve_udp, proxy, ep, upstream)
                else:
                    addr = await nursery.start(serve_stream, proxy, ep, upstream)
                proxy.bound.setdefault(ep.transport, addr)
                proxy.listeners.append((ep, addr))
            for service in services:
                await nursery.start(service, proxy)
            task_status.started(proxy)
    finally:
        proxy.emit("stop")
        if config.trace is None:
            proxy.trace.close()


def _check_budget(proxy: Proxy) -> None:
    """A warning when the --max-flows and --max-connections given need more descriptors than the limit."""
    bounds = proxy.limits
    need = bounds.descriptors_needed(proxy.config.transparent)
    if need > bounds.descriptors:
        proxy.warn(f"--max-flows {bounds.max_flows} and --max-connections {bounds.max_connections} may need {need} "
                   f"descriptors, more than the limit of {bounds.descriptors}: when they run out, new connections "
                   "wait and new UDP devices take the socket of the flow idle longest. Raise the limit (ulimit -n, "
                   "LimitNOFILE=) or lower those options")


async def keep_flushed(writer: JsonlWriter) -> None:
    """Run beside a trace writer, until cancelled: what it buffers reaches the file within its flush
    interval even when no further event comes to flush it. Sleeps only while something is buffered."""
    await keep_pushed(writer, writer.due_in, writer.flush)


async def _stop_on_signal(scope: trio.CancelScope, proxy: Proxy) -> None:
    """At SIGINT/SIGTERM, stop gracefully (:mod:`faultlab.net.stop`): no new connections, up to
    ``--drain`` seconds for what is in flight, every connection closed in order; then cancel ``scope``.
    A second signal cancels at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            proxy.emit("stopping", detail={"signal": signal.Signals(signum).name, "drain": proxy.config.drain})
            break
        async with trio.open_nursery() as nursery:

            async def again() -> None:
                async for signum in signals:
                    proxy.emit("stopping", detail={"signal": signal.Signals(signum).name, "drain": 0})
                    nursery.cancel_scope.cancel()

            nursery.start_soon(again)
            await stopper_of(proxy).stop(proxy, proxy.config.drain)
            nursery.cancel_scope.cancel()
    scope.cancel()
