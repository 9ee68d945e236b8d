"""A rule's ``match`` table (TOML or API JSON) -> validated :class:`Match`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..addr import parse_device_address
from ..sip import SipError, parse_uri
from ..sip._abnf import TOKEN_RE, canonical_key
from ..tables import Table, boolean, choice, integer, listed, one_of
from ._model import DIRECTIONS, TRANSPORTS, DeviceSpec, HeaderTest, Match, Occurrence, StatusSet, Window
from ._units import DURATION_ALLOWED, RATE_ALLOWED, parse_duration, parse_rate
from .actions._headers import header_name

__all__ = ["parse_match", "KNOWN_METHODS", "MATCH_KEYS"]

KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL REGISTER OPTIONS PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER MESSAGE UPDATE".split()
)
"""Methods of RFC 3261 and its common extensions. Any other token is accepted
too (extension methods), but a lower-case spelling of one of these is refused:
method names are case-sensitive (RFC 3261 §7.1) and would never match."""

MATCH_KEYS = (
    "on",
    "direction",
    "transport",
    "method",
    "status",
    "cseq_method",
    "in_dialog",
    "headers",
    "body",
    "device",
    "occurrence",
    "count",
    "probability",
    "window",
    "keep_alive",
)
CONNECT_MATCH_KEYS = ("on", "transport", "device", "occurrence", "probability", "window")
OCCURRENCE_KEYS = ("first", "every", "after", "per")
WINDOW_KEYS = ("start", "for", "from")
KEEP_ALIVE_MATCH_KEYS = ("on", "keep_alive", "direction", "transport", "device", "occurrence", "probability", "window")
KEEP_ALIVES = ("ping", "pong")
ONS = ("message", "connect", "keep-alive")
PER_VALUES = ("rule", "device", "flow", "call", "transaction")


# ---------------------------------------------------------------------------
# converters (raise ValueError/TypeError; the table adds the context)


def _methods(value: Any) -> frozenset[str]:
    out = set()
    for item in listed(value):
        if not isinstance(item, str) or not TOKEN_RE.fullmatch(item):
            raise ValueError(f"{item!r} is not a method token")
        if item not in KNOWN_METHODS and item.upper() in KNOWN_METHODS:
            raise ValueError(f"method names are case-sensitive (RFC 3261 §7.1): write {item.upper()!r}")
        out.add(item)
    return frozenset(out)


_METHOD_ALLOWED = "a method name or a list of them, e.g. \"REGISTER\" or [\"INVITE\", \"CANCEL\"]"


def _transports(value: Any) -> frozenset[str]:
    out = set()
    for item in listed(value):
        if not isinstance(item, str) or item.lower() not in TRANSPORTS:
            raise ValueError
        out.add(item.lower())
    return frozenset(out)


def _status(value: Any) -> StatusSet:
    codes: set[int] = set()
    classes: set[int] = set()
    for item in listed(value):
        if isinstance(item, bool):
            raise TypeError
        if isinstance(item, int):
            if not 100 <= item <= 699:
                raise ValueError
            codes.add(item)
        elif isinstance(item, str) and re.fullmatch(r"[1-6]xx", item.lower()):
            classes.add(int(item[0]))
        elif isinstance(item, str) and re.fullmatch(r"[1-6][0-9][0-9]", item):
            codes.add(int(item))
        else:
            raise ValueError
    return StatusSet(frozenset(codes), frozenset(classes))


_STATUS_ALLOWED = "a status code 100-699, a class like \"5xx\", or a list of them, e.g. [\"4xx\", 503]"


def _regex(value: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise TypeError
    return re.compile(value)


def _device(value: Any) -> tuple[DeviceSpec, ...]:
    out = []
    for item in listed(value):
        if not isinstance(item, str):
            raise TypeError
        out.append(_device_one(item))
    return tuple(out)


def _device_one(text: str) -> DeviceSpec:
    """One ``device`` value: a SIP AOR here, an address or network through :func:`faultlab.addr.parse_device_address`."""
    s = text.strip()
    if s.lower().startswith(("sip:", "sips:")):
        try:
            uri = parse_uri(s)
        except SipError as e:
            raise ValueError(str(e)) from None
        return DeviceSpec(text=text, aor_user=uri.user, aor_host=uri.host.lower(), port=uri.port)
    network, port = parse_device_address(s)
    return DeviceSpec(text=text, network=network, port=port)


_DEVICE_ALLOWED = (
    "an IP address (\"192.0.2.7\", \"192.0.2.7:5060\", \"[2001:db8::7]:5060\"), a network (\"10.0.0.0/8\") "
    "or a SIP AOR (\"sip:alice@example.com\"), or a list of them"
)


# ---------------------------------------------------------------------------
# the match table


def parse_match(t: Table) -> Match:
    """The conditions of a rule from its ``match`` table ``t`` (keys checked against :data:`MATCH_KEYS`)."""
    on = t.get("on", choice(ONS), one_of(ONS), "message")
    if on in ("connect", "keep-alive"):
        keys = CONNECT_MATCH_KEYS if on == "connect" else KEEP_ALIVE_MATCH_KEYS
        for key in t.data:
            if key not in keys:
                raise t.error(key, f"a rule with on = \"{on}\" matches only " + ", ".join(keys[1:]))
    elif "keep_alive" in t:
        raise t.error("keep_alive", "goes with on = \"keep-alive\" (a rule for CRLF keep-alives)")
    kw: dict[str, Any] = {"on": on}
    kw["keep_alive"] = t.get("keep_alive", choice(KEEP_ALIVES),
                             one_of(KEEP_ALIVES) + ": a CRLF CRLF ping or a CRLF pong (RFC 5626 §4.4.1)")
    kw["direction"] = t.get("direction", choice(DIRECTIONS), one_of(DIRECTIONS))
    kw["transport"] = t.get("transport", _transports, one_of(TRANSPORTS) + ", or a list of them")
    if on == "connect" and kw["transport"] is not None and "udp" in kw["transport"]:
        raise t.error("transport", "connect rules apply to TCP and TLS connections: \"tcp\", \"tls\"")
    kw["method"] = t.get("method", _methods, _METHOD_ALLOWED)
    kw["status"] = t.get("status", _status, _STATUS_ALLOWED)
    if kw["method"] is not None and kw["status"] is not None:
        raise t.error(
            "status",
            "method matches requests and status matches responses: a rule cannot have both "
            "(use cseq_method for the method a response answers)",
        )
    kw["cseq_method"] = t.get("cseq_method", _methods, _METHOD_ALLOWED)
    kw["in_dialog"] = t.get("in_dialog", boolean, "true (the To header has a tag) or false")
    if "headers" in t:
        kw["headers"] = _header_tests(t)
    kw["body"] = t.get("body", _regex, "a Python regular expression (string), searched in the body")
    kw["device"] = t.get("device", _device, _DEVICE_ALLOWED, ())
    if on == "connect" and any(d.is_aor for d in kw["device"]):
        raise t.error("device", "a connection carries no SIP AOR yet: use an address or a network")
    if on == "keep-alive" and any(d.is_aor for d in kw["device"]):
        raise t.error("device", "a keep-alive carries no SIP AOR: use an address or a network")
    if "occurrence" in t:
        kw["occurrence"] = _occurrence(t, on)
    kw["count"] = t.get(
        "count",
        choice(("transaction", "transmission")),
        one_of(("transaction", "transmission"))
        + ": retransmissions count once and share the decision, or every transmission counts",
        "transaction",
    )
    kw["probability"] = t.get("probability", parse_rate, RATE_ALLOWED)
    if "window" in t:
        kw["window"] = _window(t.sub("window", WINDOW_KEYS))
    return Match(**kw)


def _header_tests(t: Table) -> tuple[HeaderTest, ...]:
    h = t.data["headers"]
    if not isinstance(h, Mapping) or not h:
        raise t.error("headers", "a table of header name = true | false | \"regex\"")
    tests = []
    for name, cond in h.items():
        key = t.key("headers") + "." + str(name)
        try:
            header_name(name)
        except ValueError as e:
            raise t.error_at(key, name, str(e)) from None
        if isinstance(cond, bool):
            tests.append(HeaderTest(name, canonical_key(name), present=cond))
        elif isinstance(cond, str):
            try:
                pattern = re.compile(cond)
            except re.error as e:
                raise t.error_at(key, cond, f"a valid Python regular expression ({e})") from None
            tests.append(HeaderTest(name, canonical_key(name), pattern=pattern))
        else:
            raise t.error_at(key, cond, "true (present), false (absent) or a regular expression (string)")
    return tuple(tests)


def _occurrence(t: Table, on: str) -> Occurrence:
    o = t.sub("occurrence", OCCURRENCE_KEYS)
    if not o.data:
        raise t.error("occurrence", "a table with first, every, after and/or per")
    per_values = ("rule", "device", "flow") if on != "message" else PER_VALUES
    return Occurrence(
        first=o.get("first", integer(1), "a whole number >= 1 (select the first N occurrences)"),
        every=o.get("every", integer(1), "a whole number >= 1 (select every Nth occurrence)"),
        after=o.get("after", integer(0), "a whole number >= 0 (skip the first N occurrences)", 0),
        per=o.get("per", choice(per_values), one_of(per_values), "rule"),
    )


def _window(w: Table) -> Window:
    anchors = ("activation", "first-match")
    return Window(
        start=w.get("start", parse_duration, DURATION_ALLOWED, 0.0),
        duration=w.get("for", parse_duration, DURATION_ALLOWED),
        anchor=w.get("from", choice(anchors), one_of(anchors), "activation"),
    )
