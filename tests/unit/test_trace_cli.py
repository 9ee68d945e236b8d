"""``faultlab trace pcap`` and ``faultlab trace ladder``: results, and one clear line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.utils import rdpcap
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.trace import Event, JsonlWriter
from tests.unit.test_trace_ladder import timeline
from tests.unit.test_trace_pcap import fabricated

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["trace", *map(str, args)])


def write(path: Path, events: list[Event]) -> Path:
    writer = JsonlWriter(path)
    for e in events:
        writer(e)
    writer.close()
    return path


def test_pcap_writes_every_packet(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", fabricated())
    out = tmp_path / "out" / "run.pcap"
    out.parent.mkdir()
    result = run("pcap", trace, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 14 packets to {out}"
    assert len(rdpcap(str(out))) == 14


def test_pcap_default_output_is_next_to_the_trace(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", fabricated())
    assert run("pcap", trace).exit_code == 0
    assert len(rdpcap(str(tmp_path / "run.pcap"))) == 14


def test_ladder_draws_every_call_within_the_width(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", timeline())
    result = run("ladder", trace)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line for line in lines if line.startswith("Call-ID")] == ["Call-ID c1", "Call-ID r1"]
    assert max(map(len, lines)) <= 100
    assert any("delayed 2s [delay-invite]" in line for line in lines)
    narrow = run("ladder", trace, "--width", "50", "--call", "c1")
    assert narrow.exit_code == 0
    assert narrow.output.splitlines()[0] == "Call-ID c1" and "Call-ID r1" not in narrow.output
    assert max(map(len, narrow.output.splitlines())) <= 50


def test_ladder_json_is_the_rows(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", timeline())
    result = run("ladder", trace, "--json", "--call", "r1")
    assert result.exit_code == 0
    assert json.loads(result.output) == {"r1": [
        {"t": 11.0, "from": "device", "to": "faultlab", "label": "REGISTER", "fault": None, "note": None}]}


def bad_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    return path


GOOD_LINE = b'{"t": 0.0, "kind": "start"}\n'


@pytest.mark.parametrize("command", ["pcap", "ladder"])
@pytest.mark.parametrize(("content", "words"), [
    (None, "no such file"),
    (b"", "empty: no trace events"),
    (GOOD_LINE + b"\n" + b"not json\n", "line 3 is not a faultlab trace event"),
    (GOOD_LINE + b'{"kind": "sent"}\n', "line 2 is not a faultlab trace event"),
    (GOOD_LINE + b'{"t": "soon", "kind": "sent"}\n', "line 2 is not a faultlab trace event ('t' must be a number"),
    (GOOD_LINE + b'[1, 2]\n', "line 2 is not a faultlab trace event (a JSON list, not an object)"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", "line 1 is not a faultlab trace event"),  # a pcap given by mistake
    (GOOD_LINE + b'{"t": 1.0, "kind": "sent", "summary": "REGISTER"}\n', "no SIP messages"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, command, content, words):
    path = tmp_path / "missing.jsonl" if content is None else bad_file(tmp_path, content)
    result = run(command, path)
    assert result.exit_code == 2
    assert words in result.output and str(path) in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "bad.pcap").exists() and not (tmp_path / "missing.pcap").exists()


def test_ladder_unknown_call_names_the_calls_there_are(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", timeline())
    result = run("ladder", trace, "--call", "nope")
    assert result.exit_code == 2
    assert "no call with Call-ID 'nope'; the trace has c1, r1" in result.output


def test_ladder_refuses_a_width_below_40(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", timeline())
    result = run("ladder", trace, "--width", "39")
    assert result.exit_code == 2 and "--width" in result.output


def test_pcap_unwritable_output(tmp_path: Path):
    trace = write(tmp_path / "run.jsonl", fabricated())
    result = run("pcap", trace, "-o", tmp_path / "no-such-dir" / "x.pcap")
    assert result.exit_code == 2
    assert "cannot write" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["pcap", "ladder"])
def test_a_trace_still_being_written_is_read_up_to_its_last_whole_line(tmp_path: Path, command):
    """A proxy still running (or killed) leaves a last line without its newline: it is not an error."""
    trace = write(tmp_path / "run.jsonl", fabricated() if command == "pcap" else timeline())
    whole = run(command, trace)
    with open(trace, "ab") as f:
        f.write(b'{"t":99.0,"kind":"sent","flow":"u1","summary":"INVITE sip:al')
    result = run(command, trace)
    assert result.exit_code == 0, result.output
    assert result.output == whole.output
