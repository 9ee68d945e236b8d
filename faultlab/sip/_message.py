"""The parsed SIP message (RFC 3261 §7) and its header fields.

The parser (``_parse.py``) validates the start line and the *shape* of the
header block and finds each field's span in one pass; header values,
:class:`Header` objects and every typed accessor are built on first use and
cached here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ._abnf import (
    FOLD_RE,
    LIST_HEADERS,
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

__all__ = ["Header", "KeepAlive", "Message"]


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


# Names the relay asks for on every message, already canonical.
_KEYS = {k: k for k in ("via", "route", "record-route", "call-id", "cseq", "from", "to", "contact",
                        "expires", "reason", "max-forwards", "content-length")}


def _value(value_b: bytes) -> str:
    """A header value as :class:`Header` gives it: unfolded, stripped, decoded."""
    value = value_b[:-2].decode("utf-8", "surrogateescape")
    if "\r" in value:
        value = FOLD_RE.sub(" ", value)
    return value.strip(" \t")


def _header(span: tuple) -> Header:
    name, key, value_b, start, end = span
    # Header(...) minus the frozen-dataclass __init__, which costs 3x more.
    h = object.__new__(Header)
    object.__setattr__(h, "__dict__", {"name": name, "key": key, "value": _value(value_b),
                                       "start": start, "end": end})
    return h


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

    def __init__(self) -> None:
        raise TypeError("Message objects are created by parse_message/parse_datagram/StreamFramer")

    @classmethod
    def _create(
        cls,
        raw: bytes,
        *,
        method: str | None,
        request_uri: str | None,
        status: int | None,
        reason_phrase: str | None,
        version: str,
        body_start: int,
        trailing: bytes,
        content_length: int | None,
        index: tuple[tuple, dict[str, tuple]],
    ) -> "Message":
        """Wrap a head the parser (``_parse.scan_head``) has validated and indexed."""
        msg = object.__new__(cls)
        msg._raw = raw
        msg._is_request = method is not None
        msg._method = method
        msg._request_uri = request_uri
        msg._status = status
        msg._reason_phrase = reason_phrase
        msg._version = version
        msg._body_start = body_start
        msg._trailing = trailing
        msg._content_length = content_length
        msg._headers = None
        msg._index = index
        msg._cache = {}
        return msg

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
            headers = self._headers = tuple(_header(span) for span in self._index[0])
        return headers

    def _spans(self) -> tuple[tuple, dict[str, tuple]]:
        """Where each header field is (found by the parser's one pass over the head):
        ``(name, key, value bytes, start, end)`` in order, and the same grouped by key. Values
        are decoded only when asked for: a relay reads a handful of the headers of each message."""
        return self._index

    # -- generic lookup --------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first header value named ``name`` (any case, compact or full)."""
        found = self._index[1].get(_KEYS.get(name) or canonical_key(name))
        return _value(found[0][2]) if found else None

    def get_all(self, name: str) -> list[str]:
        """All values of ``name`` across its header lines, in order.

        Headers whose grammar is a comma list (:data:`LIST_HEADERS`: Via,
        Route, Contact, Allow, ...) are split at top-level commas (outside
        quoted strings and ``<>``); others give one value per line.
        """
        key = _KEYS.get(name) or canonical_key(name)
        found = self._index[1].get(key)
        if not found:
            return []
        if key not in LIST_HEADERS:
            return [_value(span[2]) for span in found]
        cached = self._cache.get("all:" + key)
        if cached is None:
            cached = self._cache["all:" + key] = [v for span in found for v in split_list(_value(span[2]))]
        return list(cached)

    def header_fields(self, name: str) -> list[Header]:
        """Every :class:`Header` named ``name`` (any case, compact or full)."""
        return [_header(span) for span in self._index[1].get(canonical_key(name), ())]

    def transaction_key(self) -> tuple[bytes | None, bytes | None]:
        """The Call-ID and CSeq as written (first of each; whitespace trimmed, runs of it as one SP), not
        decoded: what tells a transaction's request and responses apart from others' (None: absent)."""
        index = self._index[1]
        call_id = index.get("call-id")
        cseq = index.get("cseq")
        return (call_id[0][2].strip() if call_id else None, b" ".join(cseq[0][2].split()) if cseq else None)

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
