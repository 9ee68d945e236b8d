"""The relay: the one message path, below its transports. Pure (the clock is given).

Every message takes the path of the design::

    bytes -> framer -> Message + Hop -> trace "received" -> engine -> rewrite -> Plan
          -> scheduler -> writer -> trace "sent"

The transports (``faultlab.net``) frame what they read, call :meth:`Relay.plan`, and carry the
plan out through the one scheduler (``faultlab.net.scheduler``), which reports back with
:meth:`Relay.sent` and :meth:`Relay.responded`. Input faultlab cannot parse is forwarded
unchanged and recorded with ``parsed=False``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faultlab.addr import format_hostport
from faultlab.faults import ConnectView, Decision, Engine, MessageView, Profile
from faultlab.relay.plan import Hold, Hop, Outgoing, Plan, message_fields
from faultlab.relay.rewrite import TO_DEVICE, TO_PBX, Rewriter, instance_id
from faultlab.sip import KeepAlive, Message, SipError, build_response, parse_datagram, parse_message
from faultlab.trace import Event, Trace

_FLOW_PREFIX = {"udp": "u", "tcp": "t", "tls": "s"}
_KEEP_ALIVES = {b"\r\n\r\n": "ping", b"\r\n": "pong"}  # what an on = "keep-alive" rule calls them
# A request with no final response after 64*T1 (RFC 3261 Timer B/F) is no longer waited for.
TRANSACTION_LIFETIME = 32.0

#: A trace event carries at most this many bytes of ``raw``; ``detail["raw_length"]`` then gives the total.
TRACE_RAW_LIMIT = 64 * 1024


class Relay:
    """The message path of a running proxy: its timeline, its faults, its flows.

    ``config`` is the proxy's configuration (:class:`faultlab.proxy.ProxyConfig`); the relay reads
    ``listen``, ``record_route``, ``transparent``, ``profile``, ``seed``, ``trace``, ``trace_t0`` and
    ``keep_events``, and the transports in ``faultlab.net`` read their own settings from it.
    ``clock`` is the one clock (``trio.current_time`` when served).
    """

    def __init__(self, config: Any, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.trace = config.trace if config.trace is not None else Trace(keep=config.keep_events)
        self.rewriter = Rewriter(
            instance_id([str(ep) for ep in config.listen]), record_route=config.record_route
        )
        self.ca_cert_path: Path | None = None  # the lab CA a TLS listener shows devices
        self._t0 = config.trace_t0 if config.trace_t0 is not None else clock()
        self._flow_counter = 0
        self._hold_counter = 0
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(self.seed)
        self.engine: Engine | None = None  # the global profile
        self.device_engines: dict[str, Engine] = {}  # "IP" or "IP:PORT" -> profile for that device
        self.holds: dict[str, Hold] = {}
        self.flows: dict[str, dict] = {}  # flow id -> description, for the API
        # In flight, for a graceful stop: requests sent and not yet answered with a final response
        # ((flow, Call-ID, CSeq, method) -> clock time sent), and messages the scheduler keeps back
        # (delayed or held) or has queued behind them.
        self.open_requests: dict[tuple, float] = {}
        self._prune_at = 1024
        self.waiting = 0
        if config.profile is not None:
            self.engine = Engine(config.profile, self.rng, activated_at=0.0)

    @property
    def events(self):
        return self.trace.events

    def now(self) -> float:
        return self.clock() - self._t0

    def new_flow_id(self, transport: str) -> str:
        self._flow_counter += 1
        return f"{_FLOW_PREFIX[transport]}{self._flow_counter}"

    def emit(self, kind: str, **fields) -> None:
        if not self.trace.wants(kind):
            return
        raw = fields.get("raw")
        if raw is not None and len(raw) > TRACE_RAW_LIMIT:
            fields["raw"] = raw[:TRACE_RAW_LIMIT]
            fields["detail"] = {**fields.get("detail", {}), "raw_length": len(raw)}
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
        it goes on unchanged unless the link loses or delays it. What the timeline says of a message
        (its summary, Call-ID, CSeq...) is worked out only when someone reads it.
        """
        arrived = self.clock()
        msg: Message | None = None
        if type(item) is Message:
            msg, raw = item, item.raw
            out = Outgoing(raw, hop, about=item)
        elif isinstance(item, KeepAlive):
            raw = item.raw
            out = Outgoing(raw, hop, "keep-alive ping" if raw == b"\r\n\r\n" else "keep-alive", _flow_fields(hop))
        else:
            raw = item
            out = Outgoing(raw, hop, f"unparsed {len(raw)} bytes", {**_flow_fields(hop), "parsed": False})
        if self.trace.wants("received"):
            self.emit("received", peer=format_hostport(*hop.peer), raw=raw, summary=out.summary,
                      detail={"error": error} if error and msg is None else {}, **out.fields)
        flow_info = self.flows.get(hop.flow)
        if flow_info is not None:
            flow_info["messages"] += 1

        engine = self.engine_for(hop.device)
        if engine is None:
            if msg is not None:
                out.data = self._rewrite(msg, hop)
            return Plan(forward=out, received_at=arrived)
        return self._decided(engine, item, msg, raw, hop, out, arrived)

    def _decided(self, engine: Engine, item: Message | KeepAlive | bytes, msg: Message | None, raw: bytes,
                 hop: Hop, out: Outgoing, arrived: float) -> Plan:
        """The plan for a message under ``engine`` (a profile is active)."""
        trailing = msg.trailing if msg is not None else b""
        keep_alive = _KEEP_ALIVES.get(raw) if isinstance(item, KeepAlive) else None
        # raw: the message without a datagram's trailing octets (Message.raw never holds them)
        view = MessageView(msg, raw, hop.direction, hop.transport, hop.device, hop.flow, keep_alive)
        decision = engine.decide(view, self.now())
        if decision.plain and decision.data is raw:  # forwarded as it came, at once: what no profile would change
            if msg is not None:
                out.data = self._rewrite(msg, hop)
            return Plan(forward=out, received_at=arrived)
        peer = format_hostport(*hop.peer)
        for fired in decision.events:
            self.emit("fault", peer=peer, summary=out.summary,
                      detail={"rule": fired.rule, "action": fired.action, **fired.detail}, **out.fields)
        plan = Plan(delay=decision.delay, copies=decision.copies, close=decision.close,
                    close_when=decision.close_when, stall=decision.stall, received_at=arrived)
        rules = [f.rule for f in decision.events]
        if decision.respond is not None:
            back = Hop(hop.flow, _reverse(hop.direction), hop.transport, hop.peer, hop.side, hop.device)
            resp_fields = {**out.fields, "direction": back.direction}
            response = _parsed(decision.respond)
            if response is not None:
                resp_fields.update(message_fields(response))
            plan.respond = Outgoing(decision.respond, back, f"response by faultlab to {out.summary}", resp_fields,
                                    about=response)
        if decision.hold:
            self._hold_counter += 1
            out.data = self._edited(decision.held, msg, raw, hop) + trailing
            hold = Hold(f"h{self._hold_counter}", out, self.now(), decision.hold_timeout, decision.hold_then)
            self.holds[hold.id] = hold
            plan.hold = hold
            self.emit("held", peer=peer, summary=out.summary, detail={"hold": hold.id, "rules": rules}, **out.fields)
        elif decision.data is not None:
            out.data = self._edited(decision.data, msg, raw, hop) + trailing
            plan.forward = out
        elif decision.respond is None:
            how = "lost" if decision.lost_by_link else "dropped"
            self.emit("dropped", peer=peer, raw=raw, summary=out.summary,
                      detail={"how": how, "rules": rules}, **out.fields)
        return plan

    def own_keep_alive(self, raw: bytes, hop: Hop) -> float | None:
        """A keep-alive faultlab sends itself (a pong to a ping before the PBX connection) meets the active profile
        too (keep-alive rules and the link): how long to wait before sending it, or None when it is dropped or lost
        (recorded as such)."""
        engine = self.engine_for(hop.device)
        if engine is None:
            return 0.0
        fields = {"flow": hop.flow, "direction": hop.direction, "transport": hop.transport}
        peer, summary = format_hostport(*hop.peer), "keep-alive pong by faultlab"
        view = MessageView(None, raw, hop.direction, hop.transport, hop.device, hop.flow, _KEEP_ALIVES.get(raw))
        decision = engine.decide(view, self.now())
        for fired in decision.events:
            self.emit("fault", peer=peer, summary=summary,
                      detail={"rule": fired.rule, "action": fired.action, **fired.detail}, **fields)
        if decision.data is None:
            self.emit("dropped", peer=peer, raw=raw, summary=summary, detail={
                "how": "lost" if decision.lost_by_link else "dropped", "rules": [f.rule for f in decision.events]},
                **fields)
            return None
        return decision.delay

    def too_large(self, data: bytes, hop: Hop, limit: int, *, stream: bool = False, error: str | None = None) -> Plan:
        """``data`` is larger than the size limit (``--max-message-size``): record it as received and say what
        becomes of it. On a stream the connection is closed (the caller closes it; a warning says so); a
        datagram that is a request is answered ``513 Message Too Large`` (RFC 3261 §21.5.14), any other dropped."""
        arrived = self.clock()
        fields = {"flow": hop.flow, "direction": hop.direction, "transport": hop.transport}
        peer = format_hostport(*hop.peer)
        msg = None
        if not stream:
            try:
                parsed = parse_datagram(data)
                msg = parsed if isinstance(parsed, Message) else None
            except SipError:
                pass
        if msg is not None:
            fields.update(message_fields(msg))
        summary = msg.summary() if msg is not None else f"unparsed {len(data)} bytes"
        why = f"larger than {limit} octets (--max-message-size)"
        error = error or f"message {why}"
        self.emit("received", peer=peer, raw=data, summary=summary, parsed=msg is not None,
                  detail={"error": error}, **fields)
        plan = Plan(received_at=arrived)
        if stream:
            self.emit("dropped", peer=peer, summary=summary, detail={"how": f"{error}: connection closed"}, **fields)
            advice = (f" (--max-message-size is {limit} octets; a larger one lets such messages through)"
                      if "octets" in error else "")
            self.warn(f"{error}: closing the connection{advice}", peer=peer, **fields)
        elif msg is not None and msg.is_request and msg.method != "ACK":
            back = Hop(hop.flow, _reverse(hop.direction), hop.transport, hop.peer, hop.side, hop.device)
            response = build_response(msg, 513)
            plan.respond = Outgoing(response, back, f"513 Message Too Large to {summary}",
                                    {**fields, "direction": back.direction, "status": 513}, about=_parsed(response))
            self.emit("dropped", peer=peer, summary=summary, detail={"how": f"{why}: answered 513"}, **fields)
        else:
            self.emit("dropped", peer=peer, summary=summary, detail={"how": why}, **fields)
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
        if self.trace.wants("sent"):
            self.emit("sent", peer=format_hostport(*dest), raw=out.data, summary=out.summary, detail=detail,
                      **out.fields)
        self._track(out)

    def responded(self, out: Outgoing, dest: tuple[str, int]) -> None:
        if self.trace.wants("responded"):
            self.emit("responded", peer=format_hostport(*dest), raw=out.data, summary=out.summary,
                      **out.fields)
        self._track(out)

    def abandoned(self, out: Outgoing, dest: tuple[str, int], reason: str, *, hold: Hold | None = None,
                  **detail) -> None:
        """``out``, on its way to ``dest``, is given up unsent: it was held, delayed or queued when its
        connection closed or the proxy stopped (``reason``)."""
        if hold is not None:
            self.holds.pop(hold.id, None)
            detail["hold"] = hold.id
        self.emit("abandoned", peer=format_hostport(*dest), raw=out.data, summary=out.summary,
                  detail={"reason": reason, **detail}, **out.fields)

    def _track(self, out: Outgoing) -> None:
        """Keep :attr:`open_requests`: a request (not ACK) opens, a final response closes. A transaction is
        known by its flow, Call-ID and CSeq as written (read without decoding them)."""
        msg = out.about
        if msg is None:  # keep-alives, bytes that do not parse: no transaction
            return
        if msg.is_request:
            if msg.method != "ACK":
                self.open_requests[(out.hop.flow, *msg.transaction_key())] = self.clock()
                if len(self.open_requests) > self._prune_at:
                    self._prune_requests()
        elif msg.status >= 200:
            self.open_requests.pop((out.hop.flow, *msg.transaction_key()), None)

    def _prune_requests(self) -> None:
        old = self.clock() - TRANSACTION_LIFETIME
        self.open_requests = {key: at for key, at in self.open_requests.items() if at > old}
        self._prune_at = max(1024, 2 * len(self.open_requests))

    def in_flight(self) -> int:
        """Requests still waiting for their final response, and messages still kept back."""
        self._prune_requests()
        return len(self.open_requests) + self.waiting

    def release(self, hold_id: str | None = None) -> int:
        targets = list(self.holds.values()) if hold_id is None else [self.holds[hold_id]]
        for hold in targets:
            self.holds.pop(hold.id, None)
            hold.release()
            self.emit("released", flow=hold.out.hop.flow, direction=hold.out.hop.direction,
                      summary=hold.out.summary, detail={"hold": hold.id})
        return len(targets)

    def hold_timed_out(self, hold: Hold) -> bool:
        """``hold`` waited its timeout unreleased: True: forward it, False: drop it (a timeline event)."""
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


def _parsed(data: bytes) -> Message | None:
    """A response faultlab made, parsed (for the timeline and :attr:`Relay.open_requests`); None if it does not."""
    try:
        return parse_message(data)
    except SipError:
        return None


def _flow_fields(hop: Hop) -> dict:
    return {"flow": hop.flow, "direction": hop.direction, "transport": hop.transport}
