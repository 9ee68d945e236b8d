"""Transparent interception end to end, in three network namespaces (root).

device ns --veth-- gateway ns (faultlab proxy --transparent + interception table) --veth-- pbx ns

The device sends to the PBX's real address and knows nothing of faultlab.
Checked: the device's answer comes from the PBX's address, the PBX received
exactly the bytes the device sent (no Via or anything else added), and
faultlab's trace shows the message received and sent (it really crossed
faultlab). With --spoof-source the PBX sees the device's own address.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from faultlab.netns.intercept import intercept_off, intercept_on, table_exists

pytestmark = pytest.mark.netns

if not sys.platform.startswith("linux") or os.geteuid() != 0:
    pytest.skip("transparent interception needs Linux and root (network namespaces, nftables, "
                "IP_TRANSPARENT): run the suite as root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
PID = os.getpid()
DEV, GW, PBX = f"fl-tp{PID}-dev", f"fl-tp{PID}-gw", f"fl-tp{PID}-pbx"
DEV_IP, GW_DEV_IP = "10.77.1.2", "10.77.1.1"
PBX_IP, GW_PBX_IP = "10.77.2.2", "10.77.2.1"
SIP_PORT = 5060
PROXY_PORT = 15060
TABLE = f"faultlab_tp{PID}"

# A fake PBX: answers every request over UDP and TCP with 200 OK and logs what it received.
PBX_SCRIPT = r'''
import json, re, socket, sys, threading
ip, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()

def answer(req):
    head = req.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [h for h in head[1:] if re.match(rb"(?i)(via|from|to|call-id|cseq)\s*:", h)]
    return b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""])

def log(transport, peer, data):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps({"transport": transport, "peer": list(peer), "hex": data.hex()}) + "\n")

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    while True:
        data, peer = s.recvfrom(65535)
        log("udp", peer, data)
        s.sendto(answer(data), peer)

def tcp_conn(c, peer):
    buf = b""
    with c:
        while True:
            chunk = c.recv(65535)
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                m = re.search(rb"(?im)^content-length\s*:\s*(\d+)", head)
                n = int(m.group(1)) if m else 0
                if len(rest) < n:
                    break
                msg, buf = head + b"\r\n\r\n" + rest[:n], rest[n:]
                log("tcp", peer, msg)
                c.sendall(answer(msg))

def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(16)
    while True:
        c, peer = s.accept()
        threading.Thread(target=tcp_conn, args=(c, peer), daemon=True).start()

threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
'''

# The device: one REGISTER to the PBX's real address; prints what it sent and got, and from where.
DEVICE_SCRIPT = r'''
import json, socket, sys
transport, pbx_ip, port, call_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if transport == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
else:
    s = socket.create_connection((pbx_ip, port), timeout=5)
local = s.getsockname()
req = (
    f"REGISTER sip:{pbx_ip} SIP/2.0\r\n"
    f"Via: SIP/2.0/{transport.upper()} {local[0]}:{local[1]};branch=z9hG4bK-{call_id};rport\r\n"
    "Max-Forwards: 70\r\n"
    f"From: <sip:alice@{pbx_ip}>;tag=dev1\r\n"
    f"To: <sip:alice@{pbx_ip}>\r\n"
    f"Call-ID: {call_id}\r\n"
    "CSeq: 1 REGISTER\r\n"
    f"Contact: <sip:alice@{local[0]}:{local[1]};transport={transport}>\r\n"
    "Expires: 60\r\n"
    "Content-Length: 0\r\n\r\n"
).encode()
s.settimeout(5)
if transport == "udp":
    s.sendto(req, (pbx_ip, port))
    data, peer = s.recvfrom(65535)
else:
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65535)
        if not chunk:
            break
        data += chunk
    peer = s.getpeername()
print(json.dumps({"sent": req.hex(), "local": list(local), "got": data.hex(), "peer": list(peer)}))
'''


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def lab_down() -> None:
    for ns in (DEV, GW, PBX):
        run("ip", "netns", "del", ns, check=False)


def lab_up() -> None:
    lab_down()
    for ns in (DEV, GW, PBX):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    d, gd, gp, p = f"tp{PID}d", f"tp{PID}gd", f"tp{PID}gp", f"tp{PID}p"
    run("ip", "-n", DEV, "link", "add", d, "type", "veth", "peer", "name", gd, "netns", GW)
    run("ip", "-n", PBX, "link", "add", p, "type", "veth", "peer", "name", gp, "netns", GW)
    for ns, ifname, addr in ((DEV, d, DEV_IP), (GW, gd, GW_DEV_IP), (GW, gp, GW_PBX_IP), (PBX, p, PBX_IP)):
        run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
        run("ip", "-n", ns, "link", "set", ifname, "up")
    run("ip", "-n", DEV, "route", "add", "default", "via", GW_DEV_IP)
    run("ip", "-n", PBX, "route", "add", "default", "via", GW_PBX_IP)
    run("ip", "netns", "exec", GW, "sysctl", "-qw", "net.ipv4.ip_forward=1")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transparent")
    procs: list[subprocess.Popen] = []
    try:
        lab_up()
        script = tmp / "pbx.py"
        script.write_text(PBX_SCRIPT)
        log = tmp / "pbx.jsonl"
        log.touch()
        pbx = subprocess.Popen(["ip", "netns", "exec", PBX, sys.executable, str(script), PBX_IP, str(SIP_PORT),
                                str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(pbx)
        assert pbx.stdout.readline().strip() == "ready", pbx.stderr.read()
        (tmp / "device.py").write_text(DEVICE_SCRIPT)
        yield tmp
    finally:
        for proc in procs:
            stop(proc)
        intercept_off(GW, TABLE)
        lab_down()
    leftover = run("ip", "netns", "list").stdout
    assert f"fl-tp{PID}-" not in leftover


def start_proxy(tmp: Path, trace: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", GW, sys.executable, "-m", "faultlab", "proxy", "--transparent",
         "--listen", f"udp:0.0.0.0:{PROXY_PORT}", "--listen", f"tcp:0.0.0.0:{PROXY_PORT}",
         "--trace", str(trace), "-q", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # the trace file is buffered: the console lines on stderr say when both listeners are bound
    deadline = time.monotonic() + 15
    out = b""
    fd = proc.stderr.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                proc.wait(timeout=5)
                raise AssertionError(f"faultlab proxy exited: {out.decode(errors='replace')}")
            out += chunk
            if out.count(b"listening on") >= 2:
                return proc
    stop(proc)
    raise AssertionError(f"faultlab proxy did not start listening in 15 s: {out.decode(errors='replace')}")


def events(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("transport, spoof", [("udp", False), ("tcp", False), ("udp", True), ("tcp", True)],
                         ids=["udp", "tcp", "udp-spoof-source", "tcp-spoof-source"])
def test_register_through_transparent_interception(lab, transport, spoof):
    trace = lab / f"trace-{transport}-{spoof}.jsonl"
    proxy = start_proxy(lab, trace, *(["--spoof-source"] if spoof else []))
    try:
        intercept_on(GW, pbx=PBX_IP, ports=(SIP_PORT, 5061), proxy_udp_port=PROXY_PORT,
                     proxy_tcp_port=PROXY_PORT, proxy_tls_port=None, table=TABLE, spoof_source=spoof)
        assert table_exists(GW, TABLE)
        call_id = f"tp-{uuid.uuid4().hex[:12]}"
        done = run("ip", "netns", "exec", DEV, sys.executable, str(lab / "device.py"), transport, PBX_IP,
                   str(SIP_PORT), call_id, check=False)
        assert done.returncode == 0, done.stderr
        device = json.loads(done.stdout)
    finally:
        intercept_off(GW, TABLE)
        stop(proxy)
    assert not table_exists(GW, TABLE)
    assert run("ip", "-n", GW, "rule", "show", "fwmark", "1").stdout.strip() == ""

    # the device got its 200 from the PBX's real address
    got = bytes.fromhex(device["got"])
    assert got.startswith(b"SIP/2.0 200 OK\r\n"), got
    assert call_id.encode() in got
    assert device["peer"][0] == PBX_IP and device["peer"][1] == SIP_PORT

    # the PBX received exactly the bytes the device sent: no Via of faultlab's
    sent = bytes.fromhex(device["sent"])
    seen = [json.loads(line) for line in (lab / "pbx.jsonl").read_text().splitlines()]
    mine = [entry for entry in seen if call_id in bytes.fromhex(entry["hex"]).decode()]
    assert len(mine) == 1, seen
    assert bytes.fromhex(mine[0]["hex"]) == sent
    assert sent.count(b"Via:") == 1
    if spoof:  # the PBX sees the device itself
        assert mine[0]["peer"][0] == DEV_IP
        if transport == "udp":
            assert mine[0]["peer"][1] == device["local"][1]
    else:  # the PBX sees the gateway
        assert mine[0]["peer"][0] == GW_PBX_IP

    # the message really crossed faultlab: received from the device, sent to the PBX; and the answer back
    evs = [e for e in events(trace) if e.get("call_id") == call_id]
    kinds = [(e["kind"], e["direction"], e["transport"]) for e in evs]
    assert ("received", "to-pbx", transport) in kinds and ("sent", "to-pbx", transport) in kinds, kinds
    assert ("received", "to-device", transport) in kinds and ("sent", "to-device", transport) in kinds, kinds
    to_pbx = next(e for e in evs if e["kind"] == "sent" and e["direction"] == "to-pbx")
    assert to_pbx["peer"] == f"{PBX_IP}:{SIP_PORT}"
    assert to_pbx["raw"].encode() == sent
    warnings = [e for e in events(trace) if e["kind"] == "warning"]
    assert not warnings, warnings
