"""Header value types and their parsers (RFC 3261 §20, §25; RFC 3326; RFC 8599).

All parsers take an unfolded ``str`` value and raise :class:`SipError` when it
is malformed. Parameter values are kept as written (a quoted value keeps its
quotes), parameter names are lower-cased.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._abnf import TOKEN_CHARS
from ._errors import SipError

__all__ = [
    "CSeq",
    "Via",
    "NameAddr",
    "Reason",
    "SipURI",
    "split_list",
    "parse_cseq",
    "parse_via",
    "parse_name_addr",
    "parse_reason",
    "parse_uri",
    "parse_delta_seconds",
    "push_params",
]

MAX_UINT32 = 2**32 - 1

_WS = " \t\r\n"


@dataclass(frozen=True)
class CSeq:
    """``CSeq: 1 INVITE`` (RFC 3261 §20.16)."""

    number: int
    method: str


@dataclass(frozen=True)
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport).

    ``protocol`` is e.g. ``"SIP/2.0"``, ``transport`` as written (``"UDP"``).
    ``host`` is bare: an IPv6 reference loses its brackets. ``rport`` is
    ``None`` when absent, ``""`` when present without a value.
    """

    protocol: str
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)
    branch: str | None = None
    received: str | None = None
    rport: str | None = None
    raw: str = ""


@dataclass(frozen=True)
class SipURI:
    """A ``sip:``/``sips:`` URI (RFC 3261 §19.1.1). Escapes are not decoded.

    ``host`` is bare (no IPv6 brackets); ``params`` keys are lower-case,
    valueless parameters map to ``None``; ``headers`` is the text after ``?``.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None


@dataclass(frozen=True)
class NameAddr:
    """``name-addr`` or ``addr-spec`` with header parameters (RFC 3261 §20.10).

    ``display`` is unquoted (quoted-pairs resolved) or ``None``; ``uri`` is
    the URI text without ``<>``; ``params`` are the header parameters (for an
    addr-spec without ``<>`` every ``;param`` is a header parameter, RFC 3261
    §20.10). ``Contact: *`` is ``NameAddr(None, "*", {})``.
    """

    display: str | None
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        """A URI parameter, else a header parameter, named ``name``.

        Returns ``""`` for a parameter present without a value, ``None`` when
        absent. URI parameters win because RFC 8599 §4.1 puts ``pn-*`` there.
        """
        key = name.lower()
        uri_params: dict[str, str | None] = {}
        try:
            uri_params = parse_uri(self.uri).params
        except SipError:
            pass
        for params in (uri_params, self.params):
            if key in params:
                value = params[key]
                return "" if value is None else value
        return None


@dataclass(frozen=True)
class Reason:
    """``Reason: SIP ;cause=200 ;text="Call completed elsewhere"`` (RFC 3326)."""

    protocol: str
    cause: int | None
    text: str | None


def push_params(nameaddr: NameAddr) -> dict[str, str]:
    """RFC 8599 §4.1 push parameters of a Contact (only those present).

    Keys are ``pn-provider``, ``pn-prid`` and ``pn-param``; they are looked
    up in the URI parameters, then the header parameters.
    """
    found: dict[str, str] = {}
    for key in ("pn-provider", "pn-prid", "pn-param"):
        value = nameaddr.param(key)
        if value is not None:
            found[key] = value
    return found


# --------------------------------------------------------------------------
# lists


# A quoted string (maybe unterminated), a <...> (maybe unterminated) or a comma:
# scanning with finditer skips the quoted and bracketed parts in C.
_COMMA_SCAN_RE = re.compile(r'"(?:[^"\\]|\\.)*\\?(?:"|$)|<[^>]*(?:>|$)|,', re.DOTALL)


def top_level_commas(s: str) -> list[int]:
    """Positions of the commas outside quoted strings and ``<...>``."""
    return [m.start() for m in _COMMA_SCAN_RE.finditer(s) if m.group() == ","]


def first_top_level_comma(s: str, start: int = 0) -> int:
    """Position of the first comma at or after ``start`` outside quoted
    strings and ``<...>``, or -1."""
    for m in _COMMA_SCAN_RE.finditer(s, start):
        if m.group() == ",":
            return m.start()
    return -1


def split_list(value: str) -> list[str]:
    """Split ``value *(COMMA value)`` respecting quoted strings and ``<>``.

    Empty elements (``a,,b``) are dropped.
    """
    if "," not in value:
        value = value.strip(_WS)
        return [value] if value else []
    if '"' not in value and "<" not in value:
        return [p for p in (part.strip(_WS) for part in value.split(",")) if p]
    parts = []
    start = 0
    for pos in top_level_commas(value) + [len(value)]:
        part = value[start:pos].strip(_WS)
        if part:
            parts.append(part)
        start = pos + 1
    return parts


# --------------------------------------------------------------------------
# parameters: *( SEMI generic-param ), generic-param = token [ EQUAL gen-value ]
# gen-value = token / host / quoted-string

_PARAM_RE = re.compile(
    r'[ \t]*;[ \t]*([^\s;=,"<>?]+)[ \t]*(?:=[ \t]*("(?:[^"\\]|\\.)*"|[^\s;,"<>?]*))?[ \t]*',
    re.DOTALL,
)


def parse_params(s: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI param )`` covering all of ``s``; keys lower-cased."""
    params: dict[str, str | None] = {}
    pos = 0
    n = len(s)
    match = _PARAM_RE.match
    while pos < n:
        m = match(s, pos)
        if m is None or m.end() == pos:
            raise SipError(f"malformed parameters in {what}: {s!r}")
        value = m.group(2)
        if value == "":
            raise SipError(f"empty parameter value in {what}: {s!r}")
        params[m.group(1).lower()] = value
        pos = m.end()
    return params


def unquote(s: str) -> str:
    """Resolve a ``quoted-string`` (RFC 3261 §25.1) to its text."""
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return re.sub(r"\\(.)", r"\1", s[1:-1], flags=re.DOTALL)
    return s


# --------------------------------------------------------------------------
# CSeq, delta-seconds

_CSEQ_RE = re.compile(r"[ \t\r\n]*([0-9]+)[ \t\r\n]+([" + TOKEN_CHARS + r"]+)[ \t\r\n]*")
_DIGITS_RE = re.compile(r"[ \t\r\n]*([0-9]+)[ \t\r\n]*")


def _uint32(digits: str, what: str) -> int:
    """``1*DIGIT`` (leading zeros allowed) as an int no larger than 2**32-1.

    The length check comes first: ``int()`` of a huge digit string is slow
    (and refused past 4300 digits by CPython)."""
    significant = digits.lstrip("0")
    if len(significant) > 10 or int(significant or "0") > MAX_UINT32:
        raise SipError(f"{what} exceeds 2**32-1: {digits[:20]!r}")
    return int(significant or "0")


def parse_cseq(value: str) -> CSeq:
    """``CSeq = 1*DIGIT LWS Method`` (RFC 3261 §20.16: number < 2**32)."""
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise SipError(f"malformed CSeq: {value!r}")
    return CSeq(_uint32(m.group(1), "CSeq number"), m.group(2))


def parse_delta_seconds(value: str, what: str) -> int:
    """``delta-seconds = 1*DIGIT`` bounded by 2**32-1 (RFC 4475 §3.1.2.4)."""
    m = _DIGITS_RE.fullmatch(value)
    if m is None:
        raise SipError(f"malformed {what}: {value!r}")
    return _uint32(m.group(1), what)


# --------------------------------------------------------------------------
# Via
# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport
# sent-by = host [ COLON port ]

_T = "[" + TOKEN_CHARS + "]+"
_VIA_RE = re.compile(
    rf"\s*({_T})\s*/\s*({_T})\s*/\s*({_T})\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)"
    r"(?:\s*:\s*([0-9]{1,5}))?"
    r"(.*)",
    re.DOTALL,
)


def parse_via(value: str) -> Via:
    """Parse one Via value (a single element of the comma list)."""
    m = _VIA_RE.fullmatch(value)
    if m is None:
        raise SipError(f"malformed Via: {value!r}")
    name, version, transport, host, port_s, rest = m.groups()
    port = None
    if port_s is not None:
        port = int(port_s)
        if port > 65535:
            raise SipError(f"Via port out of range: {value!r}")
    rest = rest.rstrip(_WS)
    params = parse_params(rest, "Via") if rest else {}
    if host[0] == "[":
        host = host[1:-1]
    return Via(
        protocol=f"{name}/{version}",
        transport=transport,
        host=host,
        port=port,
        params=params,
        branch=params.get("branch"),
        received=params.get("received"),
        rport=("" if params["rport"] is None else params["rport"]) if "rport" in params else None,
        raw=value.strip(_WS),
    )


# --------------------------------------------------------------------------
# name-addr / addr-spec
# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT
# display-name = *(token LWS) / quoted-string

_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)


def parse_name_addr(value: str, what: str = "name-addr") -> NameAddr:
    """Parse a From/To/Contact/Route style value (one list element).

    Lenient where RFC 4475 allows it: no LWS before ``<`` (lwsdisp), spaces
    inside ``<>`` are dropped (badaspec), an unquoted display name may hold
    any characters but ``"<`` (baddn).
    """
    s = value.strip(_WS)
    if s == "*":
        return NameAddr(None, "*", {})
    display: str | None = None
    if s.startswith('"'):
        m = _QUOTED_RE.match(s)
        if m is None:
            raise SipError(f"unterminated quoted string in {what}: {value!r}")
        display = unquote(m.group(0))
        lt = m.end()
        while lt < len(s) and s[lt] in _WS:
            lt += 1
        if not s.startswith("<", lt):
            raise SipError(f"quoted display name without <URI> in {what}: {value!r}")
    else:
        lt = s.find("<")
        if lt > 0:
            display = s[:lt].strip(_WS) or None
            if display is not None and '"' in display:
                raise SipError(f"malformed display name in {what}: {value!r}")
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipError(f"missing '>' in {what}: {value!r}")
        uri = s[lt + 1 : gt].strip(_WS)
        tail = s[gt + 1 :].rstrip(_WS)
    else:
        semi = s.find(";")
        uri, tail = (s, "") if semi < 0 else (s[:semi].rstrip(_WS), s[semi:])
    if not uri or any(c in uri for c in " \t<>\""):
        raise SipError(f"malformed URI in {what}: {value!r}")
    params = parse_params(tail, what) if tail else {}
    return NameAddr(display, uri, params)


# --------------------------------------------------------------------------
# Reason (RFC 3326 §2): reason-value = protocol *(SEMI reason-params)

_REASON_RE = re.compile(rf"\s*({_T})(.*)", re.DOTALL)


def parse_reason(value: str) -> Reason:
    """Parse one Reason value, e.g. ``SIP;cause=200;text="Call completed elsewhere"``."""
    m = _REASON_RE.fullmatch(value)
    if m is None:
        raise SipError(f"malformed Reason: {value!r}")
    rest = m.group(2).rstrip(_WS)
    params = parse_params(rest, "Reason") if rest else {}
    cause = None
    cause_s = params.get("cause")
    if cause_s is not None:
        if not cause_s.isascii() or not cause_s.isdigit() or len(cause_s) > 10:
            raise SipError(f"malformed Reason cause: {value!r}")
        cause = int(cause_s)
    text = params.get("text")
    return Reason(m.group(1), cause, None if text is None else unquote(text))


# --------------------------------------------------------------------------
# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]

_HOSTPORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?::([0-9]{1,5}))?")


def parse_uri(uri: str) -> SipURI:
    """Parse a ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1).

    Other schemes raise :class:`SipError` with ``status_hint`` 416
    (Unsupported URI Scheme, RFC 3261 §21.4.14). %-escapes are kept.
    """
    colon = uri.find(":")
    scheme = uri[:colon].lower() if colon > 0 else ""
    if scheme not in ("sip", "sips"):
        raise SipError(f"not a SIP URI: {uri!r}", status_hint=416)
    rest = uri[colon + 1 :]
    headers = None
    user = password = None
    # The user part may hold "?" and ";" (RFC 4475 §3.1.1.2, §3.1.1.9), while
    # "@" must be escaped everywhere else: the last "@" ends the userinfo.
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
        if not user:
            raise SipError(f"empty user in URI: {uri!r}")
    q = rest.find("?")
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1 :]
    m = _HOSTPORT_RE.match(rest)
    if m is None:
        raise SipError(f"malformed host in URI: {uri!r}")
    host, port_s = m.groups()
    port = None
    if port_s is not None:
        port = int(port_s)
        if port > 65535:
            raise SipError(f"port out of range in URI: {uri!r}")
    params_s = rest[m.end() :]
    params: dict[str, str | None] = {}
    if params_s:
        if params_s[0] != ";":
            raise SipError(f"malformed URI: {uri!r}")
        for part in params_s[1:].split(";"):
            name, sep, val = part.partition("=")
            if not name or any(c in name for c in " \t"):
                raise SipError(f"malformed URI parameter in {uri!r}")
            params[name.lower()] = val if sep else None
    if host[0] == "[":
        host = host[1:-1]
    return SipURI(scheme, user, password, host, port, params, headers)
