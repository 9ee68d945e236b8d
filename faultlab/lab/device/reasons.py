"""CallKit end reasons from SIP, sans-IO: what a CANCEL's Reason header means for the call (reference §2.3)."""

from __future__ import annotations

from typing import Any

__all__ = ["cancel_reason"]


def cancel_reason(reason: Any) -> str:
    """The CallKit end reason for a CANCEL's Reason (reference §2.3): by protocol SIP and cause, never the text.

    ``reason`` is a :class:`faultlab.sip.Reason` (``.protocol``, ``.cause``) or ``None``.
    """
    if reason is None or str(getattr(reason, "protocol", "")).upper() != "SIP":
        return "remoteEnded"
    cause = getattr(reason, "cause", None)
    if cause == 200:
        return "answeredElsewhere"
    if cause in (600, 603):
        return "declinedElsewhere"
    return "remoteEnded"
