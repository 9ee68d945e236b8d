"""A linter for device-event logs (``faultlab events lint``): each line one event as an app posts it to ``POST
/events`` (or a batch: a JSON array of them), checked against ``events.schema.json`` and against the order a
call's events must come in. A trace file (JSON lines) works too: its ``kind: "device"`` events are checked for
order, its other lines skipped.

The rules (:data:`RULES`); calls are told apart per device, by ``uuid`` (any case) or ``call_id``, an event that
carries both joining the two::

    json             the line is not a JSON event (not UTF-8, not JSON, nested too deep)
    too-long         the line is over 64 KiB (what the collector takes in one post)
    schema           the event breaks the schema (the field and why)
    reported-twice   a second ``reported`` for the call
    ended-twice      a second ``ended`` for the call
    after-ended      another event for the call after its ``ended``
    answer-untapped  ``answer-fulfilled`` / ``answer-failed`` without an ``answer-tapped`` before it
    time-backwards   a ``client_time`` earlier than the device's event before it
    before-connect   (a trace only) ``answer-fulfilled`` with no 200 OK to the call's INVITE from the app relayed
                     by faultlab before it or within :data:`CONNECT_SLACK` after it (the 200's way to the relay):
                     CallKit was told the call connected before it had

A log as posted holds no SIP, so ``before-connect`` needs the trace of the run (``--trace``, ``--trace-dir``),
where the relay's messages and the device events share one timeline.

Hostile input is findings, never a crash: lines are read at most :data:`MAX_LINE` bytes at a time, every text is
decoded totally, and what is shown of the file's text is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from faultlab.text import load_json

from .collector import MAX_BODY, DeviceEvent, DeviceEventError
from .schema import event_problems, load_schema

__all__ = ["MAX_LINE", "RULES", "Finding", "LintReport", "Linter", "lint_stream", "read_lines"]

MAX_LINE = MAX_BODY
CONNECT_SLACK = 0.5  # s: an app's 200 OK may reach the relay this long after the app's answer-fulfilled
_SHOWN = 200  # characters of the file's own text shown in a message

RULES = {
    "json": "the line is not a JSON event",
    "too-long": f"the line is over {MAX_LINE} bytes",
    "schema": "the event breaks events.schema.json",
    "reported-twice": "a second reported for the call",
    "ended-twice": "a second ended for the call",
    "after-ended": "an event for the call after its ended",
    "answer-untapped": "answer-fulfilled or answer-failed without an answer-tapped before it",
    "time-backwards": "client_time earlier than the device's event before it",
    "before-connect": "answer-fulfilled before the app's 200 OK to the INVITE was relayed (a trace only)",
}

_FIX = {
    "json": "write one JSON object per line (UTF-8), as the app posts it to POST /events",
    "too-long": "post (and log) one event per line; the collector refuses a body over 64 KiB",
    "reported-twice": "post reported once per call, when reportNewIncomingCall's completion ran without error",
    "ended-twice": "post ended once per call, when the app reports the end to CallKit (or the call ends locally)",
    "after-ended": "post nothing for a call after its ended: a CallKit call that ended is over; a new call has a "
                   "new uuid",
    "answer-untapped": "post answer-tapped when CXAnswerCallAction arrives, before fulfilling or failing that action",
    "time-backwards": "take client_time from the device's clock when the event happens (Date().timeIntervalSince1970) "
                      "and post the events in the order they happened",
    "before-connect": "fulfill the CXAnswerCallAction (and post answer-fulfilled) only once the 200 OK to the INVITE "
                      "has gone out; an answer before the INVITE waits for it",
}


@dataclass(frozen=True)
class Finding:
    """One problem: the line (1-based), the call it is about (its uuid or call_id; None if not known), the rule,
    what is wrong and how to fix it."""

    line: int
    call: str | None
    rule: str
    message: str
    fix: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "call": self.call, "rule": self.rule, "message": self.message, "fix": self.fix}


@dataclass
class LintReport:
    """What :class:`Linter` found, and what it read."""

    findings: list[Finding]
    lines: int = 0  # lines read, blank ones included
    events: int = 0  # events checked (a batch line counts each of its events)
    skipped: int = 0  # trace lines that are not device events
    calls: int = 0
    devices: int = 0

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.rule] = out.get(f.rule, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "lines": self.lines, "events": self.events, "skipped": self.skipped,
                "calls": self.calls, "devices": self.devices, "counts": self.counts(),
                "findings": [f.to_json() for f in self.findings]}


@dataclass
class _Call:
    label: str
    reported: int | None = None
    tapped: int | None = None
    ended: int | None = None


def shown(text: str, limit: int = _SHOWN) -> str:
    """The file's text as shown in a message: at most ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def read_lines(stream: BinaryIO, limit: int = MAX_LINE) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` for each line of ``stream``; ``None`` for a line over ``limit`` bytes (the rest of
    which is skipped, never held)."""
    number = 0
    while True:
        chunk = stream.readline(limit + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) <= limit or chunk.endswith(b"\n"):
            yield number, chunk
            continue
        while chunk and not chunk.endswith(b"\n"):  # skip the rest of the long line
            chunk = stream.readline(limit + 1)
        yield number, None


class Linter:
    """Feed it lines (:meth:`feed`) in the file's order; :meth:`report` says what it found."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._lines = self._events = self._skipped = 0
        self._calls: dict[tuple[str, str, str], _Call] = {}  # (device, "uuid" | "call_id", id) -> its call
        self._all_calls: list[_Call] = []
        self._clock: dict[str, tuple[float, int]] = {}  # device -> (its latest client_time, line)
        self._devices: set[str] = set()
        self._connected: set[str] = set()  # Call-IDs whose 200 OK to the INVITE the relay took from the device
        self._unconnected: dict[str, tuple[int, float, str]] = {}  # Call-ID -> answer-fulfilled's (line, t, call)

    def report(self) -> LintReport:
        for call_id, (number, _, label) in self._unconnected.items():
            self._find(number, label, "before-connect",
                       f"answer-fulfilled for Call-ID {shown(call_id)}, and no 200 OK to its INVITE from the app was "
                       f"relayed before it or within {CONNECT_SLACK:g} s after it")
        self._unconnected.clear()
        self.findings.sort(key=lambda f: f.line)
        return LintReport(list(self.findings), self._lines, self._events, self._skipped, len(self._all_calls),
                          len(self._devices))

    def feed(self, number: int, raw: bytes | None) -> None:
        self._lines += 1
        if raw is None:
            self._find(number, None, "too-long", f"the line is over {MAX_LINE} bytes")
            return
        if not raw.strip():
            return
        try:
            data = load_json(raw)
        except ValueError as exc:
            self._find(number, None, "json", f"the line is {exc}")
            return
        if isinstance(data, Mapping) and "kind" in data and "t" in data:  # a trace line
            if data.get("kind") != "device":
                self._skipped += 1
                if _connects(data):
                    self._connected.add(data["call_id"])
                    fulfilled = self._unconnected.get(data["call_id"])
                    if fulfilled is not None and _t(data) <= fulfilled[1] + CONNECT_SLACK:
                        del self._unconnected[data["call_id"]]
                return
            self._events += 1
            event = _from_trace(data)
            self._order(number, event)
            call_id = event.get("call_id")
            if event.get("event") == "answer-fulfilled" and isinstance(call_id, str) and call_id not in self._connected:
                self._unconnected.setdefault(call_id, (number, _t(data), _label(event) or call_id))
            return
        items = data if isinstance(data, list) else [data]
        if not items:
            self._find(number, None, "schema", "an empty array: a batch holds one event or more", _schema_fix(None))
        for index, item in enumerate(items):
            self._events += 1
            where = f"event {index}: " if isinstance(data, list) else ""
            if self._schema(number, item, where):
                self._order(number, item)

    def _schema(self, number: int, obj: Any, where: str) -> bool:
        """Check ``obj`` against the schema (the collector's message when it has one); False if it breaks it."""
        problems = event_problems(obj)
        if not problems:
            return True
        try:
            DeviceEvent.from_json(obj)
            message, name = problems[0].message, problems[0].field
        except DeviceEventError as exc:
            message, name = str(exc), exc.field
        self._find(number, _label(obj), "schema", where + message, _schema_fix(name))
        return False

    def _order(self, number: int, obj: Mapping[str, Any]) -> None:
        device, event = str(obj.get("device")), obj.get("event")
        self._devices.add(device)
        call = self._call(device, obj)
        if call.ended is not None:
            rule = "ended-twice" if event == "ended" else "after-ended"
            self._find(number, call.label, rule, f"{event} after the call ended (line {call.ended})")
        elif event == "reported" and call.reported is not None:
            self._find(number, call.label, "reported-twice", f"reported again (first on line {call.reported})")
        elif event in ("answer-fulfilled", "answer-failed") and call.tapped is None:
            self._find(number, call.label, "answer-untapped", f"{event} with no answer-tapped before it")
        if event == "reported" and call.reported is None:
            call.reported = number
        elif event == "answer-tapped":
            call.tapped = number
        elif event == "ended" and call.ended is None:
            call.ended = number
        self._time(number, device, call.label, obj.get("client_time"))

    def _time(self, number: int, device: str, label: str, client_time: Any) -> None:
        if isinstance(client_time, bool) or not isinstance(client_time, (int, float)):
            return  # a trace event of the reference device: no client clock
        before = self._clock.get(device)
        if before is not None and client_time < before[0]:
            self._find(number, label, "time-backwards",
                       f"client_time {client_time} is {before[0] - client_time:.3f} s before line {before[1]}'s "
                       f"({before[0]}) on device {shown(device)}")
        self._clock[device] = (client_time, number)

    def _call(self, device: str, obj: Mapping[str, Any]) -> _Call:
        keys = [(device, kind, value.lower() if kind == "uuid" else value)
                for kind in ("uuid", "call_id") if isinstance(value := obj.get(kind), str) and value]
        call = next((self._calls[k] for k in keys if k in self._calls), None)
        if call is None:
            call = _Call(_label(obj) or "?")  # as the file first wrote it
            self._all_calls.append(call)
        for key in keys:
            self._calls.setdefault(key, call)
        return call

    def _find(self, number: int, call: str | None, rule: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(number, shown(call) if call else None, rule, shown(message, 400),
                                     fix or _FIX[rule]))


def lint_stream(stream: BinaryIO, limit: int = MAX_LINE) -> LintReport:
    """Lint every line of a binary stream."""
    linter = Linter()
    for number, raw in read_lines(stream, limit):
        linter.feed(number, raw)
    return linter.report()


def _from_trace(line: Mapping[str, Any]) -> dict[str, Any]:
    """A trace's ``kind: "device"`` event as the event the app posted (or the reference device emitted)."""
    detail = line.get("detail") if isinstance(line.get("detail"), Mapping) else {}
    source = str(line.get("source", ""))
    return {"device": source.removeprefix("device:"), "event": detail.get("event"), "uuid": detail.get("uuid"),
            "call_id": line.get("call_id"), "client_time": detail.get("client_time")}


def _connects(line: Mapping[str, Any]) -> bool:
    """A relay line carrying the app's 200 OK to an INVITE toward the PBX (the call connects)."""
    return (line.get("kind") == "received" and line.get("direction") == "to-pbx" and line.get("status") == 200
            and line.get("cseq_method") == "INVITE" and isinstance(line.get("call_id"), str))


def _t(line: Mapping[str, Any]) -> float:
    t = line.get("t")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0


def _label(obj: Any) -> str | None:
    if not isinstance(obj, Mapping):
        return None
    for key in ("uuid", "call_id"):
        if isinstance(obj.get(key), str) and obj[key]:
            return obj[key]
    return None


def _schema_fix(name: str | None) -> str:
    """How to fix a schema finding about field ``name``: the schema's own description of the field."""
    event = load_schema("events")["$defs"]["event"]
    spec = event["properties"].get(name) if name else None
    if spec is not None:
        return f"{name}: {spec['description']}"
    if name is not None:
        return f"remove {name!r} or correct its spelling: the fields are {', '.join(event['properties'])}"
    return "each event is a JSON object with device, event, uuid and/or call_id, client_time (GET /schema/events.json)"
