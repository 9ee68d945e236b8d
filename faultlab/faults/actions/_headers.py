"""Header names and values in action tables, and header edits of a forwarded message
(``set_headers`` / ``remove_headers``, which go with every kind that forwards)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...sip import Message, SipError, parse_message
from ...sip._abnf import TOKEN_RE, canonical_key
from ...tables import Table
from .._decision import Draft
from .._edit import edit_headers

__all__ = ["header_name", "header_value", "headers_table", "parse_edits", "check_edits", "apply_edits", "EDIT_KEYS"]

EDIT_KEYS = ("set_headers", "remove_headers")
_REMOVE_ALLOWED = "a header name or a list of them, e.g. [\"Reason\"]"


def header_name(name: str) -> str:
    if not TOKEN_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name (a token)")
    return name


def header_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError
    text = str(value)
    if "\r" in text or "\n" in text:
        raise ValueError("a header value cannot contain CR or LF")
    return text


def headers_table(t: Table, name: str) -> tuple[tuple[str, str], ...]:
    """``{ "Name" = "value", ... }`` under ``name``: headers to add or set (never Content-Length)."""
    value = t.data[name]
    if not isinstance(value, Mapping) or not value:
        raise t.error(name, "a table of header name = \"value\", e.g. { \"Retry-After\" = \"30\" }")
    out = []
    for hname, hvalue in value.items():
        key = t.key(name) + "." + str(hname)
        try:
            header_name(hname)
        except ValueError as e:
            raise t.error_at(key, hname, str(e)) from None
        if canonical_key(hname) == "content-length":
            raise t.error_at(key, hname, "Content-Length is computed by faultlab and cannot be set")
        try:
            out.append((hname, header_value(hvalue)))
        except (TypeError, ValueError) as e:
            raise t.error_at(key, hvalue, f"a string (or whole number) {e}".rstrip()) from None
    return tuple(out)


def parse_edits(t: Table) -> dict[str, Any]:
    """The header-edit fields of an action (``set_headers``, ``remove_headers``)."""
    kw: dict[str, Any] = {}
    if "set_headers" in t:
        kw["set_headers"] = headers_table(t, "set_headers")
    if "remove_headers" in t:
        names = []
        value = t.data["remove_headers"]
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not TOKEN_RE.fullmatch(item):
                raise t.error("remove_headers", _REMOVE_ALLOWED)
            if canonical_key(item) == "content-length":
                raise t.error("remove_headers", "Content-Length is computed by faultlab and cannot be removed")
            names.append(item)
        if not names:
            raise t.error("remove_headers", _REMOVE_ALLOWED)
        kw["remove_headers"] = tuple(names)
    return kw


def check_edits(action: Any, forwards: bool, t: Table, on: str) -> None:
    """Header edits need a forwarded message, and a header is either set or removed."""
    if not action.edits:
        return
    if on in ("connect", "keep-alive"):
        raise t.error(EDIT_KEYS[0] if "set_headers" in t else EDIT_KEYS[1], f"a {on} rule has no message to edit")
    if not forwards:
        raise t.error(
            "set_headers" if "set_headers" in t else "remove_headers",
            f"header edits apply to a forwarded message, and {action.kind!r} forwards nothing",
        )
    set_keys = {canonical_key(n) for n, _ in action.set_headers}
    for n in action.remove_headers:
        if canonical_key(n) in set_keys:
            raise t.error("remove_headers", f"{n!r} is also in set_headers: set replaces it already")


def apply_edits(draft: Draft, current: Message | None, action: Any, detail: dict[str, Any]) -> Message | None:
    """``draft.data`` with the action's header edits; what was done goes into ``detail``. Returns the parsed
    form of ``draft.data`` when still known (None after an edit). A message that cannot be edited is
    forwarded as it is, with ``edit_error`` in ``detail``."""
    data = draft.data
    assert data is not None
    set_headers, remove_headers = action.set_headers, action.remove_headers
    try:
        if current is None or current.raw != data:
            current = parse_message(data)
        removed = [n for n in remove_headers if current.header_fields(n)]
        draft.data = edit_headers(current, set_headers, remove_headers)
        if set_headers:
            detail["set"] = {n: v for n, v in set_headers}
        if remove_headers:
            detail["removed"] = removed
        return None
    except (SipError, ValueError) as e:
        detail["edit_error"] = str(e)
        return current
