"""Link impairment, one packet (or one SIP message) at a time.

:class:`LinkState` is the per-direction state of a :class:`LinkSpec`: the
Gilbert-Elliott state and the time the link stays busy serialising earlier
packets. It is pure: the caller passes the packet's size and the time it
enters the link, and gets the fate of the packet back. The proxy calls it
once per SIP message; the network lab can call it once per packet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ._decision import Decision, Draft, Fired, round9
from ._model import LinkSpec

__all__ = ["LinkState", "PacketFate", "draw_delay", "link_decision", "TCP_MIN_RTO", "TCP_MAX_RETRIES"]


def draw_delay(rng: random.Random, delay: float, jitter: float, distribution: str) -> float:
    """``delay`` spread by ``jitter``: uniform in [delay - jitter, delay + jitter]
    (netem's default) or normal (sigma = jitter); clamped at 0. No draw when jitter is 0."""
    if not jitter:
        return delay
    if distribution == "normal":
        value = rng.gauss(delay, jitter)
    else:
        value = delay + rng.uniform(-jitter, jitter)
    return max(0.0, value)


def _chance(rng: random.Random, p: float) -> bool:
    """True with probability ``p``; draws only when 0 < p < 1."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return rng.random() < p


@dataclass(frozen=True)
class PacketFate:
    """What the link does to one packet: ``lost``; else it arrives ``delay``
    seconds after entering the link (serialisation wait included), plus
    ``copies`` extra copies with their own delays. ``reordered``: it skipped
    the delay. ``queued`` is the serialisation part of ``delay``."""

    lost: bool
    delay: float = 0.0
    copies: tuple[float, ...] = ()
    reordered: bool = False
    queued: float = 0.0

    def __iter__(self):  # (lost, delay, copies), for tuple unpacking
        return iter((self.lost, self.delay, self.copies))


class LinkState:
    """The state of one direction of a link. Random draws come from ``rng`` only.

    Per packet, in netem's order: loss (random, or Gilbert-Elliott: the state
    the packet meets decides its loss probability, then the state may change),
    duplication, delay with jitter (a reordered packet skips it), and rate: a
    packet waits until the link is free and then takes ``size * 8 / rate``
    seconds to serialise; lost packets take no link time.
    """

    def __init__(self, spec: LinkSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.bad = False  # Gilbert-Elliott state
        self.busy_until = float("-inf")

    def _lost(self) -> bool:
        spec = self.spec
        model = spec.loss_model
        rng = self.rng
        if model is not None:
            if self.bad:
                lost = _chance(rng, model.bad_loss)
                if _chance(rng, model.r):
                    self.bad = False
            else:
                lost = _chance(rng, model.good_loss)
                if _chance(rng, model.p):
                    self.bad = True
            return lost
        return _chance(rng, spec.loss)

    def _serialise(self, size: int, now: float) -> float:
        """Seconds from ``now`` until the packet has left the link's queue."""
        rate = self.spec.rate_bps
        if rate is None:
            return 0.0
        start = max(now, self.busy_until)
        self.busy_until = start + size * 8.0 / rate
        return self.busy_until - now

    def _one(self, size: int, now: float) -> tuple[float, bool, float]:
        spec = self.spec
        queued = self._serialise(size, now)
        if spec.reorder and self.rng.random() < spec.reorder:
            return queued, True, queued
        return queued + draw_delay(self.rng, spec.delay, spec.jitter, spec.distribution), False, queued

    def packet(self, size: int, now: float, *, duplicates: bool = True) -> PacketFate:
        """The fate of a packet of ``size`` bytes entering the link at ``now``.

        ``duplicates=False`` never makes copies (a stream transport discards
        duplicate segments). Unpacks as ``lost, delay, copies``.
        """
        if self._lost():
            return PacketFate(lost=True)
        copies: tuple[float, ...] = ()
        spec = self.spec
        dup = duplicates and spec.duplicate > 0.0 and self.rng.random() < spec.duplicate
        delay, reordered, queued = self._one(size, now)
        if dup:
            copy_delay, _, _ = self._one(size, now)
            copies = (copy_delay,)
        return PacketFate(lost=False, delay=delay, copies=copies, reordered=reordered, queued=queued)


# ---------------------------------------------------------------------------
# the link applied to one SIP message (and its copies) in the proxy

TCP_MIN_RTO = 0.2
"""Linux's minimum TCP retransmission timeout (TCP_RTO_MIN, 200 ms): on a
stream transport a message the link "loses" arrives this much later, doubling
for each further loss (TCP retransmits; the bytes are never lost)."""
TCP_MAX_RETRIES = 15
"""Linux's tcp_retries2 default: after this many lost retransmissions the
message is counted as lost (on a real stack the connection would time out)."""
TCP_MAX_RTO = 120.0


def _over_stream(
    state: LinkState, size: int, at: float, label: str, model: str, events: list[Fired]
) -> tuple[PacketFate, float] | None:
    """One message on a stream: each loss costs a retransmission timeout (None: lost after every retry).
    Returns the fate of the copy that got through and the time the retransmissions added."""
    extra, retries, fate = 0.0, 0, None
    rto = TCP_MIN_RTO
    for _ in range(TCP_MAX_RETRIES + 1):
        fate = state.packet(size, at + extra, duplicates=False)
        if not fate.lost:
            break
        retries += 1
        extra += rto
        rto = min(rto * 2, TCP_MAX_RTO)
    assert fate is not None
    if fate.lost:
        events.append(Fired("link", "loss", {"model": model, "packet": label, "tcp_retransmissions": retries}))
        return None
    if retries:
        events.append(
            Fired(
                "link",
                "loss",
                {"model": model, "packet": label, "tcp_retransmissions": retries, "added": round9(extra)},
            )
        )
    return fate, extra


def link_decision(state: LinkState | None, transport: str, now: float, draft: Draft) -> Decision:
    """The decision for the message in ``draft`` once the link of its direction (``state``; None: a clean
    link) has delayed, lost, duplicated or reordered it and each of its copies."""
    data = draft.data
    assert data is not None
    delay, events = draft.delay, draft.events
    keep = {"close": draft.close, "close_when": draft.close_when, "stall": draft.stall}
    if state is None:
        copies = tuple(round9(delay + o) for o in draft.offsets)
        return Decision(data=data, delay=delay, copies=copies, events=tuple(events), **keep)
    model = "gilbert-elliott" if state.spec.loss_model is not None else "random"
    arrivals: list[float] = []
    for i, offset in enumerate([0.0] + list(draft.offsets)):
        label = "message" if i == 0 else f"copy {i}"
        start = delay + offset
        if transport != "udp":
            got = _over_stream(state, len(data), now + start, label, model, events)
            if got is None:
                continue
            fate, extra = got
            arrive = start + extra + fate.delay
        else:
            fate = state.packet(len(data), now + start)
            if fate.lost:
                events.append(Fired("link", "loss", {"model": model, "packet": label}))
                continue
            arrive = start + fate.delay
            for c in fate.copies:
                arrivals.append(round9(start + c))
                events.append(Fired("link", "duplicate", {"packet": label, "delay": round9(c)}))
        if fate.reordered:
            events.append(Fired("link", "reorder", {"packet": label}))
        if i == 0:
            if arrive - start > 0:
                detail: dict[str, Any] = {"delay": round9(arrive - start)}
                if fate.queued:
                    detail["queued"] = round9(fate.queued)
                events.append(Fired("link", "delay", detail))
            arrivals.insert(0, round9(arrive))
        else:
            arrivals.append(round9(arrive))
    if not arrivals:
        # close "after" still happens: the message was sent, the network lost it
        return Decision(data=None, events=tuple(events), lost_by_link=True, **keep)
    return Decision(data=data, delay=arrivals[0], copies=tuple(arrivals[1:]), events=tuple(events), **keep)
