"""Parsing whole SIP messages (RFC 3261 §7) from one buffer or datagram.

One pass over the head (:func:`scan_head`) checks the start line and the
*shape* of the head (each header line is ``token *WSP ":" value CRLF`` plus
folded continuation lines, no bare CR) and finds every field's span; header
values are decoded lazily by :class:`~faultlab.sip._message.Message`.
"""

from __future__ import annotations

from ._abnf import (
    CONTENT_LENGTH_RE,
    CONTENT_LENGTH_VALUE_RE,
    HEADER_BLOCK_RE,
    HEADER_FIELD_RE,
    REQUEST_LINE_RE,
    STATUS_LINE_RE,
)
from ._errors import SipError
from ._message import _NAMES, KeepAlive, Message, _name_key

__all__ = [
    "parse_message",
    "parse_datagram",
    "build_message",
    "content_length_of",
    "scan_head",
    "MAX_HEADERS",
    "MAX_DATAGRAM_SIZE",
]

MAX_HEADERS = 256
"""Default limit on header *lines* (continuation lines count). Apache httpd's
``LimitRequestFields`` defaults to 100 for HTTP; SIP requests carry longer
Via/Record-Route/Route chains (RFC 4475 longreq.sip has 44 lines), so
faultlab allows 256. Exceeding it is a :class:`SipError` with status_hint 413
(SIP has no 431)."""

MAX_DATAGRAM_SIZE = 65535
"""The largest UDP payload; a bigger "datagram" raises SipError 513."""



def content_length_of(raw: bytes, head_end: int) -> int | None:
    """The Content-Length declared in ``raw[:head_end]`` (which ends before
    the empty line's CRLF), or ``None``.

    Several identical values are accepted; conflicting ones raise
    (RFC 4475 §3.3.9 mcl01: the framing cannot be known). Values must be
    1*DIGIT (RFC 4475 §3.1.2.3 ncl) and below 2**32.
    """
    return _content_length(CONTENT_LENGTH_RE.findall(raw[: head_end + 2].lower()))


def _content_length(values: list[bytes]) -> int | None:
    length = None
    for value in values:
        m = CONTENT_LENGTH_VALUE_RE.fullmatch(value)
        if m is None:
            raise SipError(f"malformed Content-Length: {value[:40]!r}")
        digits = m.group(1).lstrip(b"0") or b"0"
        if len(digits) > 10 or int(digits) > 2**32 - 1:
            raise SipError(f"Content-Length too large: {digits[:20]!r}", status_hint=413)
        n = int(digits)
        if length is not None and n != length:
            raise SipError("conflicting Content-Length values")
        length = n
    return length


def scan_head(raw: bytes | bytearray, head_end: int, max_headers: int = MAX_HEADERS) -> tuple:
    """One pass over the head ``raw[:head_end + 4]`` (ending in CRLFCRLF): the start line checked
    and read, the shape of every header line checked (RFC 3261 §7.3; a bare CR rejected), each field
    found as a span, and the Content-Length read from its field. Raises :class:`SipError`.

    Returns ``(start, spans, index, content_length)``: ``start`` is (method, Request-URI, status,
    reason, version), ``spans`` each field as ``(name, key, value bytes, start, end)`` in order,
    ``index`` the same by canonical key. Header values are decoded only when read (:class:`Message`).
    """
    m = REQUEST_LINE_RE.match(raw)
    if m is not None:
        method_b, uri_b, version = m.groups()
        start = (method_b.decode("ascii"), uri_b.decode("utf-8", "surrogateescape"), None, None,
                 version.decode("ascii"))
    else:
        m = STATUS_LINE_RE.match(raw)
        if m is None:
            line = bytes(raw[: raw.find(b"\r\n")][:80])
            raise SipError(f"malformed start line: {line!r}")
        version, status_b, reason_b = m.groups()
        start = (None, None, int(status_b), "" if reason_b is None else reason_b.decode("utf-8", "surrogateescape"),
                 version.decode("ascii"))
    pos = m.end()
    block_end = head_end + 2
    spans: list[tuple] = []
    index: dict[str, tuple] = {}
    if pos >= block_end:
        return start, (), index, None
    lines = raw.count(b"\n", pos, block_end)
    if lines > max_headers:
        raise SipError(f"more than {max_headers} header lines", status_hint=413)
    name_key, append = _NAMES.get, spans.append
    for prefix, name_b, value_b in HEADER_FIELD_RE.findall(raw, pos, block_end):
        name, key = name_key(name_b) or _name_key(name_b)
        end = pos + len(prefix) + len(value_b)
        span = (name, key, value_b, pos, end)
        append(span)
        if key in index:
            index[key] += (span,)
        else:
            index[key] = (span,)
        pos = end
    if pos != block_end:  # the fields found leave a gap (they never overlap): where the shape breaks
        bad = HEADER_BLOCK_RE.match(raw, m.end(), block_end).end()
        line = bytes(raw[bad : raw.find(b"\n", bad)][:80])
        raise SipError(f"malformed header line: {line!r}")
    if raw.count(b"\r", m.end(), block_end) != lines:
        raise SipError("bare CR in the message head")
    found = index.get("content-length")
    length = _content_length([span[2] for span in found]) if found else None
    # Tuples of spans, not lists: the collector stops tracking tuples (and then the dict) that hold only
    # str, bytes and int, so a message held for a delay costs its full passes a few objects, not a dozen.
    return start, tuple(spans), index, length


def build_message(raw: bytes, head: tuple, body_start: int, trailing: bytes) -> Message:
    """Wrap ``raw`` (a whole message) with its scanned ``head`` (:func:`scan_head`)."""
    start, spans, index, length = head
    method, uri, status, reason, version = start
    return Message._create(raw, method=method, request_uri=uri, status=status, reason_phrase=reason,
                           version=version, body_start=body_start, trailing=trailing, content_length=length,
                           index=(spans, index))


def _head_end(data: bytes) -> int:
    if data[:1] in (b"\r", b"\n", b" ", b"\t"):
        raise SipError("message starts with whitespace")
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        raise SipError("no empty line ends the message head")
    return head_end


def parse_message(data: bytes, *, max_headers: int = MAX_HEADERS) -> Message:
    """Parse exactly one complete message.

    If Content-Length is present the body must have exactly that length;
    without it the body is the rest of ``data``.
    """
    data = bytes(data)
    head_end = _head_end(data)
    head = scan_head(data, head_end, max_headers)
    length = head[3]
    if length is not None and length != len(data) - head_end - 4:
        raise SipError(
            f"Content-Length {length} but the body has {len(data) - head_end - 4} octets"
        )
    return build_message(data, head, head_end + 4, b"")


def parse_datagram(data: bytes, *, max_headers: int = MAX_HEADERS) -> Message | KeepAlive:
    """Parse one UDP datagram (RFC 3261 §18.3).

    A non-empty datagram of only CR/LF/SP/HT is a :class:`KeepAlive`. With a
    Content-Length the body is that many octets and further octets are
    ignored (exposed as :attr:`Message.trailing`, RFC 4475 §3.1.1.8 dblreq);
    a Content-Length larger than the datagram raises (RFC 4475 §3.1.2.2
    clerr). Without Content-Length the body is the rest of the datagram.
    """
    data = bytes(data)
    if len(data) > MAX_DATAGRAM_SIZE:
        raise SipError("datagram larger than 65535 octets", status_hint=513)
    if not data:
        raise SipError("empty datagram")
    if not data.strip(b"\r\n \t"):
        return KeepAlive(data)
    head_end = _head_end(data)
    head = scan_head(data, head_end, max_headers)
    length = head[3]
    body_start = head_end + 4
    if length is None:
        return build_message(data, head, body_start, b"")
    end = body_start + length
    if end > len(data):
        raise SipError(
            f"Content-Length {length} larger than the {len(data) - body_start} octets received"
        )
    if end == len(data):
        return build_message(data, head, body_start, b"")
    return build_message(data[:end], head, body_start, data[end:])
