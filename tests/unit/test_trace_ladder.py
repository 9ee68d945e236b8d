"""faultlab.trace.ladder: the rows of a call's ladder, and their text rendering.

A fabricated timeline exercises every kind of row (each fault on the row where it happened, notes, lab actors'
messages taken once); a real lab run (UDP, memory network, virtual time) with a drop rule and a delay rule checks
that the faults land on the right rows of what the actors actually record.
"""

from __future__ import annotations

import json

import pytest

from faultlab.faults import parse_profile
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.stack import open_lab_stack
from faultlab.trace import Event, call_ids, ladder_rows, render_ladder

DEV, FL_DEV, FL_PBX, PBX, CALLER = "10.0.0.5:5062", "10.0.0.1:5060", "10.0.1.1:40001", "10.0.1.9:5060", "10.0.2.7:5070"


def msg(t, kind, direction, peer, method=None, status=None, cseq=1, cseq_method="INVITE", call_id="c1", **kw):
    return Event(t, kind, flow="u1", direction=direction, transport="udp", peer=peer, method=method, status=status,
                 call_id=call_id, cseq=cseq, cseq_method=cseq_method, raw=b"SIP", **kw)


def fault(t, direction, action, rule, method=None, status=None, cseq=1, cseq_method="INVITE", **detail):
    return Event(t, "fault", flow="u1", direction=direction, transport="udp", method=method, status=status,
                 call_id="c1", cseq=cseq, cseq_method=cseq_method, detail={"rule": rule, "action": action, **detail})


def actor(t, source, kind, peer, raw, call_id="c1"):
    return Event(t, kind, source=source, transport="udp", peer=peer, raw=raw, call_id=call_id)


INVITE = b"INVITE sip:alice@lab.test SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n"
TRYING = b"SIP/2.0 100 Trying\r\nCSeq: 1 INVITE\r\n\r\n"


def timeline() -> list[Event]:
    return [
        Event(0.0, "flow-open", flow="u1", transport="udp", peer=DEV,
              detail={"device_side": FL_DEV, "pbx_side": FL_PBX}),
        Event(0.0, "pbx", source="pbx", detail={"action": "start", "listen": [f"udp:{PBX}"]}),
        actor(1.0, "caller", "sent", PBX, INVITE),
        actor(1.0, "pbx", "received", CALLER, INVITE),  # the caller's record of it is there
        actor(1.0, "pbx", "sent", CALLER, TRYING),
        actor(1.0, "caller", "received", PBX, TRYING),  # the PBX's record of it is there
        Event(1.0, "caller", source="caller", call_id="c1", detail={"action": "call"}),  # not shown
        Event(1.1, "pbx", source="pbx", call_id="c1", detail={"action": "push-sent", "type": "call"}),
        Event(1.1, "push", source="push", call_id="c1", detail={"push_kind": "call", "outcome": "delivered"}),
        Event(1.15, "device", source="device:alice", call_id="c1", detail={"event": "reported"}),
        actor(1.2, "pbx", "sent", FL_PBX, INVITE),  # faultlab's record of it is there
        msg(1.2, "received", "to-device", PBX, method="INVITE"),
        fault(1.2, "to-device", "delay", "delay-invite", method="INVITE", delay=2.0),
        msg(3.2, "sent", "to-device", DEV, method="INVITE"),
        msg(3.3, "received", "to-pbx", DEV, status=180),
        fault(3.3, "to-pbx", "drop", "drop-180", status=180),
        msg(3.3, "dropped", "to-pbx", DEV, status=180, detail={"how": "dropped", "rules": ["drop-180"]}),
        msg(4.0, "received", "to-pbx", DEV, status=200),
        fault(4.0, "to-pbx", "duplicate", "dup", status=200, copies=1, spacing=0.5),
        msg(4.0, "sent", "to-pbx", PBX, status=200),
        msg(4.5, "sent", "to-pbx", PBX, status=200, detail={"copy": 1}),
        msg(5.0, "received", "to-device", PBX, method="BYE", cseq=2, cseq_method="BYE"),
        fault(5.0, "to-device", "respond", "fake-481", method="BYE", cseq=2, cseq_method="BYE", status=481),
        msg(5.0, "responded", "to-pbx", PBX, status=481, cseq=2, cseq_method="BYE"),
        msg(6.0, "received", "to-device", PBX, method="INFO", cseq=3, cseq_method="INFO"),
        fault(6.0, "to-device", "hold", "hold-info", method="INFO", cseq=3, cseq_method="INFO"),
        msg(6.0, "held", "to-device", PBX, method="INFO", cseq=3, cseq_method="INFO", detail={"hold": "h1"}),
        Event(9.0, "released", flow="u1", direction="to-device", detail={"hold": "h1"}),
        msg(9.0, "sent", "to-device", DEV, method="INFO", cseq=3, cseq_method="INFO", detail={"released": "h1"}),
        fault(10.0, "to-pbx", "reset", "reset-after-ack", method="ACK", when="after"),
        Event(10.5, "device", source="device:alice", call_id="c1",
              detail={"event": "ended", "reason": "remoteEnded"}),
        msg(11.0, "received", "to-pbx", DEV, method="REGISTER", call_id="r1", cseq_method="REGISTER"),
    ]


def r(t, frm, to=None, label=None, fault=None, note=None):
    return {"t": t, "from": frm, "to": to, "label": label, "fault": fault, "note": note}


def test_rows_of_a_fabricated_call():
    assert ladder_rows(timeline(), "c1") == [
        r(1.0, "caller", "pbx", "INVITE"),
        r(1.0, "pbx", "caller", "100/INVITE"),
        r(1.1, "pbx", "push", "push:call"),
        r(1.1, "device", note="call push delivered"),
        r(1.15, "device", note="reported"),
        r(1.2, "pbx", "faultlab", "INVITE"),
        r(3.2, "faultlab", "device", "INVITE", fault="delayed 2s [delay-invite]"),
        r(3.3, "device", "faultlab", "180/INVITE"),
        r(3.3, "faultlab", "pbx", "180/INVITE", fault="✗ dropped [drop-180]"),
        r(4.0, "device", "faultlab", "200/INVITE"),
        r(4.0, "faultlab", "pbx", "200/INVITE", fault="duplicated x1 [dup]"),
        r(4.5, "faultlab", "pbx", "200/INVITE", fault="duplicate 1"),
        r(5.0, "pbx", "faultlab", "BYE"),
        r(5.0, "faultlab", "pbx", "481/BYE", fault="responded by faultlab [fake-481]"),
        r(6.0, "pbx", "faultlab", "INFO"),
        r(6.0, "faultlab", fault="held [hold-info]", note="holding INFO"),
        r(9.0, "faultlab", "device", "INFO", fault="held 3s, released"),
        r(10.0, "faultlab", fault="reset connection (after) [reset-after-ack]", note="ACK: connection"),
        r(10.5, "device", note="ended: remoteEnded"),
    ]


def test_rows_are_json_and_calls_are_listed_in_order():
    rows = ladder_rows(timeline(), "c1")
    assert json.loads(json.dumps(rows)) == rows
    assert call_ids(timeline()) == ["c1", "r1"]
    assert ladder_rows(timeline(), "no-such-call") == []


def test_status_label_takes_the_cseq_method_from_the_bytes_when_the_event_lacks_it():
    events = [Event(0.0, "sent", source="pbx", transport="udp", peer=CALLER, status=487, call_id="x",
                    raw=b"SIP/2.0 487 Request Terminated\r\ncseq:  7 INVITE\r\n\r\n")]
    assert ladder_rows(events, "x") == [r(0.0, "pbx", "10.0.2.7:5070", "487/INVITE")]


@pytest.mark.parametrize("width", [100, 72, 40])
def test_rendering_fits_the_width(width):
    text = render_ladder(ladder_rows(timeline(), "c1"), width=width, title="Call-ID c1")
    lines = text.splitlines()
    assert len(lines) == 2 + 19  # title, header, one line per row
    assert max(len(line) for line in lines) <= width
    header = lines[1]
    names = ["device", "faultlab", "pbx", "caller", "push"] if width == 100 else []
    assert [header.index(n) for n in names] == sorted(header.index(n) for n in names)


def test_rendering_marks_the_faults_at_100_columns():
    lines = render_ladder(ladder_rows(timeline(), "c1")).splitlines()
    delayed = next(line for line in lines if "delayed 2s [delay-invite]" in line)
    assert delayed.lstrip().startswith("3.200")
    assert delayed.index("<") < delayed.index("INVITE")  # towards the device, on the left
    dropped = next(line for line in lines if "dropped [drop-180]" in line)
    lanes = dropped[: dropped.index("✗ dropped")]
    assert "✗" in lanes and ">" not in lanes  # the arrow stops at the ✗: it never reaches the PBX
    assert any("* ended: remoteEnded" in line for line in lines)
    with pytest.raises(ValueError, match="at least 40"):
        render_ladder([], width=39)


PROFILE = """
name = "lab-faults"
[[rules]]
name = "delay-invite"
match = { direction = "to-device", method = "INVITE", in_dialog = false }
action = { delay = "2s" }
[[rules]]
name = "drop-first-register"
match = { direction = "to-pbx", method = "REGISTER", count = "transmission", occurrence = { first = 1 } }
action = { drop = true }
"""


async def test_a_real_lab_run_with_a_drop_and_a_delay(autojump_clock):
    async with open_lab_stack("udp", network="memory", profile=parse_profile(PROFILE),
                              device_config=DeviceConfig(answer_after=1.0)) as lab:
        call = await lab.call(hang_up_after=1.0)
    assert (call.final, call.ended) == (200, "remoteEnded")
    events = list(lab.timeline.events)
    register_call, the_call = call_ids(events)[0], call.call_id

    reg = ladder_rows(events, register_call)
    faulted = [row for row in reg if row["fault"]]
    assert faulted == [r(0.0, "faultlab", "pbx", "REGISTER", fault="✗ dropped [drop-first-register]")]
    assert reg[0] == r(0.0, "device", "faultlab", "REGISTER")
    assert reg[2] == r(0.5, "device", "faultlab", "REGISTER")  # the device retransmits after T1
    assert reg[3] == r(0.5, "faultlab", "pbx", "REGISTER")

    rows = ladder_rows(events, the_call)
    faulted = [row for row in rows if row["fault"]]
    # the PBX retransmits the INVITE while faultlab holds it back: each transmission is delayed, in order
    arrived = [row["t"] for row in rows if row["to"] == "faultlab" and row["label"] == "INVITE"]
    delayed = [row for row in faulted if row["to"] == "device"]
    assert len(delayed) >= 2
    assert [(row["from"], row["label"], row["fault"]) for row in delayed] == [
        ("faultlab", "INVITE", "delayed 2s [delay-invite]")] * len(delayed)
    assert [row["t"] for row in delayed] == pytest.approx([t + 2.0 for t in arrived[: len(delayed)]])
    # a transmission still held back when the lab stopped: its fault is shown, as not sent
    unsent = [row for row in faulted if row["to"] is None]
    assert len(delayed) + len(unsent) == len(arrived)
    assert all(row["note"] == "INVITE: not sent by the end of the trace" for row in unsent)
    first = rows[0]
    assert (first["from"], first["to"], first["label"]) == ("caller", "pbx", "INVITE")
    notes = [row["note"] for row in rows if row["from"] == "device" and row["to"] is None]
    assert notes[0] == "call push delivered"
    assert {"reported", "answer-tapped", "ended: remoteEnded"} <= set(notes)
    labels = [(row["from"], row["to"], row["label"]) for row in rows if row["label"]]
    assert labels.count(("faultlab", "device", "BYE")) == 1  # once: the PBX's own record is not repeated
    assert labels.count(("pbx", "faultlab", "BYE")) == 1
    for width in (100, 60):
        text = render_ladder(rows, width=width)
        assert max(len(line) for line in text.splitlines()) <= width
    text = render_ladder(rows)
    assert "delayed 2s [delay-invite]" in text and "caller" in text.splitlines()[0]
