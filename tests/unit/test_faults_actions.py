"""The action kinds (faultlab.faults.actions): the registry that the loader and the engine dispatch through,
the docs that list them, and what each kind's own keys and limits mean to someone writing a profile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from faultlab.faults import ProfileError, parse_profile
from faultlab.faults.actions import ACTION_KEYS, KINDS, PRIMARY_ACTIONS

from .test_faults_support import engine, request, rule_profile, view

DOCS = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"

# one valid action table per kind (with a match it may have), to try each kind on the wire shape it needs
EXAMPLES = {
    "drop": "drop = true",
    "delay": 'delay = "1s"',
    "respond": "respond = 503",
    "duplicate": "duplicate = 1",
    "hold": "hold = true",
    "close": "close = true",
    "reset": "reset = true",
    "stall": 'stall = "1s"',
    "forward": 'set_headers = { "X-Fault" = "1" }',
}


def test_every_kind_has_an_example_here():
    assert set(EXAMPLES) == set(KINDS)


def test_the_docs_list_every_action_key_and_no_other():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Actions", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| (`[^|]*) \|", section, re.M):
        documented.update(re.findall(r"`([a-z_]+)`", row))
    assert documented == set(ACTION_KEYS)


@pytest.mark.parametrize("kind", PRIMARY_ACTIONS)
def test_each_kind_names_the_keys_that_go_with_it(kind):
    """A key of another kind is refused with the kind it belongs to."""
    key = next(k for other in KINDS.values() for k in other.keys if k not in KINDS[kind].keys)
    text = f'[[rules]]\nname = "r"\nmatch = {{ method = "INVITE", transport = "tcp" }}\n' \
           f'action = {{ {EXAMPLES[kind]}, {key} = "1s" }}\n'
    with pytest.raises(ProfileError) as info:
        parse_profile(text, source="t.toml")
    assert info.value.key == f"rules[0].action.{key}" and "goes with" in info.value.allowed
    assert f"this action is {kind!r}" in info.value.allowed


@pytest.mark.parametrize("kind", [n for n, k in KINDS.items() if k.streams_only])
def test_connection_kinds_leave_udp_alone(kind):
    """close, reset and stall act on TCP/TLS connections: on UDP the rule does not fire at all."""
    eng = engine(rule_profile('method = "INVITE"', EXAMPLES[kind]))
    msg = request("INVITE")
    on_udp = eng.decide(view(msg, transport="udp"), 0.0)
    assert on_udp.events == () and on_udp.data == msg.raw
    on_tcp = eng.decide(view(msg, transport="tcp"), 0.0)
    assert [e.action for e in on_tcp.events] == [kind]


@pytest.mark.parametrize("kind", [n for n, k in KINDS.items() if not k.connect and n != "forward"])
def test_connect_rules_refuse_kinds_that_need_a_message(kind):
    with pytest.raises(ProfileError, match="a connect rule can only stall, close or reset"):
        parse_profile(f'[[rules]]\nname = "r"\nmatch = {{ on = "connect" }}\naction = {{ {EXAMPLES[kind]} }}\n')


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_fires_once_with_its_name(kind):
    """Every kind, alone on an INVITE over TCP, fires one event named after what it did."""
    eng = engine(rule_profile('method = "INVITE"', EXAMPLES[kind]))
    decision = eng.decide(view(request("INVITE"), transport="tcp"), 0.0)
    assert [e.action for e in decision.events] == ["edit" if kind == "forward" else kind]
    assert decision.outcome == {"drop": "drop", "respond": "respond", "hold": "hold"}.get(kind, "forward")
