"""``faultlab trace follow``: the rows of a trace as it grows, from whole lines only, until the proxy stops."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.trace import Event, ladder_rows
from faultlab.trace.follow import LadderPrinter, TraceFileError, TraceTail
from faultlab.trace.ladder import LiveLadder, call_ids
from tests.unit.test_trace_ladder import timeline


def line(e: Event) -> bytes:
    return json.dumps(e.to_json(), separators=(",", ":")).encode() + b"\n"


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_tail_returns_whole_lines_as_they_are_appended(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"")
    tail = TraceTail(path)
    assert tail.read() == []
    start, sent = line(Event(0.0, "start")), line(Event(1.0, "sent", summary="INVITE é"))
    append(path, start + sent[:10])
    assert [e.kind for e in tail.read()] == ["start"]
    append(path, sent[10:-4])  # cut inside the UTF-8 of "é" too
    assert tail.read() == []
    append(path, sent[-4:])
    assert [(e.kind, e.summary) for e in tail.read()] == [("sent", "INVITE é")]
    assert tail.read() == [] and not tail.restarted


def test_tail_names_a_bad_line(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(line(Event(0.0, "start")) + b"\n" + b'{"t": 1, "kind": \n')
    with pytest.raises(TraceFileError, match=r"run.jsonl: line 3 is not a faultlab trace event"):
        TraceTail(path).read()


def test_tail_starts_over_when_a_new_run_truncates_or_replaces_the_file(tmp_path: Path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(line(Event(0.0, "start")) + line(Event(1.0, "stop")))
    tail = TraceTail(path)
    assert [e.kind for e in tail.read()] == ["start", "stop"]
    path.write_bytes(line(Event(0.0, "start")))  # opened "w" again: truncated in place
    assert [e.kind for e in tail.read()] == ["start"] and tail.restarted
    new = tmp_path / "new.jsonl"
    new.write_bytes(line(Event(0.0, "start")) + line(Event(0.5, "listening")))
    os.replace(new, path)
    assert [e.kind for e in tail.read()] == ["start", "listening"] and tail.restarted


def test_live_rows_are_the_ladder_rows():
    """Fed one event at a time, the live ladder gives each call's rows of the whole-trace ladder."""
    events = timeline()
    live = LiveLadder()
    got: dict[str, list] = {}
    for e in events:
        for call_id, row in live.feed(e):
            got.setdefault(call_id, []).append(row)
    for call_id, row in live.finish(events[-1].t):
        got.setdefault(call_id, []).append(row)
    assert got == {c: ladder_rows(events, c) for c in call_ids(events)}
    only = LiveLadder("r1")
    assert [r for e in events for _, r in only.feed(e)] == ladder_rows(events, "r1")


def test_printer_titles_each_call_and_redraws_the_header_for_a_new_party():
    out = io.StringIO()
    printer = LadderPrinter(out, width=80)
    row = {"t": 1.0, "from": "device", "to": "faultlab", "label": "REGISTER", "fault": None, "note": None}
    drop = {**row, "from": "faultlab", "to": "pbx", "fault": "✗ dropped [drop-register]"}
    printer.rows([("r1", row), ("r1", drop), ("c1", {**row, "from": "pbx", "to": "caller", "label": "INVITE"})])
    text = out.getvalue().splitlines()
    assert text[0].split() == ["t", "(s)", "device", "faultlab", "pbx"]
    assert text[1] == "Call-ID r1"
    assert "REGISTER" in text[2] and "-REGISTER--✗" in text[3] and "✗ dropped [drop-reg" in text[3]
    assert text[4].split() == ["t", "(s)", "device", "faultlab", "pbx", "caller"]
    assert text[5] == "Call-ID c1" and "INVITE" in text[6]
    assert max(map(len, text)) <= 80


runner = CliRunner()


def write_trace(path: Path, events: list[Event]) -> Path:
    path.write_bytes(b"".join(line(e) for e in events))
    return path


def test_follow_a_finished_trace_draws_it_and_stops_at_the_stop_event(tmp_path: Path):
    events = [*timeline(), Event(20.0, "stop")]
    trace = write_trace(tmp_path / "run.jsonl", events)
    result = runner.invoke(app, ["trace", "follow", str(trace), "--width", "100"])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert "Call-ID c1" in out and "Call-ID r1" in out
    assert any("delayed 2s [delay-invite]" in x for x in out)
    assert any("✗ dropped [drop-180]" in x for x in out)
    assert max(map(len, out)) <= 100
    # from the end: the trace already stopped, nothing new to draw
    result = runner.invoke(app, ["trace", "follow", str(trace), "--from-end"])
    assert result.exit_code == 0 and "Call-ID" not in result.stdout
    result = runner.invoke(app, ["trace", "follow", str(trace), "--call", "r1"])
    assert result.exit_code == 0 and "Call-ID c1" not in result.stdout and "Call-ID r1" in result.stdout


@pytest.mark.parametrize(("content", "words"), [
    (None, "no such file (--wait waits for it)"),
    (line(Event(0.0, "start")) + b"oops\n", "line 2 is not a faultlab trace event"),
])
def test_follow_bad_input_is_one_clear_line(tmp_path: Path, content, words):
    path = tmp_path / "run.jsonl"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["trace", "follow", str(path)])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


async def _read_until(stream, seen: bytearray, needle: bytes) -> None:
    while needle not in seen:
        data = await stream.receive_some()
        assert data, f"follow ended before printing {needle!r}: {bytes(seen)!r}"
        seen += data


async def test_follow_process_prints_rows_as_the_file_grows(tmp_path: Path):
    """A real `faultlab trace follow --wait` process: the file appears, grows a line at a time (a partial one
    too), each row shows up while it runs; the stop event ends it with status 0."""
    trace = tmp_path / "run.jsonl"
    events = timeline()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "faultlab", "trace", "follow", str(trace), "--wait", "--width", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    try:
        with trio.fail_after(30):
            err = bytearray()
            await _read_until(proc.stderr, err, b"waiting for")
            seen = bytearray()
            head = [e for e in events if e.t <= 3.2]
            write_trace(trace, head[:-1])
            append(trace, line(head[-1])[:15])  # the delayed INVITE, half written
            await _read_until(proc.stdout, seen, b"Call-ID c1")
            append(trace, line(head[-1])[15:])
            await _read_until(proc.stdout, seen, b"delayed 2s [delay-invite]")
            assert proc.returncode is None
            append(trace, b"".join(line(e) for e in events if e.t > 3.2) + line(Event(30.0, "stop")))
            await _read_until(proc.stdout, seen, b"Call-ID r1")
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_follow_process_stops_cleanly_on_ctrl_c(tmp_path: Path):
    trace = write_trace(tmp_path / "run.jsonl", timeline())
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "faultlab", "trace", "follow", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    try:
        with trio.fail_after(30):
            seen = bytearray()
            await _read_until(proc.stdout, seen, b"Call-ID r1")  # read it all, waits for more
            proc.send_signal(signal.SIGINT)
            err = bytearray()
            while data := await proc.stderr.receive_some():
                err += data
            assert await proc.wait() == 0
            assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
