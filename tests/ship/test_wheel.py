"""faultlab as it ships: a wheel of this checkout, installed into a fresh virtualenv and run from a directory
outside the checkout, carries the whole built-in library (every profile and scenario), runs the demo, and its
proxy applies a library profile by name to real loopback traffic. A team library added with --library or
FAULTLAB_PATH adds entries and replaces built-ins of the same name, and says so.

Slowish (one wheel build, about 10 s in all): marked integration, so under CI=true it never skips.
"""

from __future__ import annotations

import json
import re
import queue
import signal
import socket
import subprocess
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ship.install import REPO, build_wheel, check_isolated, copy_checkout, fresh_venv, pip_install, run, \
    user_env

pytestmark = pytest.mark.integration

PROFILES = sorted(p.stem for p in (REPO / "profiles").glob("*.toml"))
SCENARIOS = sorted(tomllib.loads(p.read_text())["id"] for p in (REPO / "scenarios").glob("*.toml"))


@dataclass
class Install:
    venv: Path
    python: Path
    faultlab: Path
    elsewhere: Path  # the working directory: outside the checkout
    env: dict[str, str]
    wheel: Path

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return run([self.faultlab, *args], env={**self.env, **(env or {})}, cwd=self.elsewhere, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("ship")
    wheel = build_wheel(copy_checkout(base / "src"), base / "dist")
    python = fresh_venv(base / "venv")
    pip_install(python, wheel)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    env = user_env(base / "venv", base / "home")
    check_isolated(python, base / "venv", env, elsewhere)
    return Install(base / "venv", python, base / "venv" / "bin" / "faultlab", elsewhere, env, wheel)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A team library: a profile of its own, one replacing the built-in register-drop, a scenario of its own."""
    lib = tmp_path_factory.mktemp("team-lib")
    (lib / "profiles").mkdir()
    (lib / "scenarios").mkdir()
    (lib / "profiles" / "team-register-drop.toml").write_text(
        'summary = "Team profile: every REGISTER to the PBX is lost."\n'
        '[[rules]]\nname = "team-drop-register"\nmatch = { method = "REGISTER", direction = "to-pbx" }\n'
        'action = { drop = true }\n')
    (lib / "profiles" / "register-drop.toml").write_text(
        'summary = "Team version of register-drop."\n'
        '[[rules]]\nname = "team-version"\nmatch = { method = "REGISTER" }\naction = { drop = true }\n')
    baseline = (REPO / "scenarios" / "S01-baseline.toml").read_text()
    (lib / "scenarios" / "S90-team-baseline.toml").write_text(
        baseline.replace('id = "S01"', 'id = "S90"').replace('slug = "baseline"', 'slug = "team-baseline"'))
    return lib


def test_the_wheel_carries_the_library_inside_the_package(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert sorted(Path(n).stem for n in names if n.startswith("faultlab/profiles/")) == PROFILES
    assert len([n for n in names if n.startswith("faultlab/scenarios/")]) == len(SCENARIOS)
    assert not [n for n in names if n.startswith(("profiles/", "scenarios/"))], "library files outside the package"


def test_the_wheel_carries_the_json_schemas_and_the_linter_reads_them(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("faultlab/lab/schema/") and n.endswith(".json"))
    assert shipped == ["faultlab/lab/schema/events.schema.json", "faultlab/lab/schema/push-stream.schema.json"]
    log = installed.elsewhere / "app-events.ndjson"
    log.write_text('{"device": "alice-iphone", "event": "reported", "uuid": "U1", "client_time": 1764166500.1}\n'
                   '{"device": "alice-iphone", "event": "ended", "uuid": "U1", "client_time": 1764166501}\n')
    done = installed.run("events", "lint", str(log))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{log}:2: call U1: schema: reason: None is not one of" in done.stdout  # the schema, read from the wheel


def test_profiles_list_shows_every_built_in_profile(installed):
    done = installed.run("profiles", "list")
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 2) for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == PROFILES
    assert {r[1] for r in rows} == {"built-in"}
    assert len(PROFILES) == 22


def test_lab_scenarios_lists_the_whole_catalogue(installed):
    done = installed.run("lab", "scenarios")
    assert done.returncode == 0, done.stderr
    assert sorted(re.findall(r"^\W+(S\d\d[a-z]?)\s", done.stdout, re.M)) == SCENARIOS
    assert f"{len(SCENARIOS)} scenarios." in done.stdout and len(SCENARIOS) >= 27


def test_demo_passes(installed):
    done = installed.run("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    # every scenario on every transport it applies to (all three unless its file narrows them)
    cases = sum(len(tomllib.loads(p.read_text()).get("transports", ["udp", "tcp", "tls"]))
                for p in (REPO / "scenarios").glob("*.toml"))
    assert f"PASS {cases}/{cases} cases passed" in done.stdout


def _register(port: int) -> bytes:
    return (f"REGISTER sip:lab.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ship1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@lab.test>;tag=a1\r\nTo: <sip:alice@lab.test>\r\n"
            f"Call-ID: ship-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:{port}>\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def _options(port: int) -> bytes:
    return (f"OPTIONS sip:lab.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ship2\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@lab.test>;tag=a2\r\nTo: <sip:lab.test>\r\n"
            "Call-ID: ship-2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


class Lines:
    """A process's stderr, line by line, read by a thread: :meth:`wait_for` waits (bounded) for a line."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")

    def rest(self, timeout: float = 30) -> str:
        """Everything up to the end of the stream (after the process ended)."""
        while (line := self.queue.get(timeout=timeout)):
            self.seen.append(line)
        return "".join(self.seen)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                break
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        pytest.fail(f"the proxy never said {pattern!r}; it said:\n{''.join(self.seen)}")


@pytest.mark.parametrize("library, profile, rule", [
    (None, "register-drop", "drop-register"),
    ("team", "team-register-drop", "team-drop-register"),
])
def test_proxy_applies_a_library_profile_by_name(installed, team, tmp_path, library, profile, rule):
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    device = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with upstream, device:
        upstream.bind(("127.0.0.1", 0))
        device.bind(("127.0.0.1", 0))
        trace = tmp_path / "trace.jsonl"
        root = ["--library", str(team)] if library else []
        argv = [installed.faultlab, *root, "proxy", "--listen", "udp:127.0.0.1:0",
                "--upstream", f"udp:127.0.0.1:{upstream.getsockname()[1]}", "--profile", profile,
                "--trace", trace, "--seed", "1"]
        proc = subprocess.Popen([str(a) for a in argv], env=installed.env, cwd=installed.elsewhere,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            port = int(err.wait_for(r"listening on udp:127\.0\.0\.1:(\d+)")[1])
            err.wait_for(rf"profile {re.escape(profile)};")
            here = device.getsockname()[1]
            device.sendto(_register(here), ("127.0.0.1", port))
            device.sendto(_options(here), ("127.0.0.1", port))  # after the REGISTER, on the same flow
            upstream.settimeout(10)
            first = upstream.recv(65535)  # the OPTIONS gets through: the path works ...
            assert first.startswith(b"OPTIONS "), first[:80]
            upstream.setblocking(False)
            with pytest.raises(BlockingIOError):  # ... and the REGISTER sent before it never arrived
                upstream.recv(65535)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err.rest()
    assert re.search(r"REGISTER\b.*\bdropped\b", out.rest()), out.rest()  # the console says so
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    dropped = [e for e in events if e["kind"] == "dropped"]
    assert [(e["method"], e["detail"]["rules"]) for e in dropped] == [("REGISTER", [rule])]


def test_a_team_library_adds_entries_and_replaces_built_ins(installed, team):
    done = installed.run("--library", str(team), "profiles", "list")
    assert done.returncode == 0, done.stderr
    rows = {line.split(None, 2)[0]: line.split(None, 2)[1:] for line in done.stdout.splitlines()}
    assert sorted(rows) == sorted([*PROFILES, "team-register-drop"])
    assert rows["team-register-drop"][0] == str(team)
    assert rows["register-drop"] == [str(team), "Team version of register-drop."]
    assert rows["clean"][0] == "built-in"
    assert f"note: register-drop from {team} replaces the built-in profile" in done.stderr

    listed = installed.run("lab", "scenarios", env={"FAULTLAB_PATH": str(team)})
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^\W+S90\s.*team-baseline.*{re.escape(str(team))}", listed.stdout, re.M), listed.stdout
    assert re.search(r"^\W+S01\s.*built-in", listed.stdout, re.M), listed.stdout
    assert f"{len(SCENARIOS) + 1} scenarios." in listed.stdout

    ran = installed.run("--library", str(team), "lab", "run", "-s", "team-baseline", "-p", "team-register-drop",
                        "--seed", "1", "-q")
    assert "S90" in ran.stdout and "team-register-drop" in ran.stdout, ran.stdout + ran.stderr
    assert ran.returncode == 1, ran.stdout + ran.stderr  # no REGISTER gets through: the baseline call fails


def test_a_missing_library_is_an_error_that_names_it(installed, tmp_path):
    done = installed.run("--library", str(tmp_path / "nowhere"), "profiles", "list")
    assert done.returncode == 2
    assert f"--library {tmp_path / 'nowhere'}: no such directory" in done.stderr
    assert "DIR/profiles/*.toml" in done.stderr
