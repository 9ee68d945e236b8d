"""A small SIP toolkit for the external device: parse and build messages, split a TCP byte stream.

Standalone on purpose (standard library only): the device plays a real app with a SIP stack of its own.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "e": "content-encoding", "s": "subject"}
MAX_MESSAGE = 65536


class ParseError(ValueError):
    pass


@dataclass
class Msg:
    """A SIP request (``method``, ``uri``) or response (``status``, ``reason``)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        out = []
        for key, value in self.headers:
            key = COMPACT.get(key.lower(), key.lower())
            if key == name:
                if name in ("via", "record-route", "route", "contact"):
                    out += [v.strip() for v in _split_commas(value)]
                else:
                    out.append(value)
        return out

    @property
    def call_id(self) -> str:
        return (self.get("call-id") or "").strip()

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.get("cseq") or "0 ?").strip().partition(" ")
        try:
            return int(number), method.strip().upper()
        except ValueError:
            return 0, method.strip().upper()

    @property
    def branch(self) -> str:
        via = self.get("via") or ""
        m = re.search(r";\s*branch=([^;,\s]+)", via, re.I)
        return m.group(1) if m else ""

    @property
    def to_tag(self) -> str | None:
        m = re.search(r";\s*tag=([^;,\s>]+)", self.get("to") or "", re.I)
        return m.group(1) if m else None


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <...>."""
    parts, depth, quoted, current = [], 0, False, []
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        if ch == "," and not quoted and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse(data: bytes) -> Msg:
    """One whole message (head and body); ParseError for anything that is not SIP."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ParseError("no end of headers")
    lines = head.decode("utf-8", "replace").split("\r\n")
    first = lines[0].split(" ", 2)
    msg = Msg()
    if len(first) == 3 and first[0] == "SIP/2.0":
        if not first[1].isdigit():
            raise ParseError("bad status")
        msg.status, msg.reason = int(first[1]), first[2]
    elif len(first) == 3 and first[2] == "SIP/2.0":
        msg.method, msg.uri = first[0].upper(), first[1]
    else:
        raise ParseError("bad start line")
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and msg.headers:  # folded line
            key, value = msg.headers[-1]
            msg.headers[-1] = (key, value + " " + line.strip())
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise ParseError("bad header line")
        msg.headers.append((key.strip(), value.strip()))
    length = msg.get("content-length")
    if length is not None and length.strip().isdigit():
        body = body[: int(length.strip())]
    msg.body = body
    return msg


def serialize(msg: Msg) -> bytes:
    if msg.method:
        start = f"{msg.method} {msg.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {msg.status} {msg.reason}"
    headers = [(k, v) for k, v in msg.headers if k.lower() not in ("content-length", "l")]
    headers.append(("Content-Length", str(len(msg.body))))
    text = start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return text.encode() + msg.body


REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 400: "Bad Request", 410: "Gone", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 487: "Request Terminated",
           500: "Server Internal Error", 603: "Decline"}


def response(request: Msg, status: int, *, to_tag: str | None = None, contact: str | None = None,
             body: bytes = b"", content_type: str | None = None) -> Msg:
    """A response to ``request`` (RFC 3261 §8.2.6): its Vias, From, To (+ tag), Call-ID, CSeq."""
    headers = [("Via", v) for v in request.get_all("via")]
    if request.method == "INVITE" and 100 < status < 300:
        headers += [("Record-Route", rr) for rr in request.get_all("record-route")]
    to = request.get("to") or ""
    if to_tag and status > 100 and request.to_tag is None:
        to += f";tag={to_tag}"
    headers += [("From", request.get("from") or ""), ("To", to), ("Call-ID", request.call_id),
                ("CSeq", request.get("cseq") or "")]
    if contact:
        headers.append(("Contact", contact))
    if content_type:
        headers.append(("Content-Type", content_type))
    return Msg(status=status, reason=REASONS.get(status, "Unknown"), headers=headers, body=body)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def reason_cause(value: str | None) -> tuple[str, int | None]:
    """The protocol and cause of a Reason header (``SIP;cause=200;text="..."``); ("", None) when absent."""
    if not value:
        return "", None
    for part in _split_commas(value):
        protocol, _, params = part.strip().partition(";")
        m = re.search(r"(?:^|;)\s*cause\s*=\s*(\d+)", params, re.I)
        if protocol.strip().upper() == "SIP":
            return "SIP", int(m.group(1)) if m else None
    return value.split(";", 1)[0].strip().upper(), None


class StreamSplitter:
    """Splits a TCP/TLS byte stream into SIP messages (Content-Length framing) and CRLF keep-alives."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Whole messages so far; a bare CRLF pair ping is b"\\r\\n\\r\\n", a pong b"\\r\\n"."""
        self.buffer += data
        out = []
        while self.buffer:
            if self.buffer.startswith(b"\r\n\r\n"):
                out.append(b"\r\n\r\n")
                self.buffer = self.buffer[4:]
                continue
            if self.buffer.startswith(b"\r\n"):
                if len(self.buffer) < 4 and self.buffer == b"\r\n":
                    out.append(b"\r\n")
                    self.buffer = b""
                    break
                out.append(b"\r\n")
                self.buffer = self.buffer[2:]
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_MESSAGE:
                    raise ParseError("header too long")
                break
            head = self.buffer[:end].decode("utf-8", "replace")
            m = re.search(r"^(?:content-length|l)\s*:\s*(\d+)\s*$", head, re.I | re.M)
            length = int(m.group(1)) if m else 0
            if length > MAX_MESSAGE:
                raise ParseError("body too long")
            if len(self.buffer) < end + 4 + length:
                break
            out.append(self.buffer[: end + 4 + length])
            self.buffer = self.buffer[end + 4 + length:]
        return out
