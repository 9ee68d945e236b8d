"""``faultlab lab run --device external``: the external lab judging a device in another process.

The external lab (:mod:`faultlab.lab.external`) runs in this test's trio run on 127.0.0.1 with port 0; the device
is the reference device as a process of its own (``python -m faultlab device``), as a real phone would be: it
registers through faultlab's relay with RFC 8599 parameters, reads its pushes from the gateway's stream and posts
its device events to the lab's event collector (``--events-url``). Readiness comes from the lab's own
registration wait, never from sleeps; the only sleeps are the lab's pauses between calls.
"""

from __future__ import annotations

import json
import time

import trio
from typer.testing import CliRunner

from faultlab.cli import app as cli
from faultlab.lab.external import ExternalSettings, open_external_lab, with_call_ids
from faultlab.lab.scenario import load_scenario
from faultlab.addr import Endpoint
from faultlab.trace import Event
from tests.actors import actor_env, open_actors

HOST = "127.0.0.1"
TOKEN = "a1b2c3d4e5f60718"


def _settings() -> ExternalSettings:
    return ExternalSettings(listen=[Endpoint("udp", HOST, 0)], push_listen=(HOST, 0), events_listen=(HOST, 0),
                            user="alice", register_timeout=30.0, pause=0.5, seed=1)


def _device_args(lab, *extra: str) -> list[str]:
    return ["device", "--proxy", f"udp:{HOST}:{lab.proxy.bound['udp'][1]}", "--user", "alice",
            "--domain", "lab.test", "--token", TOKEN, "--name", "alice-phone",
            "--push-url", f"{lab.push_url}/devices/{TOKEN}/pushes", "--events-url", lab.events_url, *extra]


async def test_external_lab_judges_a_device_in_another_process(tmp_path):
    said: list[str] = []
    begun = time.perf_counter()
    async with open_external_lab(_settings(), say=said.append) as lab:
        async with open_actors(actor_env(tmp_path / "home")) as actors:
            await actors.spawn("device", *_device_args(lab))
            with trio.fail_after(30):
                binding = await lab.wait_ready()
            assert binding.token == TOKEN and binding.push["pn-provider"] == "apns"
            assert any("POSTs its CallKit events to http://127.0.0.1:" in line for line in said), said
            assert any("device registered: sip:alice@lab.test over udp" in line for line in said), said

            cases = []
            with trio.fail_after(90):
                for name in ("S05", "S04"):  # the whole catalogue: tests/integration/test_external_device.py
                    cases.append(await lab.run_case(load_scenario(name), trace_dir=tmp_path / "traces"))
    for case in cases:
        assert case is not None
        assert case.passed, [(c.check, c.message, c.evidence) for c in case.checks]
        assert [c.check for c in case.checks] == ["ends-right", "cancel-push", "invariants", "sip-duties", "push-side"]
        assert len(case.runs) == 2 and case.runs[1].cancel_pushes == "dropped"
        for run in case.runs:
            ends = [e for e in run.events if e.kind == "device" and e.detail["event"] == "ended"]
            assert [(e.source, e.call_id, e.detail["origin"]) for e in ends] == [
                ("device:alice-phone", run.call_id, "collector")]  # posted by the device process
        # no cancel push reached the device in the second run (the gateway dropped any)
        cancels = [e for e in case.runs[1].events if e.kind == "push" and e.detail["push_kind"] == "cancel"]
        assert {e.detail["outcome"] for e in cancels} <= {"dropped"}
    # the SIP a device of one's own owes, judged on what faultlab relayed: 200/487 to the CANCEL (S05), a
    # REGISTER after each push
    duties = next(c for c in cases[0].checks if c.check == "sip-duties")
    assert duties.message.startswith("met: cancel, register-on-push"), duties.message
    s04 = cases[1]  # the PBX sends a cancel push for S04's held INVITE: delivered, then dropped
    for run, outcome in zip(s04.runs, ("delivered", "dropped")):
        assert [e.detail["outcome"] for e in run.events if e.kind == "push"
                and e.detail["push_kind"] == "cancel"] == [outcome]
    assert any(e.kind == "fault" for e in s04.runs[0].events)  # S04's REGISTER delay was switched on
    assert not any(e.kind == "fault" for e in cases[0].runs[0].events)  # ... and only for S04
    print(f"external lab: S05, S04 (4 calls) judged in {time.perf_counter() - begun:.1f} s")


async def test_a_device_with_the_wrong_reason_mapping_fails_check_1(tmp_path):
    said: list[str] = []
    async with open_external_lab(_settings(), say=said.append) as lab:
        async with open_actors(actor_env(tmp_path / "home")) as actors:
            await actors.spawn("device", *_device_args(lab, "--behaviour", "wrong-reason-mapping"))
            with trio.fail_after(30):
                await lab.wait_ready()
            with trio.fail_after(60):
                case = await lab.run_case(load_scenario("S06"))
                # S21's RTP cannot reach a device elsewhere from the lab's caller on 127.0.0.1: skipped, not judged
                assert await lab.run_case(load_scenario("S21")) is None
                # S19's answer must cross the CANCEL; a prompted tap always comes after it: skipped, not failed
                assert await lab.run_case(load_scenario("S19")) is None
    assert any("S21 bye-lost: skipped, its call carries RTP" in line for line in said), said
    assert any("S19 answer-cancel-glare: skipped, its answer must cross" in line for line in said), said
    assert case is not None and not case.passed
    results = {c.check: c for c in case.checks}
    assert not results["ends-right"].passed
    assert "expected answeredElsewhere" in results["ends-right"].message


async def test_no_device_is_a_clear_error_with_instructions():
    said: list[str] = []
    settings = _settings()
    settings.register_timeout = 0.2
    async with open_external_lab(settings, say=said.append) as lab:
        try:
            await lab.wait_ready()
        except Exception as exc:
            assert "no device registered as sip:alice@lab.test" in str(exc)
        else:
            raise AssertionError("wait_ready returned without a device")
    text = "\n".join(said)
    assert "pn-provider=apns;pn-prid=<VoIP token>" in text
    assert "/devices/<token>/pushes" in text and "/events" in text


def test_uuid_only_device_events_get_the_call_id_of_their_push():
    uuid = "6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10"
    events = [Event(1.0, "device", source="device:phone", detail={"event": "reported", "uuid": uuid}),
              Event(2.0, "device", source="device:phone", call_id="c1@pbx", detail={"event": "ended", "uuid": uuid}),
              Event(3.0, "device", source="device:phone", detail={"event": "ended", "uuid": "other"})]
    fixed = with_call_ids(events, {uuid.lower(): "c1@pbx"})
    assert [e.call_id for e in fixed] == ["c1@pbx", "c1@pbx", None]


runner = CliRunner()


def test_cli_refuses_bad_combinations_with_external():
    for args, words in [
        (["--virtual-time"], "real time only"),
        (["--behaviour", "never-ends"], "--behaviour"),
        (["--network", "memory"], "--network"),
        (["--transport", "tcp"], "--transport"),
        (["--listen", "udp:nonsense"], "--listen"),
        (["--register-timeout", "soon"], "--register-timeout"),
    ]:
        result = runner.invoke(cli, ["lab", "run", "--device", "external", "-s", "S05", *args])
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output, (args, result.output)
    result = runner.invoke(cli, ["lab", "run", "-s", "S05", "--listen", "udp:0.0.0.0:5060"])
    assert result.exit_code == 2 and "only with --device external" in result.output, result.output
    result = runner.invoke(cli, ["lab", "run", "-s", "S05", "--device", "phone"])
    assert result.exit_code == 2 and "use reference or external" in result.output, result.output


async def test_a_scripted_decline_is_prompted_with_the_calls_uuid_and_call_id(tmp_path):
    """S30's user declines 1 s after the report: the lab prints the console line and publishes a machine-readable
    prompt on GET /prompts (followed here over HTTP while the case runs) naming the call's push uuid and Call-ID;
    the device process, which reads the same push stream the prompt line goes to, is not thrown by it."""
    import httpx

    said: list[str] = []
    followed: list[dict] = []
    async with open_external_lab(_settings(), say=said.append) as lab:
        async with open_actors(actor_env(tmp_path / "home")) as actors:
            await actors.spawn("device", *_device_args(lab, "--decline-after", "1s"))
            with trio.fail_after(30):
                await lab.wait_ready()
            prompts_url = lab.events_url.replace("/events", "/prompts")

            async def follow(task_status=trio.TASK_STATUS_IGNORED) -> None:
                async with httpx.AsyncClient(timeout=None) as client:
                    async with client.stream("GET", prompts_url) as response:
                        assert response.headers["content-type"].startswith("application/x-ndjson")
                        task_status.started()
                        async for line in response.aiter_lines():
                            if line.strip():
                                followed.append(json.loads(line))
                                return

            async with trio.open_nursery() as nursery:
                await nursery.start(follow)
                with trio.fail_after(60):
                    case = await lab.run_case(load_scenario("S30"))
    assert case is not None and case.passed, [(c.check, c.message) for c in case.checks]
    assert ">>> S30: tap Decline now on the device" in said, said
    run = case.runs[0]
    pushes = [e for e in run.events if e.kind == "pbx" and e.detail.get("action") == "push-sent"
              and e.call_id == run.call_id]
    uuid = pushes[0].detail["payload"]["uuid"].lower()
    assert followed == [p.to_json() for p in lab.prompts.kept]
    [prompt] = followed
    assert {k: prompt[k] for k in ("kind", "seq", "action", "scenario", "transport", "uuid", "call_id", "text")} == {
        "kind": "prompt", "seq": 1, "action": "decline", "scenario": "S30", "transport": "udp", "uuid": uuid,
        "call_id": run.call_id, "text": "S30: tap Decline now on the device"}
    assert prompt["deadline"] == prompt["at"] + 2.0


def test_the_estimate_tracks_what_the_reference_device_takes_over_the_catalogue():
    """Each scenario an external run plays: its typical seconds (faultlab.lab.estimate) against the lab seconds of
    the reference device's call in a virtual-time run (the same script, a device that does what the scenario
    expects), within 2.5 s per call."""
    from faultlab.lab.estimate import skip_reason, typical_seconds
    from faultlab.lab.runner import IDLE, run_case
    from faultlab.lab.scenario import list_scenarios

    off = {}
    for scenario in list_scenarios():
        if skip_reason(scenario, "udp") is None:
            case = run_case(scenario, transport="udp", seed=1)
            for run in case.runs:
                off[(scenario.id, run.cancel_pushes)] = round(typical_seconds(scenario) - (run.duration - IDLE), 2)
    assert len(off) > 20
    assert {k: v for k, v in off.items() if abs(v) > 2.5} == {}


def _free_port(kind: int) -> int:
    import socket

    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def test_the_cli_prints_the_estimate_before_the_first_call_then_a_line_per_case(tmp_path):
    """``faultlab lab run --device external`` as a user runs it (its stderr not a terminal: no bar, a plain line
    per case with the time left), against the reference device in another process."""
    import socket

    sip, push, events = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_STREAM)
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        lab = await actors.spawn("lab", "lab", "run", "--device", "external", "-s", "S06", "-s", "S21", "--seed", "1",
                                 "--listen", f"udp:{HOST}:{sip}", "--push-listen", f"{HOST}:{push}",
                                 "--events-listen", f"{HOST}:{events}", "--pause", "0.2s", "--register-timeout", "30s")
        with trio.fail_after(30):
            await lab.wait_line("stderr", r"waiting up to 30 s for the device")
        await actors.spawn("device", "device", "--proxy", f"udp:{HOST}:{sip}", "--user", "alice", "--domain",
                           "lab.test", "--token", TOKEN, "--push-url", f"http://{HOST}:{push}/devices/{TOKEN}/pushes",
                           "--events-url", f"http://{HOST}:{events}/events")
        with trio.fail_after(60):
            assert await lab.wait_exit() == 0, lab.output()
    err = lab.lines["stderr"]
    first_call = next(i for i, line in enumerate(err) if ": calling sip:alice@lab.test" in line)
    s06 = typical_seconds_of("S06")
    estimate = [
        f"  S06 answered-elsewhere: 2 calls (the second with cancel pushes dropped), ~{s06:.0f} s each + 0.2 s pause",
        "  S21 bye-lost: skipped, its call carries RTP and the caller's media is on 127.0.0.1, which a device "
        "elsewhere cannot reach",
        f"estimate: 1 case, 2 calls, about {2 * (s06 + 0.2):.0f} s"]
    assert err[first_call - 3:first_call] == estimate, err  # before the first call
    assert "S06 answered-elsewhere: pass (1/1 cases, done)" in err, err
    assert not any("S21 bye-lost: pass" in line or "S21 bye-lost: FAIL" in line for line in err)


def typical_seconds_of(name: str) -> float:
    from faultlab.lab.estimate import typical_seconds

    return typical_seconds(load_scenario(name))


async def test_the_external_lab_pushes_with_the_pbxs_apns_expiration():
    """S23's PBX sends a push APNs may store (``apns-expiration`` now + 60 s): the external lab's push path takes
    it to the gateway with that expiration (it used to refuse the keyword, and no push went out at all)."""
    async with open_external_lab(_settings(), say=lambda line: None) as lab:
        received = lab.gateway.channel(TOKEN)
        expiration = int(time.time()) + 60
        await lab.pbx.send_push(TOKEN, {"aps": {}, "type": "call", "call-id": "c1@lab", "uuid": "u1"},
                                expiration_at=expiration)
        with trio.fail_after(5):
            push = await received.receive()
    assert push.payload["call-id"] == "c1@lab"
    assert push.headers["apns-expiration"] == str(expiration)
