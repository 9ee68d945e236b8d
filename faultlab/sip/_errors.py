"""The one error type of :mod:`faultlab.sip`, and the framer's sentinels.

Like h11's ``ProtocolError``, :class:`SipError` carries a ``status_hint``: the
SIP status code a server would answer with if it rejected the input (RFC 3261
§21.4). Any other exception escaping this package while it reads peer input
is a bug.
"""

from __future__ import annotations

__all__ = ["SipError", "NEED_DATA", "EOF"]


class SipError(Exception):
    """Input that is not a well-formed SIP message (or header value).

    ``status_hint`` is the response status a server would send:

    * 400 Bad Request: malformed syntax (the default);
    * 413 Request Entity Too Large: a message or its head exceeds the framer's
      ``max_message_size``, or it has more header lines than ``max_headers``
      (SIP has no 431; 413 is the nearest code, RFC 3261 §21.4.11);
    * 416 Unsupported URI Scheme: :func:`parse_uri` on a non-SIP URI;
    * 513 Message Too Large: a UDP datagram larger than 65 535 octets.
    """

    def __init__(self, msg: str, *, status_hint: int = 400) -> None:
        super().__init__(msg)
        self.status_hint = status_hint

    def __repr__(self) -> str:
        return f"SipError({str(self)!r}, status_hint={self.status_hint})"


class _Sentinel:
    """A named singleton: its repr is its name (h11 uses the same trick)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""Returned by :meth:`StreamFramer.next_event` when it needs more bytes."""

EOF = _Sentinel("EOF")
"""Returned by :meth:`StreamFramer.next_event` once the peer closed and every
buffered byte was consumed."""
