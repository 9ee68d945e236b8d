"""``faultlab device``: --help explains every option; bad input is one clear line; the push stream's line format."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import typer
from typer.testing import CliRunner

from faultlab.cli.device import app, collector_event, events_url, post_events, push_from_line
from faultlab.lab.device.logic import BEHAVIOURS

main = typer.Typer()
main.add_typer(app, name="device")  # as faultlab/cli/__init__.py mounts it


@main.command()
def _other() -> None:  # a second command, so that "device" stays a sub-command as in the real CLI
    pass


runner = CliRunner()
BASE = ["device", "--proxy", "udp:127.0.0.1:5060", "--user", "alice", "--domain", "lab.test", "--token", "ab12"]


def test_help_explains_every_option() -> None:
    result = runner.invoke(main, ["device", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0
    for option in ("--proxy", "--user", "--domain", "--token", "--push-url", "--answer-after", "--decline-after",
                   "--no-answer", "--register-deadline", "--invite-deadline", "--total-deadline", "--behaviour",
                   "--team-id", "--bundle", "--expires", "--name", "--ca-file", "--tls-server-name",
                   "--no-initial-register", "--new-connection-on-push", "--events-url"):
        assert option in result.output, option
    flat = " ".join(result.output.replace("│", " ").split())
    for name in BEHAVIOURS:
        assert name in flat


@pytest.mark.parametrize("args, words", [
    (["--behaviour", "nope"], "use one of depends-on-cancel-push"),
    (["--answer-after", "2s", "--decline-after", "1s"], "exclusive"),
    (["--answer-after", "2s", "--no-answer"], "exclusive"),
    (["--answer-after", "soon"], "--answer-after 'soon'"),
    (["--register-deadline", "-1"], "register_deadline"),
])
def test_bad_input_is_one_clear_line(args, words) -> None:
    result = runner.invoke(main, BASE + args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("proxy, words", [
    ("udp:127.0.0.1:0", "out of range"),
    ("sctp:127.0.0.1:5060", "unknown transport"),
    ("udp:pbx.example.com:5060", "must be an IP address"),
])
def test_bad_proxy(proxy, words) -> None:
    args = list(BASE)
    args[2] = proxy
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and words in result.output


def test_push_lines() -> None:
    push = push_from_line('{"kind": "call", "payload": {"type": "call", "call-id": "c", "uuid": "u"}}\n')
    assert push.kind == "call" and push.payload["call-id"] == "c"
    bare = push_from_line('{"type": "cancel", "call-id": "c"}')
    assert bare.kind == "cancel" and bare.payload == {"type": "cancel", "call-id": "c"}
    assert push_from_line("  \n") is None and push_from_line("[1]") is None


def test_docs_describe_every_behaviour() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "reference-device.md").read_text()
    for name in BEHAVIOURS:
        assert f"`{name}`" in doc, name
    for reason in ("answeredElsewhere", "declinedElsewhere", "remoteEnded", "unanswered", "failed"):
        assert reason in doc


# ---------------------------------------------------------------------------------------------- --events-url


def test_device_events_follow_the_collector_schema() -> None:
    from faultlab.lab.collector import DeviceEvent

    ended = collector_event("alice", {"t": 3.2, "call_id": "c1@pbx", "event": "ended", "reason": "remoteEnded",
                                      "uuid": "6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10"})
    reported = collector_event("alice", {"t": 1.0, "call_id": "c1@pbx", "event": "reported", "uuid": "6F1C"})
    for body in (ended, reported):
        assert DeviceEvent.from_json(body).to_json() == body  # accepted as is by the collector
    assert set(ended) == {"device", "event", "call_id", "uuid", "reason", "client_time"}
    assert "reason" not in reported and "t" not in reported


@pytest.mark.parametrize("given, used", [
    ("http://127.0.0.1:8090", "http://127.0.0.1:8090/events"),
    ("http://127.0.0.1:8090/", "http://127.0.0.1:8090/events"),
    ("http://lab:8090/my/events", "http://lab:8090/my/events"),
])
def test_events_url(given, used) -> None:
    assert events_url(given) == used


async def test_post_events_reach_a_collector_in_order_and_failures_are_skipped(capsys) -> None:
    import trio

    from faultlab.lab.collector import serve_collector
    from faultlab.lab.timeline import Timeline

    timeline = Timeline()
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_collector, timeline, "127.0.0.1", 0)
        send, receive = trio.open_memory_channel(10)
        bad_send, bad_receive = trio.open_memory_channel(10)
        for event in ("reported", "answer-tapped"):
            send.send_nowait(collector_event("alice", {"event": event, "call_id": "c1@pbx"}))
        send.send_nowait(collector_event("alice", {"event": "ended", "reason": "unanswered", "call_id": "c1@pbx"}))
        send.close()
        bad_send.send_nowait({"device": "alice", "event": "nope", "call_id": "x", "client_time": 1.0})
        bad_send.close()
        with trio.fail_after(10):
            await post_events(f"http://127.0.0.1:{port}/events", bad_receive)  # 400: reported, skipped
            await post_events(f"http://127.0.0.1:{port}/events", receive)
        nursery.cancel_scope.cancel()
    got = [(e.source, e.call_id, e.detail["event"], e.detail.get("reason")) for e in timeline.events]
    assert got == [("device:alice", "c1@pbx", "reported", None), ("device:alice", "c1@pbx", "answer-tapped", None),
                   ("device:alice", "c1@pbx", "ended", "unanswered")]
    assert "posting nope" in capsys.readouterr().err


async def test_post_events_send_the_api_token() -> None:
    """--events-token: faultlab's control API (POST /events) with --api-token gets Authorization: Bearer."""
    seen: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += await stream.receive_some(65536)
        seen.append(head)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                              b"Connection: close\r\n\r\n{}")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        send, receive = trio.open_memory_channel(4)
        send.send_nowait({"device": "alice", "event": "reported", "call_id": "c1", "client_time": 1.0})
        send.close()
        await post_events(f"http://127.0.0.1:{port}/events", receive, "s3cret")
        nursery.cancel_scope.cancel()
    [head] = seen
    assert head.startswith(b"POST /events ")
    assert b"authorization: bearer s3cret" in head.lower()
