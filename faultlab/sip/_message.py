"""Parsed SIP messages (RFC 3261 §7) and the two whole-message parsers.

Parsing is split in two for speed: :func:`parse_message` validates the start
line and the *shape* of the header block with two regular expressions and
reads Content-Length; the :class:`Header` objects and every typed accessor
are built on first use and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ._abnf import (
    CONTENT_LENGTH_RE,
    CONTENT_LENGTH_VALUE_RE,
    FOLD_RE,
    HEADER_BLOCK_RE,
    HEADER_FIELD_RE,
    LIST_HEADERS,
    REQUEST_LINE_RE,
    STATUS_LINE_RE,
    canonical_key,
)
from ._errors import SipError
from ._values import (
    CSeq,
    NameAddr,
    Reason,
    Via,
    parse_cseq,
    parse_delta_seconds,
    parse_name_addr,
    parse_reason,
    parse_via,
    split_list,
)

__all__ = [
    "Header",
    "KeepAlive",
    "Message",
    "parse_message",
    "parse_datagram",
    "MAX_HEADERS",
    "MAX_DATAGRAM_SIZE",
]

MAX_HEADERS = 256
"""Default limit on header *lines* (continuation lines count). Apache httpd's
``LimitRequestFields`` defaults to 100 for HTTP; SIP requests carry longer
Via/Record-Route/Route chains (RFC 4475 longreq.sip has 44 lines), so
faultlab allows 256. Exceeding it is a :class:`SipError` with status_hint 413."""

MAX_DATAGRAM_SIZE = 65535
"""The largest UDP payload; a bigger "datagram" raises SipError 513."""


@dataclass(frozen=True)
class KeepAlive:
    """A CRLF keep-alive (RFC 5626 §3.5.1): ``b"\\r\\n\\r\\n"`` ping or ``b"\\r\\n"`` pong.

    :func:`parse_datagram` returns any whitespace-only datagram as-is.
    """

    raw: bytes


@dataclass(frozen=True)
class Header:
    """One header field as it appears in :attr:`Message.raw`.

    ``name`` is as written, ``key`` the canonical lower-case full name
    (compact forms expanded, RFC 3261 §7.3.3). ``value`` is unfolded: each
    LWS containing a line fold becomes one SP (RFC 3261 §7.3.1), surrounding
    whitespace is stripped, and bytes are decoded as UTF-8 with
    ``errors="surrogateescape"`` (so ``value.encode("utf-8",
    "surrogateescape")`` gives the bytes back). ``start``/``end`` are byte
    offsets in ``raw`` of the whole field including its final CRLF.
    """

    name: str
    key: str
    value: str
    start: int
    end: int


_UNSET: Any = object()

# name as written (bytes) -> (name, canonical key); bounded so that a peer
# inventing header names cannot grow it without limit.
_NAMES: dict[bytes, tuple[str, str]] = {}
_NAMES_MAX = 512


def _name_key(name_b: bytes) -> tuple[str, str]:
    name = name_b.decode("ascii")
    result = (name, canonical_key(name))
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name_b] = result
    return result


def _cached(fn: Callable[["Message"], Any]) -> property:
    """A read-only property computed once; exceptions are not cached."""
    name = fn.__name__

    def get(self: "Message") -> Any:
        cache = self._cache
        value = cache.get(name, _UNSET)
        if value is _UNSET:
            value = cache[name] = fn(self)
        return value

    get.__doc__ = fn.__doc__
    get.__name__ = name
    return property(get)


class Message:
    """An immutable SIP request or response; build it with :func:`parse_message`,
    :func:`parse_datagram` or :class:`StreamFramer`.

    Typed accessors (``call_id``, ``cseq``, ``top_via``, ...) are computed on
    first use; each returns ``None`` when its header is absent and raises
    :class:`SipError` when it is present but malformed.
    """

    __slots__ = (
        "_raw",
        "_is_request",
        "_method",
        "_request_uri",
        "_status",
        "_reason_phrase",
        "_version",
        "_body_start",
        "_trailing",
        "_content_length",
        "_headers",
        "_index",
        "_cache",
    )

    def __init__(self) -> None:  # pragma: no cover - guard
        raise TypeError("Message objects are created by parse_message/parse_datagram/StreamFramer")

    # -- plain fields --------------------------------------------------

    @property
    def raw(self) -> bytes:
        """Exactly the bytes of this message (head and body)."""
        return self._raw

    @property
    def is_request(self) -> bool:
        return self._is_request

    @property
    def method(self) -> str | None:
        return self._method

    @property
    def request_uri(self) -> str | None:
        return self._request_uri

    @property
    def status(self) -> int | None:
        return self._status

    @property
    def reason_phrase(self) -> str | None:
        return self._reason_phrase

    @property
    def version(self) -> str:
        return self._version

    @property
    def body_start(self) -> int:
        """Offset of the body in ``raw`` (the length of the head incl. the empty line)."""
        return self._body_start

    @property
    def body(self) -> bytes:
        return self._raw[self._body_start :]

    @property
    def trailing(self) -> bytes:
        """Octets after the Content-Length body in a datagram, ignored per RFC 3261 §18.3."""
        return self._trailing

    @property
    def headers(self) -> tuple[Header, ...]:
        """Every header field, in order."""
        headers = self._headers
        if headers is None:
            headers = self._headers = self._build_headers()
        return headers

    def _build_headers(self) -> tuple[Header, ...]:
        raw = self._raw
        pos = raw.index(b"\r\n") + 2
        out = []
        append = out.append
        index: dict[str, list[Header]] = {}
        names = _NAMES
        new = object.__new__
        setattr_ = object.__setattr__
        for prefix, name_b, value_b in HEADER_FIELD_RE.findall(raw, pos, self._body_start - 2):
            name_key = names.get(name_b)
            if name_key is None:
                name_key = _name_key(name_b)
            value = value_b[:-2].decode("utf-8", "surrogateescape")
            if "\r" in value:
                value = FOLD_RE.sub(" ", value)
            end = pos + len(prefix) + len(value_b)
            # Header(...) minus the frozen-dataclass __init__, which costs 3x more.
            h = new(Header)
            setattr_(
                h,
                "__dict__",
                {
                    "name": name_key[0],
                    "key": name_key[1],
                    "value": value.strip(" \t"),
                    "start": pos,
                    "end": end,
                },
            )
            append(h)
            same = index.get(name_key[1])
            if same is None:
                index[name_key[1]] = [h]
            else:
                same.append(h)
            pos = end
        self._index = index
        return tuple(out)

    def _by_key(self) -> dict[str, list[Header]]:
        index = self._index
        if index is None:
            self._headers = self._build_headers()
            index = self._index
        return index

    # -- generic lookup --------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first header value named ``name`` (any case, compact or full)."""
        found = self._by_key().get(canonical_key(name))
        return found[0].value if found else None

    def get_all(self, name: str) -> list[str]:
        """All values of ``name`` across its header lines, in order.

        Headers whose grammar is a comma list (:data:`LIST_HEADERS`: Via,
        Route, Contact, Allow, ...) are split at top-level commas (outside
        quoted strings and ``<>``); others give one value per line.
        """
        key = canonical_key(name)
        found = self._by_key().get(key)
        if not found:
            return []
        if key in LIST_HEADERS:
            out: list[str] = []
            for h in found:
                out.extend(split_list(h.value))
            return out
        return [h.value for h in found]

    def header_fields(self, name: str) -> list[Header]:
        """Every :class:`Header` named ``name`` (any case, compact or full)."""
        return list(self._by_key().get(canonical_key(name), ()))

    # -- typed accessors -------------------------------------------------

    @property
    def content_length(self) -> int | None:
        """The Content-Length value (validated while framing), or ``None``."""
        return self._content_length

    @_cached
    def call_id(self) -> str | None:
        """Call-ID (RFC 3261 §20.8); must be non-empty and contain no LWS."""
        value = self.get("call-id")
        if value is None:
            return None
        if not value or any(c in value for c in " \t"):
            raise SipError(f"malformed Call-ID: {value!r}")
        return value

    @_cached
    def cseq(self) -> CSeq | None:
        """CSeq (RFC 3261 §20.16)."""
        value = self.get("cseq")
        return None if value is None else parse_cseq(value)

    @_cached
    def vias(self) -> list[Via]:
        """Every Via value, topmost first (RFC 3261 §20.42)."""
        return [parse_via(v) for v in self.get_all("via")]

    @_cached
    def top_via(self) -> Via | None:
        """The topmost Via value."""
        values = self.get_all("via")
        return parse_via(values[0]) if values else None

    @_cached
    def from_addr(self) -> NameAddr | None:
        value = self.get("from")
        return None if value is None else parse_name_addr(value, "From")

    @_cached
    def to_addr(self) -> NameAddr | None:
        value = self.get("to")
        return None if value is None else parse_name_addr(value, "To")

    @property
    def from_tag(self) -> str | None:
        addr = self.from_addr
        return None if addr is None else addr.params.get("tag")

    @property
    def to_tag(self) -> str | None:
        addr = self.to_addr
        return None if addr is None else addr.params.get("tag")

    @_cached
    def reason(self) -> Reason | None:
        """The first Reason value (RFC 3326)."""
        values = self.get_all("reason")
        return parse_reason(values[0]) if values else None

    @_cached
    def contacts(self) -> list[NameAddr]:
        """Every Contact value (RFC 3261 §20.10); ``*`` is ``NameAddr(None, "*", {})``."""
        return [parse_name_addr(v, "Contact") for v in self.get_all("contact")]

    @_cached
    def expires(self) -> int | None:
        """The Expires header (RFC 3261 §20.19) as delta-seconds."""
        value = self.get("expires")
        return None if value is None else parse_delta_seconds(value, "Expires")

    # -- display ---------------------------------------------------------

    def summary(self) -> str:
        """Short human text, e.g. ``INVITE sip:bob@x cseq=1 INVITE call=abc``. Never raises."""
        try:
            cseq = self.cseq
            cseq_s = f"{cseq.number} {cseq.method}" if cseq else "?"
        except SipError:
            cseq_s = "?"
        try:
            call = self.call_id or "?"
        except SipError:
            call = "?"
        if self._is_request:
            first = f"{self._method} {self._request_uri}"
        else:
            first = f"{self._status} {self._reason_phrase}".rstrip()
        return f"{first} cseq={cseq_s} call={call}"

    def __repr__(self) -> str:
        return f"<Message {self.summary()} ({len(self._raw)} bytes)>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._raw == other._raw and self._trailing == other._trailing

    def __hash__(self) -> int:
        return hash(self._raw)


# ----------------------------------------------------------------------------
# construction


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
    m = REQUEST_LINE_RE.match(raw)
    if m is not None:
        method, uri, version = m.groups()
        status = reason = None
        is_request = True
    else:
        m = STATUS_LINE_RE.match(raw)
        if m is None:
            line = raw[: raw.find(b"\r\n")][:80]
            raise SipError(f"malformed start line: {line!r}")
        version, status_b, reason_b = m.groups()
        is_request = False
        method = uri = None
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
    msg = object.__new__(Message)
    msg._raw = raw
    msg._is_request = is_request
    if is_request:
        msg._method = method.decode("ascii")
        msg._request_uri = uri.decode("utf-8", "surrogateescape")
        msg._status = None
        msg._reason_phrase = None
    else:
        msg._method = None
        msg._request_uri = None
        msg._status = status
        msg._reason_phrase = reason
    msg._version = version.decode("ascii")
    msg._body_start = head_end + 4
    msg._trailing = trailing
    msg._content_length = content_length
    msg._headers = None
    msg._index = None
    msg._cache = {}
    return msg


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
