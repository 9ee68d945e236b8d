"""What the scripted UA is made of besides the UA itself and its wire: its constants, errors and message log records."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from faultlab.addr import format_hostport
from faultlab.lab.ua._wire import Address
from faultlab.sip import Message

DEFAULT_TIMEOUT = 3.0
USER_AGENT = "faultlab-test-ua"


class UATimeout(AssertionError):
    """A message the script waited for did not arrive in time."""


class CallFailed(AssertionError):
    """An INVITE ended with a non-2xx final response (already ACKed); the response is ``.response``."""

    def __init__(self, message: str, response: Message) -> None:
        super().__init__(message)
        self.response = response


def token() -> str:
    return secrets.token_hex(6)


def route_uri(route: str) -> str:
    """The URI of a Route / Record-Route value, which is always a name-addr (RFC 3261 §20.30)."""
    return route[route.index("<") + 1 : route.index(">")]


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)  # the RFC 3261 magic cookie, §8.1.1.7


@dataclass(frozen=True)
class Record:
    """One message this UA sent or received."""

    t: float  # trio.current_time()
    direction: str  # "sent" or "received"
    transport: str
    local: Address
    peer: Address  # where it was sent to / came from
    message: Message
    data: bytes

    @property
    def summary(self) -> str:
        """``"INVITE"`` for a request, ``"200 INVITE"`` for a response."""
        m = self.message
        return m.method if m.is_request else f"{m.status} {m.cseq.method}"

    def __str__(self) -> str:
        arrow = "->" if self.direction == "sent" else "<-"
        local, peer = format_hostport(*self.local), format_hostport(*self.peer)
        return f"{self.t:10.4f} {self.transport} {local} {arrow} {peer}  {self.summary}"
