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
from typing import Any

from ._decision import ConnectView, Decision, Draft, Fired, MessageView
from ._link import TCP_MAX_RETRIES, TCP_MIN_RTO, LinkState, link_decision
from ._match import MessageFacts, device_address_match, static_match, _ip
from ._model import Profile, Rule
from .actions import NEXT_RULE, apply_edits, kind_of

__all__ = ["Engine", "MessageView", "ConnectView", "Decision", "Fired", "TCP_MIN_RTO", "TCP_MAX_RETRIES", "MEMORY"]

MEMORY = 4096
"""Each rule remembers the decisions of this many recent transactions and
keeps this many occurrence counters (least recently used go first)."""


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
        self.kind = kind_of(rule.action)
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
        if not self.kind.applies(facts) or not static_match(match, facts):
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

    def matches_connect(self, view: ConnectView | MessageView, now: float, rng: random.Random) -> bool:
        """A connection (``on = "connect"``) or a keep-alive (``on = "keep-alive"``, a :class:`MessageView`)."""
        match = self.rule.match
        if isinstance(view, MessageView):
            if (match.direction is not None and match.direction != view.direction) or (
                    match.keep_alive is not None and match.keep_alive != view.keep_alive):
                return False
            transports = match.transport
        else:
            transports = match.transport if match.transport is not None else frozenset(("tcp", "tls"))
        if transports is not None and view.transport not in transports:
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
        self._candidates: dict[tuple, tuple[_RuleState, ...]] = {}
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
        self._candidates.clear()
        self.profile = dataclasses.replace(self.profile, rules=tuple(s.rule for s in self._states))

    # -- decisions -----------------------------------------------------------

    def decide(self, view: MessageView, now: float) -> Decision:
        """The decision for one message received at ``now``. Never raises on peer input."""
        msg = view.message
        if msg is None:
            draft = Draft(self.rng, data=view.raw)
            if view.keep_alive is not None:
                done = self._keep_alive(view, now, draft)
                if done is not None:
                    return done
            if not self._links:
                return Decision(data=view.raw, delay=draft.delay, events=tuple(draft.events))
            return link_decision(self._links.get(view.direction), view.transport, now, draft)
        states = self._message_rules(view, msg)
        if not states and view.direction not in self._links:  # the clean path: nothing can touch it
            return Decision(data=view.raw)
        facts = MessageFacts(msg, view.raw, view.direction, view.transport, view.device, view.flow)
        draft = Draft(self.rng, data=view.raw, message=msg)
        current = msg  # the parsed form of draft.data while known
        for state in states:
            rule = state.rule
            if not state.matches(facts, now, self.rng):
                continue
            action = rule.action
            detail: dict[str, Any] = {}
            if action.edits:
                current = apply_edits(draft, current, action, detail)
            done = state.kind.on_message(action, rule.name, draft, detail)
            if done is NEXT_RULE:
                continue
            if done is not None:
                return done
            if not rule.continue_:
                break
        return link_decision(self._links.get(view.direction), view.transport, now, draft)

    def _message_rules(self, view: MessageView, msg: Any) -> tuple[_RuleState, ...]:
        """The message rules that may match a message of this direction, transport, method or status, in order:
        the others fail their first conditions (:func:`static_match`) without a side effect, and are not tried."""
        key = (view.direction, view.transport, msg.method, msg.status)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(s for s in self._states if _may_match(s.rule.match, key))
            if len(self._candidates) < 256:  # methods are the peer's words: bounded
                self._candidates[key] = found
        return found

    def _keep_alive(self, view: MessageView, now: float, draft: Draft) -> Decision | None:
        """The rules with ``on = "keep-alive"`` for a CRLF keep-alive (drop or delay); None: on to the link."""
        for state in self._states:
            rule = state.rule
            if rule.match.on != "keep-alive" or not state.matches_connect(view, now, self.rng):
                continue
            done = state.kind.on_message(rule.action, rule.name, draft, {"keep_alive": view.keep_alive})
            if done is not None and done is not NEXT_RULE:
                return done
            if not rule.continue_:
                break
        return None

    def on_connect(self, view: ConnectView, now: float) -> Decision:
        """The decision for a TCP/TLS connection accepted at ``now``: only rules
        with ``on = "connect"``; ``stall`` and/or ``close`` (always before)."""
        draft = Draft(self.rng)
        for state in self._states:
            rule = state.rule
            if rule.match.on != "connect" or not state.matches_connect(view, now, self.rng):
                continue
            done = state.kind.on_connect(rule.action, rule.name, draft)
            if done is not None:
                return done
            if not rule.continue_:
                break
        return Decision(data=None, stall=draft.stall, events=tuple(draft.events))


def _may_match(match: Any, key: tuple) -> bool:
    """Could a message of ``key`` (direction, transport, method, status) pass ``match``'s first conditions?"""
    direction, transport, method, status = key
    if match.on != "message" or (match.direction is not None and match.direction != direction):
        return False
    if match.transport is not None and transport not in match.transport:
        return False
    if match.method is not None and (method is None or method not in match.method):
        return False
    return match.status is None or (method is None and status in match.status)
