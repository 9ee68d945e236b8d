"""The reference device: a well-behaved iOS VoIP app (CallKit rules), switchable to known misbehaviours.

* :mod:`.logic` -- :class:`DeviceLogic`, the rules for one call, sans-IO (every input takes ``now``).
* :mod:`.driver` -- :class:`Device`, the trio driver: a SIP UA over UDP/TCP/TLS, pushes from a channel.

The driver is loaded on first use of ``Device``, so importing the logic never loads trio.
"""

from __future__ import annotations

from typing import Any

from .logic import BEHAVIOURS, EVENTS, REASONS, DeviceConfig, DeviceLogic, cancel_reason

__all__ = ["Device", "DeviceLogic", "DeviceConfig", "BEHAVIOURS", "EVENTS", "REASONS", "cancel_reason"]


def __getattr__(name: str) -> Any:
    if name == "Device":
        from .driver import Device

        return Device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
