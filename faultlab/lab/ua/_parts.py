"""What the scripted UA is made of besides the UA itself: its constants, errors, message log records and links."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import trio

from faultlab.addr import format_hostport
from faultlab.sip import Message

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
DEFAULT_TIMEOUT = 3.0
USER_AGENT = "faultlab-test-ua"

# What a softphone offers: one PCMU audio stream. Nothing listens on the RTP port; no media flows.
SDP_TEMPLATE = (
    "v=0\r\n"
    "o={user} 1 1 IN {ipv} {host}\r\n"
    "s=faultlab test\r\n"
    "c=IN {ipv} {host}\r\n"
    "t=0 0\r\n"
    "m=audio {rtp_port} RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=sendrecv\r\n"
)

Address = tuple[str, int]


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


@dataclass
class Link:
    """The UDP socket, or one TCP/TLS connection."""

    transport: str
    local: Address
    peer: Address | None  # None for the UDP socket
    sock: trio.socket.SocketType | None = None
    stream: trio.abc.Stream | None = None
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    closed: bool = False


@dataclass(frozen=True)
class Incoming:
    message: Message
    link: Link
    source: Address
