"""``faultlab push-gateway`` as a separate process: it serves, prints pushes, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from faultlab.lab.push import PushClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "from faultlab.cli.push_gateway import app; app(prog_name='faultlab push-gateway')"


async def _line_with(stream, buffer: bytearray, needle: bytes) -> bytes:
    while True:
        for line in bytes(buffer).split(b"\n")[:-1]:
            if needle in line:
                return line
        data = await stream.receive_some(4096)
        assert data, f"the gateway ended before printing {needle!r}: {bytes(buffer)!r}"
        buffer += data


async def test_cli_serves_and_prints_pushes(tmp_path):
    trace = tmp_path / "push.jsonl"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", SCRIPT, "--listen", "127.0.0.1:0", "--device", "abcd", "--drop-cancel",
         "--trace", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    try:
        with trio.fail_after(10):
            err, out = bytearray(), bytearray()
            line = await _line_with(proc.stderr, err, b"push gateway on ")
            url = line.split(b" on ")[1].split()[0].decode()
            async with PushClient(url) as client:
                assert (await client.send("abcd", {"type": "cancel", "call-id": "c9"}, topic="a.voip"))[0] == 200
                assert (await client.send("abcd", {"type": "call", "call-id": "c9"}, topic="a.voip"))[0] == 200
            printed = await _line_with(proc.stdout, out, b" delivered ")
            assert b"call" in printed and b"call-id=c9" in printed
            assert b"cancel dropped" in bytes(out)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        await proc.stdout.aclose()
        await proc.stderr.aclose()
    kinds = [line for line in trace.read_text().splitlines() if '"kind":"push"' in line]
    assert len(kinds) == 2
