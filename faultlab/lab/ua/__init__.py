"""A scripted SIP user agent: a softphone behind an outbound proxy, driven step by step from a test
(register, call, answer, BYE) and keeping every message it sent and received for assertions.

faultlab's own tests drive the relay and the lab with it; a test suite of yours can too::

    from faultlab.lab.ua import SipUA

    ua = SipUA("alice", "udp", proxy=("127.0.0.1", 5060))
    await ua.start(nursery)
    assert (await ua.register()).status == 200
"""

from faultlab.lab.ua._agent import Dialog, SipUA
from faultlab.lab.ua._parts import (
    DEFAULT_PORTS,
    DEFAULT_TIMEOUT,
    TRANSPORTS,
    Address,
    CallFailed,
    Incoming,
    Record,
    UATimeout,
)

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_TIMEOUT",
    "TRANSPORTS",
    "Address",
    "CallFailed",
    "Dialog",
    "Incoming",
    "Record",
    "SipUA",
    "UATimeout",
]
