"""The relay: wires the transports (``faultlab.net``), the SIP rewriting
(``faultlab.relay``) and the timeline (``faultlab.trace``) together.

Every message takes the one path of the design::

    bytes -> framer -> Message + Hop -> trace "received" -> rewrite -> writer -> trace "sent"

Input faultlab cannot parse is forwarded unchanged and recorded with
``parsed=False``. The fault engine plugs in between "received" and the writer.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.net.addr import Endpoint, format_hostport
from faultlab.relay import TO_PBX, Rewriter, Side, instance_id
from faultlab.sip import KeepAlive, Message, SipError
from faultlab.trace import ConsolePrinter, Event, JsonlWriter, Trace


_FLOW_PREFIX = {"udp": "u", "tcp": "t", "tls": "s"}


class ConfigError(ValueError):
    """A proxy configuration that cannot run; the message says how to fix it."""


@dataclass
class ProxyConfig:
    listen: Sequence[Endpoint]
    upstream: Sequence[Endpoint]
    record_route: bool = True
    tls_name: str | None = None
    upstream_ca: Path | None = None
    upstream_insecure: bool = False
    confdir: Path | None = None
    trace_path: Path | None = None
    quiet: bool = True
    udp_idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    keep_events: int | None = None
    handle_signals: bool = False

    def upstream_for(self, transport: str) -> Endpoint:
        for ep in self.upstream:
            if ep.transport == transport:
                return ep
        raise ConfigError(
            f"--listen {transport}:... has no upstream: add --upstream {transport}:HOST:PORT"
        )

    def validate(self) -> None:
        if not self.listen:
            raise ConfigError("nothing to listen on: add --listen udp:HOST:PORT (or tcp:, tls:)")
        seen: set[str] = set()
        for ep in self.upstream:
            if ep.transport in seen:
                raise ConfigError(f"two --upstream for {ep.transport}: give one per transport")
            seen.add(ep.transport)
            if ep.port == 0:
                raise ConfigError(f"--upstream {ep}: port 0 is not a destination; give the PBX's port")
        for ep in self.listen:
            self.upstream_for(ep.transport)
        if self.upstream_insecure and self.upstream_ca:
            raise ConfigError("--upstream-insecure and --upstream-ca exclude each other: choose one")


@dataclass(frozen=True, slots=True)
class Hop:
    """Where one message is on its way: which flow, which way, from whom."""

    flow: str
    direction: str
    transport: str
    peer: tuple[str, int]
    side: Side


@dataclass(slots=True)
class Outgoing:
    data: bytes
    hop: Hop
    summary: str
    fields: dict = field(default_factory=dict)


class Proxy:
    """A running relay: its bound addresses, its timeline, the message path."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.trace = Trace(keep=config.keep_events)
        self.rewriter = Rewriter(
            instance_id([str(ep) for ep in config.listen]), record_route=config.record_route
        )
        self.bound: dict[str, tuple[str, int]] = {}  # transport -> first bound address
        self.listeners: list[tuple[Endpoint, tuple[str, int]]] = []
        self.ca_cert_path: Path | None = None
        self._t0 = trio.current_time()
        self._flow_counter = 0

    @property
    def events(self):
        return self.trace.events

    def now(self) -> float:
        return trio.current_time() - self._t0

    def new_flow_id(self, transport: str) -> str:
        self._flow_counter += 1
        return f"{_FLOW_PREFIX[transport]}{self._flow_counter}"

    def emit(self, kind: str, **fields) -> None:
        self.trace.emit(Event(self.now(), kind, **fields))

    def warn(self, message: str, **fields) -> None:
        self.emit("warning", detail={"message": message}, **fields)

    # -- the message path -------------------------------------------------
    def process(self, item: Message | KeepAlive | bytes, hop: Hop, *, error: str | None = None) -> Outgoing:
        """Record ``item`` as received and return what to send on.

        ``bytes`` is input the framer could not parse (``error`` says why):
        it goes on unchanged.
        """
        base = {
            "flow": hop.flow,
            "direction": hop.direction,
            "transport": hop.transport,
        }
        peer = format_hostport(*hop.peer)
        if isinstance(item, bytes):
            self.emit("received", peer=peer, parsed=False, raw=item, summary=f"unparsed {len(item)} bytes",
                      detail={"error": error} if error else {}, **base)
            return Outgoing(item, hop, f"unparsed {len(item)} bytes", {"parsed": False, **base})
        if isinstance(item, KeepAlive):
            summary = "keep-alive ping" if item.raw == b"\r\n\r\n" else "keep-alive"
            self.emit("received", peer=peer, raw=item.raw, summary=summary, **base)
            return Outgoing(item.raw, hop, summary, base)
        fields = dict(base)
        fields.update(_message_fields(item))
        summary = item.summary()
        self.emit("received", peer=peer, raw=item.raw, summary=summary, parsed=True, **fields)
        data = self._rewrite(item, hop, fields)
        return Outgoing(data, hop, summary, fields)

    def sent(self, out: Outgoing, dest: tuple[str, int]) -> None:
        self.emit("sent", peer=format_hostport(*dest), raw=out.data, summary=out.summary, **out.fields)

    def _rewrite(self, msg: Message, hop: Hop, fields: dict) -> bytes:
        trailing = getattr(msg, "trailing", b"")
        try:
            if msg.is_request:
                data = self.rewriter.request(msg, hop.direction, hop.side)
            else:
                data = self.rewriter.response(msg)
                if data is None:
                    self.warn("response whose top Via is not faultlab's: forwarded unchanged",
                              **_flow_fields(hop), summary=msg.summary())
                    data = msg.raw
        except SipError as exc:
            self.warn(f"cannot rewrite ({exc}): forwarded unchanged", **_flow_fields(hop),
                      summary=msg.summary())
            data = msg.raw
        return data + trailing if trailing else data


def _flow_fields(hop: Hop) -> dict:
    return {"flow": hop.flow, "direction": hop.direction, "transport": hop.transport}


def _message_fields(msg: Message) -> dict:
    fields: dict = {}
    if msg.is_request:
        fields["method"] = msg.method
    else:
        fields["status"] = msg.status
    try:
        fields["call_id"] = msg.call_id
        cseq = msg.cseq
        if cseq is not None:
            fields["cseq"] = cseq.number
            fields["cseq_method"] = cseq.method
    except SipError:
        pass
    return fields


async def serve_proxy(config: ProxyConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the relay until cancelled (or SIGINT/SIGTERM with ``handle_signals``).

    ``task_status.started(proxy)`` reports the :class:`Proxy` once every
    listener is bound; ``proxy.bound`` maps each transport to its address.
    """
    from faultlab.net.stream import serve_stream
    from faultlab.net.udp import serve_udp

    config.validate()
    proxy = Proxy(config)
    if config.trace_path is not None:
        writer = JsonlWriter(config.trace_path)
        proxy.trace.add_sink(writer, writer.close)
    if not config.quiet:
        proxy.trace.add_sink(ConsolePrinter())
    proxy.emit("start", detail={
        "wall_clock": time.time(),
        "listen": [str(ep) for ep in config.listen],
        "upstream": [str(ep) for ep in config.upstream],
        "record_route": config.record_route,
    })
    try:
        async with trio.open_nursery() as nursery:
            if config.handle_signals:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope, proxy)
            for ep in config.listen:
                upstream = config.upstream_for(ep.transport)
                if ep.transport == "udp":
                    addr = await nursery.start(serve_udp, proxy, ep, upstream)
                else:
                    addr = await nursery.start(serve_stream, proxy, ep, upstream)
                proxy.bound.setdefault(ep.transport, addr)
                proxy.listeners.append((ep, addr))
            task_status.started(proxy)
    finally:
        proxy.emit("stop")
        proxy.trace.close()


async def _stop_on_signal(scope: trio.CancelScope, proxy: Proxy) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            proxy.emit("stopping", detail={"signal": signal.Signals(signum).name})
            scope.cancel()
            return
