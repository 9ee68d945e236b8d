"""What happens to one message: where it is (:class:`Hop`), what the relay decided (:class:`Plan`),
and the timed writes that carry the decision out (:func:`steps`). Pure: no trio, no sockets.

The transports in ``faultlab.net`` turn a plan into steps with :func:`steps` and hand them to the
one scheduler (``faultlab.net.scheduler``): FIFO per stream connection, independent per datagram.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from faultlab.relay.rewrite import Side
from faultlab.sip import Message, SipError


@dataclass(frozen=True, slots=True)
class Hop:
    """Where one message is on its way: which flow, which way, from whom."""

    flow: str
    direction: str
    transport: str
    peer: tuple[str, int]
    side: Side
    device: tuple[str, int] = ("", 0)  # the device's address on this flow


class Outgoing:
    """Bytes to write, and what the timeline says about them: ``summary`` and ``fields`` (flow, direction,
    transport, and what the message is). Given, or, for a relayed message (``about``), worked out on first
    read: a relay whose timeline nobody reads never describes its messages."""

    __slots__ = ("data", "hop", "about", "_summary", "_fields")

    def __init__(self, data: bytes, hop: Hop, summary: str | None = None, fields: dict | None = None, *,
                 about: Message | None = None) -> None:
        self.data = data
        self.hop = hop
        self.about = about
        self._summary = summary
        self._fields = fields

    @property
    def summary(self) -> str:
        if self._summary is None:
            self._summary = self.about.summary() if self.about is not None else f"{len(self.data)} bytes"
        return self._summary

    @property
    def fields(self) -> dict:
        if self._fields is None:
            hop = self.hop
            self._fields = {"flow": hop.flow, "direction": hop.direction, "transport": hop.transport}
            if self.about is not None:
                self._fields.update(message_fields(self.about))
                self._fields["parsed"] = True
        return self._fields

    def __repr__(self) -> str:
        return f"Outgoing({self.summary!r}, {len(self.data)} bytes, {self.hop!r})"


def message_fields(msg: Message) -> dict:
    """What the timeline records of a message: method or status, Call-ID, CSeq (those that parse)."""
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


@dataclass(eq=False)
class Hold:
    """A message kept back by a ``hold`` rule until released (API) or timed out."""

    id: str
    out: Outgoing
    held_at: float
    timeout: float | None
    then: str  # "forward" | "drop" when the timeout passes
    released: bool = False
    # Called once at release: set by whoever waits for the hold (the scheduler).
    wake: Callable[[], object] | None = None

    def release(self) -> None:
        self.released = True
        if self.wake is not None:
            self.wake()


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

    @property
    def plain(self) -> bool:
        """Forward at once, nothing else: the common, no-fault path."""
        return (self.forward is not None and self.delay <= 0 and not self.copies and self.respond is None
                and self.hold is None and self.close is None and self.stall is None)


@dataclass(eq=False)
class Step:
    """One timed write (or close) of a plan."""

    at: float  # clock time before which it is not written
    out: Outgoing | None  # None: a close only
    dest: tuple[str, int]
    hold: Hold | None = None  # written once the hold is released (or times out to "forward")
    close: str | None = None  # "fin" | "rst" | "eof": end the connection after this step
    kind: str = "sent"  # or "responded"
    back: bool = False  # to the sender of the message, not onwards
    detail: dict = field(default_factory=dict)

    @property
    def copy(self) -> bool:
        return "copy" in self.detail


def steps(plan: Plan, dest: tuple[str, int], back_dest: tuple[str, int]) -> list[Step]:
    """The writes of ``plan``, in the order a stream carries them out: the response back, then a close
    "before", or the held message, or the message (after its delay) and its copies, then a close "after".
    (Close and stall rules match streams only, so a datagram's plan has neither.)"""
    now = plan.received_at
    out: list[Step] = []
    if plan.respond is not None:
        out.append(Step(now, plan.respond, back_dest, kind="responded", back=True))
    if plan.close is not None and plan.close_when == "before":
        out.append(Step(now, None, dest, close=plan.close))
    elif plan.hold is not None:
        out.append(Step(now, plan.hold.out, dest, hold=plan.hold, detail={"released": plan.hold.id}))
    elif plan.forward is not None:
        out.append(Step(now + plan.delay, plan.forward, dest))
        for n, delay in enumerate(plan.copies, 1):
            out.append(Step(now + delay, plan.forward, dest, detail={"copy": n}))
    if plan.close is not None and plan.close_when == "after":
        out.append(Step(now + plan.delay, None, dest, close=plan.close))
    return out
