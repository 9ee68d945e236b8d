"""The library SIP user agent: the scripted softphone the tests drive, and the wire under every UA of the lab.

* :class:`SipUA`: a softphone behind an outbound proxy, driven step by step from a test (register, call, answer,
  BYE) and keeping every message it sent and received for assertions. faultlab's own tests drive the relay and the
  lab with it; a test suite of yours can too::

      from faultlab.lab.ua import SipUA

      ua = SipUA("alice", "udp", proxy=("127.0.0.1", 5060))
      await ua.start(nursery)
      assert (await ua.register()).status == 200

* :class:`UAWire`: the transport and message plumbing of a UA (UDP socket or TCP/TLS connections, reading with
  the one SIP reader, sending, requests with this UA's Via, responses routed per Via), which :class:`SipUA`, the
  lab's caller (:mod:`faultlab.lab.caller`) and the reference device (:mod:`faultlab.lab.device`) are built on.
"""

from faultlab.lab.ua._agent import Dialog, SipUA
from faultlab.lab.ua._parts import DEFAULT_TIMEOUT, CallFailed, Record, UATimeout, new_branch, route_uri, token
from faultlab.lab.ua._wire import DEFAULT_PORTS, TRANSPORTS, Address, Incoming, Link, UAWire

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_TIMEOUT",
    "TRANSPORTS",
    "Address",
    "CallFailed",
    "Dialog",
    "Incoming",
    "Link",
    "Record",
    "SipUA",
    "UATimeout",
    "UAWire",
    "new_branch",
    "route_uri",
    "token",
]
