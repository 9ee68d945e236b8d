"""Parsing SIP messages and header values (faultlab.sip, RFC 3261 §7, §20, §25).

Rules for this module: plain bytes in, values out; no sockets, no clock. Every
malformed input must raise SipError (never another exception).
"""

from __future__ import annotations

import pytest

from faultlab.sip import (
    CSeq,
    Header,
    KeepAlive,
    Message,
    NameAddr,
    Reason,
    SipError,
    SipURI,
    Via,
    parse_datagram,
    parse_message,
    parse_uri,
    push_params,
    remove_top_value,
)


def msg(*headers: str, start: str = "INVITE sip:bob@example.com SIP/2.0", body: bytes = b"") -> bytes:
    """A message from header lines (CRLF added), with Content-Length unless given."""
    lines = [start, *headers]
    if not any(h.lower().startswith(("content-length", "l:", "l :")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


BASE = (
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9",
    "From: Alice <sip:alice@example.com>;tag=9fxced76sl",
    "To: Bob <sip:bob@example.com>",
    "Call-ID: 3848276298220188511@192.0.2.1",
    "CSeq: 1 INVITE",
    "Max-Forwards: 70",
)


def parsed(*headers: str, **kw: object) -> Message:
    m = parse_message(msg(*headers, **kw))  # type: ignore[arg-type]
    return m


# ---------------------------------------------------------------------------
# start lines


def test_request_fields() -> None:
    m = parsed(*BASE, body=b"v=0\r\n")
    assert m.is_request
    assert (m.method, m.request_uri, m.version) == ("INVITE", "sip:bob@example.com", "SIP/2.0")
    assert m.status is None and m.reason_phrase is None
    assert m.body == b"v=0\r\n"
    assert m.raw[m.body_start :] == m.body
    assert m.raw.endswith(b"\r\n\r\nv=0\r\n")
    assert m.content_length == 5
    assert m.trailing == b""


@pytest.mark.parametrize(
    ("line", "status", "phrase"),
    [
        ("SIP/2.0 200 OK", 200, "OK"),
        ("SIP/2.0 180 Ringing", 180, "Ringing"),
        ("SIP/2.0 487 Request Terminated", 487, "Request Terminated"),
        ("SIP/2.0 100 ", 100, ""),  # RFC 4475 §3.1.1.13 noreason
        ("SIP/2.0 100", 100, ""),  # tolerated: SP before an empty phrase missing
        ("SIP/2.0 699 x  y ", 699, "x  y "),
        ("SIP/2.0 200 Ок", 200, "Ок"),  # UTF-8 reason phrase (RFC 4475 unreason)
    ],
)
def test_status_line(line: str, status: int, phrase: str) -> None:
    m = parsed(*BASE, start=line)
    assert not m.is_request
    assert (m.status, m.reason_phrase, m.method, m.request_uri) == (status, phrase, None, None)


@pytest.mark.parametrize(
    ("line", "method", "uri", "version"),
    [
        ("OPTIONS sip:x SIP/2.0", "OPTIONS", "sip:x", "SIP/2.0"),
        ("OPTIONS sip:x SIP/7.0", "OPTIONS", "sip:x", "SIP/7.0"),  # upper layer answers 505
        ("OPTIONS sip:x sip/2.0", "OPTIONS", "sip:x", "sip/2.0"),  # case-insensitive (§7.1)
        ("NEW-METHOD.x tel:+1234 SIP/2.0", "NEW-METHOD.x", "tel:+1234", "SIP/2.0"),
        ("INVITE <sip:x> SIP/2.0", "INVITE", "<sip:x>", "SIP/2.0"),  # any non-space URI
    ],
)
def test_request_line(line: str, method: str, uri: str, version: str) -> None:
    m = parsed(*BASE, start=line)
    assert (m.method, m.request_uri, m.version) == (method, uri, version)


@pytest.mark.parametrize(
    "line",
    [
        "INVITE  sip:x SIP/2.0",  # two SP (RFC 4475 lwsstart)
        "INVITE sip:x SIP/2.0 ",  # trailing SP (trws)
        "INVITE sip:x; lr SIP/2.0",  # LWS in the URI (lwsruri)
        "INVITE sip:x HTTP/1.1",
        "INVITE sip:x SIP/2",
        "INV(TE sip:x SIP/2.0",  # not a token
        "SIP/2.0 4294967301 big",  # RFC 4475 bigcode
        "SIP/2.0 099 low",
        "SIP/2.0 700 high",
        "SIP/2.0 20 OK",
        "INVITE sip:x",
        "",
    ],
)
def test_bad_start_lines(line: str) -> None:
    with pytest.raises(SipError) as info:
        parse_message(msg(*BASE, start=line))
    assert info.value.status_hint == 400


# ---------------------------------------------------------------------------
# headers


def test_headers_offsets_and_values() -> None:
    raw = msg(*BASE)
    m = parse_message(raw)
    assert [h.key for h in m.headers] == [
        "via", "from", "to", "call-id", "cseq", "max-forwards", "content-length"
    ]
    for h in m.headers:
        text = raw[h.start : h.end].decode()
        assert text.endswith("\r\n")
        assert text.startswith(h.name + ":")
        assert h.value in text
    assert m.headers[0] == Header(
        "Via", "via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9", m.headers[0].start,
        m.headers[0].end,
    )
    # fields tile the head: start line, fields, empty line
    assert m.headers[0].start == raw.index(b"\r\n") + 2
    for a, b in zip(m.headers, m.headers[1:]):
        assert a.end == b.start
    assert m.headers[-1].end == m.body_start - 2


COMPACT = {
    "i": "call-id", "m": "contact", "f": "from", "t": "to", "v": "via", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding",
    "o": "event", "u": "allow-events", "r": "refer-to", "x": "session-expires",
    "y": "identity", "a": "accept-contact", "b": "referred-by", "j": "reject-contact",
    "d": "request-disposition",
}


@pytest.mark.parametrize(("short", "full"), sorted(COMPACT.items()))
def test_compact_forms(short: str, full: str) -> None:
    value = "0" if short == "l" else "value-" + short
    for name in (short, short.upper()):
        m = parse_message(msg(f"{name}: {value}"))
        h = next(h for h in m.headers if h.name == name)
        assert h.key == full
        assert m.get(short) == m.get(full) == m.get(full.upper()) == value
        assert m.get(full.title()) == value


def test_unknown_single_letter_header_keeps_its_name() -> None:
    m = parse_message(msg("q: 1", "Q : 2"))
    assert [h.key for h in m.headers][:2] == ["q", "q"]
    assert m.get_all("Q") == ["1", "2"]


@pytest.mark.parametrize(
    ("lines", "value"),
    [
        (["Subject: a", " b"], "a b"),
        (["Subject: a  ", " \t b"], "a b"),
        (["Subject:", " b"], "b"),
        (["Subject: a", "\tb", "  c"], "a b c"),
        (["Subject   :   spaced   "], "spaced"),
        (["Subject:"], ""),
        (["Subject:x"], "x"),
    ],
)
def test_folding_and_whitespace(lines: list[str], value: str) -> None:
    raw = msg(*lines)
    m = parse_message(raw)
    h = m.headers[0]
    assert h.value == value
    assert raw[h.start : h.end] == ("\r\n".join(lines) + "\r\n").encode()


def test_value_decoding_utf8_and_surrogateescape() -> None:
    raw = msg("Subject: caf\u00e9").replace(b"caf\xc3\xa9", b"caf\xc3\xa9 \xff\x00\x07")
    m = parse_message(raw)
    value = m.get("subject")
    assert value == "caf\u00e9 \udcff\x00\x07"
    assert value.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff\x00\x07"


@pytest.mark.parametrize(
    ("lines", "name", "expected"),
    [
        (["Via: a, b", "v: c"], "via", ["a", "b", "c"]),
        (["Route: <sip:a;lr>, <sip:b,c;lr>", "Route: <sip:d>"], "Route",
         ["<sip:a;lr>", "<sip:b,c;lr>", "<sip:d>"]),
        (["Record-Route: <sip:p1;lr>,<sip:p2;lr>"], "record-route", ["<sip:p1;lr>", "<sip:p2;lr>"]),
        (['Contact: "Doe, John" <sip:j@x>;q=0.5, <sip:k@y>'], "m",
         ['"Doe, John" <sip:j@x>;q=0.5', "<sip:k@y>"]),
        (['Contact: "a \\" , b" <sip:j@x>'], "contact", ['"a \\" , b" <sip:j@x>']),
        (["Allow: INVITE, ACK,CANCEL", "Allow: BYE"], "allow", ["INVITE", "ACK", "CANCEL", "BYE"]),
        (["Supported: timer, path, gruu"], "k", ["timer", "path", "gruu"]),
        (["Require: 100rel, precondition"], "require", ["100rel", "precondition"]),
        (["Proxy-Require: foo, bar"], "proxy-require", ["foo", "bar"]),
        (["Unsupported: foo, bar"], "unsupported", ["foo", "bar"]),
        (["Accept: application/sdp, text/plain;q=0.1"], "accept",
         ["application/sdp", "text/plain;q=0.1"]),
        (["Allow: INVITE,,ACK, "], "allow", ["INVITE", "ACK"]),
        # not lists: one value per line
        (["Date: Sat, 13 Nov 2010 23:29:00 GMT"], "date", ["Sat, 13 Nov 2010 23:29:00 GMT"]),
        (['WWW-Authenticate: Digest realm="a", nonce="b"', "WWW-Authenticate: Basic realm=c"],
         "www-authenticate", ['Digest realm="a", nonce="b"', "Basic realm=c"]),
        (['Authorization: Digest username="a", uri="sip:x"'], "authorization",
         ['Digest username="a", uri="sip:x"']),
        (['Proxy-Authenticate: Digest realm="a", qop="auth"'], "proxy-authenticate",
         ['Digest realm="a", qop="auth"']),
        (['Proxy-Authorization: Digest a=1, b=2'], "proxy-authorization", ["Digest a=1, b=2"]),
        (["X-Custom: a, b", "X-Custom: c"], "x-custom", ["a, b", "c"]),
        ([], "via", []),
    ],
)
def test_get_all(lines: list[str], name: str, expected: list[str]) -> None:
    m = parse_message(msg(*lines))
    assert m.get_all(name) == expected
    assert m.get(name) == (m.header_fields(name)[0].value if expected else None)


def test_get_returns_first_line_value_unsplit() -> None:
    m = parse_message(msg("Via: a, b", "Via: c"))
    assert m.get("via") == "a, b"
    assert m.get("VIA") == "a, b"
    assert m.get("nope") is None


# ---------------------------------------------------------------------------
# typed accessors


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9",
         Via("SIP/2.0", "UDP", "192.0.2.1", 5060, {"branch": "z9hG4bK74bf9"}, "z9hG4bK74bf9",
             None, None, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9")),
        ("SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bKx;rport",
         Via("SIP/2.0", "TCP", "2001:db8::9:1", 5061, {"branch": "z9hG4bKx", "rport": None},
             "z9hG4bKx", None, "", "SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bKx;rport")),
        ("SIP/2.0/TLS [::1];received=::1;rport=5066;BRANCH=z9hG4bKy",
         Via("SIP/2.0", "TLS", "::1", None,
             {"received": "::1", "rport": "5066", "branch": "z9hG4bKy"},
             "z9hG4bKy", "::1", "5066", "SIP/2.0/TLS [::1];received=::1;rport=5066;BRANCH=z9hG4bKy")),
        ("SIP / 2.0 / WSS  client.invalid ; branch = z9hG4bKz ; received=192.0.2.9",
         Via("SIP/2.0", "WSS", "client.invalid", None,
             {"branch": "z9hG4bKz", "received": "192.0.2.9"}, "z9hG4bKz", "192.0.2.9", None,
             "SIP / 2.0 / WSS  client.invalid ; branch = z9hG4bKz ; received=192.0.2.9")),
        ("SIP/2.0/UDP host.example.com : 5070",
         Via("SIP/2.0", "UDP", "host.example.com", 5070, {}, None, None, None,
             "SIP/2.0/UDP host.example.com : 5070")),
        ('SIP/2.0/UDP h;x="a;b"',
         Via("SIP/2.0", "UDP", "h", None, {"x": '"a;b"'}, None, None, None, 'SIP/2.0/UDP h;x="a;b"')),
    ],
)
def test_via(value: str, expected: Via) -> None:
    m = parse_message(msg(f"Via: {value}"))
    assert m.top_via == expected
    assert m.vias == [expected]


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host:port",
        "garbage",
        "SIP/2.0/UDP ho st",
    ],
)
def test_bad_via(value: str) -> None:
    m = parse_message(msg(f"Via: {value}"))
    with pytest.raises(SipError):
        m.top_via
    with pytest.raises(SipError):
        m.vias


def test_vias_across_lines_and_compact() -> None:
    m = parse_message(msg("Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b:5061", "v: SIP/2.0/TLS c"))
    assert [(v.transport, v.host, v.port) for v in m.vias] == [
        ("UDP", "a", None), ("TCP", "b", 5061), ("TLS", "c", None)
    ]
    assert m.top_via is not None and m.top_via.branch == "z9hG4bK1"


def test_absent_headers_give_none() -> None:
    m = parse_message(msg())
    assert m.call_id is None and m.cseq is None and m.top_via is None and m.vias == []
    assert m.from_tag is None and m.to_tag is None and m.reason is None and m.contacts == []
    assert m.expires is None and m.from_addr is None and m.to_addr is None
    assert m.content_length == 0
    assert parse_message(b"OPTIONS sip:x SIP/2.0\r\n\r\n").content_length is None


def test_common_accessors() -> None:
    m = parsed(*BASE)
    assert m.call_id == "3848276298220188511@192.0.2.1"
    assert m.cseq == CSeq(1, "INVITE")
    assert m.from_tag == "9fxced76sl"
    assert m.to_tag is None
    assert m.from_addr == NameAddr("Alice", "sip:alice@example.com", {"tag": "9fxced76sl"})
    assert m.to_addr == NameAddr("Bob", "sip:bob@example.com", {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("  0009\r\n INVITE ", CSeq(9, "INVITE")),
        ("4294967295 ACK", CSeq(2**32 - 1, "ACK")),
        ("7 NEW-method", CSeq(7, "NEW-method")),
    ],
)
def test_cseq(value: str, expected: CSeq) -> None:
    assert parse_message(msg(f"CSeq: {value}")).cseq == expected


@pytest.mark.parametrize(
    "value", ["", "INVITE", "1", "-1 INVITE", "1 INV(TE", "4294967296 INVITE", "9" * 5000 + " X", "1 A B"]
)
def test_bad_cseq(value: str) -> None:
    m = parse_message(msg(f"CSeq: {value}"))
    with pytest.raises(SipError):
        m.cseq
    assert "cseq=?" in m.summary()


@pytest.mark.parametrize("value", ["", "a b"])
def test_bad_call_id(value: str) -> None:
    m = parse_message(msg(f"i: {value}"))
    with pytest.raises(SipError):
        m.call_id
    assert m.summary().endswith("call=?")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"Alice" <sip:alice@x>;tag=1', NameAddr("Alice", "sip:alice@x", {"tag": "1"})),
        ("Alice Smith <sip:alice@x>", NameAddr("Alice Smith", "sip:alice@x", {})),
        ("caller<sip:caller@x>;tag=3", NameAddr("caller", "sip:caller@x", {"tag": "3"})),
        ("<sip:a@x;transport=tcp>;tag=2", NameAddr(None, "sip:a@x;transport=tcp", {"tag": "2"})),
        ("sip:a@x;tag=2", NameAddr(None, "sip:a@x", {"tag": "2"})),
        ("sip:a@x ; tag = 2 ", NameAddr(None, "sip:a@x", {"tag": "2"})),
        ('"J \\"R\\" \\\\" <sip:j@x>', NameAddr('J "R" \\', "sip:j@x", {})),
        ('"" <sip:j@x>', NameAddr("", "sip:j@x", {})),
        ("< sip:t@x >", NameAddr(None, "sip:t@x", {})),  # RFC 4475 badaspec: spaces dropped
        ("Bell, Alexander <sip:a@x>;tag=43", NameAddr("Bell, Alexander", "sip:a@x", {"tag": "43"})),
        ("tel:+1-555-0100;tag=x", NameAddr(None, "tel:+1-555-0100", {"tag": "x"})),
        ("*", NameAddr(None, "*", {})),
    ],
)
def test_name_addr(value: str, expected: NameAddr) -> None:
    m = parse_message(msg(f"From: {value}", f"Contact: {value}"))
    assert m.from_addr == expected
    assert m.from_tag == expected.params.get("tag")
    if "," not in value:
        assert m.contacts == [expected]


@pytest.mark.parametrize(
    "value",
    ['"unterminated <sip:a@x>', '"quoted" sip:a@x', "<sip:a@x", "<>", "Al\"ice <sip:a@x>",
     "<sip:a@x>;;tag=1", "<sip:a@x>;tag=", "<sip:a b@x>", ""],
)
def test_bad_name_addr(value: str) -> None:
    m = parse_message(msg(f"To: {value}", f"Contact: {value}"))
    with pytest.raises(SipError):
        m.to_tag
    with pytest.raises(SipError):
        m.to_addr
    if value:
        with pytest.raises(SipError):
            m.contacts


def test_contacts_list_and_star() -> None:
    m = parse_message(msg('m: "A, B" <sip:a@x>;expires=60, <sip:b@y>;q=0.1', "Contact: *"))
    assert m.contacts == [
        NameAddr("A, B", "sip:a@x", {"expires": "60"}),
        NameAddr(None, "sip:b@y", {"q": "0.1"}),
        NameAddr(None, "*", {}),
    ]


def test_rfc8599_push_params() -> None:
    contact = (
        "<sip:alice@10.0.0.2:5060;transport=tls;pn-provider=apns;pn-prid=00fc1378;"
        "pn-param=TEAMID.com.example.app.voip>;+sip.instance=\"<urn:uuid:1>\";expires=600"
    )
    m = parse_message(msg(f"Contact: {contact}", start="REGISTER sip:example.com SIP/2.0"))
    (c,) = m.contacts
    assert push_params(c) == {
        "pn-provider": "apns", "pn-prid": "00fc1378", "pn-param": "TEAMID.com.example.app.voip"
    }
    assert c.param("PN-Provider") == "apns"
    assert c.param("expires") == "600"
    assert c.param("+sip.instance") == '"<urn:uuid:1>"'
    assert c.param("transport") == "tls"
    assert c.param("missing") is None
    # header parameters are looked at too, and a valueless one is ""
    hdr = NameAddr(None, "sip:a@x;lr", {"pn-provider": "fcm", "pn-prid": "tok"})
    assert push_params(hdr) == {"pn-provider": "fcm", "pn-prid": "tok"}
    assert hdr.param("lr") == ""
    assert push_params(NameAddr(None, "tel:+1", {})) == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('SIP;cause=200;text="Call completed elsewhere"', Reason("SIP", 200, "Call completed elsewhere")),
        ("Q.850 ; cause = 16 ; text = \"Normal call clearing\"", Reason("Q.850", 16, "Normal call clearing")),
        ("SIP;cause=487", Reason("SIP", 487, None)),
        ("SIP", Reason("SIP", None, None)),
        ('SIP;text="a \\"b\\""', Reason("SIP", None, 'a "b"')),
        ('SIP;cause=480, Q.850;cause=18', Reason("SIP", 480, None)),
    ],
)
def test_reason(value: str, expected: Reason) -> None:
    assert parse_message(msg(f"Reason: {value}", start="CANCEL sip:b@x SIP/2.0")).reason == expected


@pytest.mark.parametrize("value", ["SIP;cause=abc", "SIP;cause=", ";cause=1", "SIP;;", "SIP;cause=99999999999"])
def test_bad_reason(value: str) -> None:
    with pytest.raises(SipError):
        parse_message(msg(f"Reason: {value}")).reason


@pytest.mark.parametrize(("value", "expected"), [("3600", 3600), (" 0 ", 0), ("0004294967295", 2**32 - 1)])
def test_expires(value: str, expected: int) -> None:
    assert parse_message(msg(f"Expires: {value}")).expires == expected


@pytest.mark.parametrize("value", ["", "-1", "1h", "4294967296", "1" * 100, "Thu, 01 Dec 1994 16:00:00 GMT"])
def test_bad_expires(value: str) -> None:
    with pytest.raises(SipError):
        parse_message(msg(f"Expires: {value}")).expires


# ---------------------------------------------------------------------------
# URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:alice@example.com", SipURI("sip", "alice", None, "example.com", None, {}, None)),
        ("SIPS:bob:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y",
         SipURI("sips", "bob", "secret", "2001:db8::1", 5061, {"transport": "tcp", "lr": None},
                "subject=hi&x=y")),
        ("sip:192.0.2.4", SipURI("sip", None, None, "192.0.2.4", None, {}, None)),
        ("sip:user;par=u%40example.net@example.com",  # RFC 4475 semiuri
         SipURI("sip", "user;par=u%40example.net", None, "example.com", None, {}, None)),
        ("sip:%00@h;Maddr=x", SipURI("sip", "%00", None, "h", None, {"maddr": "x"}, None)),
        ("sip:alice@10.0.0.2:5060;pn-provider=apns;pn-prid=T",
         SipURI("sip", "alice", None, "10.0.0.2", 5060, {"pn-provider": "apns", "pn-prid": "T"}, None)),
        ("sip:user@example.com?Route=%3Csip:example.com%3E",
         SipURI("sip", "user", None, "example.com", None, {}, "Route=%3Csip:example.com%3E")),
    ],
)
def test_parse_uri(uri: str, expected: SipURI) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("tel:+15555550100", 416),
        ("http://x", 416),
        ("nobodyKnowsThisScheme:totallyopaquecontent", 416),
        ("<sip:x>", 416),
        ("sip:", 400),
        ("sip:@host", 400),
        ("sip:host:99999", 400),
        ("sip:host;=x", 400),
        ("sip:ho st", 400),
        ("sip:[::1", 400),
    ],
)
def test_bad_uri(uri: str, hint: int) -> None:
    with pytest.raises(SipError) as info:
        parse_uri(uri)
    assert info.value.status_hint == hint


# ---------------------------------------------------------------------------
# whole-message errors and datagrams


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        (b"", 400),
        (b"INVITE sip:x SIP/2.0\r\nVia: a\r\n", 400),  # no empty line
        (b"\r\nINVITE sip:x SIP/2.0\r\n\r\n", 400),  # leading CRLF in one message
        (b"INVITE sip:x SIP/2.0\r\nVia a\r\n\r\n", 400),  # no colon
        (b"INVITE sip:x SIP/2.0\r\n Via: a\r\n\r\n", 400),  # continuation without a field
        (b"INVITE sip:x SIP/2.0\r\nV(a: a\r\n\r\n", 400),  # name not a token
        (b"INVITE sip:x SIP/2.0\r\nVia: a\rb\r\n\r\n", 400),  # bare CR
        (b"INVITE sip:x SIP/2.0\r\nVia: a\nb: c\r\n\r\n", 400),  # bare LF
        (b"INVITE sip:x SIP/2.0\nVia: a\n\n", 400),  # LF-only lines
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n", 400),  # RFC 4475 ncl
        (b"INVITE sip:x SIP/2.0\r\nContent-Length: 1x\r\n\r\nx", 400),
        (b"INVITE sip:x SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nx", 400),  # mcl01
        (b"INVITE sip:x SIP/2.0\r\nl: 99999999999\r\n\r\n", 413),
        (b"INVITE sip:x SIP/2.0\r\nl: 3\r\n\r\nx", 400),  # body shorter
        (b"INVITE sip:x SIP/2.0\r\nl: 0\r\n\r\nx", 400),  # body longer
    ],
)
def test_parse_message_errors(raw: bytes, hint: int) -> None:
    with pytest.raises(SipError) as info:
        parse_message(raw)
    assert info.value.status_hint == hint
    assert str(info.value)


def test_identical_duplicate_content_length_is_fine() -> None:
    m = parse_message(b"MESSAGE sip:x SIP/2.0\r\nl: 2\r\nContent-Length:  2\r\n\r\nhi")
    assert m.body == b"hi" and m.content_length == 2


def test_folded_content_length() -> None:
    m = parse_message(b"MESSAGE sip:x SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nhi")
    assert m.content_length == 2


def test_no_headers_at_all() -> None:
    m = parse_message(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
    assert m.headers == () and m.body == b"" and m.body_start == len(m.raw)


def test_max_headers() -> None:
    raw = msg(*[f"X-{i}: {i}" for i in range(300)])
    with pytest.raises(SipError) as info:
        parse_message(raw)
    assert info.value.status_hint == 413
    assert len(parse_message(raw, max_headers=400).headers) == 301


@pytest.mark.parametrize("raw", [b"\r\n\r\n", b"\r\n", b"\r\n\r\n\r\n", b" \r\n", b"\n"])
def test_datagram_keepalive(raw: bytes) -> None:
    assert parse_datagram(raw) == KeepAlive(raw)


def test_datagram_trailing_octets_ignored() -> None:
    first = msg(*BASE)
    m = parse_datagram(first + b"garbage after")
    assert isinstance(m, Message)
    assert m.raw == first and m.trailing == b"garbage after"


def test_datagram_without_content_length_takes_the_rest() -> None:
    raw = b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\nbody\r\nmore"
    m = parse_datagram(raw)
    assert isinstance(m, Message)
    assert m.body == b"body\r\nmore" and m.content_length is None and m.raw == raw


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        (b"", 400),
        (b"INVITE sip:x SIP/2.0\r\nl: 10\r\n\r\nshort", 400),  # RFC 4475 clerr
        (b"garbage", 400),
        (b"INVITE sip:x SIP/2.0\r\n\r\n" + b"x" * 70000, 513),
    ],
)
def test_datagram_errors(raw: bytes, hint: int) -> None:
    with pytest.raises(SipError) as info:
        parse_datagram(raw)
    assert info.value.status_hint == hint


def test_message_is_immutable_and_compares_by_bytes() -> None:
    raw = msg(*BASE)
    m = parse_message(raw)
    with pytest.raises(AttributeError):
        m.raw = b""  # type: ignore[misc]
    with pytest.raises(AttributeError):
        m.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Message()
    assert m == parse_message(raw) and hash(m) == hash(parse_message(raw))
    assert m != parse_message(msg(*BASE, body=b"x"))


def test_summary() -> None:
    assert parsed(*BASE).summary() == (
        "INVITE sip:bob@example.com cseq=1 INVITE call=3848276298220188511@192.0.2.1"
    )
    assert parsed(*BASE, start="SIP/2.0 200 OK").summary() == (
        "200 OK cseq=1 INVITE call=3848276298220188511@192.0.2.1"
    )
    assert parse_message(b"SIP/2.0 100 \r\n\r\n").summary() == "100 cseq=? call=?"
    assert "cseq=?" in repr(parse_message(b"OPTIONS sip:x SIP/2.0\r\n\r\n"))


def test_sip_error_shape() -> None:
    e = SipError("boom")
    assert e.status_hint == 400 and str(e) == "boom"
    assert SipError("big", status_hint=413).status_hint == 413
    assert "413" in repr(SipError("big", status_hint=413))


# ---------------------------------------------------------------------------
# hostile sizes: every accessor answers or refuses (bench/hostile_parse.py measures that the time stays linear in
# the size: a quadratic scan of a 60 KB header would take many seconds)


def _big(header: bytes) -> bytes:
    return b"OPTIONS sip:x SIP/2.0\r\n" + header + b"\r\nl: 0\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        _big(b"Via: SIP/2.0/UDP h" + b";a" * 30000),
        _big(b"Via: " + b"," * 60000),
        _big(b'Contact: ""' + b"," * 60000),
        _big(b"Via: " + b"SIP/2.0/UDP h," * 4000),
        _big(b'Contact: "' + b'\\"' * 30000),
        _big(b"Contact: " + b"<" * 60000),
        _big(b"Contact: <sip:a>" + b"; a = b " * 7000),
        _big(b"Via: " + b"a/" * 30000),
        _big(b"Via: SIP/2.0/UDP h" + b" " * 60000),
    ],
    ids=["params", "commas", "quoted-commas", "vias", "escapes", "angles", "spaced-params", "slashes", "spaces"],
)
def test_hostile_sizes_parse_or_refuse(raw: bytes) -> None:
    """Every accessor either answers or raises SipError on these. (That they stay linear in the size is
    measured by bench/hostile_parse.py; a quadratic regression would make this test take minutes.)"""
    m = parse_message(raw)
    for attr in ("top_via", "vias", "contacts"):
        try:
            getattr(m, attr)
        except SipError:
            pass
    m.get_all("via")
    m.get_all("contact")
    for name in ("via", "contact"):
        try:
            remove_top_value(m, name)
        except SipError:
            pass
