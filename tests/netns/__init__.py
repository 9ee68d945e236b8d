"""Tests that need Linux network namespaces (marker ``netns``, root)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from faultlab.labnet.names import find_tool
from faultlab.labnet.topology import Lab, lab_down, lab_up


def netns_skip_reason() -> str | None:
    """Why namespace tests cannot run here (``None``: they can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root for network namespaces (run the suite with sudo; CI runs it as root)"
    if find_tool("ip") is None:
        return "needs the `ip` command from iproute2 (apt-get install iproute2)"
    return None


_labs = itertools.count()


@contextlib.contextmanager
def one_device_lab(prefix: str, subnet: str) -> Iterator[Lab]:
    """A namespace lab with one device (skips where namespaces cannot run), torn down even when the test fails.

    ``prefix``: two letters naming the test file's labs; the pid and a counter keep parallel runs apart."""
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"{prefix}{os.getpid() % 10000}{next(_labs)}"
    lab_down(name)  # a previous run with this pid may have died
    try:
        yield lab_up(name, subnet=subnet, devices=1)
    finally:
        lab_down(name)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM by PID, SIGKILL if it does not end in 10 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def stop_group(pid: int) -> None:
    """Kamailio runs under setsid: its PID leads a process group holding its workers; stop that group only."""
    try:
        if os.getpgid(pid) != pid:
            return
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
