"""The engine: decisions for one active profile, message by message.

Sans-IO: the proxy hands in a :class:`MessageView` and the time ``now`` (the
relay's trio clock, seconds) and gets a :class:`Decision` back, which says
what to send, when, and which rules fired. All randomness comes from the
``random.Random`` given to the engine, and draws happen in input order, so
the same seed, profile and inputs give the same decisions.

Rule order: rules are tried in file order. The first rule whose conditions
all hold applies; the message then goes no further down the list unless
that rule has ``continue = true``, in which case later rules are tried as
well (delays add up, header edits accumulate, copies add up). A terminal
action (drop, respond, hold, close/reset before forwarding) ends the list
even after ``continue``. Rules always match against the message as it was
received; edits only change what is forwarded. Then the ``[link]`` of the
message's direction applies to what is forwarded.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..sip import Message, SipError, build_response, parse_message
from ._edit import edit_headers
from ._link import LinkState, draw_delay
from ._match import MessageFacts, device_address_match, static_match, _ip
from ._model import Profile, Rule
from ._units import format_duration

__all__ = ["Engine", "MessageView", "ConnectView", "Decision", "Fired", "TCP_MIN_RTO", "TCP_MAX_RETRIES", "MEMORY"]

TCP_MIN_RTO = 0.2
"""Linux's minimum TCP retransmission timeout (TCP_RTO_MIN, 200 ms): on a
stream transport a message the link "loses" arrives this much later, doubling
for each further loss (TCP retransmits; the bytes are never lost)."""
TCP_MAX_RETRIES = 15
"""Linux's tcp_retries2 default: after this many lost retransmissions the
message is counted as lost (on a real stack the connection would time out)."""
TCP_MAX_RTO = 120.0
MEMORY = 4096
"""Each rule remembers the decisions of this many recent transactions and
keeps this many occurrence counters (least recently used go first)."""


@dataclass(frozen=True)
class MessageView:
    """One message as the proxy received it.

    ``message`` is None for bytes faultlab could not parse and for keep-alives;
    rules never match those, but the link still applies to them.
    ``device`` is the device's address on this flow, whichever way the
    message goes; ``flow`` the proxy's flow id.
    """

    message: Message | None
    raw: bytes
    direction: str  # "to-pbx" | "to-device"
    transport: str  # "udp" | "tcp" | "tls"
    device: tuple[str, int]
    flow: str


@dataclass(frozen=True)
class ConnectView:
    """A TCP/TLS connection just accepted from a device."""

    transport: str
    device: tuple[str, int]
    flow: str


@dataclass(frozen=True)
class Fired:
    """A rule (or the link, ``rule="link"``) acted on a message: a timeline event."""

    rule: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What to do with one message (or connection).

    ``data``: the bytes to forward (header edits applied) after ``delay``
    seconds; None forwards nothing. ``copies``: extra transmissions of
    ``data``, each with its own delay from now. ``respond``: a response to
    send back to the sender at once. ``hold``: keep ``held`` until released
    (or ``hold_timeout`` seconds, then ``hold_then``). ``close``: ``"fin"``
    or ``"rst"`` of the connection the message came on (and its pair),
    ``close_when`` ``"before"`` (nothing forwarded) or ``"after"`` forwarding.
    ``stall``: stop reading that connection for this many seconds (``inf``:
    until it ends) after forwarding. ``events``: one per rule that fired and
    per link effect. ``lost_by_link``: the link lost the message and every copy.
    For a connection (:meth:`Engine.on_connect`) only ``stall``, ``close`` and
    ``events`` mean anything.
    """

    data: bytes | None
    delay: float = 0.0
    copies: tuple[float, ...] = ()
    respond: bytes | None = None
    hold: bool = False
    close: str | None = None
    close_when: str = "after"
    stall: float | None = None
    events: tuple[Fired, ...] = ()
    lost_by_link: bool = False
    held: bytes | None = None
    hold_timeout: float | None = None
    hold_then: str = "forward"

    @property
    def outcome(self) -> str:
        """One word for the timeline: forward, drop, respond, hold, close, lost."""
        if self.respond is not None:
            return "respond"
        if self.hold:
            return "hold"
        if self.data is None:
            if self.close is not None and self.close_when == "before":
                return "close"
            return "lost" if self.lost_by_link else "drop"
        return "forward"


class _Lru(OrderedDict):
    def touch(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > MEMORY:
            self.popitem(last=False)


class _RuleState:
    """A rule plus what it remembers: first-match time, counters, transaction decisions."""

    def __init__(self, rule: Rule, activated_at: float) -> None:
        self.rule = rule
        self.activated_at = activated_at
        self.first_match_at: float | None = None
        self.counters = _Lru()
        self.decided = _Lru()  # transaction key -> bool

    def _window_ok(self, now: float) -> bool:
        window = self.rule.match.window
        if window is None:
            return True
        anchor = self.activated_at if window.anchor == "activation" else self.first_match_at
        assert anchor is not None
        return window.contains(now - anchor)

    def _occurrence_ok(self, scope: Any) -> bool:
        occ = self.rule.match.occurrence
        if occ is None:
            return True
        n = self.counters.touch(scope, 0) + 1
        self.counters.put(scope, n)
        return occ.selects(n)

    def _dynamic(self, now: float, scope: Any, rng: random.Random) -> bool:
        if self.first_match_at is None:
            self.first_match_at = now
        if not self._window_ok(now) or not self._occurrence_ok(scope):
            return False
        p = self.rule.match.probability
        return p is None or p >= 1.0 or (p > 0.0 and rng.random() < p)

    def matches(self, facts: MessageFacts, now: float, rng: random.Random) -> bool:
        match = self.rule.match
        kind = self.rule.action.kind
        msg = facts.message
        if kind == "respond" and (not msg.is_request or msg.method == "ACK"):
            return False
        if kind in ("close", "reset", "stall") and facts.transport == "udp":
            return False
        if not static_match(match, facts):
            return False
        if match.count == "transaction":
            key = facts.transaction
            known = self.decided.touch(key)
            if known is not None:
                return known
        result = self._dynamic(now, self._scope(facts), rng)
        if match.count == "transaction":
            self.decided.put(facts.transaction, result)
        return result

    def _scope(self, facts: MessageFacts) -> Any:
        occ = self.rule.match.occurrence
        per = "rule" if occ is None else occ.per
        if per == "device":
            return facts.device
        if per == "flow":
            return facts.flow
        if per == "call":
            return facts.call_id
        if per == "transaction":
            return facts.transaction
        return None

    def matches_connect(self, view: ConnectView, now: float, rng: random.Random) -> bool:
        match = self.rule.match
        transports = match.transport if match.transport is not None else ("tcp", "tls")
        if view.transport not in transports:
            return False
        if match.device:
            try:
                ip = _ip(view.device[0])
            except ValueError:
                return False
            if not any(device_address_match(d, ip, view.device[1]) for d in match.device):
                return False
        occ = match.occurrence
        per = "rule" if occ is None else occ.per
        scope = view.device if per == "device" else view.flow if per == "flow" else None
        return self._dynamic(now, scope, rng)


def _round(x: float) -> float:
    return round(x, 9)


class Engine:
    """Decisions for one active profile. Pure: its state is the occurrence
    counters, the transaction memory, the window anchors and the link state
    (Gilbert-Elliott state, link busy time), all advanced only by
    :meth:`decide` and :meth:`on_connect`."""

    def __init__(self, profile: Profile, rng: random.Random, *, activated_at: float) -> None:
        self.profile = profile
        self.rng = rng
        self.activated_at = activated_at
        self._states: list[_RuleState] = [_RuleState(r, activated_at) for r in profile.rules]
        self._links: dict[str, LinkState] = {}
        if profile.link is not None:
            for direction in ("to-pbx", "to-device"):
                spec = profile.link.for_direction(direction)
                if not spec.is_clean:
                    self._links[direction] = LinkState(spec, rng)

    # -- live edits --------------------------------------------------------

    def add_rule(self, rule: Rule, index: int | None = None, *, now: float | None = None) -> None:
        """Insert ``rule`` at ``index`` (default: last). Its window counts from
        ``now`` if given (when the rule was added), else from the profile's
        activation. Raises ValueError if a rule has that name already."""
        if any(s.rule.name == rule.name for s in self._states):
            raise ValueError(f"a rule named {rule.name!r} exists already")
        state = _RuleState(rule, self.activated_at if now is None else now)
        if index is None:
            self._states.append(state)
        else:
            self._states.insert(index, state)
        self._sync()

    def remove_rule(self, name: str) -> None:
        """Remove the rule ``name``; KeyError if there is none."""
        for i, s in enumerate(self._states):
            if s.rule.name == name:
                del self._states[i]
                self._sync()
                return
        raise KeyError(name)

    def _sync(self) -> None:
        self.profile = dataclasses.replace(self.profile, rules=tuple(s.rule for s in self._states))

    # -- decisions -----------------------------------------------------------

    def decide(self, view: MessageView, now: float) -> Decision:
        """The decision for one message received at ``now``. Never raises on peer input."""
        msg = view.message
        data = view.raw
        if msg is None:
            if not self._links:
                return Decision(data=data)
            return self._link(view, now, data, 0.0, [], [], None, "after", None)
        facts = MessageFacts(msg, view.raw, view.direction, view.transport, view.device, view.flow)
        events: list[Fired] = []
        delay = 0.0
        offsets: list[float] = []
        close: str | None = None
        close_when = "after"
        stall: float | None = None
        current: Message | None = msg
        rng = self.rng
        for state in self._states:
            rule = state.rule
            if rule.match.on != "message" or not state.matches(facts, now, rng):
                continue
            action = rule.action
            kind = action.kind
            detail: dict[str, Any] = {}
            if action.edits:
                data, current = self._edit(data, current, action.set_headers, action.remove_headers, detail)
            if kind == "drop":
                events.append(Fired(rule.name, "drop", detail))
                return Decision(data=None, events=tuple(events))
            if kind == "respond":
                spec = action.respond
                assert spec is not None
                try:
                    response = build_response(msg, spec.status, spec.reason, headers=spec.headers)
                except (ValueError, SipError) as e:  # pragma: no cover - validated at load
                    events.append(Fired(rule.name, "error", {"error": str(e)}))
                    continue
                events.append(Fired(rule.name, "respond", {"status": spec.status}))
                return Decision(data=None, respond=response, events=tuple(events))
            if kind == "hold":
                spec_h = action.hold
                assert spec_h is not None
                detail.update(timeout=spec_h.timeout, then=spec_h.then)
                events.append(Fired(rule.name, "hold", detail))
                return Decision(
                    data=None,
                    hold=True,
                    held=data,
                    hold_timeout=spec_h.timeout,
                    hold_then=spec_h.then,
                    events=tuple(events),
                )
            if kind in ("close", "reset"):
                spec_c = action.close
                assert spec_c is not None
                detail["when"] = spec_c.when
                events.append(Fired(rule.name, kind, detail))
                if spec_c.when == "before":
                    return Decision(data=None, close=spec_c.kind, close_when="before", events=tuple(events))
                if close is None:
                    close, close_when = spec_c.kind, "after"
            elif kind == "delay":
                spec_d = action.delay
                assert spec_d is not None
                d = draw_delay(rng, spec_d.delay, spec_d.jitter, spec_d.distribution)
                delay += d
                detail["delay"] = _round(d)
                events.append(Fired(rule.name, "delay", detail))
            elif kind == "duplicate":
                spec_u = action.duplicate
                assert spec_u is not None
                offsets.extend(i * spec_u.spacing for i in range(1, spec_u.copies + 1))
                detail.update(copies=spec_u.copies, spacing=spec_u.spacing)
                events.append(Fired(rule.name, "duplicate", detail))
            elif kind == "stall":
                assert action.stall is not None
                stall = action.stall if stall is None else max(stall, action.stall)
                detail["for"] = format_duration(action.stall)
                events.append(Fired(rule.name, "stall", detail))
            else:  # forward with edits
                events.append(Fired(rule.name, "edit", detail))
            if not rule.continue_:
                break
        return self._link(view, now, data, delay, offsets, events, close, close_when, stall)

    @staticmethod
    def _edit(
        data: bytes,
        current: Message | None,
        set_headers: tuple[tuple[str, str], ...],
        remove_headers: tuple[str, ...],
        detail: dict[str, Any],
    ) -> tuple[bytes, Message | None]:
        try:
            if current is None or current.raw != data:
                current = parse_message(data)
            removed = [n for n in remove_headers if current.header_fields(n)]
            new = edit_headers(current, set_headers, remove_headers)
            if set_headers:
                detail["set"] = {n: v for n, v in set_headers}
            if remove_headers:
                detail["removed"] = removed
            return new, None
        except (SipError, ValueError) as e:
            detail["edit_error"] = str(e)
            return data, current

    def _link(
        self,
        view: MessageView,
        now: float,
        data: bytes,
        delay: float,
        offsets: list[float],
        events: list[Fired],
        close: str | None,
        close_when: str,
        stall: float | None,
    ) -> Decision:
        state = self._links.get(view.direction)
        if state is None:
            return Decision(
                data=data,
                delay=delay,
                copies=tuple(_round(delay + o) for o in offsets),
                close=close,
                close_when=close_when,
                stall=stall,
                events=tuple(events),
            )
        stream = view.transport != "udp"
        size = len(data)
        model = "gilbert-elliott" if state.spec.loss_model is not None else "random"
        arrivals: list[float] = []
        packets = [0.0] + list(offsets)
        for i, offset in enumerate(packets):
            label = "message" if i == 0 else f"copy {i}"
            start = delay + offset
            if stream:
                extra, retries, fate = 0.0, 0, None
                rto = TCP_MIN_RTO
                for _ in range(TCP_MAX_RETRIES + 1):
                    fate = state.packet(size, now + start + extra, duplicates=False)
                    if not fate.lost:
                        break
                    retries += 1
                    extra += rto
                    rto = min(rto * 2, TCP_MAX_RTO)
                assert fate is not None
                if fate.lost:
                    events.append(Fired("link", "loss", {"model": model, "packet": label, "tcp_retransmissions": retries}))
                    continue
                if retries:
                    events.append(
                        Fired(
                            "link",
                            "loss",
                            {"model": model, "packet": label, "tcp_retransmissions": retries, "added": _round(extra)},
                        )
                    )
                arrive = start + extra + fate.delay
            else:
                fate = state.packet(size, now + start)
                if fate.lost:
                    events.append(Fired("link", "loss", {"model": model, "packet": label}))
                    continue
                arrive = start + fate.delay
                for c in fate.copies:
                    arrivals.append(_round(start + c))
                    events.append(Fired("link", "duplicate", {"packet": label, "delay": _round(c)}))
            if fate.reordered:
                events.append(Fired("link", "reorder", {"packet": label}))
            link_delay = arrive - start
            if link_delay > 0 and i == 0:
                detail: dict[str, Any] = {"delay": _round(link_delay)}
                if fate.queued:
                    detail["queued"] = _round(fate.queued)
                events.append(Fired("link", "delay", detail))
            if i == 0:
                arrivals.insert(0, _round(arrive))
            else:
                arrivals.append(_round(arrive))
        if not arrivals:
            # close "after" still happens: the message was sent, the network lost it
            return Decision(
                data=None, close=close, close_when=close_when, stall=stall, events=tuple(events), lost_by_link=True
            )
        return Decision(
            data=data,
            delay=arrivals[0],
            copies=tuple(arrivals[1:]),
            close=close,
            close_when=close_when,
            stall=stall,
            events=tuple(events),
        )

    def on_connect(self, view: ConnectView, now: float) -> Decision:
        """The decision for a TCP/TLS connection accepted at ``now``: only rules
        with ``on = "connect"``; ``stall`` and/or ``close`` (always before)."""
        events: list[Fired] = []
        stall: float | None = None
        for state in self._states:
            rule = state.rule
            if rule.match.on != "connect" or not state.matches_connect(view, now, self.rng):
                continue
            action = rule.action
            if action.close is not None:
                events.append(Fired(rule.name, action.kind, {"when": "before"}))
                return Decision(data=None, close=action.close.kind, close_when="before", stall=stall, events=tuple(events))
            if action.stall is not None:
                stall = action.stall if stall is None else max(stall, action.stall)
                events.append(Fired(rule.name, "stall", {"for": format_duration(action.stall)}))
            if not rule.continue_:
                break
        return Decision(data=None, stall=stall, events=tuple(events))
