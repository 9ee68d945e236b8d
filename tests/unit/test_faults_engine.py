"""The engine's decisions: each action, rule order, transaction-aware counting,
windows, probability, respond, header edits, live rule edits, reproducibility.

No sockets, no sleeping: time is the ``now`` argument.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faultlab.faults import ConnectView, Decision, Engine, Fired, MessageView, ProfileError, parse_rule
from faultlab.sip import SipError, parse_message

from .test_faults_support import engine, profile, request, response, rule_profile, view

# Timer E schedule of a UDP non-INVITE client transaction: 0, 0.5, 1.5, 3.5, 7.5, 11.5 ...
TIMER_E = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5]


def test_no_rule_is_a_plain_forward():
    e = engine("")
    v = view(request())
    assert e.decide(v, 0.0) == Decision(data=v.raw)
    assert e.decide(v, 0.0).outcome == "forward"


# ---------------------------------------------------------------------------
# each action


def test_drop():
    d = engine(rule_profile('method = "REGISTER"', "drop = true", name="drop-register")).decide(view(request()), 1.0)
    assert d == Decision(data=None, events=(Fired("drop-register", "drop", {}),))
    assert d.outcome == "drop"


def test_delay_fixed():
    d = engine(rule_profile("", 'delay = "3s"')).decide(view(request()), 0.0)
    assert d.data == request().raw and d.delay == 3.0
    assert d.events == (Fired("r", "delay", {"delay": 3.0}),)


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_delay_jitter_distribution(distribution):
    e = engine(rule_profile("", f'delay = "1s", jitter = "200ms", distribution = "{distribution}"'), seed=7)
    v = view(request())  # one transaction: matched once, a fresh delay drawn for every transmission
    delays = [e.decide(v, 0.0).delay for i in range(2000)]
    assert all(d >= 0 for d in delays)
    mean = sum(delays) / len(delays)
    assert mean == pytest.approx(1.0, abs=0.02)
    if distribution == "uniform":
        assert min(delays) >= 0.8 and max(delays) <= 1.2
    else:
        sd = (sum((d - mean) ** 2 for d in delays) / len(delays)) ** 0.5
        assert sd == pytest.approx(0.2, rel=0.1)


def test_respond_builds_a_response_per_rfc3261_8_2_6():
    prof = rule_profile(
        'method = "REGISTER"', 'respond = 503, headers = { "Retry-After" = "30" }', name="register-503"
    )
    req = request(headers=["Timestamp: 12"])
    d = engine(prof).decide(view(req), 0.0)
    assert d.data is None and d.outcome == "respond"
    assert d.events == (Fired("register-503", "respond", {"status": 503}),)
    resp = parse_message(d.respond)
    assert resp.status == 503 and resp.reason_phrase == "Service Unavailable"
    for name in ("Via", "From", "Call-ID", "CSeq"):
        assert resp.get(name) == req.get(name)
    assert resp.to_addr.uri == req.to_addr.uri and resp.to_tag
    assert resp.get("Retry-After") == "30" and resp.body == b""
    # a retransmission gets the same response (same To tag)
    assert engine(prof).decide(view(req), 5.0).respond == d.respond


def test_respond_reason_and_to_the_pbx():
    prof = rule_profile('method = "INVITE"', 'respond = 486, reason = "Not Today"')
    req = request("INVITE", to_uri="sip:bob@example.com")
    d = engine(prof).decide(view(req, "to-device"), 0.0)
    assert parse_message(d.respond).reason_phrase == "Not Today"


def test_respond_never_answers_ack_or_responses():
    e = engine(rule_profile("", "respond = 500"))
    ack = request("ACK", cseq_method="ACK")
    assert e.decide(view(ack), 0.0) == Decision(data=ack.raw)
    ok = response(200)
    assert e.decide(view(ok, "to-device"), 0.0) == Decision(data=ok.raw)


def test_duplicate():
    d = engine(rule_profile("", 'duplicate = 2, spacing = "20ms"')).decide(view(request()), 0.0)
    assert d.data == request().raw and d.delay == 0.0 and d.copies == (0.02, 0.04)
    assert d.events == (Fired("r", "duplicate", {"copies": 2, "spacing": 0.02}),)


def test_hold_then_forward_or_drop():
    d = engine(rule_profile("", "hold = true")).decide(view(request()), 0.0)
    assert d.data is None and d.hold and d.held == request().raw and d.hold_timeout is None
    assert d.outcome == "hold" and d.events == (Fired("r", "hold", {"timeout": None, "then": "forward"}),)
    d = engine(rule_profile("", 'hold = true, timeout = "5s", then = "drop"')).decide(view(request()), 0.0)
    assert (d.hold_timeout, d.hold_then) == (5.0, "drop")


@pytest.mark.parametrize("kind, wire", [("close", "fin"), ("reset", "rst")])
def test_close_and_reset(kind, wire):
    after = engine(rule_profile("", f"{kind} = true")).decide(view(request(), transport="tcp"), 0.0)
    assert after.data == request().raw and (after.close, after.close_when) == (wire, "after")
    assert after.events == (Fired("r", kind, {"when": "after"}),)
    before = engine(rule_profile("", f'{kind} = true, when = "before"')).decide(view(request(), transport="tls"), 0.0)
    assert before.data is None and (before.close, before.close_when) == (wire, "before")
    assert before.outcome == "close"
    # UDP has no connection: such rules do not match there
    udp = engine(rule_profile("", f"{kind} = true")).decide(view(request()), 0.0)
    assert udp == Decision(data=request().raw)


def test_stall_after_a_message():
    d = engine(rule_profile("", 'stall = "10s"')).decide(view(request(), transport="tcp"), 0.0)
    assert d.data == request().raw and d.stall == 10.0
    assert d.events == (Fired("r", "stall", {"for": "10s"}),)
    assert engine(rule_profile("", "stall = true")).decide(view(request(), transport="tls"), 0.0).stall == math.inf


def test_connect_stall_close_reset():
    cv = ConnectView("tls", ("192.0.2.10", 40000), "t1")
    d = engine(rule_profile('on = "connect"', "stall = true", name="s")).on_connect(cv, 0.0)
    assert d == Decision(data=None, stall=math.inf, events=(Fired("s", "stall", {"for": "forever"}),))
    d = engine(rule_profile('on = "connect"', "reset = true", name="x")).on_connect(cv, 0.0)
    assert (d.close, d.close_when, d.events) == ("rst", "before", (Fired("x", "reset", {"when": "before"}),))
    # occurrence on connections: only the first connection of each device
    e = engine(rule_profile('on = "connect", occurrence = { first = 1, per = "device" }', "close = true"))
    assert e.on_connect(cv, 0.0).close == "fin"
    assert e.on_connect(cv, 1.0).close is None
    assert e.on_connect(ConnectView("tcp", ("192.0.2.11", 1), "t2"), 2.0).close == "fin"


# ---------------------------------------------------------------------------
# header edits


CANCEL = request(
    "CANCEL",
    headers=['Reason: SIP;cause=200;text="Call completed elsewhere"', "User-Agent: PBX", "Reason: Q.850;cause=16"],
)


def test_remove_headers_changes_only_those():
    d = engine(rule_profile('method = "CANCEL"', 'remove_headers = ["Reason"]')).decide(view(CANCEL, "to-device"), 0.0)
    assert d.data == CANCEL.raw.replace(b'Reason: SIP;cause=200;text="Call completed elsewhere"\r\n', b"").replace(
        b"Reason: Q.850;cause=16\r\n", b""
    )
    assert d.events == (Fired("r", "edit", {"removed": ["Reason"]}),)
    assert parse_message(d.data).get("Reason") is None


def test_set_headers_replaces_in_place_or_appends():
    msg = request(headers=["User-Agent: A", "Expires: 3600"])
    d = engine(rule_profile("", 'set_headers = { "user-agent" = "B", "X-Fault" = "1" }')).decide(view(msg), 0.0)
    assert d.data == msg.raw.replace(b"User-Agent: A\r\n", b"user-agent: B\r\n").replace(
        b"Content-Length: 0\r\n", b"Content-Length: 0\r\nX-Fault: 1\r\n"
    )
    out = parse_message(d.data)
    assert out.get("User-Agent") == "B" and out.get("X-Fault") == "1" and out.get("Expires") == "3600"


def test_edits_keep_the_body():
    body = b"v=0\r\ns=-\r\n"
    msg = request("INVITE", headers=["Subject: hi"], body=body)
    d = engine(rule_profile("", 'remove_headers = "Subject"')).decide(view(msg), 0.0)
    assert parse_message(d.data).body == body and b"Subject" not in d.data


def test_edit_with_delay_and_accumulated_edits():
    p = profile(
        """
[[rules]]
name = "tag"
action = { set_headers = { "X-A" = "1" } }
continue = true
[[rules]]
name = "late"
match = { method = "CANCEL" }
action = { delay = "2s", remove_headers = ["Reason"] }
"""
    )
    d = engine(p).decide(view(CANCEL, "to-device"), 0.0)
    out = parse_message(d.data)
    assert out.get("X-A") == "1" and out.get("Reason") is None and d.delay == 2.0
    assert [(f.rule, f.action) for f in d.events] == [("tag", "edit"), ("late", "delay")]
    assert d.events[1].detail == {"delay": 2.0, "removed": ["Reason"]}


# ---------------------------------------------------------------------------
# rule order and continue


ORDER = """
[[rules]]
name = "a-delay"
match = { method = "REGISTER" }
action = { delay = "1s" }
continue = true
[[rules]]
name = "b-delay"
action = { delay = "2s" }
continue = true
[[rules]]
name = "c-drop-invite"
match = { method = "INVITE" }
action = { drop = true }
[[rules]]
name = "d-duplicate"
action = { duplicate = 1, spacing = "10ms" }
[[rules]]
name = "e-never"
action = { drop = true }
"""


def test_first_match_wins_and_continue_accumulates():
    e = engine(ORDER)
    d = e.decide(view(request()), 0.0)
    # a (continue) + b (continue) -> c does not match -> d applies and stops; e never runs
    assert [f.rule for f in d.events] == ["a-delay", "b-delay", "d-duplicate"]
    assert d.delay == 3.0 and d.copies == (3.01,)
    d = e.decide(view(request("INVITE")), 0.0)
    assert [f.rule for f in d.events] == ["b-delay", "c-drop-invite"] and d.data is None


def test_terminal_action_stops_even_after_continue():
    e = engine(
        '[[rules]]\nname = "x"\naction = { delay = "1s" }\ncontinue = true\n'
        '[[rules]]\nname = "y"\naction = { respond = 500 }\n'
        '[[rules]]\nname = "z"\naction = { drop = true }\n'
    )
    d = e.decide(view(request()), 0.0)
    assert [f.rule for f in d.events] == ["x", "y"] and d.respond is not None and d.data is None


def test_rules_match_the_message_as_received():
    e = engine(
        '[[rules]]\nname = "strip"\naction = { remove_headers = "Reason" }\ncontinue = true\n'
        '[[rules]]\nname = "seen"\nmatch = { headers = { Reason = true } }\naction = { delay = "1s" }\n'
    )
    d = e.decide(view(CANCEL), 0.0)
    assert [f.rule for f in d.events] == ["strip", "seen"] and b"Reason" not in d.data


# ---------------------------------------------------------------------------
# transmission-aware counting


def test_retransmissions_of_a_dropped_transaction_are_dropped():
    e = engine(rule_profile('method = "REGISTER", probability = "50%"', "drop = true"), seed=3)
    for i in range(40):
        first = e.decide(view(request(branch=f"z9hG4bK{i}")), float(i))
        for t in TIMER_E[1:]:
            again = e.decide(view(request(branch=f"z9hG4bK{i}")), i + t)
            assert (again.data is None) is (first.data is None)


def test_first_3_transmissions_then_forward():
    e = engine(rule_profile('method = "REGISTER", count = "transmission", occurrence = { first = 3 }', "drop = true"))
    out = [e.decide(view(request()), t).data is None for t in TIMER_E]
    assert out == [True, True, True, False, False, False, False]


def test_first_3_transactions_drop_all_their_transmissions():
    e = engine(rule_profile('method = "REGISTER", occurrence = { first = 3 }', "drop = true"))
    for tx in range(5):
        for t in TIMER_E[:3]:
            dropped = e.decide(view(request(branch=f"z9hG4bK{tx}", cseq=tx + 1)), 10 * tx + t).data is None
            assert dropped is (tx < 3)


def test_first_3_transmissions_of_each_transaction():
    e = engine(
        rule_profile(
            'method = "REGISTER", count = "transmission", occurrence = { first = 3, per = "transaction" }',
            "drop = true",
        )
    )
    for tx in range(3):
        out = [e.decide(view(request(branch=f"z9hG4bK{tx}")), 40 * tx + t).data is None for t in TIMER_E[:5]]
        assert out == [True, True, True, False, False]


def test_occurrence_every_and_after():
    e = engine(rule_profile('method = "OPTIONS", occurrence = { every = 3 }', "drop = true"))
    out = [e.decide(view(request("OPTIONS", branch=f"z9hG4bK{i}")), i).data is None for i in range(9)]
    assert out == [False, False, True] * 3
    e = engine(rule_profile('method = "OPTIONS", occurrence = { after = 2, first = 2 }', "drop = true"))
    out = [e.decide(view(request("OPTIONS", branch=f"z9hG4bK{i}")), i).data is None for i in range(6)]
    assert out == [False, False, True, True, False, False]


@pytest.mark.parametrize(
    "per, keys, expected",
    [
        ("device", [("192.0.2.1", "c1"), ("192.0.2.1", "c2"), ("192.0.2.2", "c3")], [True, False, True]),
        ("call", [("192.0.2.1", "c1"), ("192.0.2.1", "c1"), ("192.0.2.1", "c2")], [True, False, True]),
        ("flow", [("192.0.2.1", "c1"), ("192.0.2.2", "c2"), ("192.0.2.3", "c3")], [True, False, False]),
    ],
)
def test_occurrence_scopes(per, keys, expected):
    e = engine(rule_profile(f'occurrence = {{ first = 1, per = "{per}" }}', "drop = true"))
    out = []
    for i, (ip, call) in enumerate(keys):
        msg = request("INVITE", branch=f"z9hG4bK{i}", call_id=call)
        out.append(e.decide(view(msg, device=(ip, 5060), flow="f1"), float(i)).data is None)
    assert out == expected


def test_response_retransmissions_share_the_decision():
    e = engine(rule_profile('status = "2xx", cseq_method = "REGISTER", occurrence = { first = 1 }', "drop = true"))
    ok = response(200)
    assert e.decide(view(ok, "to-device"), 0.0).data is None
    assert e.decide(view(ok, "to-device"), 0.5).data is None  # the PBX retransmits the same 200
    assert e.decide(view(response(200, branch="z9hG4bK-2", cseq=2), "to-device"), 30.0).data is not None


# ---------------------------------------------------------------------------
# windows


def test_window_relative_to_activation():
    e = engine(rule_profile('count = "transmission", window = { start = "2s", for = "3s" }', "drop = true"), activated_at=100.0)
    out = {t: e.decide(view(request()), 100.0 + t).data is None for t in (0.0, 1.99, 2.0, 4.99, 5.0, 50.0)}
    assert out == {0.0: False, 1.99: False, 2.0: True, 4.99: True, 5.0: False, 50.0: False}


def test_window_relative_to_first_match():
    e = engine(
        rule_profile(
            'method = "REGISTER", count = "transmission", window = { for = "10s", from = "first-match" }', "drop = true"
        )
    )
    assert e.decide(view(request("OPTIONS")), 1.0).data is not None  # not a match: does not start the window
    t0 = 60.0
    out = [e.decide(view(request()), t0 + t).data is None for t in TIMER_E]
    assert out == [True, True, True, True, True, False, False]


def test_window_with_transaction_count_keeps_the_transaction_decision():
    e = engine(rule_profile('method = "REGISTER", window = { for = "10s" }', "drop = true"))
    assert e.decide(view(request()), 9.0).data is None
    assert e.decide(view(request()), 12.0).data is None  # same transaction: still dropped
    assert e.decide(view(request(branch="z9hG4bK-new", cseq=2)), 12.0).data is not None


def test_open_window():
    e = engine(rule_profile('count = "transmission", window = { start = "1s" }', "drop = true"))
    assert [e.decide(view(request()), t).data is None for t in (0.5, 1.0, 1000.0)] == [False, True, True]


# ---------------------------------------------------------------------------
# probability


def binomial_bound(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    sd = (n * p * (1 - p)) ** 0.5
    return n * p - sigmas * sd, n * p + sigmas * sd


@pytest.mark.parametrize("seed", [1, 2024])
def test_probability_within_binomial_bound(seed):
    e = engine(rule_profile('probability = "8%", count = "transmission"', "drop = true"), seed=seed)
    v = view(request())
    n = 10_000
    dropped = sum(e.decide(v, 0.0).data is None for _ in range(n))
    lo, hi = binomial_bound(n, 0.08)
    assert lo <= dropped <= hi


def test_probability_per_transaction():
    e = engine(rule_profile('probability = "30%"', "drop = true"), seed=5)
    n = 1000
    views = [view(request(branch=f"z9hG4bK{i}")) for i in range(n)]
    dropped = sum(e.decide(v, 0.0).data is None for v in views)
    lo, hi = binomial_bound(n, 0.3)
    assert lo <= dropped <= hi
    # the same transactions again: exactly the same ones are dropped, no new draw
    assert sum(e.decide(v, 1.0).data is None for v in views) == dropped


# ---------------------------------------------------------------------------
# live edits


def test_add_and_remove_rules():
    e = engine(rule_profile('method = "INVITE"', 'delay = "1s"', name="slow-invite"))
    e.add_rule(parse_rule({"name": "drop-bye", "match": {"method": "BYE"}, "action": {"drop": True}}))
    assert [r.name for r in e.profile.rules] == ["slow-invite", "drop-bye"]
    assert e.decide(view(request("BYE")), 0.0).data is None
    e.add_rule(parse_rule({"name": "first", "action": {"delay": "5s"}}), 0)
    assert [r.name for r in e.profile.rules] == ["first", "slow-invite", "drop-bye"]
    assert e.decide(view(request("BYE", branch="z9hG4bK-b")), 0.0).delay == 5.0
    with pytest.raises(ValueError):
        e.add_rule(parse_rule({"name": "first", "action": {"drop": True}}))
    e.remove_rule("first")
    e.remove_rule("drop-bye")
    assert [r.name for r in e.profile.rules] == ["slow-invite"]
    assert e.decide(view(request("BYE", branch="z9hG4bK-c")), 0.0).data is not None
    with pytest.raises(KeyError):
        e.remove_rule("drop-bye")


def test_added_rule_window_counts_from_now():
    e = engine("", activated_at=0.0)
    e.add_rule(parse_rule({"name": "w", "match": {"count": "transmission", "window": {"for": "10s"}}, "action": {"drop": True}}), now=100.0)
    assert e.decide(view(request()), 105.0).data is None
    assert e.decide(view(request()), 111.0).data is not None


# ---------------------------------------------------------------------------
# reproducibility


MIXED = """
[[rules]]
name = "maybe-drop"
match = { method = "REGISTER", probability = "30%" }
action = { drop = true }
[[rules]]
name = "jitter"
match = { method = "INVITE" }
action = { delay = "1s", jitter = "500ms" }
continue = true
[link]
delay = "50ms"
jitter = "20ms"
loss = "10%"
duplicate = "5%"
"""


def run(seed: int) -> list[Decision]:
    e = Engine(profile(MIXED), random.Random(seed), activated_at=0.0)
    rnd = random.Random(99)  # the input sequence, the same for every run
    out = []
    for i in range(300):
        method = rnd.choice(["REGISTER", "INVITE", "OPTIONS"])
        direction = rnd.choice(["to-pbx", "to-device"])
        branch = f"z9hG4bK{rnd.randrange(100)}"
        out.append(e.decide(view(request(method, branch=branch), direction), i * 0.1))
    return out


def test_same_seed_same_decisions():
    assert run(42) == run(42)


def test_different_seed_different_decisions():
    assert run(42) != run(43)


# ---------------------------------------------------------------------------
# robustness: peer input never makes the engine raise

EVERYTHING = profile(
    """
[[rules]]
name = "all-keys"
match = { direction = "to-pbx", transport = "udp", cseq_method = "REGISTER", in_dialog = false, headers = { "User-Agent" = "x", Reason = false }, body = "y", device = ["sip:alice@example.com", "192.0.2.0/24"], occurrence = { every = 2, per = "call" }, probability = "50%" }
action = { delay = "1s", set_headers = { "X-A" = "1" }, remove_headers = ["Via"] }
continue = true
[[rules]]
name = "respond"
match = { method = "REGISTER", count = "transmission" }
action = { respond = 500 }
[link]
loss = "10%"
duplicate = "10%"
"""
)

_field = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    start=st.sampled_from(["REGISTER sip:x SIP/2.0", "SIP/2.0 200 OK", "INVITE sip:a@b SIP/2.0", "ACK sip:a SIP/2.0"]),
    via=_field,
    frm=_field,
    to=_field,
    cseq=_field,
    call=_field,
    extra=_field,
)
def test_decide_never_raises_on_odd_headers(start, via, frm, to, cseq, call, extra):
    raw = f"{start}\r\nVia: {via}\r\nFrom: {frm}\r\nTo: {to}\r\nCSeq: {cseq}\r\nCall-ID: {call}\r\nUser-Agent: {extra}\r\nContent-Length: 0\r\n\r\n"
    try:
        msg = parse_message(raw.encode())
    except SipError:
        return
    e = Engine(EVERYTHING, random.Random(0), activated_at=0.0)
    for direction in ("to-pbx", "to-device"):
        d = e.decide(view(msg, direction), 1.0)
        assert isinstance(d, Decision)


def test_keep_alive_rules_match_pings_and_pongs_only():
    """``on = "keep-alive"``: a CRLF pong (or ping) can be dropped or delayed; SIP messages never match such a
    rule."""
    e = engine(profile('''
[[rules]]
name = "swallow-pongs"
match = { on = "keep-alive", keep_alive = "pong", direction = "to-device", transport = ["tcp", "tls"] }
action = { drop = true }
[[rules]]
name = "slow-pings"
match = { on = "keep-alive", keep_alive = "ping", occurrence = { first = 1, per = "flow" } }
action = { delay = "2s" }
'''))

    def ka(raw, kind, direction="to-device", transport="tcp", flow="t1"):
        return e.decide(MessageView(None, raw, direction, transport, ("192.0.2.10", 5060), flow, kind), 1.0)

    pong = ka(b"\r\n", "pong")
    assert pong.data is None and [(f.rule, f.action) for f in pong.events] == [("swallow-pongs", "drop")]
    assert ka(b"\r\n", "pong", transport="udp").data == b"\r\n"  # not this rule's transport
    assert ka(b"\r\n", "pong", direction="to-pbx").data == b"\r\n"
    ping = ka(b"\r\n\r\n", "ping", direction="to-pbx")
    assert ping.data == b"\r\n\r\n" and ping.delay == 2.0
    assert ka(b"\r\n\r\n", "ping", direction="to-pbx").delay == 0.0  # first = 1 per flow
    assert ka(b"\r\n\r\n", "ping", direction="to-pbx", flow="t2").delay == 2.0
    msg = e.decide(view(request("INVITE"), direction="to-device"), 1.0)  # a SIP message is not a keep-alive
    assert msg.data is not None and not msg.events


@pytest.mark.parametrize(("rule", "message"), [
    ('match = { on = "keep-alive", method = "INVITE" }\naction = { drop = true }', "matches only keep_alive"),
    ('match = { keep_alive = "pong" }\naction = { drop = true }', 'goes with on = "keep-alive"'),
    ('match = { on = "keep-alive" }\naction = { respond = 503 }', "can only drop or delay"),
    ('match = { on = "keep-alive", keep_alive = "pung" }\naction = { drop = true }', '"ping", "pong"'),
    ('match = { on = "keep-alive" }\naction = { set_headers = { X = "1" } }', "no message to edit"),
])
def test_keep_alive_rules_refuse_what_cannot_apply(rule, message):
    with pytest.raises(ProfileError) as info:
        profile(f"[[rules]]\n{rule}\n")
    assert message in str(info.value)
