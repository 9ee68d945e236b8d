"""`faultlab net exec`: signals reach the command, its exit status is net exec's, nothing is left behind.

The point of these tests is the real process tree (a script runs ``faultlab net exec gateway -- faultlab proxy
... &`` and later kills it), so each runs ``python -m faultlab net exec`` as a real process in a real lab
(root). The command inside is a small Python program that says when its signal handlers are installed, records
the signal it got, and exits with a code of its choice (or dies of the signal, with default handling).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultlab.labnet import lab_down, lab_up, netns_name
from faultlab.labnet.names import find_tool
from tests.netns import netns_skip_reason

pytestmark = pytest.mark.netns

# argv: record-file, mode ("trap": handle TERM/INT/HUP/QUIT, write the signal name, exit 40+N;
# "default": leave every disposition alone, write nothing). Prints "ready <pid>" once set up, then waits.
_CHILD = r"""
import os, signal, sys
record, mode = sys.argv[1], sys.argv[2]
def got(signum, frame):
    with open(record, "w") as f:
        f.write(signal.Signals(signum).name)
    os._exit(40 + signum)
if mode == "trap":
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, got)
print("ready", os.getpid(), flush=True)
while True:
    signal.pause()
"""

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"nx{os.getpid() % 100000}"
    lab_down(name)  # a previous run with this pid may have died
    try:
        lab_up(name, subnet="10.219.0.0/16")
        yield name
    finally:
        lab_down(name)


def _pids_in(lab: str, role: str) -> list[int]:
    out = subprocess.run([find_tool("ip") or "ip", "netns", "pids", netns_name(lab, role)], capture_output=True,
                         text=True, timeout=10, check=False).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started: killed (by their pid) if the test ends with them still running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _net_exec(started: list[subprocess.Popen[str]], lab: str, role: str, *command: str,
              **kw: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "faultlab", "net", "exec", role, "--name", lab, "--", *command],
                            text=True, **kw)  # type: ignore[call-overload]
    started.append(proc)
    return proc


def _ready(proc: subprocess.Popen[str]) -> list[str]:
    """The child's "ready <pid>" line, waited for at most 20 s."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 20)
    if not readable:
        proc.kill()
        proc.wait()
        pytest.fail("the command in the namespace never said it was ready")
    return proc.stdout.readline().split()


def _wait(proc: subprocess.Popen[str]) -> int:
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("faultlab net exec did not end after the signal")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_reaches_the_command_and_its_exit_status_is_kept(lab: str, sig: signal.Signals, tmp_path: Path,
                                                                   started: list[subprocess.Popen[str]]) -> None:
    record = tmp_path / "signal"
    proc = _net_exec(started, lab, "gateway", sys.executable, "-c", _CHILD, str(record), "trap", stdout=subprocess.PIPE)
    word, pid = _ready(proc)
    assert word == "ready"
    # The command runs as the process faultlab net exec started as: nothing stands in between.
    assert int(pid) == proc.pid

    os.kill(proc.pid, sig)
    rc = _wait(proc)
    assert record.read_text() == sig.name
    assert rc == 40 + sig  # the command's own exit status
    assert _pids_in(lab, "gateway") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_death_by_signal_is_reported_as_such(lab: str, sig: signal.Signals, tmp_path: Path,
                                            started: list[subprocess.Popen[str]]) -> None:
    proc = _net_exec(started, lab, "pbx", sys.executable, "-c", _CHILD, str(tmp_path / "signal"), "default",
                     stdout=subprocess.PIPE)
    assert _ready(proc)[0] == "ready"
    os.kill(proc.pid, sig)
    assert _wait(proc) == -sig  # killed by the signal: a shell shows $? = 128+N
    assert _pids_in(lab, "pbx") == []
    # ... and through a shell, as a script sees it.
    shell = subprocess.run(
        ["sh", "-c", f'{sys.executable} -m faultlab net exec pbx --name {lab} -- sh -c "kill -{sig.name[3:]} \\$\\$";'
                     ' echo "status $?"'],
        capture_output=True, text=True, timeout=30, check=False)
    assert shell.stdout.split() == ["status", str(128 + sig)], shell.stderr


def test_killed_in_the_background_leaves_no_orphan(lab: str, tmp_path: Path) -> None:
    """The script pattern: `faultlab net exec gateway -- CMD &`, later `kill $!`."""
    script = (f'{sys.executable} -m faultlab net exec gateway --name {lab} -- sleep 300 & pid=$!\n'
              f'for i in $(seq 200); do [ -n "$(ip netns pids {netns_name(lab, "gateway")})" ] && break; '
              'sleep 0.05; done\n'
              'kill "$pid"; wait "$pid"; echo "status $?"\n')
    shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert shell.stdout.split() == ["status", str(128 + signal.SIGTERM)], shell.stderr
    assert _pids_in(lab, "gateway") == []


def test_exit_status_and_errors(lab: str, started: list[subprocess.Popen[str]]) -> None:
    proc = _net_exec(started, lab, "pbx", "sh", "-c", "exit 7", stderr=subprocess.PIPE)
    assert _wait(proc) == 7
    proc = _net_exec(started, lab, "pbx", "no-such-command-faultlab", stderr=subprocess.PIPE)
    assert _wait(proc) == 127
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "no-such-command-faultlab: command not found" in err and "Traceback" not in err
    proc = _net_exec(started, lab, "device7", "true", stderr=subprocess.PIPE)
    assert _wait(proc) == 2
    assert proc.stderr is not None and "no role 'device7'" in proc.stderr.read()


def test_the_command_gets_sigpipe_back(lab: str) -> None:
    """Python ignores SIGPIPE for itself; the command must start with it at its default, as from a shell
    (else `faultlab net exec ... -- producer | head` would leave the producer writing into a closed pipe)."""
    done = subprocess.run([sys.executable, "-m", "faultlab", "net", "exec", "pbx", "--name", lab, "--",
                           "sh", "-c", "grep ^SigIgn: /proc/$$/status"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    ignored = int(done.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), done.stdout
