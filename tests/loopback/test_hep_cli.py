"""`faultlab proxy --hep` and `faultlab pbx --hep` as processes, as they ship: a REGISTER from a phone through the
proxy to the PBX reaches one HEP collector four times from the proxy (both hops, each way) and twice from the
PBX, each packet with the addresses of its own wire and the capture agent's id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from faultlab.trace.hep import SIP, decode

CLI = "from faultlab.cli import app; app(prog_name='faultlab')"


def start(*args: str) -> tuple[subprocess.Popen, int]:
    """A faultlab command in its own process, and the UDP port it says it listens on (stopped again when it
    says something else)."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stderr.readline()
    if "listening on udp:" in line:  # faultlab: listening on udp:127.0.0.1:PORT -> ...
        return proc, int(line.split("udp:127.0.0.1:")[1].split()[0])
    if not line.startswith("faultlab pbx: udp on 127.0.0.1:"):
        raise AssertionError(f"{line!r}: {stop(proc)}")
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen) -> str:
    """Ctrl-C, and what it printed on stderr; killed when it does not stop within 15 s (then it fails the test)."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err += "\nfaultlab did not stop within 15 s of SIGINT: killed"
    return err


def test_a_register_through_proxy_and_pbx_reaches_the_collector_from_both(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        hep = f"udp:127.0.0.1:{collector.getsockname()[1]}"
        pbx, pbx_port = start("pbx", "--listen", "udp:127.0.0.1:0", "--hep", hep, "--hep-id", "20", "-q")
        try:
            proxy, proxy_port = start("proxy", "--listen", "udp:127.0.0.1:0", "--upstream",
                                      f"udp:127.0.0.1:{pbx_port}", "--hep", hep, "--hep-id", "10", "-q")
        except BaseException:
            stop(pbx)
            raise
        try:
            phone.bind(("127.0.0.1", 0))
            phone.settimeout(10)
            me = phone.getsockname()[1]
            phone.sendto((
                f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bKhep1\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
                f"Call-ID: hep-cli-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@127.0.0.1:{me}>\r\nExpires: 60\r\n"
                "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", proxy_port))
            answer, _ = phone.recvfrom(65535)
            assert answer.startswith(b"SIP/2.0 200 OK\r\n")
            packets = [decode(collector.recv(65535)) for _ in range(6)]
        finally:
            errors = stop(proxy) + stop(pbx)  # both, even when the first did not stop
    assert "Traceback" not in errors and "did not stop" not in errors, errors
    assert all(p.protocol == SIP and p.correlation == "hep-cli-1" for p in packets)
    by_agent = {agent: [p for p in packets if p.capture_id == agent] for agent in (10, 20)}
    assert len(by_agent[10]) == 4 and len(by_agent[20]) == 2
    phone_addr, proxy_addr, pbx_addr = ("127.0.0.1", me), ("127.0.0.1", proxy_port), ("127.0.0.1", pbx_port)
    wires = {(p.src, p.dst) for p in by_agent[10]}
    assert (phone_addr, proxy_addr) in wires and (proxy_addr, phone_addr) in wires  # the phone's hop
    to_pbx = [p for p in by_agent[10] if p.dst == pbx_addr]
    assert len(to_pbx) == 1 and to_pbx[0].payload.startswith(b"REGISTER ")  # the PBX's hop, faultlab's Via on top
    assert b"Via: SIP/2.0/UDP 127.0.0.1:" in to_pbx[0].payload.split(b"\r\n", 2)[1]
    # the PBX saw the same REGISTER arrive from faultlab's upstream socket, with its own address
    pbx_in = next(p for p in by_agent[20] if p.payload.startswith(b"REGISTER "))
    assert pbx_in.dst == pbx_addr and pbx_in.src == to_pbx[0].src and pbx_in.payload == to_pbx[0].payload


def test_proxy_hep_over_tcp_sends_each_message_whole_on_one_connection():
    """`faultlab proxy --hep tcp:...`: the collector accepts one connection and reads the HEP packets back to
    back, each delimited by its length (as heplify-server reads them)."""
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        pbx.bind(("127.0.0.1", 0))
        pbx.settimeout(10)
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(10)
        proxy, port = start("proxy", "--listen", "udp:127.0.0.1:0", "--upstream", f"udp:127.0.0.1:{pbx.getsockname()[1]}",
                            "--hep", f"tcp:127.0.0.1:{server.getsockname()[1]}", "-q")
        try:
            options = (f"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{phone.getsockname()[1]};"
                       "rport;branch=z9hG4bKtcp1\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n"
                       "To: <sip:pbx@127.0.0.1>\r\nCall-ID: hep-tcp-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            phone.sendto(options.encode(), ("127.0.0.1", port))
            request, via = pbx.recvfrom(65535)
            head = request.split(b"\r\n\r\n")[0].split(b"\r\n")
            keep = [h for h in head[1:] if h.split(b":")[0].lower() in (b"via", b"from", b"to", b"call-id", b"cseq")]
            pbx.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", via)
            assert phone.recv(65535).startswith(b"SIP/2.0 200 OK")
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while len(data) < 6 or sum(1 for _ in _frames(data)) < 4:
                    chunk = conn.recv(65536)
                    assert chunk, "the proxy closed its HEP connection"
                    data += chunk
                packets = [decode(frame) for frame in _frames(data)]
        finally:
            errors = stop(proxy)
    assert "Traceback" not in errors and "did not stop" not in errors, errors
    assert len(packets) == 4 and {p.correlation for p in packets} == {"hep-tcp-1"}
    assert [p.payload.split(b" ", 1)[0] for p in packets] == [b"OPTIONS", b"OPTIONS", b"SIP/2.0", b"SIP/2.0"]
    assert struct.unpack("!H", data[4:6])[0] == len(_frames(data)[0])


def _frames(data: bytes) -> list[bytes]:
    """The whole HEP packets at the start of a stream's bytes."""
    import struct

    out = []
    while len(data) >= 6 and len(data) >= struct.unpack("!H", data[4:6])[0]:
        size = struct.unpack("!H", data[4:6])[0]
        out.append(data[:size])
        data = data[size:]
    return out
