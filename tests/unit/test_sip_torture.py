"""RFC 4475 torture messages against faultlab.sip.

The 49 files live in ../shared/sip-torture (see its INDEX.md for classes V, I,
T, A, B). Contract checked for every file, through parse_datagram and through
StreamFramer (whole and byte by byte): the input parses or raises SipError,
never anything else, and every accessor of a parsed message returns a value
or raises SipError. The valid files (V, A, B, T) must parse, with the fields
checked below. Decisions for the invalid class (I) are listed in
``DATAGRAM_ERRORS`` and the per-file notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from faultlab.sip import (
    EOF,
    NEED_DATA,
    CSeq,
    KeepAlive,
    Message,
    NameAddr,
    SipError,
    StreamFramer,
    build_response,
    parse_datagram,
    parse_uri,
    push_params,
    stateless_branch,
)

TORTURE = Path(__file__).resolve().parents[2].parent / "shared" / "sip-torture"
FILES = sorted(TORTURE.glob("*.sip")) if TORTURE.is_dir() else []
pytestmark = pytest.mark.skipif(
    len(FILES) != 49, reason=f"RFC 4475 torture files not found at {TORTURE} (need all 49)"
)


def load(name: str) -> bytes:
    return (TORTURE / f"{name}.sip").read_bytes()


def names() -> list[str]:
    return [f.stem for f in FILES] or ["missing"]


def classes() -> dict[str, str]:
    """file name -> class letter, read from INDEX.md's table."""
    out = {}
    for line in (TORTURE / "INDEX.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1].endswith(".sip"):
            out[cells[1][:-4]] = cells[3]
    return out


# Files whose datagram parse raises, and why (all class I, except mcl01).
DATAGRAM_ERRORS = {
    "bigcode": "status code beyond 3 digits (RFC 4475 §3.1.2.19)",
    "clerr": "Content-Length larger than the datagram (§3.1.2.2: answer 400)",
    "lwsruri": "LWS inside the Request-URI (§3.1.2.8)",
    "lwsstart": "several SP between Request-Line elements (§3.1.2.9, rejecting allowed)",
    "trws": "SP at the end of the Request-Line (§3.1.2.10, rejecting allowed)",
    "ncl": "negative Content-Length (§3.1.2.3)",
    # Class A, but RFC 4475 §3.3.9 says the framing cannot be known and
    # the element must answer 400: faultlab does not guess a body length.
    "mcl01": "conflicting Content-Length values (§3.3.9)",
}


def touch_everything(m: Message) -> None:
    """Call every accessor; each may only return or raise SipError."""
    m.summary()
    repr(m)
    for h in m.headers:
        m.get(h.name)
        m.get_all(h.key)
    for attr in (
        "call_id", "cseq", "top_via", "vias", "from_tag", "to_tag", "from_addr", "to_addr",
        "reason", "contacts", "expires", "content_length",
    ):
        try:
            getattr(m, attr)
        except SipError:
            pass
    for fn in (
        lambda: [push_params(c) for c in m.contacts],
        lambda: parse_uri(m.request_uri or ""),
        lambda: [parse_uri(c.uri) for c in m.contacts if c.uri != "*"],
    ):
        try:
            fn()
        except SipError:
            pass
    stateless_branch(m, "salt")
    if m.is_request:
        build_response(m, 400)


def stream_events(data: bytes, chunk: int | None) -> tuple[list[object], SipError | None, bytes]:
    """Feed ``data`` then EOF; events, the error if any, and take_unframed()."""
    f = StreamFramer()
    events: list[object] = []
    step = chunk or len(data)
    fed = 0
    try:
        while fed < len(data):
            f.receive_data(data[fed : fed + step])
            fed += step
            while (e := f.next_event()) is not NEED_DATA:
                events.append(e)
        f.receive_data(b"")
        while (e := f.next_event()) is not EOF:
            assert e is not NEED_DATA
            events.append(e)
    except SipError as exc:
        return events, exc, f.take_unframed() + data[fed:]
    return events, None, f.take_unframed()


@pytest.mark.parametrize("name", names())
def test_datagram_parses_or_raises_sip_error(name: str) -> None:
    data = load(name)
    try:
        m = parse_datagram(data)
    except SipError as exc:
        assert name in DATAGRAM_ERRORS, f"{name}: unexpected SipError {exc}"
        assert exc.status_hint in (400, 413)
        return
    assert name not in DATAGRAM_ERRORS, f"{name} should have raised"
    assert isinstance(m, Message)
    assert m.raw + m.trailing == data
    touch_everything(m)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
def test_stream_parses_or_raises_sip_error(name: str, chunk: int | None) -> None:
    data = load(name)
    events, error, rest = stream_events(data, chunk)
    got = b"".join(e.raw for e in events)  # type: ignore[attr-defined]
    assert got + rest == data  # nothing lost, nothing invented
    for e in events:
        assert isinstance(e, (Message, KeepAlive))
        if isinstance(e, Message):
            touch_everything(e)
    if error is None:
        assert rest == b""
    # Same outcome whole and byte by byte, except that a ping split across
    # reads may come out as two pongs.
    whole, whole_error, _ = stream_events(data, None)
    assert [e.raw for e in events if isinstance(e, Message)] == [
        e.raw for e in whole if isinstance(e, Message)  # type: ignore[attr-defined]
    ]
    assert (error is None) == (whole_error is None)


def test_every_valid_file_parses() -> None:
    cls = classes()
    assert len(cls) == 49 and set(cls) == set(names())
    for name, letter in cls.items():
        if letter in "VTAB" and name != "mcl01":
            assert isinstance(parse_datagram(load(name)), Message), name
        elif name not in DATAGRAM_ERRORS:
            assert letter == "I"


def dg(name: str) -> Message:
    m = parse_datagram(load(name))
    assert isinstance(m, Message)
    return m


# ---------------------------------------------------------------------------
# per-file field checks: valid syntax (RFC 4475 §3.1.1)


def test_wsinv() -> None:
    m = dg("wsinv")
    assert m.method == "INVITE"
    assert m.request_uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert m.cseq == CSeq(9, "INVITE")
    assert m.to_tag == "1918181833n"
    assert m.from_tag == "98asjd8"
    assert m.from_addr is not None and m.from_addr.display == 'J Rosenberg \\"'
    assert m.get("max-forwards") == "0068"
    assert m.get("subject") == ""
    assert m.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.get_all("route") == ["<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"]
    assert m.contacts == [
        NameAddr('Quoted string ""', "sip:jdrosen@example.com",
                 {"newparam": "newvalue", "secondparam": None, "q": "0.33"})
    ]
    assert m.content_length == 150 and len(m.body) == 150
    assert m.body.startswith(b"v=0\r\n")


def test_intmeth() -> None:
    m = dg("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method
    assert m.cseq == CSeq(139122385, method)
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.to_addr is not None and m.to_addr.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_addr is not None and m.from_addr.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_tag == "_token~1'+`*%!-."
    assert m.from_addr.params["fromparam''~+*_!.-%"] == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    assert m.top_via is not None and m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    uri = parse_uri(m.request_uri or "")
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"


def test_esc01() -> None:
    m = dg("esc01")
    assert m.request_uri == "sip:sips%3Auser%40example.com@example.net"
    assert parse_uri(m.request_uri).user == "sips%3Auser%40example.com"  # escapes kept
    assert m.get("c") == "application/sdp"
    (c,) = m.contacts
    assert c.uri == "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    assert len(m.body) == 150


def test_escnull() -> None:
    m = dg("escnull")
    assert [c.uri for c in m.contacts] == ["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"]
    assert m.get("to") == "sip:null-%00-null@example.com"
    assert m.content_length == 0


def test_esc02() -> None:
    m = dg("esc02")
    assert m.method == "RE%47IST%45R"  # not unescaped: a method is a token
    assert m.from_addr is not None and m.from_addr.display == "%Z%45"
    assert [c.uri for c in m.contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"  # another header


def test_lwsdisp() -> None:
    assert dg("lwsdisp").from_addr == NameAddr("caller", "sip:caller@example.com", {"tag": "323"})


def test_longreq() -> None:
    m = dg("longreq")
    assert len(m.vias) == 34
    assert m.vias[0].host == "sip33.example.com"
    assert m.vias[-1].received == "192.0.2.5"
    assert m.to_addr is not None and m.to_addr.display is not None and len(m.to_addr.display) > 90
    assert m.from_tag is not None and len(m.from_tag) > 100
    assert m.call_id is not None and m.call_id.startswith("longreq.onereally")
    assert len(m.body) == m.content_length


def test_dblreq() -> None:
    data = load("dblreq")
    m = dg("dblreq")
    assert m.method == "REGISTER" and m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert m.content_length == 0 and m.body == b""
    assert m.trailing.startswith(b"\r\nINVITE sip:joe@example.com SIP/2.0")
    assert m.raw + m.trailing == data
    # On a stream the same bytes are a REGISTER, a pong and an INVITE whose
    # body is shorter than what follows it; the leftover "C" line cannot be
    # framed (no Content-Length) and comes back from take_unframed().
    events, error, rest = stream_events(data, None)
    assert [type(e).__name__ for e in events] == ["Message", "KeepAlive", "Message"]
    assert events[2].method == "INVITE"  # type: ignore[attr-defined]
    assert error is not None and rest == b"C\r\n\r\n"


def test_semiuri() -> None:
    m = dg("semiuri")
    uri = parse_uri(m.request_uri or "")
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", {})
    assert m.get_all("accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag",
    ]


def test_transports() -> None:
    m = dg("transports")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01() -> None:
    m = dg("mpart01")
    assert m.content_length == 553 and len(m.body) == 553
    assert m.get("content-type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert b"7a9cbec02ceef655" in m.body
    assert m.top_via is not None and m.top_via.rport == "" and m.top_via.port == 5070


def test_unreason() -> None:
    m = dg("unreason")
    assert m.status == 200
    assert m.reason_phrase is not None and m.reason_phrase.startswith("= 2**3 * 5**2 \u043d\u043e ")
    assert m.cseq == CSeq(35, "INVITE")


def test_noreason() -> None:
    m = dg("noreason")
    assert (m.status, m.reason_phrase) == (100, "")
    assert m.to_tag == "902jndnke3"


# ---------------------------------------------------------------------------
# invalid syntax (RFC 4475 §3.1.2): parsed, but the bad part raises


def test_badinv01() -> None:
    m = dg("badinv01")
    with pytest.raises(SipError):
        m.top_via
    with pytest.raises(SipError):
        m.contacts
    assert m.call_id == "badinv01.0ha0isndaksdjasdf3234nas"


def test_scalar02() -> None:
    m = dg("scalar02")
    with pytest.raises(SipError):
        m.cseq
    with pytest.raises(SipError):
        m.expires
    assert m.content_length == 0
    assert m.summary().startswith("REGISTER sip:example.com cseq=? ")


def test_scalarlg() -> None:
    m = dg("scalarlg")
    assert m.status == 503
    with pytest.raises(SipError):
        m.cseq


def test_quotbal() -> None:
    m = dg("quotbal")
    with pytest.raises(SipError):
        m.to_tag
    assert m.from_tag == "93334"


def test_ltgtruri() -> None:
    m = dg("ltgtruri")
    assert m.request_uri == "<sip:user@example.com>"  # any non-space; the URI itself is bad
    with pytest.raises(SipError):
        parse_uri(m.request_uri)


def test_escruri() -> None:
    m = dg("escruri")
    assert parse_uri(m.request_uri or "").headers == "Route=%3Csip:example.com%3E"
    assert m.get("route") is None  # escaped headers never become real ones


def test_baddate() -> None:
    assert dg("baddate").get("date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_regbadct() -> None:
    (c,) = dg("regbadct").contacts
    assert c.uri == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_badaspec_and_baddn_are_read_leniently() -> None:
    assert dg("badaspec").to_addr == NameAddr("Watson, Thomas", "sip:t.watson@example.org", {})
    assert dg("baddn").from_addr == NameAddr("Bell, Alexander", "sip:a.g.bell@example.com", {"tag": "43"})


def test_badvers() -> None:
    m = dg("badvers")
    assert m.version == "SIP/7.0"  # the upper layer answers 505
    assert m.top_via is not None and m.top_via.protocol == "SIP/7.0"


def test_mismatch01_and_02() -> None:
    m = dg("mismatch01")
    assert m.method == "OPTIONS" and m.cseq == CSeq(8, "INVITE")
    m = dg("mismatch02")
    assert m.method == "NEWMETHOD" and m.cseq == CSeq(8, "INVITE")


# ---------------------------------------------------------------------------
# transaction / application semantics and backward compatibility


def test_badbranch() -> None:
    m = dg("badbranch")
    assert m.top_via is not None and m.top_via.branch == "z9hG4bK"
    # a bare magic cookie is no RFC 3261 branch: §16.11's fallback hash is used
    assert stateless_branch(m, "s") != stateless_branch(dg("zeromf"), "s")


def test_insuf() -> None:
    m = dg("insuf")
    assert m.call_id is None and m.from_tag is None and m.to_addr is None
    assert m.summary() == "INVITE sip:user@example.com cseq=193942 INVITE call=?"
    response = build_response(m, 400)
    assert response.startswith(b"SIP/2.0 400 Bad Request\r\nVia: SIP/2.0/UDP 192.0.2.95")


@pytest.mark.parametrize("name", ["unkscm", "novelsc"])
def test_unknown_request_uri_schemes(name: str) -> None:
    m = dg(name)
    with pytest.raises(SipError) as info:
        parse_uri(m.request_uri or "")
    assert info.value.status_hint == 416


def test_unksm2() -> None:
    m = dg("unksm2")
    assert m.to_addr == NameAddr(None, "isbn:2983792873", {})
    assert m.from_addr == NameAddr(None, "http://www.example.com", {"tag": "3234233"})
    assert m.contacts == [NameAddr(None, "name:John_Smith", {})]


def test_bext01() -> None:
    m = dg("bext01")
    assert m.get_all("require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.get_all("proxy-require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_invut() -> None:
    m = dg("invut")
    assert m.get("content-type") == "application/unknownformat" and len(m.body) == 40


def test_regaut01() -> None:
    assert dg("regaut01").get_all("authorization") == ["NoOneKnowsThisScheme opaque-data=here"]


def test_multi01() -> None:
    m = dg("multi01")
    assert m.call_id == "multi01.98asdh@192.0.2.1"  # the first of each
    assert m.cseq == CSeq(5, "INVITE")
    assert m.get_all("call-id") == ["multi01.98asdh@192.0.2.1", "multi01.98asdh@192.0.2.2"]
    assert m.get_all("max-forwards") == ["70", "5"]
    assert len(m.contacts) == 2


def test_bcast() -> None:
    m = dg("bcast")
    assert [v.host for v in m.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf() -> None:
    assert dg("zeromf").get("max-forwards") == "0"


def test_cparam01_and_02() -> None:
    (c1,) = dg("cparam01").contacts
    assert c1 == NameAddr(None, "sip:+19725552222@gw1.example.net", {"unknownparam": None})
    (c2,) = dg("cparam02").contacts
    assert c2 == NameAddr(None, "sip:+19725552222@gw1.example.net;unknownparam", {})
    assert parse_uri(c2.uri).params == {"unknownparam": None}


def test_regescrt() -> None:
    (c,) = dg("regescrt").contacts
    assert c.uri == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert parse_uri(c.uri).headers == "Route=%3Csip:sip.example.com%3E"


def test_sdp01() -> None:
    assert dg("sdp01").get_all("accept") == ["text/nobodyKnowsThis"]


def test_inv2543() -> None:
    m = dg("inv2543")
    assert m.content_length is None and m.body.startswith(b"v=0\r\n")  # body = rest of datagram
    assert m.from_tag is None
    assert m.top_via is not None and m.top_via.branch is None
    assert m.get("max-forwards") is None
    # a stream needs Content-Length (RFC 3261 §18.3)
    _, error, rest = stream_events(load("inv2543"), None)
    assert error is not None and rest == load("inv2543")


def _fields(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    getters: dict[str, Callable[[], Any]] = {
        "call_id": lambda: m.call_id, "cseq": lambda: m.cseq, "vias": lambda: m.vias,
    }
    for k, fn in getters.items():
        try:
            out[k] = fn()
        except SipError as exc:
            out[k] = type(exc)
    return out


@pytest.mark.parametrize("name", names())
def test_stream_and_datagram_agree(name: str) -> None:
    """Where both framings yield a message, it is the same message."""
    data = load(name)
    try:
        m = parse_datagram(data)
    except SipError:
        return
    events, _, _ = stream_events(data, None)
    if events and isinstance(events[0], Message):
        assert isinstance(m, Message)
        assert events[0].raw == m.raw
        assert _fields(events[0]) == _fields(m)
