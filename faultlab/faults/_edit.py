"""Header edits of a forwarded message (``set_headers`` / ``remove_headers``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..sip import Message
from ..sip._abnf import canonical_key

__all__ = ["edit_headers"]


def edit_headers(msg: Message, set_headers: Sequence[tuple[str, str]], remove_headers: Sequence[str]) -> bytes:
    """``msg.raw`` with headers set and removed; every other byte unchanged.

    ``set_headers``: each ``(name, value)`` replaces every field of that name
    (compact forms included) by one ``name: value`` line where the first one
    was, or is added after the last header. ``remove_headers``: every field of
    each name goes. The body is untouched, so Content-Length stays right.
    """
    raw = msg.raw
    to_set = {canonical_key(n): (n, v) for n, v in set_headers}
    to_remove = {canonical_key(n) for n in remove_headers}
    pos = raw.index(b"\r\n") + 2
    out = [raw[:pos]]
    placed = set()
    for h in msg.headers:
        out.append(raw[pos : h.start])
        pos = h.end
        if h.key in to_remove:
            continue
        if h.key in to_set:
            if h.key not in placed:
                name, value = to_set[h.key]
                out.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
                placed.add(h.key)
            continue
        out.append(raw[h.start : h.end])
    for key, (name, value) in to_set.items():
        if key not in placed:
            out.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    out.append(raw[pos:])
    return b"".join(out)
