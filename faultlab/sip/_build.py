"""Building responses and proxy header values (RFC 3261 §8.2.6, §16.11, §20.42)."""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Sequence, TypeVar

from ._abnf import TOKEN_RE, canonical_key
from ._errors import SipError
from ._message import Header, Message
from ._reasons import reason_phrase
from ._values import parse_name_addr

__all__ = ["build_request", "build_response", "format_via", "stateless_branch", "MAGIC_COOKIE"]

MAGIC_COOKIE = "z9hG4bK"
"""RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this."""

_TAG_RE = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)


def _digest(*parts: str, length: int = 16) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


_T = TypeVar("_T")


def _safe(fn: Callable[[], _T]) -> _T | None:
    """``fn()``, or ``None`` if the header it reads is malformed."""
    try:
        return fn()
    except SipError:
        return None


def check_header(name: str, value: str) -> None:
    """Refuse a header name that is not a token or a value with CR/LF (injection)."""
    if not TOKEN_RE.fullmatch(name):
        raise ValueError(f"header name is not a token: {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value contains CR or LF: {value!r}")


def _has_tag(to: Header) -> bool:
    try:
        return "tag" in parse_name_addr(to.value, "To").params
    except SipError:
        return _TAG_RE.search(to.value) is not None


def _generated_tag(request: Message) -> str:
    """A To tag derived from Call-ID, CSeq and the top Via branch, so that a
    retransmitted request gets the same tag (reproducible runs, no RNG)."""
    via = request.get_all("via")
    top = _safe(lambda: request.top_via)
    branch = top.branch if top is not None and top.branch else (via[0] if via else "")
    return _digest(request.get("call-id") or "", request.get("cseq") or "", branch, length=12)


def build_request(
    method: str,
    request_uri: str,
    *,
    via: str,
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    routes: Sequence[str] = (),
    contact: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """A request as a user agent sends it (RFC 3261 §8.1.1): the start line, ``Via`` (the value, e.g.
    ``SIP/2.0/UDP 10.0.0.2:5060;rport;branch=z9hG4bK...``), ``Max-Forwards: 70``, one ``Route`` per entry of
    ``routes``, From, To, Call-ID, CSeq, ``Contact`` when given, ``headers`` in order, ``Content-Type`` when given,
    and ``Content-Length``. Raises ``ValueError`` for headers that are not ``token: value`` without CR/LF."""
    fields = [("Via", via), ("Max-Forwards", "70"), *(("Route", r) for r in routes), ("From", from_), ("To", to),
              ("Call-ID", call_id), ("CSeq", f"{cseq} {method}")]
    if contact is not None:
        fields.append(("Contact", contact))
    fields += headers
    if content_type:
        fields.append(("Content-Type", content_type))
    fields.append(("Content-Length", str(len(body))))
    for name, value in fields:
        check_header(name, value)
    lines = [f"{method} {request_uri} SIP/2.0", *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def build_response(
    request: Message,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """A response to ``request`` as RFC 3261 §8.2.6.2 builds it.

    Every Via field, then the first From, To, Call-ID and CSeq fields, are
    copied byte for byte as written (compact names and folding included); To gets
    ``;tag=`` (``to_tag``, else a deterministic tag) unless it already has one
    or ``status`` is 100. A 100 also copies Timestamp (§8.2.6.1). ``headers``
    follow, then ``Content-Length``. Missing request headers are simply not
    copied, so even a 400 to a broken request can be built.

    Raises ``ValueError`` for a status outside 100-699, a non-request, or
    headers that are not ``token: value`` without CR/LF.
    """
    if not request.is_request:
        raise ValueError("build_response() needs a request")
    if not 100 <= status <= 699:
        raise ValueError(f"status out of range: {status}")
    if reason is None:
        reason = reason_phrase(status)
    elif "\r" in reason or "\n" in reason:
        raise ValueError(f"reason contains CR or LF: {reason!r}")
    for name, value in headers:
        check_header(name, value)
        if canonical_key(name) == "content-length":
            raise ValueError("Content-Length is added by build_response()")
    raw = request.raw
    out = [f"SIP/2.0 {status} {reason}\r\n".encode("utf-8", "surrogateescape")]
    out += [raw[h.start : h.end] for h in request.header_fields("via")]
    for key in ("from", "to", "call-id", "cseq"):
        fields = request.header_fields(key)
        if not fields:
            continue
        h = fields[0]
        if key == "to" and status != 100 and not _has_tag(h):
            tag = to_tag if to_tag is not None else _generated_tag(request)
            out.append(f"{h.name}: {h.value};tag={tag}\r\n".encode("utf-8", "surrogateescape"))
        else:
            out.append(raw[h.start : h.end])
    if status == 100:
        out += [raw[h.start : h.end] for h in request.header_fields("timestamp")]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    out.append(b"Content-Length: %d\r\n\r\n" % len(body))
    out.append(body)
    return b"".join(out)


def format_via(transport: str, host: str, port: int, branch: str, *, rport: bool = True) -> str:
    """A Via value for this proxy (RFC 3261 §20.42; ``rport`` RFC 3581 §3).

    ``format_via("UDP", "::1", 5060, b)`` -> ``SIP/2.0/UDP [::1]:5060;branch=b;rport``.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    value = f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch}"
    return value + ";rport" if rport else value


def stateless_branch(msg: Message, salt: str) -> str:
    """A branch for a request forwarded statelessly (RFC 3261 §16.11).

    If the incoming top Via branch starts with the magic cookie, the new
    branch hashes (salt, that branch): a CANCEL and a non-2xx ACK carry their
    INVITE's branch, so they get the same new branch. Otherwise it hashes
    (salt, To tag, From tag, Call-ID, Request-URI, top Via, CSeq number), the
    CSeq method left out as §16.11 says. Never raises on malformed headers:
    their raw text is hashed instead.
    """
    vias = msg.get_all("via")
    top_raw = vias[0] if vias else ""
    top = _safe(lambda: msg.top_via)
    branch = top.branch if top is not None else None
    if branch and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return MAGIC_COOKIE + _digest("cookie", salt, branch)
    to_tag = _safe(lambda: msg.to_tag) or ""
    from_tag = _safe(lambda: msg.from_tag) or ""
    cseq = _safe(lambda: msg.cseq)
    number = str(cseq.number) if cseq is not None else (msg.get("cseq") or "").split(" ")[0]
    return MAGIC_COOKIE + _digest(
        "legacy",
        salt,
        to_tag,
        from_tag,
        msg.get("call-id") or "",
        msg.request_uri or "",
        top_raw,
        number,
    )
