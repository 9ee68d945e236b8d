"""Scenario files (faultlab.lab.scenario): the catalogue loads, names resolve, bad files say what to fix."""

from __future__ import annotations

import pytest

from faultlab.lab.pushside import expects_refusal
from faultlab.lab.scenario import Bound, ScenarioError, list_scenarios, load_scenario, parse_scenario
from faultlab.lab.scenario_set import override

MINIMAL = '''
id = "S90"
slug = "my-scenario"
title = "A scenario of a team's own"
[call]
cancel_at = "1s"
[expect]
end = ["unanswered"]
by = [{ after = "register-ok", within = "5s" }, { after = "push", within = "15s" }]
'''


def test_every_catalogue_file_loads_and_is_named_by_id_and_slug():
    catalogue = list_scenarios()
    assert [s.id for s in catalogue][:3] == ["S01", "S02", "S03"]
    for s in catalogue:
        assert load_scenario(s.id) == s == load_scenario(s.slug) == load_scenario(s.id.lower())
        assert s.source.endswith(f"{s.id}-{s.slug}.toml")
        # an end with its deadline; a scenario about the PBX's side of push (judged by the push-side check); or
        # milestones with no end expected (S25: the call goes on)
        assert (s.end and s.by) or expects_refusal(s) or s.milestones, f"{s.id} states no expectation"


def test_a_scenario_file_of_ones_own(tmp_path):
    s = parse_scenario(MINIMAL)
    assert (s.id, s.slug, s.cancel_at, s.end) == ("S90", "my-scenario", 1.0, ("unanswered",))
    assert s.by == (Bound("register-ok", 5.0), Bound("push", 15.0))
    assert s.cancel_push_check  # the caller cancels and the PBX sends cancel pushes: check 3 applies
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    assert load_scenario(str(path)).slug == "my-scenario"


def test_inline_faults_and_a_library_profile_merge():
    s = load_scenario("S04")
    assert s.faults is not None and [r.name for r in s.faults.rules] == ["delay-register-2s"]
    merged = parse_scenario(MINIMAL + '\n[faults]\nprofile = "cancel-drop"\n'
                            '[[faults.rules]]\nmatch = { method = "REGISTER" }\naction = { delay = "1s" }\n')
    assert [r.name for r in merged.faults.rules] == ["rule-1", "drop-cancel"]


@pytest.mark.parametrize(("edit", "key", "allowed"), [
    (("[call]", "[call]\nanswer_in = \"1s\""), "call.answer_in", "did you mean 'answer_at'"),
    (('cancel_at = "1s"', "cancel_at = 1"), "call.cancel_at", "a duration with a unit"),
    (('after = "push"', 'after = "pushed"'), "expect.by[1].after", "one of push, reported"),
    (('end = ["unanswered"]', 'end = ["missed"]'), "expect.end", "a list of CallKit end reasons"),
    (('id = "S90"', 'id = "90"'), "id", "S followed by two digits"),
    (("[call]", "[push]\nrefuse = \"Unregistered\"\n[call]"), "push.refuse", "e.g. \"410 Unregistered\""),
    (("[call]", "[pbx]\npayload_size = \"5k\"\n[call]"), "pbx.payload_size", "a whole number of bytes"),
    (("[call]", "[push]\noffline = 45\n[call]"), "push.offline", "a duration with a unit"),
])
def test_errors_name_the_key_and_what_is_allowed(edit, key, allowed):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(MINIMAL.replace(*edit), source="team.toml")
    message = str(info.value)
    assert message.startswith(f"team.toml: {key}") and allowed in message


def test_the_push_side_settings():
    s = parse_scenario(MINIMAL.replace("[call]", '[push]\noffline = "45s"\nrefuse = "410 Unregistered"\n'
                                       '[pbx]\napns_expiration = "60s"\npayload_size = 5121\n[call]\n'
                                       'call_again = true'))
    assert (s.push_offline, s.push_refuse, s.pbx_apns_expiration, s.pbx_payload_size, s.call_again) == (
        45.0, (410, "Unregistered"), 60.0, 5121, True)
    assert expects_refusal(s) and not expects_refusal(parse_scenario(MINIMAL))


def test_a_bad_inline_rule_is_reported_with_the_profile_error():
    with pytest.raises(ScenarioError, match=r"team.toml: faults.*action"):
        parse_scenario(MINIMAL + '[[faults.rules]]\nmatch = { method = "REGISTER" }\naction = { delay = 3 }\n',
                       source="team.toml")


def test_unknown_scenario_suggests_and_points_to_the_list():
    with pytest.raises(ScenarioError, match=r"did you mean 'baseline'.*faultlab lab scenarios"):
        load_scenario("baselin")


def test_overrides_as_a_team_decides():
    s = load_scenario("S04")
    failed = override(s, "expect.end", "failed")
    assert failed.end == ("failed",) and s.end == ("unanswered",)
    assert override(s, "expect.by", "register-ok+3s,push+10s").by == (Bound("register-ok", 3.0), Bound("push", 10.0))
    assert override(s, "device.invite_deadline", "3s").device == {"invite_deadline": 3.0}
    assert override(s, "call.cancel_at", "500ms").cancel_at == 0.5
    with pytest.raises(ScenarioError, match="not a field that can be set"):
        override(s, "call.colour", "red")
    with pytest.raises(ScenarioError, match="a CallKit end reason"):
        override(s, "expect.end", "missed")


def test_the_network_round_trip_is_a_scenario_setting():
    s = parse_scenario(MINIMAL)
    assert s.rtt is None and s.network_rtt == 0.04  # a real round trip by default: 20 ms each way on every hop
    assert parse_scenario(MINIMAL + '[network]\nrtt = "150ms"\n').rtt == 0.15
    assert parse_scenario(MINIMAL + '[network]\nrtt = "0s"\n').rtt == 0.0
    assert override(load_scenario("S01"), "network.rtt", "100ms").rtt == 0.1
    for text, allowed in (('rtt = 40', "a duration with a unit"), ('rtt = "11s"', "a round trip of at most 10s"),
                          ('latency = "40ms"', "network.latency")):
        with pytest.raises(ScenarioError, match=allowed):
            parse_scenario(MINIMAL + f"[network]\n{text}\n", source="team.toml")
    with pytest.raises(ScenarioError, match="a round trip of 0 to 10s"):
        override(load_scenario("S01"), "network.rtt", "1h")
