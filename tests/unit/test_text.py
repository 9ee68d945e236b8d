"""The text rule (faultlab.text): any text, lone surrogates included, and any bytes go through every view of the
timeline (the event, the JSONL trace and its readers, the console, the ladder, the pcap, the API's JSON) without an
exception, readable (a byte that is not UTF-8 shows as ``\\xbd``), with the raw bytes exact."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultlab.api._http import dumps
from faultlab.sip import parse_datagram
from faultlab.text import clean, load_json, printable, readable
from faultlab.trace import ConsolePrinter, Event, JsonlWriter, Trace, ladder_rows, read_jsonl, render_ladder
from faultlab.trace.follow import TraceTail

# Any code point, lone surrogates included (hypothesis' default text leaves them out).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | ANY_TEXT,
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
                       max_leaves=12)


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.mark.parametrize(("text", "shown"), [
    ("abc\udcbd", "abc\\xbd"),  # a byte that was not UTF-8 (surrogateescape) shows as the byte
    ("\udc80\udcff", "\\x80\\xff"),
    ("a\ud800b", "a\\ud800b"),  # any other lone surrogate as its code point
    ("\udbff\udfff", "\\udbff\\udfff"),
    ("café ☃ \U0001f600", "café ☃ \U0001f600"),  # text is left as it is
    ("plain", "plain"),
])
def test_readable(text: str, shown: str) -> None:
    assert readable(text) == shown
    readable(text).encode("utf-8")


def test_a_header_value_from_the_wire_reads_as_its_bytes() -> None:
    msg = parse_datagram(b"MESSAGE sip:b@x SIP/2.0\r\nCall-ID: abc\xbd\xff@h\r\nCSeq: 1 MESSAGE\r\n\r\n")
    assert msg.call_id == "abc\udcbd\udcff@h"  # exact inside: encodes back to the bytes
    assert msg.call_id.encode("utf-8", "surrogateescape") == b"abc\xbd\xff@h"
    assert readable(msg.call_id) == "abc\\xbd\\xff@h"


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("a\x1b[31mb\rc\u202ed\udcbd\ud800") == "a\\x1b[31mb\\x0dc\\u202ed\\xbd\\ud800"


@given(JSONISH)
def test_clean_leaves_no_surrogate_and_keeps_clean_values_as_they_are(value) -> None:
    cleaned = clean(value)
    text = json.dumps(cleaned, ensure_ascii=False)
    text.encode("utf-8")
    if not has_surrogate(json.dumps(value, ensure_ascii=False)):
        assert cleaned is value


@given(st.binary(max_size=200))
def test_load_json_takes_anything_and_refuses_with_a_value_error(data: bytes) -> None:
    try:
        value = load_json(data)
    except ValueError as exc:
        assert str(exc)
    else:
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # what it takes can be written back


@pytest.mark.parametrize(("data", "says"), [
    (b"[" * 30000 + b"]" * 30000, "nested deeper than 32 levels"),  # past the interpreter's recursion limit
    (b"[" * 33 + b"]" * 33, "nested deeper than 32 levels"),
    (b'{"a": "\\udcbd"}', "lone surrogate \\udcbd"),
    (b'["\\ud83d"]', "lone surrogate \\ud83d"),
    (b'{"a": "\xbd"}', "not UTF-8 (byte 0xbd at offset 7)"),
    (b"NaN", "NaN is not a JSON number"),
    (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
    (b"{", "not valid JSON"),
    (b"1" * 5000, "not valid JSON"),  # past int's digit limit
])
def test_load_json_refuses_saying_why(data: bytes, says: str) -> None:
    with pytest.raises(ValueError) as info:
        load_json(data)
    assert says in str(info.value)


def test_load_json_takes_what_is_fine() -> None:
    assert load_json(b"[" * 32 + b"]" * 32) is not None
    assert load_json('"\\ud83d\\ude00 caf\\u00e9"'.encode()) == "\U0001f600 café"  # a surrogate pair is a character


def event_with(text: str, raw: bytes) -> Event:
    return Event(1.5, "received", source="proxy", flow=f"u{text}", direction="to-pbx", transport="udp",
                 peer=f"127.0.0.1:{text}", summary=f"MESSAGE {text}", method="MESSAGE", call_id=text, cseq=1,
                 cseq_method="MESSAGE", raw=raw, detail={text: [text, {"k": text}], "n": 1})


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT, raw=st.binary(max_size=300))
def test_any_text_and_bytes_through_every_view(tmp_path: Path, text: str, raw: bytes) -> None:
    e = event_with(text, raw)
    for value in (e.flow, e.peer, e.summary, e.call_id, json.dumps(e.detail, ensure_ascii=False)):
        assert not has_surrogate(value)
    assert e.call_id == readable(text) and e.raw == raw
    # the JSONL trace, and faultlab's readers of it
    path = tmp_path / "t.jsonl"
    writer = JsonlWriter(path)
    writer(e)
    writer.close()
    path.read_bytes().decode("utf-8")
    [back] = list(read_jsonl(path))
    assert back == e  # text as it was shown, raw bytes exact
    tail = TraceTail(path)
    try:
        assert tail.read() == [e]
    finally:
        tail.close()
    # the console, on a stream that takes only UTF-8 (and one that takes only ASCII)
    for encoding in ("utf-8", "ascii"):
        out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
        ConsolePrinter(out, verbose=True, color=False)(e)
        out.flush()
        out.buffer.getvalue().decode(encoding)
    # the ladder and the API's JSON
    rows = ladder_rows([e], e.call_id) if e.call_id else []
    render_ladder(rows)
    dumps({"rows": rows, "raw": text, "event": e.to_json()}).encode("utf-8")


def test_a_call_id_with_a_byte_that_is_not_utf8_in_the_trace(tmp_path: Path) -> None:
    raw = (b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\nCall-ID: abc\xbd\r\n"
           b"CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    msg = parse_datagram(raw)
    trace = Trace()
    path = tmp_path / "t.jsonl"
    writer = JsonlWriter(path)
    trace.add_sink(writer, writer.close)
    trace.emit(Event(0.1, "received", direction="to-pbx", call_id=msg.call_id, summary=msg.summary(), raw=raw))
    trace.close()
    line = path.read_bytes()
    assert b'"call_id":"abc\\\\xbd"' in line and b'"raw_b64"' in line
    [e] = read_jsonl(path)
    assert e.call_id == "abc\\xbd" and e.raw == raw


def test_a_sink_that_fails_is_logged_once_and_the_timeline_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    trace = Trace()
    got = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    trace.add_sink(broken)
    trace.add_sink(got.append)
    with caplog.at_level(logging.ERROR, logger="faultlab.trace"):
        for i in range(3):
            trace.emit(Event(float(i), "warning"))
    assert len(got) == 3 and len(trace.events) == 3
    assert len([r for r in caplog.records if "trace sink" in r.getMessage()]) == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT, raw=st.binary(min_size=1, max_size=200))
def test_any_text_and_bytes_in_a_pcap(tmp_path: Path, text: str, raw: bytes) -> None:
    from faultlab.trace import write_pcap

    events = [Event(0.0, "start", detail={"listen": [text], "upstream": [f"udp:{text}"]}),
              Event(0.1, "flow-open", flow="u1", transport="udp", peer=text, detail={"pbx_side": text}),
              event_with(text, raw), Event(0.3, "sent", flow="u1", direction="to-pbx", transport="udp", peer=text,
                                           raw=raw)]
    write_pcap(events, tmp_path / "t.pcap")


def test_a_trace_file_written_by_someone_else_is_read_safely(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from faultlab.cli import app

    raw = "MESSAGE sip:b@x SIP/2.0\r\nCall-ID: abc\r\nCSeq: 1 MESSAGE\r\n\r\n"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"t": 0, "kind": "start"}) + "\n" + json.dumps(
        {"t": 1, "kind": "received", "direction": "to-pbx", "call_id": "abc\udcbd", "summary": "M \ud800",
         "raw": raw, "detail": {"\udcff": "\udc80"}}, ensure_ascii=True) + "\n")  # JSON escapes of lone surrogates
    events = list(read_jsonl(good))
    assert events[1].call_id == "abc\\xbd" and events[1].summary == "M \\ud800"
    assert events[1].detail == {"\\xff": "\\x80"}
    result = CliRunner().invoke(app, ["trace", "ladder", str(good), "--call", "abc\\xbd"])
    assert result.exit_code == 0 and "abc\\xbd" in result.output, result.output
    for name, line, says in (
            ("deep", '{"t": 1, "kind": "x", "detail": ' + "[" * 30000 + "]" * 30000 + "}", "nested too deep"),
            ("raw", '{"t": 1, "kind": "x", "raw": "\\ud800"}', "surrogates not allowed"),
            ("latin1", b'{"t": 1, "kind": "\xbd"}'.decode("latin-1"), "codec can't decode")):
        bad = tmp_path / f"{name}.jsonl"
        bad.write_bytes(json.dumps({"t": 0, "kind": "start"}).encode() + b"\n" + line.encode("latin-1") + b"\n")
        with pytest.raises(ValueError, match=f"{bad}:2: not a faultlab trace event: .*{says}"):
            list(read_jsonl(bad))
        result = CliRunner().invoke(app, ["trace", "ladder", str(bad)])
        assert result.exit_code == 2 and "line 2 is not a faultlab trace event" in result.output, result.output
        assert "Traceback" not in result.output


def test_a_terminal_that_is_not_utf8_gets_escapes(tmp_path: Path) -> None:
    from faultlab.trace.follow import LadderPrinter
    from faultlab.trace.ladder import LiveLadder

    events = [Event(0.0, "profile", detail={"profile": "clean"}),
              event_with("caf\u00e9\udcbd", b"MESSAGE sip:b@x SIP/2.0\r\n\r\n")]
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    printer = ConsolePrinter(out, color=False)
    for e in events:
        printer(e)
    ladder = LadderPrinter(out, width=80)
    live = LiveLadder()
    for e in events:
        ladder.rows(live.feed(e))
    out.flush()
    text = out.buffer.getvalue().decode("ascii")
    assert "profile \\u2192 clean" in text and "caf\\xe9\\xbd" in text
