"""Team libraries: FAULTLAB_PATH and faultlab --library DIR add profiles and scenarios to the built-in library,
replace built-ins of the same name (and say so), and an unusable or empty library is an error that says where it
looked. Everything that reads the library (profiles list/show, lab scenarios/run, demo, the control API) sees the
same entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faultlab import library
from faultlab.cli import app
from faultlab.proxy import ProxyControl
from faultlab.faults import ProfileError, list_profiles, load_profile, profile_entries
from faultlab.lab.scenario import ScenarioError, list_scenarios, load_scenario, scenario_entries
from faultlab.proxy import Proxy, ProxyConfig

REPO = Path(__file__).resolve().parents[2]
BUILTIN_PROFILES = sorted(p.stem for p in (REPO / "profiles").glob("*.toml"))

DROP_INVITE = """summary = "Team: every INVITE to the device is lost."
[[rules]]
name = "team-drop-invite"
match = { method = "INVITE", direction = "to-device" }
action = { drop = true }
"""
TEAM_REGISTER_DROP = """summary = "Team version: every REGISTER is lost."
[[rules]]
name = "team-version"
match = { method = "REGISTER" }
action = { drop = true }
"""


def _scenario(sid: str, slug: str, title: str = "A team scenario") -> str:
    baseline = (REPO / "scenarios" / "S01-baseline.toml").read_text()
    text = baseline.replace('id = "S01"', f'id = "{sid}"').replace('slug = "baseline"', f'slug = "{slug}"')
    return "\n".join(f'title = "{title}"' if line.startswith("title =") else line for line in text.splitlines())


@pytest.fixture(autouse=True)
def no_search_path(monkeypatch):
    """Each test starts without FAULTLAB_PATH, and whatever a test (or --library) sets is undone after it."""
    monkeypatch.setenv(library.ENV, "")  # recorded, so that teardown restores it even if it was not set
    monkeypatch.delenv(library.ENV)


@pytest.fixture
def team(tmp_path: Path) -> Path:
    lib = tmp_path / "team"
    (lib / "profiles").mkdir(parents=True)
    (lib / "scenarios").mkdir()
    (lib / "profiles" / "team-drop-invite.toml").write_text(DROP_INVITE)
    (lib / "profiles" / "register-drop.toml").write_text(TEAM_REGISTER_DROP)
    (lib / "scenarios" / "S90-team-baseline.toml").write_text(_scenario("S90", "team-baseline"))
    return lib


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


# -- the search path ------------------------------------------------------------------------------------------


def test_without_a_search_path_only_the_built_in_library_is_read():
    assert library.search_path() == []
    entries = profile_entries()
    assert [e.item.name for e in entries] == BUILTIN_PROFILES
    assert {e.origin for e in entries} == {library.BUILTIN} and not any(e.hides for e in entries)
    assert library.builtin_dir("profiles") == (REPO / "profiles").resolve()  # the source tree's, through the link


def test_search_path_entries_in_order_empty_ones_and_repeats_skipped(tmp_path, team):
    other = tmp_path / "other"
    (other / "profiles").mkdir(parents=True)
    (other / "profiles" / "x.toml").write_text('summary = "x"\n')
    env = {library.ENV: os.pathsep.join(["", str(other), str(team), "", str(other)])}
    assert library.search_path(env) == [other, team]


@pytest.mark.parametrize("make, problem", [
    (lambda p: None, "no such directory"),
    (lambda p: p.write_text("x"), "is not a directory"),
    (lambda p: p.mkdir(), "holds no profiles or scenarios"),
])
def test_an_unusable_library_is_an_error_naming_the_setting_and_the_layout(tmp_path, make, problem):
    path = tmp_path / "lib"
    make(path)
    with pytest.raises(library.LibraryError) as info:
        library.search_path({library.ENV: str(path)})
    assert str(info.value).startswith(f"{library.ENV} {path}: {problem}")
    assert "DIR/profiles/*.toml" in str(info.value)


def test_add_to_path_puts_the_libraries_first_in_the_environment(monkeypatch, tmp_path, team):
    other = tmp_path / "other"
    (other / "scenarios").mkdir(parents=True)
    (other / "scenarios" / "S91-x.toml").write_text(_scenario("S91", "x"))
    env = {library.ENV: "/already/there"}
    monkeypatch.chdir(tmp_path)  # a relative --library DIR is made absolute: child processes may run elsewhere
    assert library.add_to_path(["team", other], env) == [team, other]
    assert env[library.ENV] == os.pathsep.join([str(team), str(other), "/already/there"])
    with pytest.raises(library.LibraryError, match=r"^--library /nonexistent: no such directory"):
        library.add_to_path(["/nonexistent"], env)


def test_a_directory_of_loose_toml_files_is_split_by_content(tmp_path):
    lib = tmp_path / "flat"
    lib.mkdir()
    (lib / "team-drop-invite.toml").write_text(DROP_INVITE)
    (lib / "S92-flat.toml").write_text(_scenario("S92", "flat"))
    (lib / "notes.txt").write_text("not read")
    env = {library.ENV: str(lib)}
    assert [s.path.name for s in library.files("profiles", env) if s.origin != library.BUILTIN] == \
        ["team-drop-invite.toml"]
    assert [s.path.name for s in library.files("scenarios", env) if s.origin != library.BUILTIN] == ["S92-flat.toml"]


def test_with_a_profiles_or_scenarios_folder_loose_files_are_not_read(team):
    (team / "stray.toml").write_text(DROP_INVITE)
    names = [s.path.name for s in library.files("profiles", {library.ENV: str(team)})]
    assert "stray.toml" not in names and "team-drop-invite.toml" in names


def test_layer_first_wins_and_remembers_what_it_hides():
    found = [(library.Source("/a", Path("/a/x.toml")), "x"), (library.Source("/b", Path("/b/x.toml")), "x"),
             (library.Source(library.BUILTIN, Path("/c/x.toml")), "x"), (library.Source("/b", Path("/b/y")), "y")]
    entries = library.layer(found, lambda item: [item])
    assert [(e.item, e.origin, e.hides) for e in entries] == [("x", "/a", ("/b", library.BUILTIN)), ("y", "/b", ())]
    with pytest.raises(library.LibraryError, match="^/a/x2.toml: x is already given by /a/x.toml in the same"):
        library.layer([found[0], (library.Source("/a", Path("/a/x2.toml")), "x")], lambda item: [item])


# -- profiles -------------------------------------------------------------------------------------------------


def test_a_team_profile_adds_to_the_library_and_replaces_the_built_in_of_its_name(monkeypatch, team):
    monkeypatch.setenv(library.ENV, str(team))
    entries = {e.item.name: e for e in profile_entries()}
    assert sorted(entries) == sorted([*BUILTIN_PROFILES, "team-drop-invite"])
    assert entries["register-drop"].origin == str(team) and entries["register-drop"].hides == (library.BUILTIN,)
    assert entries["clean"].origin == library.BUILTIN
    assert load_profile("register-drop").rules[0].name == "team-version"
    assert load_profile("team-drop-invite").source == str(team / "profiles" / "team-drop-invite.toml")
    assert [p.name for p in list_profiles()] == sorted(entries)


def test_a_bad_team_profile_names_its_file(monkeypatch, team):
    (team / "profiles" / "broken.toml").write_text('[[rules]]\naction = { delay = "3" }\n')
    monkeypatch.setenv(library.ENV, str(team))
    with pytest.raises(ProfileError, match=r"broken\.toml: rules\[0\]"):
        profile_entries()


def test_an_empty_library_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(library, "builtin_dir", lambda kind: tmp_path / "missing" / kind)
    with pytest.raises(ProfileError) as info:
        load_profile("register-drop")
    assert "none found; looked in: no FAULTLAB_PATH, no --library, built-in" in str(info.value)
    assert str(tmp_path / "missing" / "profiles") in str(info.value) and "reinstall faultlab" in str(info.value)
    result = cli("profiles", "list")
    assert result.exit_code == 2 and "no profiles found; looked in:" in result.output
    assert str(tmp_path / "missing" / "profiles") in result.output


# -- scenarios ------------------------------------------------------------------------------------------------


def test_a_team_scenario_adds_to_the_catalogue_and_replaces_one_of_the_same_id(monkeypatch, team):
    (team / "scenarios" / "S02-mine.toml").write_text(_scenario("S02", "mine", "Team S02"))
    monkeypatch.setenv(library.ENV, str(team))
    entries = {e.item.id: e for e in scenario_entries()}
    assert entries["S90"].origin == str(team) and load_scenario("team-baseline").id == "S90"
    assert entries["S02"].item.title == "Team S02" and entries["S02"].hides == (library.BUILTIN,)
    assert load_scenario("S02").slug == "mine"
    assert entries["S01"].origin == library.BUILTIN
    assert [s.id for s in list_scenarios()] == list(entries)  # still in id order


def test_two_scenarios_of_one_id_in_one_library_are_an_error(monkeypatch, team):
    (team / "scenarios" / "S90-again.toml").write_text(_scenario("S90", "again"))
    monkeypatch.setenv(library.ENV, str(team))
    with pytest.raises(ScenarioError, match=r"S90-team-baseline\.toml: S90 is already given by .*S90-again\.toml in "
                       "the same library: rename one"):
        list_scenarios()


def test_an_empty_catalogue_is_an_error_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setattr(library, "builtin_dir", lambda kind: tmp_path / "missing" / kind)
    listed = cli("lab", "scenarios")
    assert listed.exit_code == 2 and "no scenarios found; looked in:" in listed.output, listed.output
    assert str(tmp_path / "missing" / "scenarios") in listed.output
    demo = cli("demo")
    assert demo.exit_code == 2 and "no scenarios found; looked in:" in demo.output, demo.output
    with pytest.raises(ScenarioError, match="no scenarios found; looked in"):
        load_scenario("S01")


# -- the CLI and the control API ------------------------------------------------------------------------------


def test_profiles_list_shows_where_each_comes_from_and_notes_replacements(team):
    result = cli("--library", str(team), "profiles", "list")
    assert result.exit_code == 0, result.output
    rows = {line.split(None, 2)[0]: line.split(None, 2)[1:] for line in result.output.splitlines()
            if not line.startswith("note:")}
    assert rows["team-drop-invite"] == [str(team), "Team: every INVITE to the device is lost."]
    assert rows["register-drop"][0] == str(team) and rows["clean"][0] == "built-in"
    assert f"note: register-drop from {team} replaces the built-in profile of that name" in result.output
    assert os.environ[library.ENV] == str(team)  # exported: child processes (sweep workers) search the same way


def test_lab_scenarios_and_lab_run_use_the_team_library(monkeypatch, team):
    (team / "scenarios" / "S02-mine.toml").write_text(_scenario("S02", "mine", "Team S02"))
    monkeypatch.setenv(library.ENV, str(team))
    listed = cli("lab", "scenarios")
    assert listed.exit_code == 0, listed.output
    s90 = next(line for line in listed.output.splitlines() if " S90 " in line)
    assert "team-baseline" in s90 and str(team) in s90
    s02 = next(line for line in listed.output.splitlines() if " S02 " in line)
    assert f"{team} (replaces built-in)" in s02
    assert f"note: S02 mine from {team} replaces the built-in scenario" in listed.output
    ran = cli("lab", "run", "-s", "S90", "-p", "team-drop-invite", "--seed", "1", "-q")
    assert ran.exit_code == 1 and "team-drop-invite" in ran.output, ran.output  # the INVITE never reaches it
    replaced = cli("lab", "run", "-s", "S02", "-s", "S01", "-p", "register-drop", "--seed", "1", "-q")
    assert f"note: S02 mine from {team} replaces the built-in scenario" in replaced.output, replaced.output
    assert f"note: profile register-drop from {team} replaces the built-in profile" in replaced.output
    assert "note: S01" not in replaced.output


def test_a_missing_library_dir_is_a_clear_error(tmp_path):
    result = cli("--library", str(tmp_path / "nope"), "lab", "scenarios")
    assert result.exit_code == 2
    assert f"--library {tmp_path / 'nope'}: no such directory; a library directory holds DIR/profiles" \
        in result.output


async def test_the_control_api_lists_the_same_entries(monkeypatch, team):
    monkeypatch.setenv(library.ENV, str(team))
    control = ProxyControl(Proxy(ProxyConfig(listen=[], upstream=[], keep_events=10, seed=1)))
    listed = {p["name"]: p for p in control.list_profiles()}
    assert sorted(listed) == sorted([*BUILTIN_PROFILES, "team-drop-invite"])
    assert listed["register-drop"]["origin"] == str(team) and listed["register-drop"]["replaces"] == ["built-in"]
    assert listed["clean"]["origin"] == "built-in" and listed["clean"]["replaces"] == []
    assert control.set_profile("team-drop-invite")["name"] == "team-drop-invite"
