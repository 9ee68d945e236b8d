"""What the engine is given (a message or a connection) and what it gives back (a :class:`Decision`).

Plain values, shared by the engine, the action kinds (:mod:`.actions`) and the link: a :class:`Draft` is the
decision for one message while the rules are still being applied to it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ..sip import Message

__all__ = ["MessageView", "ConnectView", "Fired", "Decision", "Draft"]


@dataclass(frozen=True)
class MessageView:
    """One message as the proxy received it.

    ``message`` is None for bytes faultlab could not parse and for keep-alives;
    message rules never match those, but the link still applies to them.
    ``keep_alive`` is ``"ping"`` (CRLF CRLF) or ``"pong"`` (CRLF) for a CRLF
    keep-alive (RFC 5626 §4.4.1): rules with ``on = "keep-alive"`` match it.
    ``device`` is the device's address on this flow, whichever way the
    message goes; ``flow`` the proxy's flow id.
    """

    message: Message | None
    raw: bytes
    direction: str  # "to-pbx" | "to-device"
    transport: str  # "udp" | "tcp" | "tls"
    device: tuple[str, int]
    flow: str
    keep_alive: str | None = None


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
    def plain(self) -> bool:
        """Forward the message as it came, at once, and nothing else: no rule fired, the link left it alone."""
        return (self.data is not None and not self.events and self.delay <= 0 and not self.copies
                and self.respond is None and not self.hold and self.close is None and self.stall is None)

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


@dataclass
class Draft:
    """The decision for one message (or connection) while its rules apply, one after the other.

    ``message`` is the message as received (rules match against it), ``data`` what will be forwarded
    (header edits applied). Delays add up, copies add up, the first close "after" wins, the longest stall wins.
    """

    rng: random.Random
    data: bytes | None = None
    message: Message | None = None
    delay: float = 0.0
    offsets: list[float] = field(default_factory=list)
    close: str | None = None
    close_when: str = "after"
    stall: float | None = None
    events: list[Fired] = field(default_factory=list)

    def fire(self, rule: str, action: str, detail: dict[str, Any]) -> None:
        self.events.append(Fired(rule, action, detail))

    def final(self, **fields: Any) -> Decision:
        """A decision that ends the rules here: nothing forwarded unless ``fields`` says so."""
        fields.setdefault("data", None)
        return Decision(events=tuple(self.events), **fields)


def round9(x: float) -> float:
    """Times in decisions and events, rounded to the nanosecond (no float noise in traces)."""
    return round(x, 9)
