"""Property tests for faultlab.sip (the invariant of h11's fuzz/afl-server.py
and mitmproxy's test_http_fuzz.py, for SIP).

1. Any input, fed whole, byte by byte or in random chunks, either parses or
   raises SipError; every accessor of a parsed message returns or raises
   SipError. No other exception, ever.
2. Nothing is lost or invented: the framer's events plus take_unframed() give
   back exactly the input bytes.
3. A valid pipeline of messages and keep-alives, split anywhere, yields
   exactly the original messages.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultlab.sip import (
    EOF,
    NEED_DATA,
    KeepAlive,
    Message,
    SipError,
    StreamFramer,
    add_top_header,
    build_response,
    parse_datagram,
    parse_message,
    parse_uri,
    push_params,
    remove_top_value,
    stateless_branch,
)

SEEDS: list[bytes] = [
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport, SIP/2.0/TCP [2001:db8::1]:5061\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice, A." <sip:alice@example.com>;tag=9fxced76sl\r\n'
    b"To: Bob\r\n <sip:bob@example.com>\r\n"
    b"Call-ID: 3848276298220188511@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.2:5060;pn-provider=apns;pn-prid=TOKEN;pn-param=T.com.x.voip>;expires=60\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b"v=0\r\ns=-\r\nx=1",
    b"SIP/2.0 487 Request Terminated\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;received=192.0.2.9;rport=5066\r\n"
    b"f: <sip:alice@example.com>;tag=9fxced76sl\r\n"
    b"t: <sip:bob@example.com>;tag=8321234356\r\n"
    b"i: 3848276298220188511@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b'Reason: SIP;cause=200;text="Call completed elsewhere"\r\n'
    b"l: 0\r\n"
    b"\r\n",
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.2:5061;branch=z9hG4bKreg1\r\n"
    b"From: <sip:alice@example.com>;tag=r1\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: reg-1\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: *\r\n"
    b"Expires: 0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n",
]

TORTURE = Path(__file__).resolve().parents[2].parent / "shared" / "sip-torture"
TORTURE_SEEDS = (
    [p.read_bytes() for p in sorted(TORTURE.glob("*.sip"))[::4]] if TORTURE.is_dir() else []
)
ALL_SEEDS = SEEDS + TORTURE_SEEDS

INTERESTING = b"\r\n\t :;,<>\"\\=@/[]%?0123456789SIPlvz\x00\x7f\xff\xc3"

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with 1-4 cuts, splices, insertions or duplications."""
    data = bytearray(draw(st.sampled_from(ALL_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "splice", "insert", "dup", "flip", "truncate"]))
        n = len(data)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 64)))
        if op == "cut":
            del data[i:j]
        elif op == "splice":
            other = draw(st.sampled_from(ALL_SEEDS))
            a = draw(st.integers(0, len(other)))
            b = draw(st.integers(a, min(len(other), a + 200)))
            data[i:j] = other[a:b]
        elif op == "insert":
            data[i:i] = draw(st.binary(max_size=8) | st.lists(st.sampled_from(INTERESTING), max_size=8).map(bytes))
        elif op == "dup":
            data[j:j] = data[i:j]
        elif op == "flip" and n:
            data[min(i, n - 1)] = draw(st.sampled_from(INTERESTING))
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def touch(m: Message) -> None:
    """Every accessor and helper; SipError is the only exception allowed."""
    m.summary()
    for h in m.headers:
        assert m.raw[h.start : h.end].endswith(b"\r\n")
        m.get_all(h.name)
    for attr in (
        "call_id", "cseq", "top_via", "vias", "from_tag", "to_tag", "from_addr", "to_addr",
        "reason", "contacts", "expires", "content_length",
    ):
        try:
            getattr(m, attr)
        except SipError:
            pass
    try:
        for c in m.contacts:
            push_params(c)
    except SipError:
        pass
    try:
        parse_uri(m.request_uri or "sip:x")
    except SipError:
        pass
    stateless_branch(m, "salt")
    if m.is_request:
        parse_message(build_response(m, 400))
    for name in ("via", "route", "x-unknown"):
        added = add_top_header(m, name, "SIP/2.0/UDP h;branch=z9hG4bKf")
        assert remove_top_value(parse_message(added), name) == m.raw
    try:
        remove_top_value(m, "via")
    except SipError:
        pass


def run_framer(pieces: list[bytes]) -> tuple[list[object], SipError | None, bytes]:
    """Events, error and the bytes never returned as events (incl. unfed ones)."""
    f = StreamFramer()
    events: list[object] = []
    for k, piece in enumerate(pieces):
        if not piece:  # b"" would mean EOF
            continue
        f.receive_data(piece)
        try:
            while (e := f.next_event()) is not NEED_DATA:
                events.append(e)
        except SipError as exc:
            return events, exc, f.take_unframed() + b"".join(pieces[k + 1 :])
    f.receive_data(b"")
    try:
        while (e := f.next_event()) is not EOF:
            assert e is not NEED_DATA
            events.append(e)
    except SipError as exc:
        return events, exc, f.take_unframed()
    # once EOF was returned it keeps coming
    assert f.next_event() is EOF
    return events, None, f.take_unframed()


def check_stream(data: bytes, pieces: list[bytes]) -> list[bytes]:
    events, error, rest = run_framer(pieces)
    for e in events:
        assert isinstance(e, (Message, KeepAlive))
        if isinstance(e, Message):
            touch(e)
    assert b"".join(e.raw for e in events) + rest == data  # type: ignore[attr-defined]
    if error is None:
        assert rest == b""
    return [e.raw for e in events if isinstance(e, Message)]


@FUZZ
@given(mutated())
def test_datagram_mutations(data: bytes) -> None:
    try:
        m = parse_datagram(data)
    except SipError:
        return
    if isinstance(m, KeepAlive):
        assert m.raw == data
        return
    assert m.raw + m.trailing == data
    touch(m)


@FUZZ
@given(mutated())
def test_parse_message_mutations(data: bytes) -> None:
    try:
        m = parse_message(data)
    except SipError:
        return
    assert m.raw == data
    touch(m)


@FUZZ
@given(mutated(), st.lists(st.integers(0, 2000), max_size=12))
def test_stream_mutations_whole_bytewise_chunked(data: bytes, cuts: list[int]) -> None:
    whole = check_stream(data, [data])
    chunked = check_stream(data, chunks(data, cuts))
    assert chunked == whole
    if len(data) < 700:
        assert check_stream(data, [data[i : i + 1] for i in range(len(data))]) == whole


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    for fn in (parse_datagram, parse_message):
        try:
            result = fn(data)
        except SipError:
            continue
        if isinstance(result, Message):
            touch(result)
    assert check_stream(data, chunks(data, cuts)) == check_stream(data, [data])


KEEPALIVES = [b"\r\n\r\n", b"\r\n"]
VALID = [s for s in SEEDS if b"Content-Length" in s or b"\r\nl:" in s]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(VALID) | st.sampled_from(KEEPALIVES), min_size=1, max_size=8),
    st.lists(st.integers(0, 5000), max_size=20),
)
def test_valid_pipelines_round_trip(items: list[bytes], cuts: list[int]) -> None:
    # a pong followed by another keep-alive would read as a ping: keep
    # keep-alives apart by putting a message between two of them
    stream: list[bytes] = []
    for item in items:
        if item in KEEPALIVES and stream and stream[-1] in KEEPALIVES:
            stream.append(VALID[0])
        stream.append(item)
    data = b"".join(stream)
    events, error, rest = run_framer(chunks(data, cuts))
    assert error is None and rest == b""
    assert [e.raw for e in events if isinstance(e, Message)] == [s for s in stream if s not in KEEPALIVES]
    assert b"".join(e.raw for e in events) == data  # type: ignore[attr-defined]
    for e in events:
        if isinstance(e, Message):
            assert e == parse_message(e.raw)
        else:
            assert e.raw in KEEPALIVES  # type: ignore[attr-defined]
    # whole: exactly the original items, keep-alives included
    events, _, _ = run_framer([data])
    assert [e.raw for e in events] == stream  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(SEEDS), st.binary(max_size=40))
def test_datagram_trailing_octets(seed: bytes, extra: bytes) -> None:
    m = parse_datagram(seed + extra)
    assert isinstance(m, Message)
    assert m.raw == seed and m.trailing == extra
