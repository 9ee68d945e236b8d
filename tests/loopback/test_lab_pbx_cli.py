"""``faultlab pbx`` as a process: it listens, registers a softphone, prints the timeline, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

RUN = "from faultlab.cli.pbx import app; app(prog_name='faultlab pbx')"


def test_pbx_process_registers_and_stops_on_sigint(tmp_path):
    trace = tmp_path / "pbx.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, "--listen", "udp:127.0.0.1:0", "--hold", "2s", "--no-cancel-push",
         "--trace", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stderr.readline()
        assert line.startswith("faultlab pbx: udp on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.bind(("127.0.0.1", 0))
            me = sock.getsockname()[1]
            sock.sendto((
                f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bKcli1\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
                "Call-ID: cli-1\r\nCSeq: 1 REGISTER\r\n"
                f"Contact: <sip:bob@127.0.0.1:{me}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n").encode(),
                ("127.0.0.1", port))
            data, _ = sock.recvfrom(65535)
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        assert f"Contact: <sip:bob@127.0.0.1:{me}>;expires=60".encode() in data
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "REGISTER sip:127.0.0.1" in out and "register" in out
    assert '"action":"register"' in trace.read_text()
