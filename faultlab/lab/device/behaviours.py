"""The reference device's known-bad behaviours: one small deviation each from the rules of
:mod:`faultlab.lab.device.logic` (which applies them), each caught by a check (docs/reference-device.md)."""

from __future__ import annotations

__all__ = ["BEHAVIOURS"]

BEHAVIOURS: dict[str, str] = {
    "depends-on-cancel-push": (
        "Ends a call that never gets its INVITE only on a cancel push (remoteEnded); "
        "with no INVITE and no cancel push it never ends."
    ),
    "rejects-early-answer": (
        "An answer tapped before the INVITE fails at once (answer-failed, ended failed) instead of being held."
    ),
    "fulfills-before-invite": (
        "An answer tapped before the INVITE is fulfilled at once (answer-fulfilled before any 200 OK)."
    ),
    "wrong-reason-mapping": "Every CANCEL ends the call as remoteEnded, whatever its Reason.",
    "never-ends": "Never reports the end of a call (SIP is still answered).",
    "slow-end": "Reports every end 3 s late (slow_end_delay).",
    "loops-at-one-instant": (
        "On a call push, spins forever without time passing (yields to the scheduler, never sleeps or waits): "
        "a hang the virtual-time watchdog must catch."
    ),
    "no-487": "Answers a CANCEL 200 and ends the call, but never sends 487 to the INVITE.",
    "no-480-at-ring-timeout": "At its ring timeout ends the call unanswered without answering the INVITE (no 480).",
    "late-invite-486": "Answers an INVITE for a call it has already ended 486 Busy Here (not 480 or 410).",
    "decline-486": "Answers the INVITE of a call the user declined 486 Busy Here (not 603 Decline).",
    "register-retry-after-403": "Retries the REGISTER once, at once, after a 403 Forbidden.",
    "ignores-retry-after": "Retries a REGISTER answered 503 with Retry-After at once, not after Retry-After.",
    "no-register-on-push": "Reports a call push but sends no REGISTER for it (counts on its old binding).",
    "unanswered-after-reregister": (
        "After a lost flow, ends the call unanswered as soon as its re-REGISTER succeeds, instead of waiting for "
        "the INVITE; the INVITE then arriving on the new flow gets 480."
    ),
    "drops-after-connect": (
        "Ends an answered call (failed) as soon as it connects (the ACK arrives), without waiting for the BYE."
    ),
    "rings-stale-push": "Rings a stale push (sent long before it arrived) as a new call instead of ending it at once.",
    "no-media-timeout": "Has no media-silence timeout: a call whose RTP stopped (its BYE lost) stays up for ever.",
    "ignores-dead-flow": "Pings its TCP/TLS flow but never notices a missing pong: no re-REGISTER on a new flow.",
    "ignores-path-change": "Keeps its old address and flow after a network change: no re-REGISTER on the new path.",
}
