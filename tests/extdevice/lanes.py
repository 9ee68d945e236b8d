"""Run ``faultlab lab run --device external`` against the external device (device.py), each lab and its device as
processes of their own on 127.0.0.1, possibly several lanes at once (separate ports, separate lab processes).

Used by tests/integration/test_external_device.py and bench/external_catalogue.py. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DEVICE = Path(__file__).resolve().parent / "device.py"
HOST = "127.0.0.1"
READY_LINE = "waiting up to"  # the lab prints it once it listens and waits for the device
_LIVE: set[subprocess.Popen] = set()  # every lab and device process still running (stop_all)
_LIVE_LOCK = threading.Lock()


def faultlab_exe() -> str | None:
    """The installed ``faultlab`` entry point: next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "faultlab"
    return str(here) if here.exists() else shutil.which("faultlab")


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (the relay may listen on either)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((HOST, port))
            except OSError:
                continue
            return port


@dataclass
class Lane:
    """One lab process and its device: ``scenarios`` over ``transport``, the device with ``bugs`` planted."""

    name: str
    transport: str
    scenarios: list[str]
    workdir: Path
    bugs: list[str] = field(default_factory=list)
    pause: str = "1s"
    device_args: list[str] = field(default_factory=list)
    # filled in by run_lane
    returncode: int | None = None
    report: dict | None = None
    wall: float = 0.0
    error: str | None = None

    @property
    def output(self) -> str:
        path = self.workdir / "lab.out"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    @property
    def device_log(self) -> str:
        path = self.workdir / "device.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def case(self, scenario: str) -> dict:
        return next(c for c in (self.report or {}).get("cases", []) if c["scenario"] == scenario)


def _wait_ready(lab: subprocess.Popen, out: Path, timeout: float) -> bool:
    """Poll the lab's output for its ready line (bounded); False if it exited or never got there."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if READY_LINE in out.read_text(encoding="utf-8", errors="replace"):
            return True
        if lab.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _started(process: subprocess.Popen) -> subprocess.Popen:
    with _LIVE_LOCK:
        _LIVE.add(process)
    return process


def stop_all() -> None:
    """Stop every lab and device process a lane started and that still runs (a test run cut short)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for process in live:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(process)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_lane(lane: Lane, *, exe: str, timeout: float = 3600.0) -> Lane:
    """Run the lane to its end: lane.returncode, lane.report (the JSON report), lane.wall (seconds)."""
    lane.workdir.mkdir(parents=True, exist_ok=True)
    home = lane.workdir / "home"  # the lab CA the device trusts over TLS
    home.mkdir(mode=0o700, exist_ok=True)
    sip, push, events = free_port(), free_port(), free_port()
    report = lane.workdir / "report.json"
    env = {**os.environ, "FAULTLAB_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    command = [exe, "lab", "run", "--device", "external", *[a for s in lane.scenarios for a in ("-s", s)],
               "--listen", f"{lane.transport}:{HOST}:{sip}", "--push-listen", f"{HOST}:{push}",
               "--events-listen", f"{HOST}:{events}", "--pause", lane.pause, "--register-timeout", "60s",
               "--json", str(report), "--trace-dir", str(lane.workdir / "traces")]
    out = lane.workdir / "lab.out"
    begun = time.monotonic()
    with open(out, "wb") as lab_out, open(lane.workdir / "device.log", "wb") as device_log:
        lab = _started(subprocess.Popen(command, stdout=lab_out, stderr=subprocess.STDOUT, env=env,
                                        cwd=lane.workdir))
        device = None
        try:
            if not _wait_ready(lab, out, 60.0):
                lane.error = "the lab did not start (see lab.out)"
                return lane
            device = _started(subprocess.Popen(
                [sys.executable, str(DEVICE), "--sip", f"{lane.transport}:{HOST}:{sip}",
                 "--push", f"http://{HOST}:{push}", "--events", f"http://{HOST}:{events}", "--user", "alice",
                 "--ca", str(home / "ca.crt"), "--lab-output", str(out),
                 "--events-log", str(lane.workdir / "events.ndjson"),
                 *[a for b in lane.bugs for a in ("--bug", b)], *lane.device_args],
                stdout=device_log, stderr=subprocess.STDOUT, cwd=lane.workdir))
            try:
                lane.returncode = lab.wait(timeout)
            except subprocess.TimeoutExpired:
                lane.error = f"the lab did not finish within {timeout:g} s"
        finally:
            _stop(lab)
            if device is not None:
                _stop(device)
    lane.wall = time.monotonic() - begun
    if report.exists():
        lane.report = json.loads(report.read_text(encoding="utf-8"))
    return lane


def run_lanes(lanes: list[Lane], *, exe: str, timeout: float = 3600.0) -> list[Lane]:
    """Every lane at once, each in a thread of its own (the work is in the processes)."""
    threads = [threading.Thread(target=run_lane, args=(lane,), kwargs={"exe": exe, "timeout": timeout})
               for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return lanes
