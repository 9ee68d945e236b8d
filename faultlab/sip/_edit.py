"""Byte-exact edits of a message's header fields (for a proxy's Via/Route work).

Each edit returns new bytes that differ from ``msg.raw`` only in the edited
field: other headers keep their spelling, folding and order, and the body is
untouched (so Content-Length stays right; RFC 3261 §16.6 asks a proxy to
change nothing else).
"""

from __future__ import annotations

from ._abnf import LIST_HEADERS, canonical_key
from ._build import check_header
from ._errors import SipError
from ._message import Message
from ._values import first_top_level_comma

__all__ = ["add_top_header", "remove_top_value"]


def add_top_header(msg: Message, name: str, value: str) -> bytes:
    """``msg.raw`` with ``name: value`` inserted as the topmost value of ``name``.

    The line goes right before the first field with the same canonical name
    (so ``"Via"`` goes above a compact ``v:``), or right after the start line
    if there is none. Raises ``ValueError`` for a name that is not a token or
    a value containing CR/LF.
    """
    check_header(name, value)
    key = canonical_key(name)
    raw = msg.raw
    fields = msg.header_fields(key)
    pos = fields[0].start if fields else raw.index(b"\r\n") + 2
    line = f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
    return raw[:pos] + line + raw[pos:]


_LWS = " \t\r\n"


def remove_top_value(msg: Message, name: str) -> bytes:
    """``msg.raw`` without the first value of the first ``name`` field.

    For a list header (Via, Route, Record-Route, ...) whose first field holds
    several values, only the first value, its comma and the LWS after it
    are removed: ``Via: a, b`` becomes ``Via: b``. Otherwise the whole field
    (with its folded continuation lines) goes. Raises :class:`SipError` if
    there is no such header.
    """
    key = canonical_key(name)
    fields = msg.header_fields(key)
    if not fields:
        raise SipError(f"no {name} header to remove")
    field = fields[0]
    raw = msg.raw
    if key in LIST_HEADERS:
        # latin-1 maps bytes 1:1 to characters, so indices are byte offsets
        text = raw[field.start : field.end].decode("latin-1")
        colon = text.index(":")
        first = colon + 1
        while first < len(text) and text[first] in _LWS:
            first += 1
        comma = first_top_level_comma(text, first)
        if comma >= 0 and text[comma:].strip(_LWS + ","):
            # drop the comma, LWS and empty elements ("a,, b") up to the next value
            nxt = comma
            while text[nxt] in _LWS or text[nxt] == ",":
                nxt += 1
            return raw[: field.start + first] + raw[field.start + nxt :]
    return raw[: field.start] + raw[field.end :]
