"""The running relay as the control API sees it (``faultlab.api.protocol.Control``).

Every call runs in the relay's trio thread and takes effect on the next
message: switching a profile, adding or removing a rule, releasing held
messages. Each change is a timeline event.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from faultlab.addr import parse_device
from faultlab.faults import Engine, ProfileError, load_profile, parse_profile, parse_rule, profile_entries
from faultlab.relay import Relay
from faultlab.trace import Event

_LIBRARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(?<!\.toml)")
SUBSCRIBER_BUFFER = 1000  # events a slow follower may lag behind before it is dropped


class ProxyControl:
    """Implements the control API's ``Control`` protocol on a :class:`~faultlab.relay.Relay` (a running proxy)."""

    def __init__(self, proxy: Relay) -> None:
        self.proxy = proxy
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        # Every event gets a sequence number (1, 2, ...; the events already held count first), so that a
        # follower can ask for what it missed: see history().
        held = proxy.trace.events
        self._seq = len(held)
        self._oldest: Event | None = held[0] if held else None
        self._lost_t: float | None = None  # trace time of the newest event no longer held
        proxy.trace.add_sink(self._publish)

    # -- profiles -----------------------------------------------------------
    def list_profiles(self) -> list[dict[str, Any]]:
        # the same entries as `faultlab profiles list`: team libraries first, then the built-in ones they keep
        return [{"name": e.item.name, "summary": e.item.summary, "source": e.item.source, "origin": e.origin,
                 "replaces": list(e.hides)} for e in profile_entries()]

    def _describe(self, engine: Engine | None) -> dict[str, Any] | None:
        if engine is None:
            return None
        return {"name": engine.profile.name, "summary": engine.profile.summary,
                "activated_at": engine.activated_at}

    def active(self) -> dict[str, Any]:
        return {"global": self._describe(self.proxy.engine),
                "devices": {dev: self._describe(e) for dev, e in self.proxy.device_engines.items()}}

    def set_profile(self, name: str | None, device: str | None = None) -> dict[str, Any] | None:
        key = parse_device(device) if device is not None else None
        if name is not None and not _LIBRARY_NAME.fullmatch(name):
            # A path would let anyone who reaches the API make the relay read any file.
            raise ProfileError("<api>", "profile", name,
                               "a profile name from the library (faultlab profiles list); "
                               "files are loaded only from the command line (--profile FILE)")
        profile = load_profile(name) if name is not None else None
        return self._describe(self.proxy.activate(profile, key))

    # -- rules --------------------------------------------------------------
    def _engine(self, device: str | None, *, create: bool) -> Engine:
        proxy = self.proxy
        key = parse_device(device) if device is not None else None
        engine = proxy.engine if key is None else proxy.device_engines.get(key)
        if engine is None:
            if not create:
                raise KeyError(f"no profile is active{f' for {key}' if key else ''}")
            engine = proxy.activate(parse_profile('name = "live"\nsummary = "rules added through the API"\n',
                                                  source="<api>"), key)
        return engine

    def rules(self, device: str | None = None) -> list[dict[str, Any]]:
        try:
            engine = self._engine(device, create=False)
        except KeyError:
            return []
        return [{"name": r.name, **{k: v for k, v in r.spec.items() if k != "name"}} for r in engine.profile.rules]

    def add_rule(self, rule: dict[str, Any], device: str | None = None, index: int | None = None) -> dict[str, Any]:
        parsed = parse_rule(rule, source="<api>")
        engine = self._engine(device, create=True)
        try:
            engine.add_rule(parsed, index, now=self.proxy.now())
        except ValueError as exc:
            raise ProfileError("<api>", "rule.name", parsed.name, str(exc)) from None
        self.proxy.emit("rule-added", detail={"rule": parsed.name, "device": device, "spec": rule})
        return {"name": parsed.name, **{k: v for k, v in parsed.spec.items() if k != "name"}}

    def remove_rule(self, name: str, device: str | None = None) -> None:
        engine = self._engine(device, create=False)
        engine.remove_rule(name)
        self.proxy.emit("rule-removed", detail={"rule": name, "device": device})

    # -- holds, flows, timeline -----------------------------------------------
    def holds(self) -> list[dict[str, Any]]:
        return [{"id": h.id, "flow": h.out.hop.flow, "direction": h.out.hop.direction,
                 "summary": h.out.summary, "held_at": h.held_at} for h in self.proxy.holds.values()]

    def release(self, hold_id: str | None = None) -> int:
        return self.proxy.release(hold_id)

    def flows(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self.proxy.flows.values()]

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        send, receive = trio.open_memory_channel[Event](SUBSCRIBER_BUFFER)
        self._subscribers.append(send)
        return receive

    def history(self) -> tuple[int, list[Event], float | None]:
        """The events still held, oldest first, with the sequence number of the first, and the trace time of
        the newest event no longer held (None: none was dropped). Right after :meth:`subscribe` (no checkpoint
        between), the subscription's first event is number ``first + len(events)``."""
        held = list(self.proxy.trace.events)
        return self._seq - len(held) + 1, held, self._lost_t

    def _publish(self, event: Event) -> None:
        self._seq += 1
        held = self.proxy.trace.events  # the trace appends before its sinks run; a full buffer drops its oldest
        if not held:  # a trace that keeps nothing
            self._lost_t = event.t
        elif held[0] is not self._oldest:
            if self._oldest is not None:  # it was just dropped
                self._lost_t = self._oldest.t
            self._oldest = held[0]
        if not self._subscribers:
            return
        too_slow = 0
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)  # the follower went away
            except trio.WouldBlock:
                self._subscribers.remove(send)  # too slow: cut it off rather than stall the relay
                send.close()
                too_slow += 1
        if too_slow:  # after this event reached every follower, so that each sees the timeline in order
            self.proxy.warn(f"a timeline follower fell {SUBSCRIBER_BUFFER} events behind "
                            "and was disconnected; reconnect (GET /events?after=SEQ) to follow again")

    def seed(self) -> int:
        return self.proxy.seed
