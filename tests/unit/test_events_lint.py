"""``faultlab events lint``: each rule caught with its line, call and fix; a clean log passes; hostile bytes are
findings, never a crash; exit codes 0 / 1 / 2."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from faultlab import cli
from faultlab.lab.eventlint import RULES, lint_stream, read_lines
from faultlab.trace import Event

U1 = "6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10"


def ev(event, t, uuid=U1, device="alice-iphone", **more):
    out = {"device": device, "event": event, "client_time": t, **more}
    if uuid is not None:
        out["uuid"] = uuid
    return out


ANSWERED = [ev("reported", 1.0, call_id="c1@pbx"), ev("answer-tapped", 2.0, uuid=U1.lower()),
            ev("answer-fulfilled", 2.5, uuid=None, call_id="c1@pbx"), ev("ended", 9.0, reason="remoteEnded")]


def lint(lines):
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    return lint_stream(io.BytesIO(data))


def test_a_clean_log_passes():
    other = [ev("reported", 3.0, uuid="U2", device="alice-ipad"), ev("ended", 4.0, uuid="U2", device="alice-ipad",
                                                                     reason="unanswered")]
    report = lint([*ANSWERED, b"", *other, [ev("reported", 10.0, uuid="U3"), ev("ended", 11.0, uuid="U3",
                                                                                 reason="declined")]])
    assert report.clean, report.findings
    assert (report.lines, report.events, report.calls, report.devices) == (8, 8, 3, 2)


@pytest.mark.parametrize(("lines", "line", "rule", "says"), [
    ([ev("reported", 1.0), ev("reported", 2.0, uuid=U1.lower())], 2, "reported-twice", "first on line 1"),
    ([ev("reported", 1.0), ev("ended", 2.0, reason="failed"), ev("ended", 3.0, reason="failed")], 3,
     "ended-twice", "after the call ended (line 2)"),
    ([ev("reported", 1.0, call_id="c1"), ev("ended", 2.0, reason="failed"), ev("answer-tapped", 3.0, uuid=None,
                                                                               call_id="c1")],
     3, "after-ended", "answer-tapped after the call ended (line 2)"),
    ([ev("reported", 1.0), ev("answer-fulfilled", 2.0)], 2, "answer-untapped", "answer-fulfilled with no"),
    ([ev("reported", 1.0), ev("answer-failed", 2.0)], 2, "answer-untapped", "answer-failed with no"),
    ([ev("reported", 5.0, uuid="U2"), ev("reported", 4.0)], 2, "time-backwards", "1.000 s before line 1's"),
    ([ev("reported", 1.0), {**ev("ended", 2.0), "reason": "bye"}], 2, "schema", "reason: 'bye' is not one of"),
    ([[ev("reported", 1.0), ev("ended", 2.0)]], 1, "schema", "event 1: reason: None is not one of"),
    ([ev("reported", 1.0, colour="red")], 1, "schema", "unknown field(s) colour"),
    ([[]], 1, "schema", "empty array"),
    ([b"{\"device\": \"a\xbd\"}"], 1, "json", "not UTF-8 (byte 0xbd at offset 13)"),
    ([b"\xff\xfe\x00garbage"], 1, "json", "not UTF-8"),
    ([b"{\"device\": "], 1, "json", "not valid JSON"),
    ([b"[" * 5000 + b"]" * 5000], 1, "json", "nested deeper than 32 levels"),
    ([b'{"device": "a\\udcbd"}'], 1, "json", "lone surrogate"),
])
def test_each_rule_is_caught_with_its_line_call_and_fix(lines, line, rule, says):
    report = lint(lines)
    [finding] = report.findings
    assert (finding.line, finding.rule) == (line, rule)
    assert says in finding.message, finding.message
    assert finding.fix and rule in RULES
    if rule not in ("json", "schema"):
        assert finding.call == U1


def test_the_schema_fix_is_the_fields_own_documentation():
    [finding] = lint([ev("reported", 1.0, device="a b")]).findings
    assert finding.fix.startswith("device: The device's name in the lab, 1-64 characters")
    assert finding.call == U1


def test_calls_are_per_device_and_joined_by_either_id():
    forked = [ev("reported", 1.0, device="alice-iphone", call_id="c1"),
              ev("reported", 1.1, device="alice-ipad", uuid="U9", call_id="c1")]
    assert lint(forked).clean  # the same SIP call on two devices: two CallKit calls
    joined = [ev("reported", 1.0, call_id="c1"), ev("ended", 2.0, uuid=None, call_id="c1", reason="failed"),
              ev("answer-tapped", 3.0)]
    assert [f.rule for f in lint(joined).findings] == ["after-ended"]


def test_an_over_long_line_is_a_finding_and_is_never_held_whole():
    long_line = b'{"device": "' + b"x" * 300_000 + b'"}'
    stream = io.BytesIO(b"\n".join([json.dumps(ev("reported", 1.0)).encode(), long_line,
                                    json.dumps(ev("answer-tapped", 2.0)).encode()]) + b"\n")
    assert [(n, raw is None) for n, raw in read_lines(io.BytesIO(stream.getvalue()), limit=1000)] == [
        (1, False), (2, True), (3, False)]
    report = lint_stream(stream)
    assert [(f.line, f.rule) for f in report.findings] == [(2, "too-long")]
    assert report.events == 2
    exact = b"x" * 10 + b"\n"
    assert list(read_lines(io.BytesIO(exact + exact), limit=10)) == [(1, exact), (2, exact)]
    assert list(read_lines(io.BytesIO(b"x" * 11), limit=10)) == [(1, None)]


def test_shown_text_from_the_file_is_bounded():
    [finding] = lint([ev("rang" * 10_000, 1.0)]).findings
    assert finding.rule == "schema" and len(finding.message) < 600


class _Recorder:
    """A timeline's emit, without a clock: the events as the trace writes them."""

    def __init__(self):
        self.events = []

    def emit(self, kind, **fields):
        self.events.append(Event(t=float(len(self.events)), kind=kind, **fields))


def test_a_trace_is_linted_by_its_device_events():
    from faultlab.lab.collector import DeviceEvent

    timeline = _Recorder()
    timeline.emit("start", source="lab")
    for obj in (ev("reported", 5.0, call_id="c1"), ev("ended", 6.0, call_id="c1", reason="remoteEnded"),
                ev("ended", 7.0, call_id="c1", reason="remoteEnded")):
        DeviceEvent.from_json(obj).emit(timeline)
    timeline.emit("device", source="device:ref", call_id="c2", detail={"event": "answer-fulfilled", "uuid": "R1"})
    report = lint([e.to_json() for e in timeline.events])
    assert [(f.line, f.rule, f.call) for f in report.findings] == [
        (4, "ended-twice", U1), (5, "answer-untapped", "R1"), (5, "before-connect", "R1")]  # no 200 OK in this trace
    assert (report.events, report.skipped) == (4, 1)


# -- the command ---------------------------------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(cli.app, ["events", "lint", *args])


def test_the_command_exit_codes_and_output(tmp_path):
    clean = tmp_path / "clean.ndjson"
    clean.write_text("".join(json.dumps(e) + "\n" for e in ANSWERED))
    done = run(str(clean))
    assert done.exit_code == 0, done.output
    assert done.output.strip().endswith("4 lines, 4 events, 1 call on 1 device: clean")

    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(json.dumps(ANSWERED[0]).encode() + b"\n" + json.dumps(ANSWERED[2]).encode()
                    + b"\n\xbd\x1b[2J\n" + b'{"\\u001b[2J": 1}\n')
    done = run(str(bad))
    assert done.exit_code == 1
    lines = done.output.splitlines()
    assert lines[0] == (f"{bad}:2: call {U1}: answer-untapped: answer-fulfilled with no answer-tapped "
                        "before it")  # the call is known by its uuid since line 1, which gave both
    assert lines[1].startswith("    fix: post answer-tapped when CXAnswerCallAction arrives")
    assert lines[2].startswith(f"{bad}:3: json: the line is not UTF-8")
    assert lines[4].startswith(f"{bad}:4: schema: unknown field(s) \\x1b[2J;")  # shown escaped, not run
    assert lines[-1] == ("4 lines, 3 events, 1 call on 1 device: 3 findings (answer-untapped: 1, json: 1, "
                         "schema: 1)")
    assert "\x1b" not in done.output

    done = run("--json", str(bad))
    assert done.exit_code == 1
    answer = json.loads(done.output)
    assert answer["clean"] is False and answer["counts"] == {"answer-untapped": 1, "json": 1, "schema": 1}
    assert answer["findings"][0] == {"line": 2, "call": U1, "rule": "answer-untapped",
                                     "message": "answer-fulfilled with no answer-tapped before it",
                                     "fix": answer["findings"][0]["fix"]}


@pytest.mark.parametrize("where", ["missing.ndjson", "."])
def test_an_unreadable_file_exits_2_with_a_message(tmp_path, where):
    done = CliRunner().invoke(cli.app, ["events", "lint", str(tmp_path / where)])
    assert done.exit_code == 2
    assert "faultlab events lint: cannot read" in done.output and "Traceback" not in done.output


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from([
    json.dumps(ev("reported", 1.0)).encode(), json.dumps(ev("ended", 0.5, reason="failed")).encode(),
    b'{"kind": "device", "t": 1, "source": 5, "detail": [1]}', b'{"kind": "device", "t": 1, "detail": {"event": 5}}',
    b"[1, {}, []]", b'{"device": "\\ud800"}', b"1e400", b'"\\u001b"'])), max_size=8))
def test_any_bytes_are_findings_never_a_crash(lines):
    report = lint_stream(io.BytesIO(b"\n".join(lines)), limit=60)
    assert all(1 <= f.line <= max(report.lines, 1) and f.rule in RULES for f in report.findings)
    assert report.to_json()["clean"] == (not report.findings)


def test_dash_reads_standard_input():
    log = "".join(json.dumps(e) + "\n" for e in ANSWERED[:2]) + json.dumps(ANSWERED[0]) + "\n"
    done = CliRunner().invoke(cli.app, ["events", "lint", "-"], input=log.encode())
    assert done.exit_code == 1
    assert done.output.startswith(f"-:3: call {U1}: reported-twice: reported again (first on line 1)")


def _fulfilled_then_200(gap):
    """A trace: the app's answer-fulfilled at t=1, the relay taking its 200 OK to the INVITE ``gap`` s later
    (None: never), and the end."""
    def line(t, kind, **fields):
        return {"t": t, "kind": kind, **fields}
    lines = [line(0.0, "device", source="device:app", call_id="c9", detail={"event": "reported", "uuid": "U9"}),
             line(0.5, "device", source="device:app", call_id="c9", detail={"event": "answer-tapped", "uuid": "U9"}),
             line(1.0, "device", source="device:app", call_id="c9", detail={"event": "answer-fulfilled", "uuid": "U9"})]
    if gap is not None:
        lines.append(line(1.0 + gap, "received", source="proxy", direction="to-pbx", status=200,
                          cseq_method="INVITE", call_id="c9"))
    lines.append(line(5.0, "device", source="device:app", call_id="c9",
                      detail={"event": "ended", "uuid": "U9", "reason": "remoteEnded"}))
    return lines


@pytest.mark.parametrize("gap, found", [(-0.2, []), (0.1, []), (0.8, [(3, "before-connect")]),
                                        (None, [(3, "before-connect")])])
def test_in_a_trace_answer_fulfilled_must_follow_the_apps_200_ok(gap, found):
    report = lint(_fulfilled_then_200(gap))
    assert [(f.line, f.rule) for f in report.findings] == found
    if found:
        assert "200 OK" in report.findings[0].message and "c9" in report.findings[0].message
