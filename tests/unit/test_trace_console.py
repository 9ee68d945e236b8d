"""The proxy's console: a line for every message sent and every thing a fault profile did, with the rule."""

from __future__ import annotations

import io

import pytest

from faultlab.trace import ConsolePrinter, Event

INVITE = dict(flow="u1", direction="to-device", transport="udp", method="INVITE", call_id="c1", cseq=1,
              cseq_method="INVITE", summary="INVITE sip:alice@10.0.0.7 cseq=1 INVITE call=c1")
REGISTER = dict(flow="u2", direction="to-pbx", transport="udp", method="REGISTER", call_id="r1", cseq=2,
                cseq_method="REGISTER", summary="REGISTER sip:pbx cseq=2 REGISTER call=r1")


def fault(rule: str, action: str, msg: dict | None = None, **detail) -> Event:
    return Event(1.0, "fault", **(msg if msg is not None else INVITE), detail={"rule": rule, "action": action,
                                                                                **detail})


def lines(*events: Event, **options) -> list[str]:
    out = io.StringIO()
    printer = ConsolePrinter(out, **options)
    for e in events:
        printer(e)
    return out.getvalue().splitlines()


def texts(*events: Event, **options) -> list[str]:
    """Each line without its time, kind, flow and arrow columns."""
    return [line[36:] for line in lines(*events, **options)]


def test_a_line_has_time_kind_flow_and_arrow():
    assert lines(fault("drop-invite", "drop")) == [
        "     1.000 fault      u1     ->dev  INVITE dropped [drop-invite]"]


@pytest.mark.parametrize(("event", "text"), [
    (fault("drop-invite", "drop"), "INVITE dropped [drop-invite]"),
    (fault("register-503", "respond", REGISTER, status=503), "REGISTER answered 503 [register-503]"),
    (fault("invite-delay", "delay", delay=3.0), "INVITE delayed 3s [invite-delay]"),
    (fault("link", "delay", delay=0.12, queued=0.02), "INVITE delayed 0.12s on the link, 0.02s queued"),
    (fault("dup", "duplicate", copies=2, spacing=0.5), "INVITE duplicated x2 [dup]"),
    (fault("link", "duplicate", packet="message", delay=0.01), "INVITE duplicated on the link (message)"),
    (fault("link", "loss", model="random", packet="message"), "INVITE lost on the link"),
    (fault("link", "loss", model="random", packet="copy 1"), "INVITE copy 1 lost on the link"),
    (fault("link", "loss", REGISTER, model="random", packet="message", tcp_retransmissions=2, added=0.6),
     "REGISTER lost on the link, resent 2x (+0.6s)"),
    (fault("strip", "edit", set={"X-Test": "1"}, removed=["Reason"]),
     "INVITE edited [strip] (set X-Test; removed Reason)"),
    (fault("rst", "reset", REGISTER, when="after"), "connection reset after REGISTER [rst]"),
    (fault("rst", "reset", REGISTER, when="before"), "connection reset instead of sending REGISTER [rst]"),
    (fault("fin", "close", {"flow": "t3", "transport": "tcp"}, when="before"), "connection closed on connect [fin]"),
    (fault("tls-stall", "stall", {"flow": "s4", "transport": "tls"}, **{"for": "forever"}),
     "connection stalled forever on connect [tls-stall]"),
    (fault("link", "reorder", packet="message"), "INVITE reordered on the link"),
    (Event(2.0, "dropped", **INVITE, detail={"how": "dropped", "rules": ["drop-invite"]}),
     "INVITE dropped [drop-invite]"),
    (Event(2.0, "dropped", flow="u1", direction="to-device", summary=INVITE["summary"],
           detail={"hold": "h1", "how": "hold timed out: drop"}),
     f"{INVITE['summary']} dropped: hold h1 timed out"),
    (Event(2.0, "responded", **{**REGISTER, "direction": "to-device", "method": None, "status": 503,
                                "summary": "response by faultlab to REGISTER sip:pbx"}),
     "503/REGISTER sent by faultlab"),
    (Event(2.0, "held", **INVITE, detail={"hold": "h1", "rules": ["hold-invite"]}),
     "INVITE held as h1 [hold-invite], until released"),
    (Event(2.0, "released", flow="u1", direction="to-device", summary="INVITE sip:alice", detail={"hold": "h1"}),
     "INVITE sip:alice released from hold h1"),
    (Event(2.0, "stalled", flow="t3", direction="to-pbx", transport="tcp", detail={"for": "5s"}),
     "connection stalled 5s"),
    (Event(2.0, "profile", detail={"profile": "bye-drop", "device": "10.0.0.7"}), "profile → bye-drop (device 10.0.0.7)"),
    (Event(2.0, "profile", detail={"profile": None, "device": None}), "profile → none (faithful relay)"),
    (Event(2.0, "rule-added", detail={"rule": "drop-bye", "device": None, "spec": {}}), "rule drop-bye added"),
])
def test_each_event_kind_says_what_faultlab_did(event: Event, text: str):
    assert texts(event) == [text]


def test_a_drop_is_one_line_not_two():
    """The engine's fault event and the relay's dropped event tell the same drop: the console says it once."""
    dropped = Event(1.0, "dropped", **INVITE, detail={"how": "dropped", "rules": ["drop-invite"]})
    assert texts(fault("drop-invite", "drop"), dropped) == ["INVITE dropped [drop-invite]"]
    # a different message's drop is still told
    other = Event(1.5, "dropped", **{**INVITE, "cseq": 2}, detail={"how": "dropped", "rules": ["drop-invite"]})
    assert texts(fault("drop-invite", "drop"), dropped, other) == ["INVITE dropped [drop-invite]"] * 2


def test_a_hold_says_its_id_and_timeout_once():
    held = Event(1.0, "held", **INVITE, detail={"hold": "h2", "rules": ["hold-invite"]})
    assert texts(fault("hold-invite", "hold", timeout=10.0, then="drop"), held) == [
        "INVITE held as h2 [hold-invite], up to 10s then drop"]


def test_sent_and_received():
    sent = Event(1.0, "sent", **INVITE, raw=b"INVITE sip:alice@10.0.0.7 SIP/2.0\r\nVia: x\r\n\r\n")
    received = Event(0.9, "received", **{**INVITE, "direction": "to-device"}, raw=sent.raw)
    assert texts(received, sent) == [INVITE["summary"]]
    assert lines(received, sent, verbose=True) == [
        f"     0.900 received   u1     ->dev  {INVITE['summary']}",
        "                                    | INVITE sip:alice@10.0.0.7 SIP/2.0",
        f"     1.000 sent       u1     ->dev  {INVITE['summary']}",
        "                                    | INVITE sip:alice@10.0.0.7 SIP/2.0",
    ]


def test_network_text_cannot_drive_the_terminal():
    evil = Event(1.0, "sent", flow="u1", summary="INVITE sip:a\x1b[2J\x1b]0;pwned\x07 \u202eevil")
    assert texts(evil) == ["INVITE sip:a\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil"]


def test_plain_text_unless_a_terminal_asks_for_colour(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    plain = lines(fault("drop-invite", "drop"))
    assert "\x1b[" not in plain[0]
    coloured = lines(fault("drop-invite", "drop"), color=True)
    assert "\x1b[" in coloured[0] and "INVITE dropped [drop-invite]" in coloured[0]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    ConsolePrinter(tty)(fault("drop-invite", "drop"))
    assert "\x1b[" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    ConsolePrinter(tty)(fault("drop-invite", "drop"))
    assert tty.getvalue() == "     1.000 fault      u1     ->dev  INVITE dropped [drop-invite]\n"


def test_a_long_line_is_not_wrapped_on_a_terminal():
    long = Event(1.0, "sent", flow="u1", summary="INVITE " + "x" * 300)
    out = lines(long, color=True)
    assert len(out) == 1 and "x" * 300 in out[0]
