"""Lab actors as processes, for tests: start ``python -m faultlab ...`` (optionally inside a network namespace),
read its output line by line, wait for lines, stop it by its PID.

::

    async with open_actors(env) as actors:
        pbx = await actors.spawn("pbx", "pbx", "--listen", "udp:127.0.0.1:0")
        port = int((await pbx.wait_line("stderr", r"udp on 127\\.0\\.0\\.1:(\\d+)$")).group(1))
        ...
        assert await actors.stop(pbx) == 0

Leaving the block stops every actor still running (SIGTERM, then SIGKILL), also on failure, where every
actor's output is printed for the test report. Readiness comes from the processes' own lines, never from sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import trio

ROOT = Path(__file__).resolve().parents[1]


class Actor:
    """One actor process: its stdout and stderr read line by line in the background (so pipes never fill)."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.eof: dict[str, bool] = {"stdout": False, "stderr": False}
        self._changed = trio.Event()

    async def read(self, which: str) -> None:
        stream = getattr(self.process, which)
        pending = b""
        try:
            while data := await stream.receive_some(65536):
                pending += data
                *complete, pending = pending.split(b"\n")
                self.lines[which] += [line.decode("utf-8", "replace") for line in complete]
                self._notify()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        if pending:
            self.lines[which].append(pending.decode("utf-8", "replace"))
        self.eof[which] = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_line(self, which: str, pattern: str) -> re.Match:
        """The first line of ``which`` (stdout/stderr) matching the regex ``pattern``, already printed or next."""
        seen = 0
        while True:
            for line in self.lines[which][seen:]:
                if found := re.search(pattern, line):
                    return found
            seen = len(self.lines[which])
            if self.eof[which]:
                raise AssertionError(f"{self.name} closed its {which} without a line matching {pattern!r}\n"
                                     + self.output())
            await self._changed.wait()

    async def wait_exit(self) -> int:
        """The exit code, once the process has exited and both its streams are read to the end."""
        await self.process.wait()
        while not all(self.eof.values()):
            await self._changed.wait()
        return self.process.returncode

    def output(self) -> str:
        return (f"--- {self.name} (pid {self.process.pid}, exit {self.process.returncode}) stdout:\n"
                + "\n".join(self.lines["stdout"]) + f"\n--- {self.name} stderr:\n" + "\n".join(self.lines["stderr"]))


async def stop(actor: Actor, timeout: float = 15.0) -> int:
    """SIGTERM the actor's process (by its PID), then SIGKILL if it has not exited within ``timeout`` s."""
    process = actor.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode


def actor_env(home: Path) -> dict[str, str]:
    """The environment for actor processes: unbuffered output, a private FAULTLAB_HOME, this checkout first."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "FAULTLAB_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Actors:
    """The actors started in one :func:`open_actors` block."""

    def __init__(self, readers: trio.Nursery, env: dict[str, str]) -> None:
        self.readers = readers
        self.env = env
        self.started: list[Actor] = []

    async def spawn(self, name: str, *args: str, prefix: list[str] | tuple[str, ...] = ()) -> Actor:
        """Start ``python -m faultlab ARGS`` (after ``prefix``, e.g. ``ip netns exec NS``, which execs in place,
        so the PID is the Python process's)."""
        process = await trio.lowlevel.open_process(
            [*prefix, sys.executable, "-m", "faultlab", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=str(ROOT), env=self.env)
        actor = Actor(name, process)
        self.started.append(actor)
        self.readers.start_soon(actor.read, "stdout")
        self.readers.start_soon(actor.read, "stderr")
        return actor

    async def stop(self, actor: Actor, timeout: float = 15.0) -> int:
        return await stop(actor, timeout)

    async def stop_lab(self, device: Actor, proxy: Actor, pbx: Actor, gateway: Actor) -> None:
        """Stop a lab in order, within 20 s: the device first (its push stream goes away), then faultlab (closing
        its trace), the PBX and the push gateway, each of which must exit cleanly (0)."""
        with trio.fail_after(20):
            await self.stop(device)
            for actor in (proxy, pbx, gateway):
                assert await self.stop(actor) == 0, actor.output()

    def output(self) -> str:
        return "\n".join(actor.output() for actor in self.started)


@asynccontextmanager
async def open_actors(env: dict[str, str]) -> AsyncIterator[Actors]:
    """A block whose actors are all stopped on the way out (latest first), also when it fails."""
    async with trio.open_nursery() as readers:
        actors = Actors(readers, env)
        try:
            yield actors
        except BaseException:
            with trio.CancelScope(shield=True):
                for actor in reversed(actors.started):
                    await stop(actor)
            print(actors.output())
            raise
        finally:
            with trio.CancelScope(shield=True):
                for actor in reversed(actors.started):
                    await stop(actor)
                readers.cancel_scope.cancel()
                for actor in actors.started:
                    await actor.process.stdout.aclose()
                    await actor.process.stderr.aclose()
