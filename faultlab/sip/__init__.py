"""faultlab.sip: a sans-IO SIP library, containing no networking code at all.

It parses messages (RFC 3261 §7), frames them on streams and datagrams
(§18.3), reads the header values a proxy needs (Via, CSeq, From/To tags,
Contact with RFC 8599 push parameters, Reason), builds responses (§8.2.6)
and edits headers byte-exactly. It imports no trio, socket or clock: bytes
in, events and bytes out. Peer input either parses or raises
:class:`SipError`; any other exception is a bug.

Decisions (RFC 4475 leaves some to the implementation):

* Start lines are strict: one SP between elements (lwsstart, trws and
  lwsruri raise), a 3-digit status 100-699 (bigcode raises). The Request-URI
  is any run of non-space octets (ltgtruri parses; :func:`parse_uri` on it
  raises). Any ``SIP/x.y`` version parses and is kept, so the upper layer can
  answer 505 (badvers).
* Lines end in CRLF; a bare CR or LF in the head raises. Obsolete line
  folding is accepted and unfolded to one SP.
* Content-Length must be 1*DIGIT below 2**32; several headers must agree
  (mcl01 raises: the framing cannot be known). Streams require it (§18.3);
  datagrams without it take the rest of the datagram as body (inv2543), and
  octets past it are :attr:`Message.trailing` (dblreq).
* Header values are checked lazily: a malformed Via, CSeq, From/To, Contact,
  Reason or Expires raises SipError from its accessor, not from parsing, so
  a proxy can still relay the message. Numbers above 2**32-1 raise
  (scalar02/scalarlg). %-escapes in URIs are never decoded.
* Display names are lenient: no LWS before ``<`` (lwsdisp), unquoted commas
  (baddn) and spaces inside ``< >`` (badaspec) are accepted.
* Invalid arguments from the caller (a header value with CR/LF, a status
  outside 100-699) raise ``ValueError``, not SipError.
"""

from ._build import MAGIC_COOKIE, build_request, build_response, format_via, stateless_branch
from ._edit import add_top_header, remove_top_value
from ._errors import EOF, NEED_DATA, SipError
from ._framer import MAX_MESSAGE_SIZE, StreamFramer
from ._message import Header, KeepAlive, Message
from ._parse import MAX_DATAGRAM_SIZE, MAX_HEADERS, parse_datagram, parse_message
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
    "build_request",
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
