"""Profiles from TOML: the model they load into, and the errors for bad ones.

Every error names the file, the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from faultlab.addr import parse_device
from faultlab.faults import (
    Action,
    CloseSpec,
    DelaySpec,
    DuplicateSpec,
    GilbertElliott,
    HoldSpec,
    LinkSpec,
    Match,
    Occurrence,
    ProfileError,
    RespondSpec,
    StatusSet,
    Window,
    load_profile,
    parse_profile,
    parse_rule,
    profiles_dir,
)


def one_rule(match: str, action: str, extra: str = "", source: str = "t.toml"):
    text = f'[[rules]]\nname = "r"\nmatch = {{ {match} }}\naction = {{ {action} }}\n{extra}'
    return parse_profile(text, source=source).rules[0]


# ---------------------------------------------------------------------------
# the model


def test_profile_top_level():
    text = 'name = "p"\nsummary = "one line"\ndescription = """more\ntext"""\n'
    p = parse_profile(text, source="<string>")
    assert (p.name, p.summary, p.description, p.rules, p.link) == ("p", "one line", "more\ntext", (), None)
    assert p.text == text and p.source == "<string>"


def test_name_defaults_to_file_stem_and_must_match_it(tmp_path):
    f = tmp_path / "my-profile.toml"
    f.write_text('summary = "x"\n')
    assert load_profile(f).name == "my-profile"
    f.write_text('name = "other"\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(f))
    assert info.value.key == "name" and info.value.value == "other" and "my-profile" in info.value.allowed


def test_match_every_key():
    m = one_rule(
        'direction = "to-pbx", transport = ["UDP", "tls"], method = ["INVITE", "MESSAGE"], cseq_method = "INVITE",'
        ' in_dialog = false, headers = { "User-Agent" = "^Acme", Reason = true, "X-No" = false }, body = "m=audio",'
        ' device = ["192.0.2.0/24", "sip:alice@Example.com", "[2001:db8::1]:5070"],'
        ' occurrence = { first = 3, every = 2, after = 1, per = "device" }, count = "transmission",'
        ' probability = "30%", window = { start = "1s", for = "10s", from = "first-match" }',
        "drop = true",
    ).match
    assert m.on == "message" and m.direction == "to-pbx"
    assert m.transport == frozenset({"udp", "tls"})
    assert m.method == frozenset({"INVITE", "MESSAGE"}) and m.cseq_method == frozenset({"INVITE"})
    assert m.in_dialog is False
    assert [(h.key, h.present, h.pattern and h.pattern.pattern) for h in m.headers] == [
        ("user-agent", True, "^Acme"),
        ("reason", True, None),
        ("x-no", False, None),
    ]
    assert m.body.pattern == "m=audio"
    assert str(m.device[0].network) == "192.0.2.0/24"
    assert (m.device[1].aor_user, m.device[1].aor_host) == ("alice", "example.com")
    assert (str(m.device[2].network), m.device[2].port) == ("2001:db8::1/128", 5070)
    assert m.occurrence == Occurrence(first=3, every=2, after=1, per="device")
    assert m.count == "transmission" and m.probability == pytest.approx(0.3)
    assert m.window == Window(start=1.0, duration=10.0, anchor="first-match")


def test_match_defaults_and_status():
    r = one_rule('status = ["5xx", 486, "603"]', "drop = true")
    assert r.match.status == StatusSet(frozenset({486, 603}), frozenset({5}))
    assert 503 in r.match.status and 486 in r.match.status and 404 not in r.match.status
    assert r.match.count == "transaction" and r.match.on == "message"
    empty = parse_profile('[[rules]]\nname = "all"\naction = { drop = true }', source="x").rules[0]
    assert empty.match == Match()


@pytest.mark.parametrize(
    "action, expected",
    [
        ("drop = true", Action(kind="drop")),
        ('delay = "3s"', Action(kind="delay", delay=DelaySpec(3.0))),
        (
            'delay = "3s", jitter = "500ms", distribution = "normal"',
            Action(kind="delay", delay=DelaySpec(3.0, 0.5, "normal")),
        ),
        (
            'respond = 503, reason = "Busy Here", headers = { "Retry-After" = 30 }',
            Action(kind="respond", respond=RespondSpec(503, "Busy Here", (("Retry-After", "30"),))),
        ),
        ('duplicate = 2, spacing = "20ms"', Action(kind="duplicate", duplicate=DuplicateSpec(2, 0.02))),
        ("hold = true", Action(kind="hold", hold=HoldSpec())),
        ('hold = true, timeout = "5s", then = "drop"', Action(kind="hold", hold=HoldSpec(5.0, "drop"))),
        ("close = true", Action(kind="close", close=CloseSpec("fin", "after"))),
        ('reset = true, when = "before"', Action(kind="reset", close=CloseSpec("rst", "before"))),
        ('stall = "10s"', Action(kind="stall", stall=10.0)),
        ("stall = true", Action(kind="stall", stall=math.inf)),
        ('remove_headers = ["Reason"]', Action(kind="forward", remove_headers=("Reason",))),
        (
            'delay = "1s", set_headers = { "X-Fault" = "yes" }, remove_headers = "Reason"',
            Action(kind="delay", delay=DelaySpec(1.0), set_headers=(("X-Fault", "yes"),), remove_headers=("Reason",)),
        ),
    ],
)
def test_actions(action, expected):
    assert one_rule('method = "INVITE", transport = "tcp"', action).action == expected


def test_terminal_actions():
    assert one_rule("", "drop = true").action.terminal
    assert one_rule("", "hold = true").action.terminal
    assert one_rule('method = "INVITE"', "respond = 486").action.terminal
    assert one_rule("", 'close = true, when = "before"').action.terminal
    assert not one_rule("", "close = true").action.terminal
    assert not one_rule("", 'delay = "1s"').action.terminal


@pytest.mark.parametrize(
    "written, network, port",
    [
        ("192.0.2.7", "192.0.2.7/32", None),
        ("192.0.2.7:5060", "192.0.2.7/32", 5060),
        ("[2001:db8::7]:5060", "2001:db8::7/128", 5060),
        ("[2001:db8::7]", "2001:db8::7/128", None),
        ("2001:db8::7", "2001:db8::7/128", None),
        ("[fe80::1%eth0]:5060", "fe80::1%eth0/128", 5060),
        ("10.0.0.0/8", "10.0.0.0/8", None),
    ],
)
def test_device_addresses_as_the_control_api_takes_them(written, network, port):
    """A rule's device and a device given to the control API (``parse_device``) are read by one parser."""
    spec = one_rule(f'device = "{written}"', "drop = true").match.device[0]
    assert (str(spec.network), spec.port) == (network, port)
    if port is not None:
        assert parse_device(written) == written


@pytest.mark.parametrize("port", ["", " 5060", "+5", "5_0", "0", "65536", "abc"])
def test_a_device_port_is_a_number_from_1_to_65535(port):
    with pytest.raises(ProfileError) as info:
        one_rule(f'device = "192.0.2.7:{port}"', "drop = true")
    assert info.value.key == "rules[0].match.device" and "an IP address" in info.value.allowed


def test_connect_rule():
    r = one_rule('on = "connect", transport = "tls", device = "10.0.0.0/8"', "reset = true")
    assert r.match.on == "connect" and r.action.close == CloseSpec("rst", "before")


def test_continue_and_default_names():
    p = parse_profile(
        '[[rules]]\naction = { delay = "1s" }\ncontinue = true\n[[rules]]\naction = { drop = true }', source="x"
    )
    assert [r.name for r in p.rules] == ["rule-1", "rule-2"]
    assert p.rules[0].continue_ and not p.rules[1].continue_


def test_link_both_directions_and_overrides():
    p = parse_profile(
        """
[link]
delay = "100ms"
jitter = "30ms"
loss = "10%"
rate = "1mbit"
dns_delay = "3s"
[link.to-device]
delay = "400ms"
loss = { p = "1%", r = "25%", bad_loss = "90%", good_loss = "0.1%" }
duplicate = "1%"
reorder = "5%"
""",
        source="x",
    )
    assert p.link.dns_delay == 3.0
    assert p.link.to_pbx == LinkSpec(delay=0.1, jitter=0.03, loss=0.1, rate_bps=1e6)
    down = p.link.to_device
    assert (down.delay, down.jitter, down.loss, down.rate_bps, down.duplicate, down.reorder) == (
        0.4,
        0.03,
        0.0,
        1e6,
        0.01,
        0.05,
    )
    assert down.loss_model == GilbertElliott(p=0.01, r=0.25, h=pytest.approx(0.1), k=pytest.approx(0.999))
    assert down.loss_model.bad_loss == pytest.approx(0.9) and down.loss_model.mean_burst == 4.0


def test_gilbert_elliott_defaults_are_simple_gilbert():
    p = parse_profile('[link]\nloss = { p = "2%", r = "50%" }', source="x")
    ge = p.link.to_pbx.loss_model
    assert (ge.h, ge.k, ge.bad_loss, ge.good_loss) == (0.0, 1.0, 1.0, 0.0)
    assert ge.mean_loss == pytest.approx(0.02 / 0.52)


def test_parse_rule_for_the_api():
    r = parse_rule({"name": "x", "match": {"method": "BYE"}, "action": {"drop": True}})
    assert r.name == "x" and r.match.method == frozenset({"BYE"}) and r.spec["action"] == {"drop": True}
    with pytest.raises(ProfileError) as info:
        parse_rule({"action": {"drop": True}}, source="<api>")
    assert str(info.value).startswith("<api>: rule.name: missing — required")


# ---------------------------------------------------------------------------
# errors: file + key + value + allowed


def err(text: str, source: str = "profiles/bad.toml") -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, source=source)
    return info.value


RULE = '[[rules]]\nname = "r"\n'

ERRORS = [
    # (TOML, key, value, fragment of allowed)
    ('nmae = "x"', "nmae", "x", "did you mean 'name'"),
    (RULE + 'match = { methd = "INVITE" }\naction = { drop = true }', "rules[0].match.methd", "INVITE", "'method'"),
    (RULE + "action = { drop = true, colour = 1 }", "rules[0].action.colour", 1, "unknown key"),
    (RULE + 'action = { delay = "3" }', "rules[0].action.delay", "3", "a duration with a unit"),
    (RULE + 'action = { delay = 3 }', "rules[0].action.delay", 3, "numbers without a unit are refused"),
    (RULE + 'action = { delay = "3 sec" }', "rules[0].action.delay", "3 sec", "ms"),
    (RULE + 'match = { probability = "0.3" }\naction = { drop = true }', "rules[0].match.probability", "0.3", "%"),
    (
        RULE + 'match = { headers = { Reason = "(" } }\naction = { drop = true }',
        "rules[0].match.headers.Reason",
        "(",
        "regular expression",
    ),
    (RULE + 'match = { body = "[a-" }\naction = { drop = true }', "rules[0].match.body", "[a-", "regular expression"),
    (RULE + 'action = { drop = true, delay = "1s" }', "rules[0].action", {"drop": True, "delay": "1s"}, "exactly one"),
    (RULE + 'match = { method = "register" }\naction = { drop = true }', "rules[0].match.method", "register", "REGISTER"),
    (RULE + 'match = { method = "REG ISTER" }\naction = { drop = true }', "rules[0].match.method", "REG ISTER", "token"),
    (RULE + 'match = { direction = "up" }\naction = { drop = true }', "rules[0].match.direction", "up", "to-pbx"),
    (RULE + 'match = { transport = "sctp" }\naction = { drop = true }', "rules[0].match.transport", "sctp", "udp"),
    (RULE + 'match = { status = "5x" }\naction = { drop = true }', "rules[0].match.status", "5x", "5xx"),
    (RULE + 'match = { status = 700 }\naction = { drop = true }', "rules[0].match.status", 700, "100-699"),
    (
        RULE + 'match = { method = "INVITE", status = 200 }\naction = { drop = true }',
        "rules[0].match.status",
        200,
        "cannot have both",
    ),
    (RULE + 'match = { device = "alice" }\naction = { drop = true }', "rules[0].match.device", "alice", "SIP AOR"),
    (
        RULE + 'match = { occurrence = { first = 0 } }\naction = { drop = true }',
        "rules[0].match.occurrence.first",
        0,
        ">= 1",
    ),
    (
        RULE + 'match = { occurrence = { per = "call" }, on = "connect" }\naction = { stall = true }',
        "rules[0].match.occurrence.per",
        "call",
        '"device"',
    ),
    (RULE + 'match = { count = "message" }\naction = { drop = true }', "rules[0].match.count", "message", "transmission"),
    (
        RULE + 'match = { window = { from = "now" } }\naction = { drop = true }',
        "rules[0].match.window.from",
        "now",
        "first-match",
    ),
    (RULE + "action = { drop = false }", "rules[0].action.drop", False, "true"),
    (RULE + 'action = { jitter = "1s", drop = true }', "rules[0].action.jitter", "1s", "goes with delay"),
    (RULE + "action = { respond = 180 }", "rules[0].action.respond", 180, "200-699"),
    (
        RULE + 'match = { status = "2xx" }\naction = { respond = 500 }',
        "rules[0].action.respond",
        500,
        "answers requests",
    ),
    (RULE + 'match = { method = "ACK" }\naction = { respond = 500 }', "rules[0].action.respond", 500, "ACK"),
    (
        RULE + 'action = { respond = 503, headers = { "Content-Length" = "5" } }',
        'rules[0].action.headers.Content-Length',
        "Content-Length",
        "computed",
    ),
    (
        RULE + 'action = { drop = true, remove_headers = ["Reason"] }',
        "rules[0].action.remove_headers",
        ["Reason"],
        "forwards nothing",
    ),
    (RULE + "action = { drop = true }\ncontinue = true", "rules[0].continue", True, "remove continue"),
    (RULE + 'match = { transport = "udp" }\naction = { reset = true }', "rules[0].action.reset", True, "UDP"),
    (RULE + 'match = { on = "connect", method = "INVITE" }\naction = { stall = true }', "rules[0].match.method", "INVITE", "connect"),
    (RULE + 'match = { on = "connect" }\naction = { drop = true }', "rules[0].action", {"drop": True}, "stall, close or reset"),
    (RULE + "action = {}", "rules[0].action", {}, "an action"),
    (RULE + 'match = { method = "INVITE" }', "rules[0].action", "(missing)", "required"),
    (RULE + 'action = { set_headers = { "X-A" = "1\\r\\nX-B: 2" } }', "rules[0].action.set_headers.X-A", "1\r\nX-B: 2", "CR or LF"),
    ('[[rules]]\nname = "a"\naction = { drop = true }\n[[rules]]\nname = "a"\naction = { drop = true }', "rules[1].name", "a", "unique"),
    ('[link]\nloss = "8"', "link.loss", "8", "percentage"),
    ('[link]\nrate = "64kbps"', "link.rate", "64kbps", "kbit"),
    ('[link]\nreorder = "5%"', "link.reorder", "5%", "needs a delay"),
    ('[link]\nloss = { p = "1%" }', "link.loss.r", "(missing)", "required"),
    ('[link.up]\ndelay = "1s"', "link.up", {"delay": "1s"}, "to-pbx"),
    ('[link.to-pbx]\ndns_delay = "1s"', "link.to-pbx.dns_delay", "1s", "unknown key"),
    ('summary = "two\\nlines"', "summary", "two\nlines", "one line"),
]


@pytest.mark.parametrize("text, key, value, allowed", ERRORS)
def test_errors_name_file_key_value_and_allowed(text, key, value, allowed):
    e = err(text)
    assert e.source == "profiles/bad.toml"
    assert e.key == key
    if value == "(missing)":
        assert "missing" in str(e)
    else:
        assert e.value == value
    assert allowed in e.allowed
    assert str(e).startswith(f"profiles/bad.toml: {key}: ")
    assert " — " in str(e) and "\n" not in str(e).replace(repr(e.value), "")


def test_toml_syntax_error():
    e = err('name = "x"\nsummary = \n[link]')
    assert str(e).startswith("profiles/bad.toml: TOML syntax error: ") and "line 2" in str(e)


def test_profile_error_is_a_value_error():
    assert issubclass(ProfileError, ValueError)


def test_unknown_method_tokens_are_allowed():
    assert one_rule('method = "X-CUSTOM"', "drop = true").match.method == frozenset({"X-CUSTOM"})


# ---------------------------------------------------------------------------
# the library on disk


def test_profiles_dir_is_the_repository_folder():
    assert profiles_dir() == Path(__file__).resolve().parents[2] / "profiles"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ProfileError) as info:
        load_profile("register-dorp")
    e = info.value
    assert e.key == "profile" and e.value == "register-dorp"
    assert "did you mean 'register-drop'?" in e.allowed and "clean" in e.allowed and "lossy-wifi" in e.allowed


def test_missing_file():
    with pytest.raises(ProfileError) as info:
        load_profile("nope/x.toml")
    assert str(info.value) == "nope/x.toml: no such file"
