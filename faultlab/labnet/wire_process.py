"""The TUN wire (:mod:`faultlab.labnet.wire`) as a lab's background process: start it in the air
namespace and wait until it steers packets, know it again by its command line, stop it, read the
packet counts it logged. The caller keeps its PID and log in the lab's state directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

WIRE_MODULE = "faultlab.labnet.wire"
"""What ``python -m`` runs in the air namespace."""
_WIRE_MODULES = (WIRE_MODULE.encode(), b"faultlab.link.wire")  # also a wire started before the module moved
READY_TIMEOUT = 15.0
"""Seconds to wait for the wire to steer packets (importing scapy and trio included)."""
STOP_TIMEOUT = 5.0


class WireFailed(RuntimeError):
    """The wire exited, or was not ready in time; the message holds the end of its log."""


def start_wire(
    lab: str,
    air: str,
    *,
    profile_file: Path,
    seed: int,
    device_ifs: tuple[str, ...],
    pbx_ifs: tuple[str, ...],
    state_dir: Path,
    log_packets: bool = False,
) -> int:
    """Start the wire in namespace ``air`` (detached, its own session; output to ``state_dir/wire.log``,
    PID in ``state_dir/wire.pid``) and wait until it reports ready; its PID. :class:`WireFailed` if it
    exits or is not ready within :data:`READY_TIMEOUT` (then it may still run: stop it by that PID)."""
    ready = state_dir / "wire.ready"
    ready.unlink(missing_ok=True)
    cmd = ["ip", "netns", "exec", air, sys.executable, "-m", WIRE_MODULE]
    cmd += ["--lab", lab, "--profile-file", str(profile_file), "--seed", str(seed), "--ready-file", str(ready)]
    for ifname in device_ifs:
        cmd += ["--device-if", ifname]
    for ifname in pbx_ifs:
        cmd += ["--pbx-if", ifname]
    if log_packets:
        cmd.append("--log-packets")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so that -m finds this faultlab from any directory
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(state_dir / "wire.log", "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    (state_dir / "wire.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (state_dir / "wire.log").read_text(errors="replace")[-2000:]
            if proc.returncode is not None:
                what = f"exited with {proc.returncode}"
            else:
                what = f"was not ready in {READY_TIMEOUT:g} s"
            raise WireFailed(f"lab {lab!r}: the TUN wire {what}; its log:\n{tail}")
        time.sleep(0.02)
    return proc.pid


def is_wire(pid: int, lab: str) -> bool:
    """Whether ``pid`` is still the wire of ``lab`` (and not a zombie, nor a reused PID)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    try:
        i = args.index(b"--lab")
    except ValueError:
        return False
    return any(m in args for m in _WIRE_MODULES) and args[i + 1 : i + 2] == [lab.encode()]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass


def stop_wire(pid: int, lab: str) -> str:
    """Stop the wire ``pid`` of ``lab`` (only while it is still that process): SIGTERM, then SIGKILL after
    :data:`STOP_TIMEOUT`. A text saying what happened."""
    if not is_wire(pid, lab):
        _reap(pid)
        return f"the wire (pid {pid}) was not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_wire(pid, lab):
            return f"stopped the TUN wire (pid {pid})"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    _reap(pid)
    return f"killed the TUN wire (pid {pid}), which did not stop on SIGTERM within {STOP_TIMEOUT:g} s"


_COUNT_RE = re.compile(r"wire\[\d+\] (to-pbx|to-device|other) \S+ (in|out|lost|duplicated|reordered): (\d+)$")


def wire_counts(log_path: Path) -> dict[str, dict[str, int]]:
    """The packet counts the wire logged when it stopped, per direction
    (all protocols together): ``{"to-pbx": {"in": 300, "lost": 61, "out": 239}}``."""
    counts: dict[str, dict[str, int]] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return counts
    for line in lines:
        m = _COUNT_RE.search(line)
        if m:
            c = counts.setdefault(m[1], {})
            c[m[2]] = c.get(m[2], 0) + int(m[3])
    return counts
