"""The relay: wires the transports (``faultlab.net``), the SIP rewriting
(``faultlab.relay``) and the timeline (``faultlab.trace``) together.

Every message takes the one path of the design::

    bytes -> framer -> Message + Hop -> trace "received" -> rewrite -> writer -> trace "sent"

Input faultlab cannot parse is forwarded unchanged and recorded with
``parsed=False``. The fault engine plugs in between "received" and the writer.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from faultlab.addr import Endpoint, format_hostport
from faultlab.faults import ConnectView, Decision, Engine, MessageView, Profile
from faultlab.relay import TO_DEVICE, TO_PBX, Rewriter, Side, instance_id
from faultlab.sip import KeepAlive, Message, SipError, parse_message
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
    # The name the PBX's TLS certificate is verified against (and sent as SNI). None: the --upstream host,
    # or in transparent mode tls_name, else the PBX's address.
    upstream_tls_name: str | None = None
    upstream_ca: Path | None = None
    upstream_insecure: bool = False
    confdir: Path | None = None
    trace_path: Path | None = None
    quiet: bool = True
    verbose: bool = False  # console: also the messages received, and each message's first line
    udp_idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    keep_events: int | None = None
    handle_signals: bool = False
    profile: Profile | None = None
    seed: int | None = None  # None: drawn at start, recorded in the trace
    api: tuple[str, int] | None = None  # control API address; None: no API
    api_token: str | None = None
    # Transparent mode (Linux, root): relay intercepted traffic to its original
    # destination, adding no headers; spoof_source: the PBX sees the device's address.
    transparent: bool = False
    spoof_source: bool = False
    # Write the relay's events to this trace (e.g. a lab's shared timeline), with times relative to
    # trace_t0 (trio clock); None: a trace of its own from now. A given trace is not closed at stop.
    trace: Trace | None = None
    trace_t0: float | None = None

    def upstream_for(self, transport: str) -> Endpoint | None:
        if self.transparent:
            return None
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
        if self.spoof_source and not self.transparent:
            raise ConfigError("--spoof-source needs --transparent")
        if self.trace is not None and self.trace_path is not None:
            raise ConfigError("a shared trace is written by its owner: give trace_path to it, not to the proxy")
        if self.transparent:
            if self.upstream:
                raise ConfigError("--transparent relays each flow to where the device sent it: "
                                  "drop --upstream")
            from faultlab.net.transparent import support_problem

            problem = support_problem()
            if problem:
                raise ConfigError(problem)
        for ep in self.listen:
            self.upstream_for(ep.transport)
        if self.api is not None:
            from faultlab.api.server import check_api_bind

            check_api_bind(self.api[0], self.api_token)
        if self.upstream_insecure and self.upstream_ca:
            raise ConfigError("--upstream-insecure and --upstream-ca exclude each other: choose one")
        if self.upstream_tls_name is not None:
            from faultlab.ca import normalize_names

            try:
                normalize_names([self.upstream_tls_name])
            except ValueError as exc:
                raise ConfigError(f"--upstream-tls-name: {exc}; give the name on the PBX's certificate") from None
            tls_to_pbx = (any(ep.transport == "tls" for ep in self.listen) if self.transparent
                          else any(ep.transport == "tls" for ep in self.upstream))
            if not tls_to_pbx:
                raise ConfigError("--upstream-tls-name is for TLS to the PBX: add --upstream tls:HOST:PORT "
                                  "(with --transparent: --listen tls:HOST:PORT), or drop it")


@dataclass(frozen=True, slots=True)
class Hop:
    """Where one message is on its way: which flow, which way, from whom."""

    flow: str
    direction: str
    transport: str
    peer: tuple[str, int]
    side: Side
    device: tuple[str, int] = ("", 0)  # the device's address on this flow


@dataclass(slots=True)
class Outgoing:
    """Bytes to write, and what the timeline says about them."""

    data: bytes
    hop: Hop
    summary: str
    fields: dict = field(default_factory=dict)


@dataclass(eq=False)
class Hold:
    """A message kept back by a ``hold`` rule until released (API) or timed out."""

    id: str
    out: Outgoing
    held_at: float
    timeout: float | None
    then: str  # "forward" | "drop" when the timeout passes
    released: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True)
class Plan:
    """What the transports do with one received message (the engine's decision, rewritten)."""

    forward: Outgoing | None = None
    delay: float = 0.0
    copies: tuple[float, ...] = ()
    respond: Outgoing | None = None  # back to the sender, at once
    hold: Hold | None = None
    close: str | None = None  # "fin" | "rst"
    close_when: str = "after"
    stall: float | None = None
    received_at: float = 0.0  # trio time the message arrived: delays count from here


class Proxy:
    """A running relay: its bound addresses, its timeline, its faults, the message path."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.trace = config.trace if config.trace is not None else Trace(keep=config.keep_events)
        self.rewriter = Rewriter(
            instance_id([str(ep) for ep in config.listen]), record_route=config.record_route
        )
        self.bound: dict[str, tuple[str, int]] = {}  # transport -> first bound address
        self.api_address: tuple[str, int] | None = None
        self.control = None  # ProxyControl, when the API runs
        self.listeners: list[tuple[Endpoint, tuple[str, int]]] = []
        self.ca_cert_path: Path | None = None
        self._t0 = config.trace_t0 if config.trace_t0 is not None else trio.current_time()
        self._flow_counter = 0
        self._hold_counter = 0
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(self.seed)
        self.engine: Engine | None = None  # the global profile
        self.device_engines: dict[str, Engine] = {}  # "IP" or "IP:PORT" -> profile for that device
        self.holds: dict[str, Hold] = {}
        self.flows: dict[str, dict] = {}  # flow id -> description, for the API
        if config.profile is not None:
            self.engine = Engine(config.profile, self.rng, activated_at=0.0)

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

    # -- flows (for the API) ----------------------------------------------
    def flow_opened(self, flow: str, transport: str, device: tuple[str, int], pbx_side: tuple[str, int],
                    device_side: tuple[str, int]) -> None:
        self.flows[flow] = {"id": flow, "transport": transport, "device": format_hostport(*device),
                            "pbx_side": format_hostport(*pbx_side), "opened_at": self.now(), "messages": 0}
        self.emit("flow-open", flow=flow, transport=transport, peer=format_hostport(*device),
                  detail={"pbx_side": format_hostport(*pbx_side), "device_side": format_hostport(*device_side)})

    def flow_closed(self, flow: str, transport: str, device: tuple[str, int], **detail) -> None:
        self.flows.pop(flow, None)
        self.emit("flow-close", flow=flow, transport=transport, peer=format_hostport(*device), detail=detail)

    # -- profiles ---------------------------------------------------------
    def engine_for(self, device: tuple[str, int]) -> Engine | None:
        if self.device_engines:
            engine = self.device_engines.get(format_hostport(*device)) or self.device_engines.get(device[0])
            if engine is not None:
                return engine
        return self.engine

    def activate(self, profile: Profile | None, device: str | None = None) -> Engine | None:
        """Make ``profile`` the active one (globally, or for ``device``); a timeline event."""
        engine = None if profile is None else Engine(profile, self.rng, activated_at=self.now())
        if device is None:
            self.engine = engine
        elif engine is None:
            self.device_engines.pop(device, None)
        else:
            self.device_engines[device] = engine
        self.emit("profile", detail={"profile": profile.name if profile else None, "device": device})
        return engine

    def on_connect(self, flow: str, transport: str, device: tuple[str, int]) -> Decision | None:
        engine = self.engine_for(device)
        if engine is None:
            return None
        decision = engine.on_connect(ConnectView(transport, device, flow), self.now())
        for fired in decision.events:
            self.emit("fault", flow=flow, transport=transport, peer=format_hostport(*device),
                      detail={"rule": fired.rule, "action": fired.action, **fired.detail})
        return decision

    # -- the message path -------------------------------------------------
    def plan(self, item: Message | KeepAlive | bytes, hop: Hop, *, error: str | None = None) -> Plan:
        """Record ``item`` as received, ask the active profile, and say what to send.

        ``bytes`` is input the framer could not parse (``error`` says why):
        it goes on unchanged unless the link loses or delays it.
        """
        arrived = trio.current_time()
        fields = {"flow": hop.flow, "direction": hop.direction, "transport": hop.transport}
        peer = format_hostport(*hop.peer)
        msg: Message | None = None
        if isinstance(item, bytes):
            raw, summary = item, f"unparsed {len(item)} bytes"
            fields["parsed"] = False
            self.emit("received", peer=peer, raw=raw, summary=summary,
                      detail={"error": error} if error else {}, **fields)
        elif isinstance(item, KeepAlive):
            raw = item.raw
            summary = "keep-alive ping" if raw == b"\r\n\r\n" else "keep-alive"
            self.emit("received", peer=peer, raw=raw, summary=summary, **fields)
        else:
            msg, raw, summary = item, item.raw, item.summary()
            fields.update(_message_fields(item))
            fields["parsed"] = True
            self.emit("received", peer=peer, raw=raw, summary=summary, **fields)
        flow_info = self.flows.get(hop.flow)
        if flow_info is not None:
            flow_info["messages"] += 1

        engine = self.engine_for(hop.device)
        if engine is None:
            data = self._rewrite(msg, hop) if msg is not None else raw
            return Plan(forward=Outgoing(data, hop, summary, fields), received_at=arrived)

        trailing = getattr(msg, "trailing", b"") if msg is not None else b""
        view = MessageView(msg, raw[: len(raw) - len(trailing)] if trailing else raw, hop.direction,
                           hop.transport, hop.device, hop.flow)
        decision = engine.decide(view, self.now())
        for fired in decision.events:
            self.emit("fault", peer=peer, summary=summary,
                      detail={"rule": fired.rule, "action": fired.action, **fired.detail}, **fields)
        plan = Plan(delay=decision.delay, copies=decision.copies, close=decision.close,
                    close_when=decision.close_when, stall=decision.stall, received_at=arrived)
        rules = [f.rule for f in decision.events]
        if decision.respond is not None:
            back = Hop(hop.flow, _reverse(hop.direction), hop.transport, hop.peer, hop.side, hop.device)
            resp_fields = {**fields, "direction": back.direction}
            try:
                resp_fields.update(_message_fields(parse_message(decision.respond)))
            except SipError:
                pass
            plan.respond = Outgoing(decision.respond, back, f"response by faultlab to {summary}", resp_fields)
        if decision.hold:
            self._hold_counter += 1
            held = self._edited(decision.held, msg, raw, hop) + trailing
            hold = Hold(f"h{self._hold_counter}", Outgoing(held, hop, summary, fields), self.now(),
                        decision.hold_timeout, decision.hold_then)
            self.holds[hold.id] = hold
            plan.hold = hold
            self.emit("held", peer=peer, summary=summary, detail={"hold": hold.id, "rules": rules}, **fields)
        elif decision.data is not None:
            plan.forward = Outgoing(self._edited(decision.data, msg, raw, hop) + trailing, hop, summary, fields)
        elif decision.respond is None:
            how = "lost" if decision.lost_by_link else "dropped"
            self.emit("dropped", peer=peer, raw=raw, summary=summary,
                      detail={"how": how, "rules": rules}, **fields)
        return plan

    def _edited(self, data: bytes, msg: Message | None, raw: bytes, hop: Hop) -> bytes:
        """Relay-mode rewriting of what the engine forwards (header edits included)."""
        if msg is None:
            return data
        if data is not msg.raw and data != msg.raw:
            try:
                msg = parse_message(data)
            except SipError as exc:
                self.warn(f"edited message does not parse ({exc}): forwarded as edited", **_flow_fields(hop))
                return data
        return self._rewrite(msg, hop, with_trailing=False)

    def sent(self, out: Outgoing, dest: tuple[str, int], **detail) -> None:
        self.emit("sent", peer=format_hostport(*dest), raw=out.data, summary=out.summary, detail=detail,
                  **out.fields)

    def responded(self, out: Outgoing, dest: tuple[str, int]) -> None:
        self.emit("responded", peer=format_hostport(*dest), raw=out.data, summary=out.summary, **out.fields)

    def release(self, hold_id: str | None = None) -> int:
        targets = list(self.holds.values()) if hold_id is None else [self.holds[hold_id]]
        for hold in targets:
            self.holds.pop(hold.id, None)
            hold.released.set()
            self.emit("released", flow=hold.out.hop.flow, direction=hold.out.hop.direction,
                      summary=hold.out.summary, detail={"hold": hold.id})
        return len(targets)

    async def wait_hold(self, hold: Hold) -> bool:
        """Wait until ``hold`` is released or times out; True: forward it, False: drop it."""
        if hold.timeout is None:
            await hold.released.wait()
            return True
        with trio.move_on_after(hold.timeout):
            await hold.released.wait()
            return True
        self.holds.pop(hold.id, None)
        forward = hold.then == "forward"
        self.emit("released" if forward else "dropped", flow=hold.out.hop.flow,
                  direction=hold.out.hop.direction, summary=hold.out.summary,
                  detail={"hold": hold.id, "how": f"hold timed out: {hold.then}"})
        return forward

    def _rewrite(self, msg: Message, hop: Hop, *, with_trailing: bool = True) -> bytes:
        trailing = getattr(msg, "trailing", b"") if with_trailing else b""
        if self.config.transparent:  # no headers of faultlab's own: the message as it came
            return msg.raw + trailing if trailing else msg.raw
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


def _reverse(direction: str) -> str:
    return TO_DEVICE if direction == TO_PBX else TO_PBX


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
    writer = None
    if config.trace_path is not None:
        writer = JsonlWriter(config.trace_path)
        proxy.trace.add_sink(writer, writer.close)
    if not config.quiet:
        proxy.trace.add_sink(ConsolePrinter(verbose=config.verbose))
    proxy.emit("start", detail={
        "wall_clock": time.time(),
        "listen": [str(ep) for ep in config.listen],
        "upstream": [str(ep) for ep in config.upstream],
        "record_route": config.record_route and not config.transparent,
        "transparent": config.transparent,
        "spoof_source": config.spoof_source,
        "seed": proxy.seed,
        "profile": config.profile.name if config.profile else None,
    })
    try:
        async with trio.open_nursery() as nursery:
            if writer is not None:
                nursery.start_soon(keep_flushed, writer)
            if config.handle_signals:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope, proxy)
            for ep in config.listen:
                upstream = config.upstream_for(ep.transport)
                if ep.transport == "udp" and config.transparent:
                    from faultlab.net.transparent import serve_udp_transparent

                    addr = await nursery.start(serve_udp_transparent, proxy, ep)
                elif ep.transport == "udp":
                    addr = await nursery.start(serve_udp, proxy, ep, upstream)
                else:
                    addr = await nursery.start(serve_stream, proxy, ep, upstream)
                proxy.bound.setdefault(ep.transport, addr)
                proxy.listeners.append((ep, addr))
            if config.api is not None:
                from faultlab.api.server import serve_api
                from faultlab.control import ProxyControl

                proxy.control = ProxyControl(proxy)
                proxy.api_address = await nursery.start(
                    partial(serve_api, proxy.control, *config.api, token=config.api_token,
                            ca_confdir=config.confdir))
                proxy.emit("api", detail={"address": format_hostport(*proxy.api_address)})
            task_status.started(proxy)
    finally:
        proxy.emit("stop")
        if config.trace is None:
            proxy.trace.close()


async def keep_flushed(writer: JsonlWriter) -> None:
    """Run beside a trace writer, until cancelled: what it buffers reaches the file within its flush
    interval even when no further event comes to flush it. Sleeps only while something is buffered."""
    wake = trio.Event()

    def pending() -> None:
        wake.set()

    writer.on_pending = pending
    if writer.due_in() is not None:  # events buffered before this task ran
        wake.set()
    try:
        while True:
            await wake.wait()
            wake = trio.Event()
            wait = writer.due_in()
            if wait is not None:
                await trio.sleep(wait)
                writer.flush()
    finally:
        writer.on_pending = None


async def _stop_on_signal(scope: trio.CancelScope, proxy: Proxy) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            proxy.emit("stopping", detail={"signal": signal.Signals(signum).name})
            scope.cancel()
            return
