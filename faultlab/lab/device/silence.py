"""The reference device's media-silence timeout (S21), sans-IO: when a connected call last heard RTP.

A call whose far end hung up while its BYE was lost looks, from the device, like a connected call that has gone
quiet: the only sign is that RTP stopped. Once the call connects with media expected (the driver, at the ACK of its
200, for an offer whose peer sends RTP: :meth:`Silence.start`), every RTP packet received is
:meth:`Silence.hear` (called per packet, so it only notes the time); :meth:`Silence.deadline` is when
``media_timeout`` seconds of silence will have passed. :class:`~faultlab.lab.device.logic.DeviceLogic` keeps one
per call, puts that deadline among its timers and ends the call ``failed`` when it passes (reference §6 S21: 30 s
after the last RTP).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MEDIA_TIMEOUT", "Silence"]

MEDIA_TIMEOUT = 30.0  # reference §6 S21: no RTP for this long in a connected call -> failed


@dataclass
class Silence:
    """The last time RTP was heard in a connected call with media; ``None`` while no media is expected."""

    heard: float | None = None

    def start(self, now: float) -> None:
        """The call connected with media expected: its silence is timed from now (once)."""
        if self.heard is None:
            self.heard = now

    def hear(self, now: float) -> None:
        """An RTP packet arrived (ignored before :meth:`start`)."""
        if self.heard is not None:
            self.heard = now

    def deadline(self, timeout: float) -> float | None:
        """When ``timeout`` seconds of silence will have passed, or ``None`` while no media is expected."""
        return None if self.heard is None else self.heard + timeout
