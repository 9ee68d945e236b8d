"""Processes and their resources, for the benchmarks (bench/relay.py, bench/soak.py) and the reliability tests
(tests/reliability): ports, stopping a process we started, its memory and descriptors from /proc. Standard
library only, so that bench/relay.py runs with any python3."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess


def proc_resources(pids: list[int]) -> dict:
    """Open file descriptors and resident memory (kB), summed over pids."""
    fds = rss = 0
    for pid in pids:
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return {"fds": fds, "rss_kb": rss}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 5) -> int | None:
    """Stop one process we started, by its PID."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def raise_nofile(want: int) -> int:
    """Raise this process's soft descriptor limit towards ``want`` (at most the hard limit); the processes it
    starts inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
