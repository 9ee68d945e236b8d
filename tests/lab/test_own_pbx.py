"""`faultlab lab run --pbx HOST:PORT`: the catalogue against a PBX of one's own (issue 6, item 3), here faultlab's
PBX started as a separate process (`faultlab pbx`) that pushes to the lab's push gateway at --push-listen. Real time.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
import trio
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.runner import run_case
from faultlab.lab.scenario import load_scenario
from tests.actors import actor_env, open_actors

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def _own_pbx(actors, gateway: int) -> dict:
    """``faultlab pbx`` in its own process, pushing to the lab's gateway on ``gateway``: run_case's keywords."""
    pbx = await actors.spawn("pbx", "pbx", "--listen", f"udp:{HOST}:0", "--push-url", f"http://{HOST}:{gateway}",
                             "--push-topic", "org.faultlab.device.voip")
    port = int((await pbx.wait_line("stderr", r"udp on 127\.0\.0\.1:(\d+)$")).group(1))
    return {"pbx": {"udp": (HOST, port)}, "push_listen": (HOST, gateway)}


async def test_scenarios_against_a_pbx_in_another_process(tmp_path):
    gateway = free_port()
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        own = await _own_pbx(actors, gateway)
        s01 = replace(load_scenario("S01"), hang_up_after=0.5, duration=6.0)
        case = await trio.to_thread.run_sync(lambda: run_case(s01, seed=1, virtual=False, **own))
        assert case.passed, [c.message for c in case.checks]
        events = case.runs[0].events
        assert not [e for e in events if e.source == "pbx"]  # no embedded PBX in this lab
        assert any(e.source == "push" and e.detail.get("outcome") == "delivered" for e in events)
        # the device left no binding behind: the next run registers afresh and works the same
        bad = await trio.to_thread.run_sync(lambda: run_case(s01, seed=1, virtual=False, behaviour="never-ends",
                                                             **own))
        assert not bad.passed and "never ended" in bad.checks[0].message
        with pytest.raises(ValueError, match="needs the embedded PBX|scripted through the embedded PBX"):
            run_case(load_scenario("S06"), virtual=False, **own)
        with pytest.raises(ValueError, match="real time"):
            run_case(s01, virtual=True, **own)


async def test_apns_refusals_against_a_pbx_in_another_process(tmp_path):
    """S27 (410 Unregistered) and S28 (413, the gateway's answer as if the PBX's payload were oversize) judge the
    PBX through its pushes alone: no retry, 480 at once, the token dropped (S27's second call sends no push)."""
    gateway = free_port()
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        own = await _own_pbx(actors, gateway)
        for sid in ("S27", "S28"):
            case = await trio.to_thread.run_sync(lambda: run_case(load_scenario(sid), seed=1, virtual=False, **own))
            assert case.passed, (sid, [c.message for c in case.checks])
            requests = [e for e in case.runs[0].events if e.source == "push" and e.kind == "push"]
            assert [e.detail["status"] for e in requests] == [410 if sid == "S27" else 413], sid


@pytest.mark.parametrize(("args", "message"), [
    (["--pbx", "127.0.0.1:5060"], "needs --push-listen"),
    (["--pbx", "127.0.0.1:5060", "--push-listen", "127.0.0.1:2197", "--virtual-time"], "runs in real time"),
    (["--pbx", "pbx.example.test", "--push-listen", "127.0.0.1:2197"], "expected HOST:PORT"),
    (["--pbx", "127.0.0.1:5060", "--push-listen", "127.0.0.1:2197", "--device", "external"], "not available"),
])
def test_own_pbx_bad_input(args, message):
    out = CliRunner().invoke(app, ["lab", "run", "-s", "S01", *args])
    assert out.exit_code == 2 and message in out.output, out.output
