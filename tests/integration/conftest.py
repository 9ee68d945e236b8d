"""Fixtures for integration tests: a real Kamailio on loopback.

Kamailio is started with ``shared/pbx/start-kamailio.sh`` (see ``shared/pbx/README.md``): an in-memory registrar and
record-routing proxy on 127.0.0.1, UDP+TCP on ``sip_port``, TLS on ``tls_port``. Each test gets its own Kamailio
(about half a second to start and answer OPTIONS on every transport, a few ms to stop), so registrations never leak
from one test into the next.

The script starts Kamailio under ``setsid``: the PID it prints leads a process group that holds Kamailio's forked
workers too. Teardown signals that group, and only it, and waits until no live process is left in it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PBX_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "pbx"
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")  # mpath in kamailio.cfg
HOST = "127.0.0.1"
START_TIMEOUT = 15.0  # the script itself gives up after 10 s
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 5.0
LOG_TAIL_LINES = 40
# kamailio.log lines start with "rank(pid) LEVEL:"; rank 0 is the main process, which logs the start-up.
_LOG_WORKER = re.compile(r"\s*[1-9][0-9]*\(\d+\) ")
_LOG_PROBLEM = re.compile(r"\s*\d+\(\d+\) (ERROR|CRITICAL|BUG|ALERT)")

# Kamailio, openssl and ss live in sbin on Debian; CI's PATH may not include it.
_ENV_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


@dataclass(frozen=True)
class Kamailio:
    host: str
    sip_port: int  # UDP and TCP
    tls_port: int
    ca_file: Path  # the CA that signed Kamailio's TLS server certificate
    pid: int  # leader of Kamailio's process group
    log: Path
    workdir: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of kamailio.log that are about traffic, not about starting up."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log}: {exc})"
        kept = [line for line in text.splitlines() if _LOG_WORKER.match(line) or _LOG_PROBLEM.match(line)]
        return "\n".join(kept[-lines:]) or "(nothing but start-up lines)"


def _missing_requirements() -> str | None:
    if not PBX_DIR.joinpath("start-kamailio.sh").is_file():
        return f"shared/pbx/start-kamailio.sh not found at {PBX_DIR} (shared/ must sit beside the repository)"
    for program in ("kamailio", "openssl", "ss"):
        if shutil.which(program, path=_ENV_PATH) is None:
            package = {"kamailio": "kamailio", "openssl": "openssl", "ss": "iproute2"}[program]
            return f"{program} is not installed (Debian package {package})"
    if not KAMAILIO_MODULES.joinpath("tls.so").is_file():
        return f"Kamailio's TLS module {KAMAILIO_MODULES}/tls.so is missing (Debian package kamailio-tls-modules)"
    return None


def _free_ports() -> tuple[int, int]:
    """Two loopback ports: the first free for both UDP and TCP, the second for TCP."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as udp, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tls:
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            tls.bind((HOST, 0))
            return port, tls.getsockname()[1]


def _live_group_members(pgid: int) -> list[int]:
    """PIDs of the processes in group ``pgid`` that have not exited (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _live_group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _stop(pid: int) -> None:
    """Stop the Kamailio we started: its process group (the script made ``pid`` a session leader)."""
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        leads_group = False
    if not leads_group:
        # Already gone (or not a group leader, which setsid rules out): never signal a group we did not make.
        if _live_group_members(pid):
            raise RuntimeError(f"Kamailio pid {pid} is gone but processes remain in its group {pid}")
        return
    os.killpg(pid, signal.SIGTERM)
    if _wait_group_gone(pid, STOP_TIMEOUT):
        return
    os.killpg(pid, signal.SIGKILL)
    if not _wait_group_gone(pid, STOP_TIMEOUT):
        raise RuntimeError(f"Kamailio process group {pid} still has {_live_group_members(pid)} after SIGKILL")


def _probe(kam: Kamailio, transport: str) -> None:
    """Send OPTIONS over ``transport`` and wait for Kamailio's ``200 Keepalive``.

    Kamailio listens before its workers are ready: the first request after start waits about half a second. The
    probe takes that wait here, so that tests see a PBX that answers at once.
    """
    port = kam.tls_port if transport == "tls" else kam.sip_port
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as raw:
        raw.settimeout(PROBE_TIMEOUT)
        raw.connect((kam.host, port))
        sock = raw
        if transport == "tls":
            context = ssl.create_default_context(cafile=str(kam.ca_file))
            sock = context.wrap_socket(raw, server_hostname=kam.host)
        local_port = sock.getsockname()[1]
        tag = secrets.token_hex(4)
        sock.sendall(
            f"OPTIONS sip:{kam.host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {kam.host}:{local_port};rport;branch=z9hG4bKprobe{tag}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{kam.host}>;tag={tag}\r\n"
            f"To: <sip:{kam.host}>\r\n"
            f"Call-ID: probe-{tag}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        status_line = sock.recv(65535).split(b"\r\n", 1)[0]
    if not status_line.startswith(b"SIP/2.0 200"):
        raise RuntimeError(f"OPTIONS over {transport} got {status_line!r}")


@pytest.fixture(scope="session")
def _kamailio_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of test certificates for the session: generating RSA keys is most of Kamailio's start time."""
    reason = _missing_requirements()
    if reason:
        pytest.skip(reason)
    certs = tmp_path_factory.mktemp("kamailio-certs") / "certs"
    subprocess.run(
        ["bash", str(PBX_DIR / "gen-certs.sh"), str(certs)],
        check=True,
        env={**os.environ, "PATH": _ENV_PATH},
        timeout=START_TIMEOUT,
    )
    return certs


@pytest.fixture
def kamailio(tmp_path: Path, _kamailio_certs: Path) -> Iterator[Kamailio]:
    """A Kamailio of this test's own on free loopback ports, stopped (with its workers) after the test."""
    workdir = tmp_path / "kamailio"
    shutil.copytree(_kamailio_certs, workdir / "certs")
    sip_port, tls_port = _free_ports()
    env = {**os.environ, "PATH": _ENV_PATH, "KAM_WORKDIR": str(workdir)}
    proc = subprocess.run(
        ["bash", str(PBX_DIR / "start-kamailio.sh"), str(sip_port), str(tls_port)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out.isdigit():
        pidfile = workdir / "kamailio.pid"  # a Kamailio that started but did not listen in time
        if pidfile.is_file() and pidfile.read_text().strip().isdigit():
            _stop(int(pidfile.read_text()))
        pytest.fail(
            f"start-kamailio.sh {sip_port} {tls_port} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    kam = Kamailio(
        host=HOST,
        sip_port=sip_port,
        tls_port=tls_port,
        ca_file=workdir / "certs" / "ca.crt",
        pid=int(out),
        log=workdir / "kamailio.log",
        workdir=workdir,
    )
    try:
        try:
            for transport in ("udp", "tcp", "tls"):
                _probe(kam, transport)
        except (OSError, RuntimeError) as exc:
            pytest.fail(f"Kamailio does not answer OPTIONS: {exc!r}\n{kam.log_tail()}", pytrace=False)
        yield kam
    finally:
        _stop(kam.pid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Put the tail of kamailio.log into the report of a test that failed while Kamailio ran."""
    report: pytest.TestReport = yield
    kam = getattr(item, "funcargs", {}).get("kamailio")
    if report.failed and isinstance(kam, Kamailio):
        title = f"kamailio.log, last {LOG_TAIL_LINES} lines after start-up ({kam.log})"
        report.sections.append((title, kam.log_tail()))
    return report
