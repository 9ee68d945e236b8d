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

from ._model import LinkSpec

__all__ = ["LinkState", "PacketFate", "draw_delay"]


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
