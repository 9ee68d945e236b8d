"""The reference device's SIP constants and the records its driver keeps: a request received (the ``ref``
the logic passes back), a call."""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any

import trio

from faultlab.lab.device.logic import DeviceLogic
from faultlab.lab.ua import Address, Incoming
from faultlab.sip import Message

__all__ = ["T1", "T2", "TIMER_F", "USER_AGENT", "Address"]

T1, T2 = 0.5, 4.0  # RFC 3261 §17
TIMER_F = 64 * T1  # non-INVITE transaction timeout
USER_AGENT = "faultlab-reference-device"


@dataclass
class _Request:
    """A request received, with where its responses go: the ``ref`` the logic passes back."""

    incoming: Incoming
    to_tag: str

    @property
    def message(self) -> Message:
        return self.incoming.message


@dataclass
class _Call:
    logic: DeviceLogic
    changed: trio.Event = field(default_factory=trio.Event)
    parked_until: float = -math.inf  # the deadline the call's timer task waits for; -inf: it is not waiting
    register_scope: trio.CancelScope | None = None
    acked: trio.Event = field(default_factory=trio.Event)
    invite_branch: str | None = None
    offer: Any = None  # the INVITE's SDP audio stream (faultlab.lab.rtp.Media), if any
    media: Any = None  # the call's RTP stream (faultlab.lab.media.MediaStream), once answered with media
    hung_up: bool = False  # the device sent its own BYE in this call's dialog
