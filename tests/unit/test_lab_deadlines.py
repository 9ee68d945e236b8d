"""The app's declared deadlines (faultlab.lab.deadlines): parsing, faultlab.toml, advisories, scenario bounds."""

from __future__ import annotations

import pytest

from faultlab.lab.deadlines import DeadlineError, advisories, apply_deadlines, load_config, parse_deadlines
from faultlab.lab.runner import device_config
from faultlab.lab.scenario import ScenarioError, load_scenario, parse_scenario
from faultlab.lab.scenario_set import override


def test_parse_deadlines_and_its_errors():
    assert parse_deadlines("invite=4.5s, register=8s,total=15s") == {"invite": 4.5, "register": 8.0, "total": 15.0}
    assert parse_deadlines("ring=30000ms") == {"ring": 30.0}
    for bad, phrase in (("invite", "a duration with a unit"), ("invite=4.5", "a duration with a unit"),
                        ("invite=-1s", "a duration"), ("answer=3s", "'answer' is not a deadline"), ("", "NAME=")):
        with pytest.raises(DeadlineError, match=phrase):
            parse_deadlines(bad)


def test_faultlab_toml_deadlines_table(tmp_path):
    assert load_config(tmp_path) == {}  # no file: nothing declared
    (tmp_path / "faultlab.toml").write_text('[deadlines]\ninvite = "4.5s"\ntotal = "12s"\n')
    assert load_config(tmp_path) == {"invite": 4.5, "total": 12.0}
    (tmp_path / "faultlab.toml").write_text('[deadlines]\ninvite = 4.5\n')
    with pytest.raises(DeadlineError, match=r"faultlab.toml: \[deadlines\]: invite=4.5 — a duration with a unit"):
        load_config(tmp_path)
    (tmp_path / "faultlab.toml").write_text('[deadlines\n')
    with pytest.raises(DeadlineError, match="cannot read it"):
        load_config(tmp_path)


def test_advisories_name_the_range_and_why():
    assert advisories({}) == [] and advisories({"invite": 4.5, "register": 8.0, "total": 15.0, "ring": 45.0}) == []
    [line] = advisories({"invite": 2.0})
    assert line.startswith("advisory: the declared invite deadline 2 s is outside the recommended 3-10 s (")
    [line] = advisories({"register": 6.0})
    assert "7.5-10 s" in line and "Timer E" in line
    assert any("the register deadline never applies" in line for line in advisories({"total": 7.0}))


def test_bounds_that_name_a_deadline_take_the_declared_value():
    s03 = load_scenario("S03")
    [bound] = s03.by
    assert (bound.after, bound.within, bound.deadline) == ("register-ok", 5.0, "invite")  # the reference's
    tight = apply_deadlines(s03, {"invite": 4.5})
    assert tight.by[0].within == 4.5 and tight.not_before[0].within == 4.5
    assert "register-ok + 4.5 s (the invite deadline)" in tight.by[0].describe()
    assert device_config(tight, None).invite_deadline == 4.5  # the reference device stands in for the app
    # the scenario's own [device] settings still script the device, not the judged deadline
    slow = apply_deadlines(override(s03, "device.invite_deadline", "5s"), {"invite": 4.5})
    assert device_config(slow, None).invite_deadline == 5.0 and slow.by[0].within == 4.5
    # undeclared again: the reference's
    assert apply_deadlines(tight, {}).by[0].within == 5.0
    s04 = apply_deadlines(load_scenario("S04"), {"total": 12.0, "invite": 4.0})
    assert [(b.after, b.within) for b in s04.by] == [("register-ok", 4.0), ("push", 12.0)]


def test_scenario_toml_and_set_forms_of_a_named_deadline():
    text = 'id = "S90"\nslug = "x"\ntitle = "x"\n[expect]\nend = ["unanswered"]\n'
    s = parse_scenario(text + 'by = [{ after = "register-ok", deadline = "invite" }, { after = "push", within = "15s" }]\n')
    assert [(b.within, b.deadline) for b in s.by] == [(5.0, "invite"), (15.0, None)]  # numbers stay valid
    for bad in ('{ after = "push", deadline = "answer" }', '{ after = "push", deadline = "invite", within = "1s" }',
                '{ after = "push" }'):
        with pytest.raises(ScenarioError, match="deadline|within"):
            parse_scenario(text + f"by = [{bad}]\n")
    declared = apply_deadlines(s, {"invite": 4.5})
    assert override(declared, "expect.by", "register-ok+invite").by[0].within == 4.5
    assert override(s, "expect.not_before", "push+total,register-ok+2s").not_before[0].deadline == "total"
