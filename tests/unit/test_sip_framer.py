"""StreamFramer: SIP over TCP/TLS (RFC 3261 §18.3, RFC 5626 §3.5.1 keep-alives).

Rules for this module: bytes in, events out, no sockets, no clock. Unframeable
input raises SipError and breaks the framer for good; take_unframed() hands
back whatever was not returned as an event.
"""

from __future__ import annotations

import pytest

from faultlab.sip import (
    EOF,
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    NEED_DATA,
    KeepAlive,
    Message,
    SipError,
    StreamFramer,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK74bf9\r\n"
    b"From: Alice <sip:alice@example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: 3848276298220188511@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 10\r\n"
    b"\r\n"
    b"v=0\r\ns=-\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"v: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK74bf9\r\n"
    b"i: 3848276298220188511@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"l: 0\r\n"
    b"\r\n"
)


def drain(framer: StreamFramer) -> list[object]:
    """Every event up to NEED_DATA or EOF (included)."""
    events: list[object] = []
    while True:
        event = framer.next_event()
        events.append(event)
        if event is NEED_DATA or event is EOF:
            return events


def feed(data: bytes, chunk: int | None = None, *, eof: bool = True) -> list[object]:
    """Feed ``data`` whole or in chunks; the events without the sentinels."""
    framer = StreamFramer()
    events: list[object] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        framer.receive_data(data[i : i + step])
        events += drain(framer)
    if eof:
        framer.receive_data(b"")
        events += drain(framer)
    return [e for e in events if e is not NEED_DATA and e is not EOF]


def raws(events: list[object]) -> list[bytes]:
    return [e.raw for e in events]  # type: ignore[attr-defined]


def test_sentinels() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(EOF) == "EOF"
    assert NEED_DATA is not EOF


def test_empty_framer() -> None:
    f = StreamFramer()
    assert f.next_event() is NEED_DATA
    assert f.next_event() is NEED_DATA
    f.receive_data(b"")
    assert f.next_event() is EOF
    assert f.next_event() is EOF


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7, 64])
def test_pipeline(chunk: int | None) -> None:
    data = INVITE + OK + INVITE
    events = feed(data, chunk)
    assert raws(events) == [INVITE, OK, INVITE]
    assert all(isinstance(e, Message) for e in events)
    assert events[1].status == 200 and events[1].content_length == 0  # type: ignore[attr-defined]
    assert events[0].body == b"v=0\r\ns=-\r\n"  # type: ignore[attr-defined]


def test_message_then_need_data_then_rest() -> None:
    f = StreamFramer()
    f.receive_data(INVITE + OK[:10])
    first = f.next_event()
    assert isinstance(first, Message) and first.raw == INVITE
    assert f.next_event() is NEED_DATA
    f.receive_data(OK[10:])
    second = f.next_event()
    assert isinstance(second, Message) and second.raw == OK
    assert f.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\r\n\r\n", [KeepAlive(b"\r\n\r\n")]),
        (b"\r\n", [KeepAlive(b"\r\n")]),
        (b"\r\n\r\n\r\n", [KeepAlive(b"\r\n\r\n"), KeepAlive(b"\r\n")]),
        (b"\r\n\r\n\r\n\r\n", [KeepAlive(b"\r\n\r\n"), KeepAlive(b"\r\n\r\n")]),
        (b"\r\n" + OK, [KeepAlive(b"\r\n"), OK]),
        (b"\r\n\r\n" + OK + b"\r\n", [KeepAlive(b"\r\n\r\n"), OK, KeepAlive(b"\r\n")]),
    ],
)
def test_keepalives(data: bytes, expected: list[object]) -> None:
    events = feed(data)
    assert [e if isinstance(e, KeepAlive) else e.raw for e in events] == expected  # type: ignore[attr-defined]


def test_lone_pong_is_not_held() -> None:
    """A pong arriving alone is returned at once (RFC 5626 §4.4.1: the peer
    waits for it); a ping split after its first CRLF becomes two pongs with
    the same bytes."""
    f = StreamFramer()
    f.receive_data(b"\r\n")
    assert f.next_event() == KeepAlive(b"\r\n")
    assert f.next_event() is NEED_DATA
    f.receive_data(b"\r")
    assert f.next_event() is NEED_DATA
    f.receive_data(b"\n")
    assert f.next_event() == KeepAlive(b"\r\n")


@pytest.mark.parametrize("chunk", [None, 1])
def test_pipeline_with_keepalives_preserves_bytes(chunk: int | None) -> None:
    data = b"\r\n\r\n" + INVITE + b"\r\n" + OK + b"\r\n\r\n" + INVITE
    events = feed(data, chunk)
    assert b"".join(raws(events)) == data
    assert [e.raw for e in events if isinstance(e, Message)] == [INVITE, OK, INVITE]


@pytest.mark.parametrize(
    "data",
    [
        INVITE.replace(b"Content-Length: 10\r\n", b""),  # no Content-Length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"INVITE  sip:x SIP/2.0\r\nl: 0\r\n\r\n",
        INVITE.replace(b"Content-Length: 10", b"Content-Length: -10"),
        INVITE.replace(b"Content-Length: 10", b"Content-Length: 10\r\nl: 11"),
        b"\rX",
        b"\n\n",
        b"INVITE sip:x SIP/2.0\r\nbad header\r\nl: 0\r\n\r\n",
    ],
)
@pytest.mark.parametrize("chunk", [None, 1])
def test_unframeable(data: bytes, chunk: int | None) -> None:
    with pytest.raises(SipError):
        feed(data, chunk)


def test_garbage_start_line_fails_before_the_head_ends() -> None:
    f = StreamFramer()
    f.receive_data(b"HELLO WORLD\r\n")
    with pytest.raises(SipError, match="start line"):
        f.next_event()


def test_broken_framer_stays_broken_and_gives_bytes_back() -> None:
    f = StreamFramer()
    bad = b"INVITE sip:x SIP/2.0\r\nVia: x\r\n\r\n"  # no Content-Length on a stream
    f.receive_data(OK + bad)
    assert isinstance(f.next_event(), Message)
    with pytest.raises(SipError) as first:
        f.next_event()
    assert f.broken
    with pytest.raises(SipError) as second:
        f.next_event()
    assert second.value is first.value
    f.receive_data(b"more")
    assert f.take_unframed() == bad + b"more"
    assert f.take_unframed() == b""
    with pytest.raises(SipError):
        f.next_event()


def test_take_unframed_on_healthy_framer() -> None:
    f = StreamFramer()
    f.receive_data(OK + INVITE[:50])
    assert isinstance(f.next_event(), Message)
    assert f.next_event() is NEED_DATA
    assert f.take_unframed() == INVITE[:50]
    assert f.next_event() is NEED_DATA
    f.receive_data(INVITE)
    event = f.next_event()
    assert isinstance(event, Message) and event.raw == INVITE


@pytest.mark.parametrize("cut", [1, 10, len(INVITE) - 20, len(INVITE) - 1])
def test_eof_inside_a_message(cut: int) -> None:
    f = StreamFramer()
    f.receive_data(OK + INVITE[:cut])
    f.receive_data(b"")
    assert isinstance(f.next_event(), Message)
    with pytest.raises(SipError, match="stream closed inside a message"):
        f.next_event()
    assert f.take_unframed() == INVITE[:cut]


def test_eof_inside_a_keepalive() -> None:
    f = StreamFramer()
    f.receive_data(b"\r")
    f.receive_data(b"")
    with pytest.raises(SipError):
        f.next_event()
    assert f.take_unframed() == b"\r"


def test_clerr_on_a_stream_waits_then_fails_at_eof() -> None:
    """RFC 4475 §3.1.2.2: Content-Length larger than the data: wait, then close."""
    data = INVITE.replace(b"Content-Length: 10", b"Content-Length: 9999")
    f = StreamFramer()
    f.receive_data(data)
    assert f.next_event() is NEED_DATA
    f.receive_data(b"")
    with pytest.raises(SipError):
        f.next_event()
    assert f.take_unframed() == data


def test_receive_after_eof_is_a_caller_bug() -> None:
    f = StreamFramer()
    f.receive_data(b"")
    with pytest.raises(RuntimeError):
        f.receive_data(b"x")


def test_default_limits() -> None:
    assert MAX_MESSAGE_SIZE == 64 * 1024
    f = StreamFramer()
    assert f.max_message_size == MAX_MESSAGE_SIZE and f.max_headers == MAX_HEADERS


def _message_of_size(total: int) -> bytes:
    head = b"MESSAGE sip:x SIP/2.0\r\nContent-Length: %08d\r\n\r\n"
    body_len = total - len(head % 0)
    return (head % body_len) + b"x" * body_len


@pytest.mark.parametrize("chunk", [None, 4096])
def test_message_at_the_size_limit(chunk: int | None) -> None:
    data = _message_of_size(MAX_MESSAGE_SIZE)
    assert len(data) == MAX_MESSAGE_SIZE
    assert raws(feed(data, chunk)) == [data]


@pytest.mark.parametrize("chunk", [None, 4096])
def test_message_over_the_size_limit(chunk: int | None) -> None:
    data = _message_of_size(MAX_MESSAGE_SIZE + 1)
    with pytest.raises(SipError) as info:
        feed(data, chunk)
    assert info.value.status_hint == 413


def test_size_limit_is_known_from_the_head() -> None:
    """The 413 comes as soon as the head announces too large a body."""
    f = StreamFramer(max_message_size=1000)
    f.receive_data(b"MESSAGE sip:x SIP/2.0\r\nl: 5000\r\n\r\n")
    with pytest.raises(SipError) as info:
        f.next_event()
    assert info.value.status_hint == 413


def test_head_without_end_over_the_limit() -> None:
    f = StreamFramer(max_message_size=1000)
    f.receive_data(b"MESSAGE sip:x SIP/2.0\r\n")
    for _ in range(60):
        f.receive_data(b"X-Filler: 0123456789\r\n")
        try:
            assert f.next_event() is NEED_DATA
        except SipError as exc:
            assert exc.status_hint == 413
            break
    else:
        pytest.fail("no error past max_message_size")


def test_start_line_without_end_over_the_limit() -> None:
    f = StreamFramer(max_message_size=100)
    f.receive_data(b"INVITE sip:" + b"a" * 200)
    with pytest.raises(SipError) as info:
        f.next_event()
    assert info.value.status_hint == 413


def test_header_count_limit() -> None:
    head = b"OPTIONS sip:x SIP/2.0\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10))
    ok = head + b"l: 0\r\n\r\n"
    assert raws(feed(ok)) == [ok]
    f = StreamFramer(max_headers=10)
    f.receive_data(ok)
    with pytest.raises(SipError) as info:
        f.next_event()
    assert info.value.status_hint == 413
    f = StreamFramer(max_headers=11)
    f.receive_data(ok)
    assert isinstance(f.next_event(), Message)


def test_search_is_incremental() -> None:
    """Byte-at-a-time feeding of a big head stays linear (h11 _receivebuffer)."""
    filler = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    data = b"OPTIONS sip:x SIP/2.0\r\n" + filler + b"l: 0\r\n\r\n"
    f = StreamFramer()
    out = []
    for i in range(0, len(data), 3):
        f.receive_data(data[i : i + 3])
        out += [e for e in drain(f) if e is not NEED_DATA]
    assert raws(out) == [data]
    assert f._searched == 0  # reset after the message


def test_crlfcrlf_split_across_chunks() -> None:
    for cut in range(len(OK) - 6, len(OK)):
        assert raws(feed(OK, None) if cut == 0 else _two_chunks(OK, cut)) == [OK]


def _two_chunks(data: bytes, cut: int) -> list[object]:
    f = StreamFramer()
    events: list[object] = []
    f.receive_data(data[:cut])
    events += drain(f)
    f.receive_data(data[cut:])
    events += drain(f)
    return [e for e in events if e is not NEED_DATA]


def test_bytearray_and_memoryview_input() -> None:
    f = StreamFramer()
    f.receive_data(bytearray(OK[:20]))
    f.receive_data(memoryview(OK)[20:])
    event = f.next_event()
    assert isinstance(event, Message) and event.raw == OK and type(event.raw) is bytes
