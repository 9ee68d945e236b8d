"""A real `faultlab proxy` process on loopback: its console says what the profile did, and its trace file can be
read while it runs and keeps what was written when the process is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from faultlab.trace import read_jsonl

REGISTER = (b"REGISTER sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKreg1\r\n"
            b"From: <sip:alice@pbx.test>;tag=1\r\nTo: <sip:alice@pbx.test>\r\nCall-ID: reg-1\r\n"
            b"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
OPTIONS = (b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKopt1\r\n"
           b"From: <sip:alice@pbx.test>;tag=2\r\nTo: <sip:pbx.test>\r\nCall-ID: opt-1\r\n"
           b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def kinds(path: Path) -> list[tuple[str, str | None]]:
    if not path.exists():
        return []
    return [(e.kind, e.call_id) for e in read_jsonl(path)]


async def test_proxy_console_and_live_trace_survive_sigkill(tmp_path: Path):
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    trace = tmp_path / "run.jsonl"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "faultlab", "proxy", "--listen", "udp:127.0.0.1:0",
         "--upstream", f"udp:127.0.0.1:{pbx.getsockname()[1]}", "--profile", "register-drop",
         "--trace", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "FAULTLAB_HOME": str(tmp_path)})
    try:
        with trio.fail_after(30):
            banner = b""
            while b"\n" not in banner:
                banner += await proc.stderr.receive_some()
            port = int(banner.decode().splitlines()[0].split()[3].rsplit(":", 1)[1])
            device = trio.socket.socket(type=socket.SOCK_DGRAM)
            await device.bind(("127.0.0.1", 0))
            await device.sendto(REGISTER, ("127.0.0.1", port))
            console = b""
            while b"REGISTER dropped [drop-register]" not in console:
                data = await proc.stdout.receive_some()
                assert data, console
                console += data
            assert b"\x1b[" not in console  # a pipe gets plain text
            await device.sendto(OPTIONS, ("127.0.0.1", port))
            data, _ = await pbx.recvfrom(65535)
            assert b"Call-ID: opt-1" in data
            # the relay keeps running; its trace already has what it did (bounded polling, no fixed sleep)
            while ("sent", "opt-1") not in kinds(trace):
                assert proc.returncode is None
                await trio.sleep(0.02)
            assert proc.returncode is None
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = list(read_jsonl(trace))  # every line whole and valid, or a last one cut short and skipped
    got = [(e.kind, e.call_id) for e in events]
    assert got[0] == ("start", None) and "stop" not in [k for k, _ in got]
    assert [k for k, c in got if c == "reg-1"] == ["received", "fault", "dropped"]
    assert [k for k, c in got if c == "opt-1"] == ["received", "sent"]
    fault = next(e for e in events if e.kind == "fault")
    assert fault.detail == {"rule": "drop-register", "action": "drop"}
