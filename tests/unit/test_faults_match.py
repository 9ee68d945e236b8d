"""Matching tables: every match key, positive and negative.

Each case is one rule ``match = { ... }`` with ``action = { drop = true }``
and one message: the message matches when the engine drops it.
"""

from __future__ import annotations

import pytest

from faultlab.faults import ConnectView, transaction_key
from faultlab.sip import parse_message

from .test_faults_support import engine, request, response, rule_profile, view

INVITE_BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\n"

CASES = [
    # id, match, message, view kwargs, matches
    ("empty-matches-all", "", request(), {}, True),
    ("direction+", 'direction = "to-pbx"', request(), {}, True),
    ("direction-", 'direction = "to-device"', request(), {}, False),
    ("transport+", 'transport = "udp"', request(), {}, True),
    ("transport-list+", 'transport = ["tcp", "tls"]', request(), {"transport": "tls"}, True),
    ("transport-", 'transport = ["tcp", "tls"]', request(), {}, False),
    ("method+", 'method = "REGISTER"', request(), {}, True),
    ("method-list+", 'method = ["INVITE", "CANCEL"]', request("CANCEL"), {}, True),
    ("method-", 'method = "INVITE"', request(), {}, False),
    ("method-not-response", 'method = "REGISTER"', response(200), {}, False),
    ("method-extension+", 'method = "X-PING"', request("X-PING"), {}, True),
    ("status-code+", "status = 503", response(503, reason="Busy"), {}, True),
    ("status-code-string+", 'status = "503"', response(503, reason="Busy"), {}, True),
    ("status-class+", 'status = "5xx"', response(500, reason="Err"), {}, True),
    ("status-class-", 'status = "5xx"', response(486, reason="Busy"), {}, False),
    ("status-list+", 'status = ["4xx", 603]', response(603, reason="Decline"), {}, True),
    ("status-list-", 'status = ["4xx", 603]', response(200), {}, False),
    ("status-not-request", 'status = "2xx"', request(), {}, False),
    ("cseq-method-response+", 'status = 200, cseq_method = "REGISTER"', response(200), {}, True),
    ("cseq-method-response-", 'status = 200, cseq_method = "INVITE"', response(200), {}, False),
    ("cseq-method-request+", 'cseq_method = "INVITE"', request("ACK", cseq_method="INVITE"), {}, True),
    ("in-dialog-false+", "in_dialog = false", request("INVITE"), {}, True),
    ("in-dialog-false-", "in_dialog = false", request("INVITE", to_tag="x"), {}, False),
    ("in-dialog-true+", "in_dialog = true", request("INVITE", to_tag="x"), {}, True),
    ("header-present+", "headers = { Reason = true }", request("CANCEL", headers=["Reason: SIP;cause=200"]), {}, True),
    ("header-present-", "headers = { Reason = true }", request("CANCEL"), {}, False),
    ("header-absent+", "headers = { Reason = false }", request("CANCEL"), {}, True),
    ("header-absent-", "headers = { Reason = false }", request("CANCEL", headers=["Reason: SIP;cause=200"]), {}, False),
    ("header-regex+", 'headers = { "User-Agent" = "^Acme/[0-9]" }', request(headers=["User-Agent: Acme/2.1"]), {}, True),
    ("header-regex-", 'headers = { "User-Agent" = "^Acme/[0-9]" }', request(headers=["User-Agent: Other"]), {}, False),
    ("header-regex-absent-", 'headers = { "User-Agent" = "." }', request(), {}, False),
    ("header-compact-name+", 'headers = { Contact = "pn-provider" }', request(headers=["m: <sip:a@1.2.3.4;pn-provider=apns>"]), {}, True),
    ("header-list-value+", 'headers = { Supported = "^path$" }', request(headers=["Supported: outbound, path"]), {}, True),
    ("header-case+", 'headers = { "reason" = "(?i)CAUSE=200" }', request("CANCEL", headers=["Reason: SIP;cause=200"]), {}, True),
    ("header-and-", 'headers = { Reason = true, "User-Agent" = true }', request("CANCEL", headers=["Reason: SIP;cause=200"]), {}, False),
    ("body+", 'body = "m=audio [0-9]+"', request("INVITE", body=INVITE_BODY), {}, True),
    ("body-", 'body = "m=video"', request("INVITE", body=INVITE_BODY), {}, False),
    ("device-ip+", 'device = "192.0.2.10"', request(), {}, True),
    ("device-ip-", 'device = "192.0.2.11"', request(), {}, False),
    ("device-ip-port+", 'device = "192.0.2.10:5060"', request(), {}, True),
    ("device-ip-port-", 'device = "192.0.2.10:5070"', request(), {}, False),
    ("device-cidr+", 'device = "192.0.2.0/24"', request(), {}, True),
    ("device-cidr-", 'device = "198.51.100.0/24"', request(), {}, False),
    ("device-v6+", 'device = "2001:db8::/32"', request(), {"device": ("2001:db8::5", 5060)}, True),
    ("device-v6-port+", 'device = "[2001:db8::5]:5060"', request(), {"device": ("2001:db8::5", 5060)}, True),
    ("device-v4-vs-v6-", 'device = "192.0.2.0/24"', request(), {"device": ("2001:db8::5", 5060)}, False),
    ("device-v4-mapped+", 'device = "192.0.2.10"', request(), {"device": ("::ffff:192.0.2.10", 5060)}, True),
    ("device-list+", 'device = ["10.0.0.1", "192.0.2.10"]', request(), {}, True),
    ("device-aor-from+", 'device = "sip:alice@example.com"', request(), {}, True),
    ("device-aor-host-case+", 'device = "sip:alice@EXAMPLE.com"', request(), {}, True),
    ("device-aor-user-case-", 'device = "sip:Alice@example.com"', request(), {}, False),
    ("device-aor-other-", 'device = "sip:bob@example.com"', request(), {}, False),
    # to the device: a request's To is the device; the caller is in From
    (
        "device-aor-invite-to-device+",
        'device = "sip:bob@example.com"',
        request("INVITE", from_uri="sip:carol@example.com", to_uri="sip:bob@example.com"),
        {"direction": "to-device"},
        True,
    ),
    (
        "device-aor-invite-caller-",
        'device = "sip:carol@example.com"',
        request("INVITE", from_uri="sip:carol@example.com", to_uri="sip:bob@example.com"),
        {"direction": "to-device"},
        False,
    ),
    # a response to the device answers the device's request: From is the device
    (
        "device-aor-response-to-device+",
        'device = "sip:bob@example.com"',
        response(200, method="INVITE", from_uri="sip:bob@example.com", to_uri="sip:carol@example.com"),
        {"direction": "to-device"},
        True,
    ),
    # a response from the device answers the PBX's request: To is the device
    (
        "device-aor-response-from-device+",
        'device = "sip:bob@example.com"',
        response(180, method="INVITE", from_uri="sip:carol@example.com", to_uri="sip:bob@example.com", reason="Ringing"),
        {"direction": "to-pbx"},
        True,
    ),
    ("device-aor-port-", 'device = "sip:alice@example.com:5070"', request(), {}, False),
    ("and-all+", 'direction = "to-pbx", method = "REGISTER", transport = "udp", device = "192.0.2.0/24"', request(), {}, True),
    ("and-one-fails-", 'direction = "to-pbx", method = "REGISTER", transport = "tcp"', request(), {}, False),
]


@pytest.mark.parametrize("match, msg, kwargs, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_match_table(match, msg, kwargs, expected):
    e = engine(rule_profile(match, "drop = true"))
    decision = e.decide(view(msg, **kwargs), 0.0)
    assert (decision.data is None) is expected
    assert [f.rule for f in decision.events] == (["r"] if expected else [])


def test_unparsed_bytes_and_keepalives_never_match_rules():
    e = engine(rule_profile("", "drop = true"))
    for raw in (b"\r\n\r\n", b"\x16\x03\x01garbage"):
        d = e.decide(view(None, raw=raw), 0.0)
        assert d.data == raw and d.events == ()


def test_malformed_header_does_not_match_and_does_not_raise():
    msg = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
        b"Call-ID: c\r\nCSeq: x REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    e = engine(rule_profile('cseq_method = "REGISTER"', "drop = true"))
    assert e.decide(view(msg, "to-device"), 0.0).data == msg.raw
    e = engine(rule_profile('device = "sip:a@b"', "drop = true"))
    assert e.decide(view(msg, "to-device"), 0.0).data is None


# ---------------------------------------------------------------------------
# transaction identity


def test_transaction_key_retransmission_equal_others_differ():
    k = transaction_key(request("INVITE"), "to-device")
    assert transaction_key(request("INVITE"), "to-device") == k
    assert transaction_key(request("CANCEL", cseq_method="CANCEL"), "to-device") != k
    assert transaction_key(request("ACK", cseq_method="ACK"), "to-device") != k
    assert transaction_key(request("INVITE", branch="z9hG4bK-2"), "to-device") != k
    assert transaction_key(request("INVITE", cseq=2), "to-device") != k
    assert transaction_key(request("INVITE"), "to-pbx") != k
    ok = transaction_key(response(200, method="INVITE"), "to-device")
    assert transaction_key(response(200, method="INVITE"), "to-device") == ok
    assert transaction_key(response(180, method="INVITE", reason="Ringing"), "to-device") != ok


def test_transaction_key_without_rfc3261_branch():
    a = transaction_key(request(branch=None), "to-pbx")
    assert a == transaction_key(request(branch=None), "to-pbx")
    assert a != transaction_key(request(branch=None, cseq=2), "to-pbx")
    assert transaction_key(request(branch="old-style"), "to-pbx")[1] == "legacy"


# ---------------------------------------------------------------------------
# connect rules


CONNECT_CASES = [
    ("", "tcp", ("192.0.2.10", 40000), True),
    ("", "tls", ("192.0.2.10", 40000), True),
    ('transport = "tls"', "tcp", ("192.0.2.10", 40000), False),
    ('device = "192.0.2.0/24"', "tls", ("192.0.2.10", 40000), True),
    ('device = "192.0.2.0/24"', "tls", ("198.51.100.1", 40000), False),
    ('device = "192.0.2.10:40000"', "tls", ("192.0.2.10", 40000), True),
    ('device = "192.0.2.10:40001"', "tls", ("192.0.2.10", 40000), False),
]


@pytest.mark.parametrize("match, transport, device, expected", CONNECT_CASES)
def test_connect_match_table(match, transport, device, expected):
    m = 'on = "connect"' + (", " + match if match else "")
    e = engine(rule_profile(m, 'stall = "5s"'))
    d = e.on_connect(ConnectView(transport, device, "t1"), 0.0)
    assert (d.stall == 5.0) is expected
    # connect rules never see messages, message rules never see connections
    assert e.decide(view(request(), transport=transport, device=device), 0.0).events == ()
    m2 = engine(rule_profile("", 'stall = "5s"'))
    assert m2.on_connect(ConnectView(transport, device, "t1"), 0.0).events == ()
