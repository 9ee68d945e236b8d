"""faultlab.sip: a sans-IO SIP library, containing no networking code at all.

It parses messages (RFC 3261 §7), frames them on streams and datagrams
(§18.3), reads the header values a proxy needs (Via, CSeq, From/To tags,
Contact with RFC 8599 push parameters, Reason), builds responses (§8.2.6)
and edits headers byte-exactly. It imports no trio, socket or clock: bytes
in, events and bytes out. Peer input either parses or raises
:class:`SipError`; any other exception is a bug.
"""

from ._build import MAGIC_COOKIE, build_response, format_via, stateless_branch
from ._edit import add_top_header, remove_top_value
from ._errors import EOF, NEED_DATA, SipError
from ._framer import MAX_MESSAGE_SIZE, StreamFramer
from ._message import (
    MAX_DATAGRAM_SIZE,
    MAX_HEADERS,
    Header,
    KeepAlive,
    Message,
    parse_datagram,
    parse_message,
)
from ._reasons import REASON_PHRASES, reason_phrase
from ._values import CSeq, NameAddr, Reason, SipURI, Via, parse_uri, push_params

__all__ = [
    "SipError",
    "NEED_DATA",
    "EOF",
    "KeepAlive",
    "Header",
    "Message",
    "CSeq",
    "Via",
    "NameAddr",
    "Reason",
    "SipURI",
    "parse_message",
    "parse_datagram",
    "parse_uri",
    "push_params",
    "StreamFramer",
    "MAX_MESSAGE_SIZE",
    "MAX_HEADERS",
    "MAX_DATAGRAM_SIZE",
    "build_response",
    "format_via",
    "stateless_branch",
    "MAGIC_COOKIE",
    "add_top_header",
    "remove_top_value",
    "REASON_PHRASES",
    "reason_phrase",
]
