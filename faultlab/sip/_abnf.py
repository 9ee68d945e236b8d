"""Regular expressions and tables built from the RFC 3261 §25 grammar.

Each piece quotes the ABNF it transcribes (as h11's ``_abnf.py`` does for
RFC 7230). The byte patterns run on raw messages; the ``str`` patterns run on
already unfolded header values.
"""

from __future__ import annotations

import re

# token       =  1*(alphanum / "-" / "." / "!" / "%" / "*"
#                  / "_" / "+" / "`" / "'" / "~" )
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(r"[" + TOKEN_CHARS + r"]+")

# SIP-Version    =  "SIP" "/" 1*DIGIT "." 1*DIGIT
# (case-insensitive, RFC 3261 §7.1; other versions parse so that the upper
# layer can answer 505, RFC 4475 §3.1.2.16)
_VERSION = rb"[Ss][Ii][Pp]/[0-9]+\.[0-9]+"

# Request-Line   =  Method SP Request-URI SP SIP-Version CRLF
# Method is a token. The Request-URI is taken as any run of non-space octets;
# exactly one SP separates the elements (RFC 4475 §3.1.2.9/10: a message
# with extra SP may be rejected, and faultlab does).
REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([^ \r\n]+) (" + _VERSION + rb")\r\n")

# Status-Line     =  SIP-Version SP Status-Code SP Reason-Phrase CRLF
# Status-Code is 3DIGIT, 100-699 (RFC 3261 §7.2). The Reason-Phrase may be
# empty (RFC 4475 §3.1.2.13 noreason); the SP before an empty phrase is
# tolerated when missing.
STATUS_LINE_RE = re.compile(rb"(" + _VERSION + rb") ([1-6][0-9][0-9])(?: ([^\r\n]*))?\r\n")

# message-header  =  field-name HCOLON field-value CRLF, with obsolete line
# folding: a CRLF followed by SP/HT continues the field (RFC 3261 §7.3.1).
# HCOLON = *( SP / HTAB ) ":" SWS
# Speed note: CPython's re scans a single negated literal (`[^\n]*`) in a
# tight loop but a two-character class (`[^\r\n]*`) several times slower, so
# the patterns end lines at LF and require the CR before it; a CR elsewhere
# is caught by counting CRs against LFs (see _parse.scan_head).
HEADER_BLOCK_RE = re.compile(rb"(?:" + _TOKEN + rb"[ \t]*:[^\n]*\r\n(?:[ \t][^\n]*\r\n)*)*")
# findall gives per field: the name with the colon and its LWS, the name, and
# the value with its final CRLF. The fields it finds cover the whole block
# exactly when HEADER_BLOCK_RE accepts it (one pass checks and indexes the head).
HEADER_FIELD_RE = re.compile(
    rb"((" + _TOKEN + rb")[ \t]*:[ \t]*)([^\n]*\r\n(?:[ \t][^\n]*\r\n)*)"
)

# Content-Length  =  ( "Content-Length" / "l" ) HCOLON 1*DIGIT
# Run on the lower-cased head (faster than re.IGNORECASE). The value keeps
# any folds and its final CR, but not the LF, which starts the next match.
CONTENT_LENGTH_RE = re.compile(rb"\n(?:content-length|l)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
CONTENT_LENGTH_VALUE_RE = re.compile(rb"[ \t\r\n]*([0-9]+)[ \t\r\n]*")

# LWS  =  [*WSP CRLF] 1*WSP ; linear whitespace: one SP when unfolded
FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")

# Compact forms: RFC 3261 §7.3.3 and the registry of later RFCs
# (RFC 3265 o/u, RFC 3515 r, RFC 3892 b, RFC 3841 a/j/d, RFC 4028 x,
# RFC 8224 y, RFC 3903/3261 others).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "f": "from",
    "t": "to",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "b": "referred-by",
    "j": "reject-contact",
    "d": "request-disposition",
}

# Headers whose grammar is `X = "X" HCOLON value *(COMMA value)`, so several
# values may share one header line (RFC 3261 §7.3.1). Authorization-style
# headers (`credentials`, `challenge`) and Date are not lists even though
# they contain commas; unknown headers are not split either.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "history-info",
        "in-reply-to",
        "p-asserted-identity",
        "p-associated-uri",
        "p-preferred-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)


def canonical_key(name: str) -> str:
    """The canonical lower-case full header name for ``name`` (compact or full)."""
    key = name.lower()
    if len(key) == 1:
        return COMPACT_FORMS.get(key, key)
    return key
