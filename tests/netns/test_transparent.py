"""Transparent interception end to end, in three network namespaces (root).

device ns --veth-- gateway ns (faultlab proxy --transparent + interception table) --veth-- pbx ns

The device sends to the PBX's real address and knows nothing of faultlab.
Checked: the device's answer comes from the PBX's address, the PBX received
exactly the bytes the device sent (no Via or anything else added), and
faultlab's trace shows the message received and sent (it really crossed
faultlab). With --spoof-source the PBX sees the device's own address.

Then the same with a real PBX: Kamailio (shared/pbx) in the PBX namespace and two scripted softphones
(faultlab/lab/ua) in two device namespaces register and complete a call (INVITE, ACK, BYE) over UDP, TCP
and TLS, every message to and from Kamailio's real address, every one relayed by faultlab unchanged.

The lab is faultlab.labnet.topology's (lab_up/lab_down); faultlab runs in the gateway namespace as a
subprocess, stopped by PID. Everything created is removed, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from faultlab.labnet import lab_down, lab_up
from faultlab.labnet.intercept import intercept_off, intercept_on, table_exists
from tests.netns import stop, stop_group

pytestmark = pytest.mark.netns

if not sys.platform.startswith("linux") or os.geteuid() != 0:
    pytest.skip("transparent interception needs Linux and root (network namespaces, nftables, "
                "IP_TRANSPARENT): run the suite as root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
PID = os.getpid()
LAB = f"tp{PID % 10**7}"  # the lab (faultlab.labnet.topology): namespaces fl-<LAB>-gateway|pbx|device1
SUBNET = "10.77.0.0/16"  # gateway 10.77.0.1 -- PBX 10.77.0.2; gateway 10.77.1.1 -- device1 10.77.1.2
SIP_PORT, SIPS_PORT = 5060, 5061
PROXY_PORT, PROXY_TLS_PORT = 15060, 15061
TABLE = f"faultlab_{LAB}"  # the name lab_down removes, should the test be killed

# A fake PBX: answers every request over UDP and TCP with 200 OK and logs what it received.
PBX_SCRIPT = r'''
import json, re, socket, ssl, sys, threading
ip, port, log_path, tls_port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
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

def tcp_conn(c, peer, transport="tcp"):
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
                log(transport, peer, msg)
                c.sendall(answer(msg))

def tcp(port, ctx=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(16)
    while True:
        c, peer = s.accept()
        if ctx is not None:
            try:
                c = ctx.wrap_socket(c, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log("tls-error", peer, str(exc).encode())
                c.close()
                continue
        threading.Thread(target=tcp_conn, args=(c, peer, "tls" if ctx else "tcp"), daemon=True).start()

tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(cert, key)
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, args=(port,), daemon=True).start()
threading.Thread(target=tcp, args=(tls_port, tls), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
'''

# The device: one REGISTER to the PBX's real address; prints what it sent and got, and from where.
DEVICE_SCRIPT = r'''
import json, socket, ssl, sys
transport, pbx_ip, port, call_id, cafile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if transport == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
else:
    s = socket.create_connection((pbx_ip, port), timeout=5)
    if transport == "tls":  # verifies the certificate against the PBX's IP address (no SNI for an IP)
        s = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=pbx_ip)
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
    if transport == "tls":  # an orderly TLS close (close_notify), not a bare EOF
        try:
            s = s.unwrap()
        except (OSError, ssl.SSLError):
            pass
    s.close()
print(json.dumps({"sent": req.hex(), "local": list(local), "got": data.hex(), "peer": list(peer)}))
'''


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


@dataclass
class Net:
    tmp: Path
    dev: str  # namespaces
    gw: str
    pbx: str
    dev_ip: str
    pbx_ip: str
    gw_pbx_ip: str  # the gateway's address on the PBX's link
    pbx_ca: Path  # the CA that signed the PBX's TLS certificate (faultlab's --upstream-ca)
    confdir: Path  # faultlab's lab CA (what the TLS device trusts)
    dev2: str  # a second device, for calls
    dev2_ip: str


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import trustme

    tmp = tmp_path_factory.mktemp("transparent")
    procs: list[subprocess.Popen] = []
    gw = None
    lab_down(LAB)
    try:
        lab = lab_up(LAB, subnet=SUBNET, devices=2)
        gw = lab.gateway.netns
        n = Net(tmp, lab.devices[0].netns, gw, lab.pbx.netns, lab.devices[0].address, lab.pbx.address,
                lab.gateway.address, tmp / "pbx-ca.pem", tmp / "faultlab-conf",
                lab.devices[1].netns, lab.devices[1].address)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(n.pbx_ca))
        leaf = ca.issue_cert(n.pbx_ip)
        leaf.cert_chain_pems[0].write_to_path(str(tmp / "pbx.crt"))
        leaf.private_key_pem.write_to_path(str(tmp / "pbx.key"))
        run(sys.executable, "-m", "faultlab", "ca", "init", "--confdir", str(n.confdir))
        (tmp / "pbx.py").write_text(PBX_SCRIPT)
        (tmp / "pbx.jsonl").touch()
        pbx = subprocess.Popen(["ip", "netns", "exec", n.pbx, sys.executable, str(tmp / "pbx.py"), n.pbx_ip,
                                str(SIP_PORT), str(tmp / "pbx.jsonl"), str(SIPS_PORT), str(tmp / "pbx.crt"),
                                str(tmp / "pbx.key")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(pbx)
        assert pbx.stdout.readline().strip() == "ready", pbx.stderr.read()
        (tmp / "device.py").write_text(DEVICE_SCRIPT)
        yield n
    finally:
        for proc in procs:
            stop(proc)
        if gw:
            intercept_off(gw, TABLE)
        lab_down(LAB)
    leftover = run("ip", "netns", "list").stdout
    assert f"fl-{LAB}-" not in leftover


def start_proxy(n: Net, trace: Path, *extra: str, upstream_ca: Path | None = None) -> subprocess.Popen:
    """faultlab proxy --transparent inside the gateway namespace, listening for UDP, TCP and TLS."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", n.gw, sys.executable, "-m", "faultlab", "proxy", "--transparent",
         "--listen", f"udp:0.0.0.0:{PROXY_PORT}", "--listen", f"tcp:0.0.0.0:{PROXY_PORT}",
         "--listen", f"tls:0.0.0.0:{PROXY_TLS_PORT}", "--confdir", str(n.confdir),
         "--upstream-ca", str(upstream_ca or n.pbx_ca), "--trace", str(trace), "-q", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # the trace file is buffered: the console lines on stderr say when the listeners are bound
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
            if out.count(b"listening on") >= 3:
                return proc
    stop(proc)
    raise AssertionError(f"faultlab proxy did not start listening in 15 s: {out.decode(errors='replace')}")


def events(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


CASES = [(t, spoof) for spoof in (False, True) for t in ("udp", "tcp", "tls")]


@pytest.mark.parametrize("transport, spoof", CASES,
                         ids=[f"{t}{'-spoof-source' if spoof else ''}" for t, spoof in CASES])
def test_register_through_transparent_interception(net, transport, spoof):
    n = net
    trace = n.tmp / f"trace-{transport}-{spoof}.jsonl"
    port = SIPS_PORT if transport == "tls" else SIP_PORT
    proxy = start_proxy(n, trace, *(["--spoof-source"] if spoof else []))
    try:
        intercept_on(n.gw, pbx=n.pbx_ip, ports=(SIP_PORT, SIPS_PORT), proxy_udp_port=PROXY_PORT,
                     proxy_tcp_port=PROXY_PORT, proxy_tls_port=PROXY_TLS_PORT, table=TABLE, spoof_source=spoof)
        assert table_exists(n.gw, TABLE)
        call_id = f"tp-{uuid.uuid4().hex[:12]}"
        done = run("ip", "netns", "exec", n.dev, sys.executable, str(n.tmp / "device.py"), transport, n.pbx_ip,
                   str(port), call_id, str(n.confdir / "ca.crt"), check=False)
        assert done.returncode == 0, done.stderr
        device = json.loads(done.stdout)
    finally:
        intercept_off(n.gw, TABLE)
        stop(proxy)
    assert not table_exists(n.gw, TABLE)
    assert run("ip", "-n", n.gw, "rule", "show", "fwmark", "1").stdout.strip() == ""
    assert "table 100" not in run("ip", "-n", n.gw, "route", "show", "table", "all").stdout

    # the device got its 200 from the PBX's real address
    got = bytes.fromhex(device["got"])
    assert got.startswith(b"SIP/2.0 200 OK\r\n"), got
    assert call_id.encode() in got
    assert device["peer"] == [n.pbx_ip, port]

    # the PBX received exactly the bytes the device sent: no Via of faultlab's
    sent = bytes.fromhex(device["sent"])
    seen = [json.loads(line) for line in (n.tmp / "pbx.jsonl").read_text().splitlines()]
    mine = [entry for entry in seen if call_id in bytes.fromhex(entry["hex"]).decode(errors="replace")]
    assert len(mine) == 1, seen
    assert mine[0]["transport"] == transport
    assert bytes.fromhex(mine[0]["hex"]) == sent
    assert sent.count(b"Via:") == 1
    if spoof:  # the PBX sees the device itself
        assert mine[0]["peer"][0] == n.dev_ip
        if transport == "udp":
            assert mine[0]["peer"][1] == device["local"][1]
    else:  # the PBX sees the gateway
        assert mine[0]["peer"][0] == n.gw_pbx_ip

    # the message really crossed faultlab: received from the device, sent to the PBX; and the answer back
    evs = [e for e in events(trace) if e.get("call_id") == call_id]
    kinds = [(e["kind"], e["direction"], e["transport"]) for e in evs]
    assert ("received", "to-pbx", transport) in kinds and ("sent", "to-pbx", transport) in kinds, kinds
    assert ("received", "to-device", transport) in kinds and ("sent", "to-device", transport) in kinds, kinds
    to_pbx = next(e for e in evs if e["kind"] == "sent" and e["direction"] == "to-pbx")
    assert to_pbx["peer"] == f"{n.pbx_ip}:{port}"
    assert to_pbx["raw"].encode() == sent
    warnings = [e for e in events(trace) if e["kind"] == "warning"]
    assert not warnings, warnings


# -- a full call through Kamailio --------------------------------------------------------------------

PBX_DIR = REPO.parent / "shared" / "pbx"
KAM_SIP_PORT, KAM_TLS_PORT = 5070, 5071  # beside the fake PBX's 5060/5061 in the same namespace
KAM_TLS_NAME = "pbx.faultlab.test"  # on Kamailio's certificate (shared/pbx/gen-certs.sh)

# A scripted softphone (faultlab/lab/ua) configured with the PBX's real address: register, then call or answer.
UA_SCRIPT = r"""
import json, sys, trio
from faultlab.lab.ua import SipUA
role, user, peer, transport, host, pbx_ip, port, cafile, tls_name = sys.argv[1:10]

async def main():
    ua = SipUA(user, transport, (pbx_ip, int(port)), domain=pbx_ip, host=host, ca_file=cafile,
               tls_server_name=tls_name, timeout=8)
    async with trio.open_nursery() as nursery:
        await ua.start(nursery)
        final = await ua.register()
        assert final.status == 200, ua.ladder()
        print("registered", flush=True)
        if role == "callee":
            dialog = await ua.answer()
            await dialog.expect_bye()
        else:
            dialog = await ua.call(f"sip:{peer}@{pbx_ip}")
            bye = await dialog.bye()
            assert bye.status == 200, ua.ladder()
        out = {"log": [[r.direction, r.summary, list(r.peer)] for r in ua.log
                       if r.message.is_request or r.message.status >= 200],
               "ladder": ua.ladder()}
        print(json.dumps(out), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def _kamailio_missing() -> str | None:
    if not (PBX_DIR / "start-kamailio.sh").is_file():
        return f"shared/pbx/start-kamailio.sh not found at {PBX_DIR}"
    for program in ("kamailio", "openssl", "ss"):
        if not any(Path(d, program).exists() for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
            return f"{program} is not installed"
    return None


@pytest.fixture(scope="module")
def kamailio(net):
    missing = _kamailio_missing()
    if missing:
        pytest.skip(missing)
    workdir = net.tmp / "kamailio"
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin", "KAM_WORKDIR": str(workdir),
           "KAM_LISTEN_IP": net.pbx_ip}
    done = subprocess.run(["ip", "netns", "exec", net.pbx, "bash", str(PBX_DIR / "start-kamailio.sh"),
                           str(KAM_SIP_PORT), str(KAM_TLS_PORT)], env=env, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    pid = int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else None
    try:
        assert pid is not None, f"start-kamailio.sh failed: {done.stdout}{done.stderr}"
        yield workdir
    finally:
        pidfile = workdir / "kamailio.pid"
        if pid is None and pidfile.is_file() and pidfile.read_text().strip().isdigit():
            pid = int(pidfile.read_text().strip())
        if pid is not None:
            stop_group(pid)


def start_ua(n: Net, ns: str, host: str, role: str, user: str, peer: str, transport: str) -> subprocess.Popen:
    port = KAM_TLS_PORT if transport == "tls" else KAM_SIP_PORT
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(n.tmp / "ua.py"), role, user, peer, transport, host,
         n.pbx_ip, str(port), str(n.confdir / "ca.crt"), n.pbx_ip],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.mark.parametrize("transport, spoof", CASES,
                         ids=[f"{t}{'-spoof-source' if spoof else ''}" for t, spoof in CASES])
def test_call_through_kamailio_with_transparent_interception(net, kamailio, transport, spoof):
    """Two devices configured with Kamailio's real address register and complete a call; faultlab, in the
    gateway, sees every message of it and changes none."""
    n = net
    (n.tmp / "ua.py").write_text(UA_SCRIPT)
    trace = n.tmp / f"trace-kamailio-{transport}-{spoof}.jsonl"
    proxy = start_proxy(n, trace, "--tls-name", KAM_TLS_NAME, *(["--spoof-source"] if spoof else []),
                        upstream_ca=kamailio / "certs" / "ca.crt")
    alice = bob = None
    alice_user, bob_user = f"alice-{transport}-{spoof:d}", f"bob-{transport}-{spoof:d}"
    try:
        intercept_on(n.gw, pbx=n.pbx_ip, ports=(KAM_SIP_PORT, KAM_TLS_PORT), tls_ports=(KAM_TLS_PORT,),
                     proxy_udp_port=PROXY_PORT, proxy_tcp_port=PROXY_PORT, proxy_tls_port=PROXY_TLS_PORT,
                     table=TABLE, spoof_source=spoof)
        bob = start_ua(n, n.dev2, n.dev2_ip, "callee", bob_user, alice_user, transport)
        line = bob.stdout.readline()
        assert line.strip() == "registered", bob.stderr.read() if bob.wait(timeout=20) is not None else line
        alice = start_ua(n, n.dev, n.dev_ip, "caller", alice_user, bob_user, transport)
        out_alice, err_alice = alice.communicate(timeout=30)
        out_bob, err_bob = bob.communicate(timeout=30)
        assert alice.returncode == 0, err_alice
        assert bob.returncode == 0, err_bob
    finally:
        for proc in (alice, bob):
            if proc is not None:
                stop(proc)
        intercept_off(n.gw, TABLE)
        stop(proxy)
    a, b = (json.loads(out.strip().splitlines()[-1]) for out in (out_alice, out_bob))
    port = KAM_TLS_PORT if transport == "tls" else KAM_SIP_PORT
    pbx = [n.pbx_ip, port]
    want = {
        "alice": [("sent", "REGISTER"), ("received", "200 REGISTER"), ("sent", "INVITE"),
                  ("received", "200 INVITE"), ("sent", "ACK"), ("sent", "BYE"), ("received", "200 BYE")],
        "bob": [("sent", "REGISTER"), ("received", "200 REGISTER"), ("received", "INVITE"),
                ("sent", "200 INVITE"), ("received", "ACK"), ("received", "BYE"), ("sent", "200 BYE")],
    }
    for name, ua in (("alice", a), ("bob", b)):
        got = [(d, s) for d, s, _ in ua["log"]]
        if transport == "udp" and got[4:6] == [("received", "BYE"), ("received", "ACK")]:
            # alice sends them back to back; Kamailio's UDP workers each take a datagram and may forward the BYE
            # first: their order on the PBX's far side is not the relay's doing (it is the same without it)
            got[4:6] = got[5:3:-1]
        assert got == want[name], ua["ladder"]
        # every message to and from the PBX's real address: the device knows nothing of faultlab
        assert all(peer == pbx for _, _, peer in ua["log"]), ua["ladder"]

    # where Kamailio saw each device register from: the device itself with --spoof-source, else the gateway
    log = (kamailio / "kamailio.log").read_text(errors="replace")
    for user, ip in ((alice_user, n.dev_ip), (bob_user, n.dev2_ip)):
        found = re.search(rf"FLT registered sip:{re.escape(user)}@\S+ contact=<sip:[^@]+@([0-9.]+):(\d+)[^>]*>"
                          rf".* src={transport}:([0-9.]+):(\d+)", log)
        assert found, f"no registration of {user} in {kamailio / 'kamailio.log'}"
        contact_ip, contact_port, src_ip, src_port = found.groups()
        assert contact_ip == ip
        assert src_ip == (ip if spoof else n.gw_pbx_ip)
        if spoof and transport == "udp":
            assert src_port == contact_port

    # faultlab relayed all of it, byte for byte (nothing of its own added), and warned of nothing
    evs = events(trace)
    # the test UA ends its process without a TLS close_notify: faultlab reports that EOF, rightly
    warnings = [e for e in evs if e["kind"] == "warning"
                and "UNEXPECTED_EOF_WHILE_READING" not in e["detail"]["message"]]
    assert not warnings, warnings
    received = [e for e in evs if e["kind"] == "received" and e.get("parsed")]
    sent = [e for e in evs if e["kind"] == "sent" and e.get("parsed")]
    assert len(received) == len(sent) >= 14
    for r, s_ in zip(sorted(received, key=lambda e: e["raw"]), sorted(sent, key=lambda e: e["raw"])):
        assert r["raw"] == s_["raw"]
    methods = {(e.get("method") or f"{e.get('status')} {e.get('cseq_method')}", e["direction"]) for e in sent}
    for m in ("REGISTER", "INVITE", "ACK", "BYE"):
        assert (m, "to-pbx") in methods, methods
    for m in ("INVITE", "ACK", "BYE"):
        assert (m, "to-device") in methods, methods
    assert {e["transport"] for e in sent} == {transport}
