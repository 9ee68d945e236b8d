"""faultlab's pytest plugin (faultlab/pytest_plugin.py), seen from a user's test suite: small test files run by
pytest's ``pytester`` in this process, with the plugin loaded the way users get it (the ``pytest11`` entry point)
and pytest-trio in trio mode. The worked example of docs/pytest-plugin.md is one of them, read from the page."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

# cryptography's bindings load only once per process: import them before any in-process run (which unloads the
# modules it imported) so that the runs after a TLS one still find them
importlib.import_module("faultlab.ca")

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "pytest-plugin.md"


@pytest.fixture
def user(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: trio mode on, faultlab's plugin from its entry point."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    [example] = [b for b in blocks if b.startswith("# tests/test_calls_under_faults.py\n")]
    return example


def test_the_worked_example_of_the_docs_passes(user):
    user.makepyfile(test_calls_under_faults=doc_example())
    result = run(user)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["faultlab: default seed 0 (--faultlab-seed)"])


def test_a_failing_scenario_shows_the_checks_evidence_and_the_seed(user):
    user.makepyfile("""
        def test_never_ends(faultlab_scenario):
            faultlab_scenario("S04", "lossy-wifi", behaviour="never-ends").assert_passed()

        def test_verdicts_to_assert_on(faultlab_scenario):
            result = faultlab_scenario("S06", behaviour="wrong-reason-mapping", seed=3)
            assert not result.passed and result.failures
            assert result.check("ends-right").passed is False
            assert "wrong-reason-mapping" in result.explain()
    """)
    result = run(user, "--faultlab-seed", "11")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "faultlab: default seed 11 (--faultlab-seed)",
        "*_ test_never_ends _*",
        "S04 cancel-before-register x lossy-wifi over udp (seed 11, behaviour never-ends): FAILED",
        "  FAIL ends-right: the device never ended the call (expected unanswered by *)",
        "         t=*call push delivered",
        "         deadline term: register-ok + 5 s = *",
        "  FAIL cancel-push: *",
        "  ok   invariants: *",
        "timelines (faultlab trace ladder FILE): *S04-cancel-before-register--lossy-wifi--udp.jsonl*",
        "again: faultlab lab run -s S04 -t udp --seed 11 -p lossy-wifi --behaviour never-ends",
        # every transport the scenario applies to, each with its verdicts and its command to run it again
        "S04 cancel-before-register x lossy-wifi over tcp (seed 11, behaviour never-ends): FAILED",
        "again: faultlab lab run -s S04 -t tcp --seed 11 -p lossy-wifi --behaviour never-ends",
        "S04 cancel-before-register x lossy-wifi over tls (seed 11, behaviour never-ends): FAILED",
        "again: faultlab lab run -s S04 -t tls --seed 11 -p lossy-wifi --behaviour never-ends",
        "*- faultlab -*",
        "faultlab_scenario(S04, profile lossy-wifi, udp,tcp,tls): seed 11, the session default (--faultlab-seed 11"
        " runs it again)",
    ])
    assert "Traceback" not in result.stdout.str()  # the verdicts, not the plugin's insides


def test_the_scenario_fixture_plays_every_transport_unless_narrowed(user):
    user.makepyfile("""
        import pytest

        def test_every_transport(faultlab_scenario):
            result = faultlab_scenario("S01")
            assert result.transports == ${every}
            assert result.passed and result.on("tcp").case.transport == "tcp"

        def test_named(faultlab_scenario):
            assert faultlab_scenario("S01", transport="tls").transports == ["tls"]
            assert faultlab_scenario("S01", transport=["tcp", "udp"]).transports == ["tcp", "udp"]
            with pytest.raises(ValueError, match="S14 applies to tls, not udp"):
                faultlab_scenario("S14", transport="udp")

        def test_one_that_does_not_apply(faultlab_scenario):
            faultlab_scenario("S14")  # TLS only
    """.replace("${every}", "['udp', 'tcp', 'tls']"))
    run(user).assert_outcomes(passed=3)
    narrowed = run(user, "--faultlab-transport", "udp,tcp", "-rs")
    narrowed.assert_outcomes(passed=1, failed=1, skipped=1)  # test_every_transport now sees udp and tcp only
    narrowed.stdout.fnmatch_lines(["faultlab: default seed 0 (--faultlab-seed), transports udp,tcp "
                                   "(--faultlab-transport)",
                                   "*S14 applies to tls, none of --faultlab-transport udp,tcp*"])
    bad = run(user, "--faultlab-transport", "sctp")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--faultlab-transport 'sctp': use udp, tcp or tls*"])


def test_the_seed_option_reaches_every_fixture(user):
    user.makepyfile("""
        import trio

        async def test_proxy(faultlab_proxy):
            async with faultlab_proxy("udp:127.0.0.1:5999", profile="register-drop") as proxy:
                assert proxy.seed == 42 and proxy.engine is not None
                assert proxy.bound["udp"][0] == "127.0.0.1"
            async with faultlab_proxy(["udp:127.0.0.1:5999", "tcp:127.0.0.1:5999"], seed=7) as proxy:
                assert proxy.seed == 7 and proxy.engine is None and set(proxy.bound) == {"udp", "tcp"}
            [start] = [e for e in proxy.events if e.kind == "start"]
            assert start.detail["seed"] == 7

        async def test_lab(faultlab_lab, autojump_clock):
            async with faultlab_lab() as lab:
                assert lab.proxy.seed == 42 and lab.device.initial_register == 200
    """)
    result = run(user, "--faultlab-seed=42")
    result.assert_outcomes(passed=2)


def test_a_random_seed_is_drawn_once_and_shown(user):
    user.makepyfile("""
        async def test_proxy(faultlab_proxy):
            async with faultlab_proxy("udp:127.0.0.1:5999") as proxy:
                print("proxy seed", proxy.seed)
    """)
    result = run(user, "--faultlab-seed", "random", "-s")
    result.assert_outcomes(passed=1)
    [header] = [line for line in result.outlines if line.startswith("faultlab: default seed")]
    seed = header.split()[3]
    result.stdout.fnmatch_lines([f"*proxy seed {seed}"])


def test_a_bad_seed_is_a_usage_error(user):
    user.makepyfile("def test_nothing(): pass")
    result = run(user, "--faultlab-seed", "often")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--faultlab-seed 'often': give an integer or 'random'*"])


def test_the_proxy_writes_to_a_given_timeline_and_stops_at_the_block_end(user):
    user.makepyfile("""
        import trio
        from faultlab.faults import load_profile
        from faultlab.lab.timeline import Timeline

        async def test_shared_timeline(faultlab_proxy):
            timeline = Timeline()
            async with faultlab_proxy("udp:127.0.0.1:5999", profile=load_profile("lossy-wifi"),
                                      timeline=timeline) as proxy:
                assert proxy.events is timeline.events
                proxy.activate(None)
            kinds = [e.kind for e in timeline.events]
            assert kinds[0] == "start" and kinds[-1] == "stop" and "profile" in kinds
    """)
    run(user).assert_outcomes(passed=1)


def test_tls_labs_share_one_lab_ca_per_session(user):
    user.makepyfile("""
        seen = []

        async def test_one(faultlab_lab, autojump_clock):
            async with faultlab_lab("tls") as lab:
                assert lab.device.initial_register == 200
                seen.append(lab.pbx.confdir)

        async def test_two(faultlab_lab, autojump_clock):
            async with faultlab_lab("tls") as lab:
                assert lab.device.initial_register == 200
                seen.append(lab.pbx.confdir)

        def test_same():
            from faultlab.ca import CA_CERT_FILE

            assert len(seen) == 2 and seen[0] == seen[1] and (seen[0] / CA_CERT_FILE).is_file()
    """)
    run(user).assert_outcomes(passed=3)


def test_the_scenario_fixture_refuses_an_async_test(user):
    user.makepyfile("""
        async def test_async(faultlab_scenario):
            faultlab_scenario("S01")
    """)
    result = run(user)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: faultlab_scenario runs a trio.run of its own: use it from a sync"
                                 " test*"])
