"""Building responses (RFC 3261 §8.2.6), proxy Via/branch values (§16.11,
§20.42, RFC 3581) and byte-exact header edits.

Rules for this module: an edit changes only the bytes it names; everything
else in the message stays identical, byte for byte.
"""

from __future__ import annotations

import re

import pytest

from faultlab.sip import (
    REASON_PHRASES,
    CSeq,
    Message,
    SipError,
    add_top_header,
    build_request,
    build_response,
    format_via,
    parse_datagram,
    parse_message,
    reason_phrase,
    remove_top_value,
    stateless_branch,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;received=192.0.2.1\r\n"
    b"Max-Forwards: 69\r\n"
    b"f: Alice\r\n <sip:alice@example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: 3848276298220188511@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Record-Route: <sip:proxy.example.com;lr>\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def req(raw: bytes = INVITE) -> Message:
    return parse_message(raw)


# ---------------------------------------------------------------------------
# build_response


def test_response_copies_the_transaction_headers() -> None:
    m = req()
    out = build_response(m, 486, to_tag="abc")
    assert out == (
        b"SIP/2.0 486 Busy Here\r\n"
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1\r\n"
        b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;received=192.0.2.1\r\n"
        b"f: Alice\r\n <sip:alice@example.com>;tag=9fxced76sl\r\n"
        b"To: Bob <sip:bob@example.com>;tag=abc\r\n"
        b"Call-ID: 3848276298220188511@192.0.2.1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    r = parse_message(out)
    assert (r.status, r.reason_phrase) == (486, "Busy Here")
    assert r.vias == m.vias
    assert (r.call_id, r.cseq, r.from_tag, r.to_tag) == (m.call_id, m.cseq, m.from_tag, "abc")
    assert r.get("record-route") is None and r.get("contact") is None


def test_generated_to_tag_is_deterministic() -> None:
    a = parse_message(build_response(req(), 404))
    b = parse_message(build_response(req(), 603))
    assert a.to_tag and a.to_tag == b.to_tag
    assert re.fullmatch(r"[0-9a-f]{12}", a.to_tag)
    other = parse_message(build_response(req(INVITE.replace(b"z9hG4bK2d4790.1", b"z9hG4bKother")), 404))
    assert other.to_tag != a.to_tag
    other = parse_message(build_response(req(INVITE.replace(b"CSeq: 1", b"CSeq: 2")), 404))
    assert other.to_tag != a.to_tag


def test_existing_to_tag_is_kept() -> None:
    m = req(INVITE.replace(b"To: Bob <sip:bob@example.com>", b"To: Bob <sip:bob@example.com> ;TAG=x1"))
    out = build_response(m, 200, to_tag="ignored")
    assert b"To: Bob <sip:bob@example.com> ;TAG=x1\r\n" in out
    assert b"ignored" not in out


def test_malformed_to_with_tag_is_kept() -> None:
    m = req(INVITE.replace(b"To: Bob <sip:bob@example.com>", b'To: "Bob <sip:bob@x>;tag=7'))
    out = build_response(m, 400)
    assert b'To: "Bob <sip:bob@x>;tag=7\r\n' in out


def test_100_trying() -> None:
    out = build_response(req(), 100, to_tag="never")
    r = parse_message(out)
    assert (r.status, r.reason_phrase, r.to_tag) == (100, "Trying", None)
    assert r.get("timestamp") == "54"  # §8.2.6.1
    assert b"never" not in out
    assert b"Timestamp" not in build_response(req(), 180)


def test_extra_headers_body_and_reason() -> None:
    out = build_response(
        req(), 503, "Overloaded",
        headers=[("Retry-After", "30"), ("Content-Type", "text/plain")], body=b"busy",
    )
    r = parse_message(out)
    assert (r.status, r.reason_phrase) == (503, "Overloaded")
    assert [h.key for h in r.headers][-3:] == ["retry-after", "content-type", "content-length"]
    assert r.body == b"busy" and r.content_length == 4


def test_response_to_a_request_missing_everything() -> None:
    out = build_response(parse_message(b"OPTIONS sip:x SIP/2.0\r\n\r\n"), 400)
    assert out == b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def test_only_first_of_duplicated_single_headers() -> None:
    raw = INVITE.replace(b"CSeq: 1 INVITE\r\n", b"CSeq: 1 INVITE\r\nCSeq: 9 INVITE\r\nCall-ID: two\r\n")
    r = parse_message(build_response(req(raw), 400))
    assert r.get_all("cseq") == ["1 INVITE"] and r.get_all("call-id") == [req().call_id]


def test_non_ascii_values_survive() -> None:
    raw = INVITE.replace(b"To: Bob", "To: \"Bj\u00f6rn\"".encode())
    r = parse_message(build_response(req(raw), 180))
    assert r.to_addr is not None and r.to_addr.display == "Bj\u00f6rn"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"status": 99}, "status"),
        ({"status": 700}, "status"),
        ({"status": 200, "reason": "OK\r\nX: y"}, "reason"),
        ({"status": 200, "headers": [("X-A", "1\r\nInjected: yes")]}, "CR or LF"),
        ({"status": 200, "headers": [("Bad Name", "1")]}, "token"),
        ({"status": 200, "headers": [("l", "5")]}, "Content-Length"),
    ],
)
def test_build_response_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_response(req(), **kwargs)


def test_build_response_needs_a_request() -> None:
    with pytest.raises(ValueError):
        build_response(parse_message(b"SIP/2.0 200 OK\r\n\r\n"), 200)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(100, "Trying"), (180, "Ringing"), (183, "Session Progress"), (200, "OK"),
     (302, "Moved Temporarily"), (401, "Unauthorized"), (407, "Proxy Authentication Required"),
     (408, "Request Timeout"), (480, "Temporarily Unavailable"), (481, "Call/Transaction Does Not Exist"),
     (483, "Too Many Hops"), (486, "Busy Here"), (487, "Request Terminated"), (488, "Not Acceptable Here"),
     (500, "Server Internal Error"), (503, "Service Unavailable"), (505, "Version Not Supported"),
     (513, "Message Too Large"), (603, "Decline"), (299, "OK"), (499, "Bad Request"), (199, "Early Dialog Terminated")],
)
def test_reason_phrases(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase
    assert f" {status} {phrase}\r\n".encode() in build_response(req(), status)


def test_reason_table_is_sane() -> None:
    assert all(100 <= code <= 699 and phrase for code, phrase in REASON_PHRASES.items())


# ---------------------------------------------------------------------------
# format_via, stateless_branch


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("UDP", "127.0.0.1", 5060, "z9hG4bKabc"), {}, "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport"),
        (("tls", "proxy.example", 5061, "z9hG4bKx"), {"rport": False}, "SIP/2.0/TLS proxy.example:5061;branch=z9hG4bKx"),
        (("TCP", "2001:db8::1", 5060, "z9hG4bKy"), {}, "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKy;rport"),
        (("TCP", "[::1]", 5060, "z9hG4bKy"), {}, "SIP/2.0/TCP [::1]:5060;branch=z9hG4bKy;rport"),
    ],
)
def test_format_via(args: tuple, kwargs: dict, expected: str) -> None:
    value = format_via(*args, **kwargs)
    assert value == expected
    via = parse_message(b"OPTIONS sip:x SIP/2.0\r\nVia: " + value.encode() + b"\r\n\r\n").top_via
    assert via is not None and via.branch == args[3] and via.port == args[2]
    assert via.host == args[1].strip("[]")


def _variant(method: str, *, branch: str = "z9hG4bK74bf9", cseq: int = 1, to_tag: str = "") -> Message:
    tag = f";tag={to_tag}" if to_tag else ""
    raw = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        f"From: <sip:alice@example.com>;tag=9fx\r\n"
        f"To: <sip:bob@example.com>{tag}\r\n"
        f"Call-ID: c1@192.0.2.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    return parse_message(raw)


def test_stateless_branch_with_magic_cookie() -> None:
    invite = stateless_branch(_variant("INVITE"), "salt")
    assert invite.startswith("z9hG4bK") and len(invite) == 7 + 16
    assert stateless_branch(_variant("INVITE"), "salt") == invite  # deterministic
    assert stateless_branch(_variant("CANCEL"), "salt") == invite
    assert stateless_branch(_variant("ACK", to_tag="t9"), "salt") == invite  # non-2xx ACK
    assert stateless_branch(_variant("INVITE"), "other salt") != invite
    assert stateless_branch(_variant("INVITE", branch="z9hG4bK2"), "salt") != invite
    assert stateless_branch(_variant("BYE", branch="z9hG4bK2", cseq=2), "salt") != invite


def test_stateless_branch_rfc2543_fallback() -> None:
    """No magic cookie: hash of To tag, From tag, Call-ID, Request-URI, top Via
    and CSeq number, not the method (RFC 3261 §16.11)."""
    invite = stateless_branch(_variant("INVITE", branch="1234"), "s")
    assert invite.startswith("z9hG4bK")
    assert stateless_branch(_variant("CANCEL", branch="1234"), "s") == invite
    assert stateless_branch(_variant("INVITE", branch="1234", cseq=2), "s") != invite
    assert stateless_branch(_variant("INVITE", branch="5678"), "s") != invite
    assert stateless_branch(_variant("INVITE", branch="1234", to_tag="x"), "s") != invite
    # a bare cookie is no RFC 3261 branch
    bare = stateless_branch(_variant("INVITE", branch="z9hG4bK"), "s")
    assert bare != stateless_branch(_variant("INVITE", branch="z9hG4bK", cseq=3), "s")


def test_stateless_branch_never_raises() -> None:
    m = parse_message(b"BYE sip:x SIP/2.0\r\nVia: garbage;;\r\nCSeq: x\r\nTo: \"bad\r\n\r\n")
    assert stateless_branch(m, "s").startswith("z9hG4bK")
    assert stateless_branch(parse_message(b"BYE sip:x SIP/2.0\r\n\r\n"), "s").startswith("z9hG4bK")


# ---------------------------------------------------------------------------
# add_top_header


def test_add_top_header_above_the_first_via() -> None:
    m = req()
    out = add_top_header(m, "Via", "SIP/2.0/UDP faultlab;branch=z9hG4bKnew;rport")
    assert out == INVITE.replace(
        b"Via: SIP/2.0/UDP proxy", b"Via: SIP/2.0/UDP faultlab;branch=z9hG4bKnew;rport\r\nVia: SIP/2.0/UDP proxy", 1
    )
    r = parse_message(out)
    assert r.top_via is not None and r.top_via.host == "faultlab"
    assert r.vias[1:] == m.vias
    assert r.body == m.body


def test_add_top_header_compact_match() -> None:
    raw = INVITE.replace(b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1\r\n", b"")
    out = add_top_header(parse_message(raw), "Via", "SIP/2.0/TCP a;branch=z9hG4bKb")
    assert out == raw.replace(b"v: SIP/2.0/UDP", b"Via: SIP/2.0/TCP a;branch=z9hG4bKb\r\nv: SIP/2.0/UDP", 1)


def test_add_top_header_absent_goes_after_start_line() -> None:
    out = add_top_header(req(), "Route", "<sip:pbx.example.com;lr>")
    assert out == INVITE.replace(
        b"SIP/2.0\r\n", b"SIP/2.0\r\nRoute: <sip:pbx.example.com;lr>\r\n", 1
    )
    assert parse_message(out).get_all("route") == ["<sip:pbx.example.com;lr>"]


def test_add_top_header_record_route() -> None:
    out = add_top_header(req(), "Record-Route", "<sip:faultlab;lr>")
    assert out == INVITE.replace(
        b"Record-Route:", b"Record-Route: <sip:faultlab;lr>\r\nRecord-Route:", 1
    )
    assert parse_message(out).get_all("record-route") == ["<sip:faultlab;lr>", "<sip:proxy.example.com;lr>"]


@pytest.mark.parametrize(("name", "value"), [("Bad Name", "x"), ("X", "a\r\nb"), ("X", "a\nb"), ("", "x")])
def test_add_top_header_refuses_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        add_top_header(req(), name, value)


# ---------------------------------------------------------------------------
# remove_top_value


@pytest.mark.parametrize(
    ("before", "name", "after"),
    [
        # whole field
        (b"Via: SIP/2.0/UDP a\r\nVia: SIP/2.0/UDP b\r\n", "via", b"Via: SIP/2.0/UDP b\r\n"),
        (b"v: SIP/2.0/UDP a\r\nVia: SIP/2.0/UDP b\r\n", "Via", b"Via: SIP/2.0/UDP b\r\n"),
        # first element of a list, the line stays
        (b"Via: SIP/2.0/UDP a, SIP/2.0/UDP b\r\n", "via", b"Via: SIP/2.0/UDP b\r\n"),
        (b"Via:SIP/2.0/UDP a,SIP/2.0/UDP b\r\n", "via", b"Via:SIP/2.0/UDP b\r\n"),
        (b"Via: SIP/2.0/UDP a ,\r\n  SIP/2.0/UDP b;x=1\r\n", "via", b"Via: SIP/2.0/UDP b;x=1\r\n"),
        (b"Route: <sip:a,b;lr>, <sip:c;lr>\r\n", "route", b"Route: <sip:c;lr>\r\n"),
        (b'Route: "x, y" <sip:a;lr>, <sip:c;lr>\r\n', "Route", b"Route: <sip:c;lr>\r\n"),
        (b"Route: <sip:a;lr>,, <sip:c;lr>\r\n", "route", b"Route: <sip:c;lr>\r\n"),
        # trailing comma only: the field goes
        (b"Route: <sip:a;lr>,\r\nX: 1\r\n", "route", b"X: 1\r\n"),
        # folded single value: the whole field with its continuation lines
        (b"Route:\r\n <sip:a;lr>\r\n\t\r\nX: 1\r\n", "route", b"X: 1\r\n"),
        # not a list header: the whole field even with commas
        (b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n", "date", b""),
        (b"X-Thing: a, b\r\nX-Thing: c\r\n", "x-thing", b"X-Thing: c\r\n"),
    ],
)
def test_remove_top_value(before: bytes, name: str, after: bytes) -> None:
    start = b"OPTIONS sip:x SIP/2.0\r\nMax-Forwards: 70\r\n"
    end = b"Call-ID: c\r\nContent-Length: 2\r\n\r\nhi"
    out = remove_top_value(parse_message(start + before + end), name)
    assert out == start + after + end


def test_remove_top_value_then_parse() -> None:
    out = remove_top_value(req(), "via")
    r = parse_message(out)
    assert r.vias == req().vias[1:]
    assert r.body == b"v=0\n" and r.cseq == CSeq(1, "INVITE")


def test_remove_top_value_absent() -> None:
    with pytest.raises(SipError):
        remove_top_value(req(), "route")


def test_add_then_remove_is_identity() -> None:
    m = req()
    for name in ("Via", "Record-Route", "Route", "X-New"):
        added = add_top_header(m, name, "SIP/2.0/UDP h;branch=z9hG4bKq" if name == "Via" else "<sip:h;lr>")
        assert remove_top_value(parse_message(added), name) == INVITE


def test_build_request_layout_parses_back_and_refuses_injection():
    data = build_request("INVITE", "sip:bob@10.0.0.2", via="SIP/2.0/TCP 10.0.0.1:5060;rport;branch=z9hG4bKab",
                         from_="<sip:alice@lab.test>;tag=1", to="<sip:bob@lab.test>", call_id="c1@x", cseq=7,
                         routes=["<sip:10.0.0.9;lr>"], contact="<sip:alice@10.0.0.1>",
                         headers=[("User-Agent", "ua")], body=b"v=0\r\n", content_type="application/sdp")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"INVITE sip:bob@10.0.0.2 SIP/2.0", b"Via: SIP/2.0/TCP 10.0.0.1:5060;rport;branch=z9hG4bKab",
        b"Max-Forwards: 70", b"Route: <sip:10.0.0.9;lr>", b"From: <sip:alice@lab.test>;tag=1",
        b"To: <sip:bob@lab.test>", b"Call-ID: c1@x", b"CSeq: 7 INVITE", b"Contact: <sip:alice@10.0.0.1>",
        b"User-Agent: ua", b"Content-Type: application/sdp", b"Content-Length: 5"]
    assert body == b"v=0\r\n"
    message = parse_datagram(data)
    assert message.method == "INVITE" and message.cseq.number == 7 and message.top_via.branch == "z9hG4bKab"
    with pytest.raises(ValueError, match="CR or LF"):
        build_request("BYE", "sip:b@c", via="SIP/2.0/UDP h;branch=z9hG4bKx", from_="<sip:a@c>;tag=1",
                      to="<sip:b@c>", call_id="c", cseq=1, headers=[("Reason", "x\r\nEvil: 1")])
