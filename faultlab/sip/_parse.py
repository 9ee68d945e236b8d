"""Parsing whole SIP messages (RFC 3261 §7) from one buffer or datagram.

Only the start line and the *shape* of the head are checked here, with a few
regular expressions (each header line is ``token *WSP ":" value CRLF`` plus
folded continuation lines); header values are read lazily by
:class:`~faultlab.sip._message.Message`.
"""

from __future__ import annotations

from ._abnf import (
    CONTENT_LENGTH_RE,
    CONTENT_LENGTH_VALUE_RE,
    HEADER_BLOCK_RE,
    REQUEST_LINE_RE,
    STATUS_LINE_RE,
)
from ._errors import SipError
from ._message import KeepAlive, Message

__all__ = [
    "parse_message",
    "parse_datagram",
    "build_message",
    "content_length_of",
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
    found = CONTENT_LENGTH_RE.findall(raw[: head_end + 2].lower())
    if not found:
        return None
    length = None
    for value in found:
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


def build_message(
    raw: bytes, head_end: int, content_length: int | None, trailing: bytes, max_headers: int
) -> Message:
    """Validate the head of ``raw`` and wrap it; ``raw[head_end:head_end+4]``
    is the CRLFCRLF ending the head. The caller framed the body."""
    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str | None = None
    m = REQUEST_LINE_RE.match(raw)
    if m is not None:
        method_b, uri_b, version = m.groups()
        method = method_b.decode("ascii")
        uri = uri_b.decode("utf-8", "surrogateescape")
    else:
        m = STATUS_LINE_RE.match(raw)
        if m is None:
            line = raw[: raw.find(b"\r\n")][:80]
            raise SipError(f"malformed start line: {line!r}")
        version, status_b, reason_b = m.groups()
        status = int(status_b)
        reason = "" if reason_b is None else reason_b.decode("utf-8", "surrogateescape")
    line_end = m.end()
    block_end = head_end + 2
    if line_end < block_end:
        lines = raw.count(b"\n", line_end, block_end)
        if lines > max_headers:
            raise SipError(f"more than {max_headers} header lines", status_hint=413)
        block = HEADER_BLOCK_RE.match(raw, line_end, block_end)
        if block.end() != block_end:  # always matches (it may match nothing)
            bad = block.end()
            line = raw[bad : raw.find(b"\n", bad)][:80]
            raise SipError(f"malformed header line: {line!r}")
        if raw.count(b"\r", line_end, block_end) != lines:
            raise SipError("bare CR in the message head")
    return Message._create(
        raw,
        method=method,
        request_uri=uri,
        status=status,
        reason_phrase=reason,
        version=version.decode("ascii"),
        body_start=head_end + 4,
        trailing=trailing,
        content_length=content_length,
    )


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
    length = content_length_of(data, head_end)
    if length is not None and length != len(data) - head_end - 4:
        raise SipError(
            f"Content-Length {length} but the body has {len(data) - head_end - 4} octets"
        )
    return build_message(data, head_end, length, b"", max_headers)


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
    length = content_length_of(data, head_end)
    body_start = head_end + 4
    if length is None:
        return build_message(data, head_end, None, b"", max_headers)
    end = body_start + length
    if end > len(data):
        raise SipError(
            f"Content-Length {length} larger than the {len(data) - body_start} octets received"
        )
    return build_message(data[:end], head_end, length, data[end:], max_headers)
