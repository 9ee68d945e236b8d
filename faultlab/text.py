"""The one rule for text that came off the network: exact inside, readable and safe wherever it is written.

faultlab's SIP code decodes header text as UTF-8 with ``errors="surrogateescape"`` (:mod:`faultlab.sip`): a byte
that is not UTF-8, say ``0xbd``, becomes the lone surrogate ``U+DCBD``, so that the bytes come back exactly when a
message is re-encoded for the wire. A lone surrogate is not a character, though: a UTF-8 file, a JSON answer or a
terminal cannot take it. So wherever such text leaves the message path (the timeline and its trace file, the
console, the ladder, the control API), it goes through :func:`readable` first, which writes each lone surrogate as
a visible escape:

* ``U+DC80``..``U+DCFF`` (a byte that was not UTF-8) as ``\\xNN``, the byte: a Call-ID ``abc<0xbd>`` reads ``abc\\xbd``;
* any other lone surrogate (``U+D800``..``U+DFFF``, e.g. from a JSON ``"\\ud800"``) as ``\\uXXXX``.

Everything else stays as it is (JSON escapes what it must; :func:`printable` adds the terminal's escapes). The
bytes themselves are kept exactly where a record keeps bytes (a trace event's ``raw``).

:func:`load_json` is the one way untrusted JSON is read (API bodies, device events): it refuses, with a
:class:`ValueError` that says why, what is not UTF-8, not JSON, nested deeper than ``max_depth`` (32) or holds a
lone surrogate (a JSON ``"\\udcbd"``): nothing that comes in through the API is then unwritable.

Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "clean", "json_depth", "load_json", "lone_surrogate", "printable", "readable"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

#: JSON nested deeper than this is refused: faultlab's own documents (a rule, a device event) need a handful.
MAX_JSON_DEPTH = 32


def _escape(match: re.Match[str]) -> str:
    c = ord(match.group())
    if 0xDC80 <= c <= 0xDCFF:
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def readable(text: str) -> str:
    """``text`` with every lone surrogate written as a visible escape (``\\xbd``, ``\\ud800``): safe to encode as
    UTF-8. Text without one (nearly all) is returned as it is, at the cost of one check."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(_escape, text)


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (ESC, CR...), bidi overrides and lone surrogates,
    which came off the network, written as escapes."""
    return _CONTROL.sub(_escape, text)


_SCALARS = frozenset({int, float, bool, type(None)})


def _plain(d: dict) -> bool:
    """A flat dict of ASCII keys and ASCII or non-text scalars (nearly every event's detail): nothing to clean."""
    for k, v in d.items():
        if type(k) is not str or not k.isascii():
            return False
        t = type(v)
        if t is str:
            if not v.isascii():
                return False
        elif t not in _SCALARS:
            return False
    return True


def clean(value: Any) -> Any:
    """``value`` (a JSON-like tree of dicts, lists, tuples and scalars) with :func:`readable` applied to every
    string in it, keys included; the same object when nothing needed it. Other objects are left as they are."""
    if type(value) is dict and _plain(value):
        return value
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        out = None
        for i, (k, v) in enumerate(value.items()):
            k2, v2 = clean(k), clean(v)
            if out is None and (k2 is not k or v2 is not v):
                out = dict(list(value.items())[:i])
            if out is not None:
                out[k2] = v2
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = [clean(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a JSON-like tree's strings (keys included), escaped (``\\ud800``); None if none."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                found = _SURROGATE.search(v)
                if found is not None:
                    return f"\\u{ord(found.group()):04x}"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def json_depth(value: Any) -> int:
    """How deep a parsed JSON value nests (a scalar: 0, ``[]``: 1, ``[[1]]``: 2); iterative, for any depth."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
            deepest = max(deepest, depth + 1)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON. A :class:`ValueError` says what is wrong, worded to follow "the body is": "not UTF-8
    (...)", "not valid JSON (...)" (``NaN`` and ``Infinity`` included), "nested deeper than 32 levels", or "not
    text: ..." for a string holding a lone surrogate (``"\\ud800"``, which is not a character)."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    found = lone_surrogate(value)
    if found is not None:
        raise ValueError(f"not text: a string holds the lone surrogate {found}, which is not a character "
                         "(send UTF-8; a \\u escape of a character beyond U+FFFF takes a surrogate pair)")
    return value
