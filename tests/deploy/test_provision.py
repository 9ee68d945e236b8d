"""deploy/provision.sh, the gateway VM's provisioning, in its dry-run mode.

Each test runs the script with a sample configuration and a PATH whose package managers, service and
firewall tools are stubs that record any call: a dry run must call none of them, write nothing, and
print every command and file it would run and write. The printed systemd units are checked against
faultlab's real CLI (each ExecStart option exists in that command's --help and parses), the
interception rules against faultlab.labnet.intercept's own generator, and bad settings must stop the
script before it does anything, saying what is wrong. Nothing here touches the machine's network.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.labnet.intercept import InterceptSpec, ruleset

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "provision.sh"
PBX = "192.168.50.10"

# Commands a dry run must never call; each stub records its call and fails.
STUBS = ("apt-get", "apt", "dpkg", "systemctl", "nft", "ip", "sysctl", "pip", "pip3", "install", "ln", "mv",
         "rm", "chmod", "chown", "cp", "tee", "mktemp", "useradd", "faultlab")
# What a dry run must leave as it found it.
SYSTEM_PATHS = ("/opt/faultlab", "/etc/faultlab", "/var/lib/faultlab", "/var/log/faultlab",
                "/etc/sysctl.d/60-faultlab-gateway.conf", "/usr/local/bin/faultlab",
                *(f"/etc/systemd/system/faultlab-{u}.service" for u in ("proxy", "push-gateway", "intercept", "nat")))

BASE = {"FAULTLAB_PBX": PBX, "FAULTLAB_WIFI_IF": "wlan0"}


@dataclass
class DryRun:
    returncode: int
    stdout: str
    stderr: str
    commands: list[list[str]]
    files: dict[str, str]
    modes: dict[str, str]

    def unit(self, name: str) -> dict[str, list[str]]:
        """A unit file's keys -> values (repeated keys kept in order)."""
        keys: dict[str, list[str]] = {}
        for line in self.files[f"/etc/systemd/system/{name}"].splitlines():
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, value = line.split("=", 1)
                keys.setdefault(key, []).append(value)
        return keys


def _snapshot() -> dict[str, bool]:
    return {p: os.path.lexists(p) for p in SYSTEM_PATHS}


@pytest.fixture
def stub_path(tmp_path: Path) -> tuple[str, Path]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls.log"
    for name in STUBS:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(calls))}\nexit 97\n')
        stub.chmod(0o755)
    return f"{stubs}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", calls


def dry_run(stub_path: tuple[str, Path], settings: dict[str, str], *args: str) -> DryRun:
    path, calls = stub_path
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLAB_") and k != "DRY_RUN"}
    env.update(PATH=path, **settings)
    before = _snapshot()
    done = subprocess.run(["bash", str(SCRIPT), *(args or ("--dry-run",))], env=env, capture_output=True,
                          text=True, timeout=60)
    assert _snapshot() == before, "the dry run created or removed files on the machine"
    assert not calls.exists(), f"the dry run called: {calls.read_text()}"
    files = {m["path"]: m["body"] for m in re.finditer(
        r"^--- (?P<path>/\S+) \(mode (?P<mode>\d+)\)\n(?P<body>.*?)^--- end of (?P=path)$", done.stdout, re.M | re.S)}
    modes = {m[1]: m[2] for m in re.finditer(r"^--- (/\S+) \(mode (\d+)\)$", done.stdout, re.M)}
    commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    return DryRun(done.returncode, done.stdout, done.stderr, commands, files, modes)


def _command_for(argv: list[str]) -> tuple[list[str], object, list[str]]:
    """Split ``faultlab SUB [SUB...] ARGS`` into the command path, its click command and its arguments."""
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(argv)
    while hasattr(command, "get_command") and rest:  # a group (typer may carry its own click)
        sub = command.get_command(command.context_class(command), rest[0])
        if sub is None:
            break
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


def check_faultlab_exec(exec_start: str) -> list[str]:
    """ExecStart runs the venv's faultlab with options that exist and parse; returns its arguments (command first)."""
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/faultlab/venv/bin/faultlab", exec_start
    path, command, rest = _command_for(argv[1:])
    assert path, f"no faultlab command in {exec_start!r}"
    wide = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    help_text = CliRunner().invoke(app, [*path, "--help"], env=wide).output
    declared = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("-"):
            assert word in declared, f"faultlab {' '.join(path)} has no option {word}"
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", help_text), \
                f"{word} is not in `faultlab {' '.join(path)} --help`"
    # the real parser accepts them (types, ranges, required options); nothing runs
    with command.make_context(f"faultlab {' '.join(path)}", list(rest), resilient_parsing=False) as ctx:
        assert ctx.params
    return [*path, *rest]


def _options(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, word in enumerate(args[:-1]) if word == name]


# ---------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_whole_installation(stub_path):
    run = dry_run(stub_path, BASE)
    assert run.returncode == 0, run.stderr
    assert "dry run: nothing was run or written" in run.stdout

    install = next(c for c in run.commands if "apt-get" in c and "install" in c)
    assert {"python3-venv", "nftables", "iproute2", "python3"} <= set(install)
    assert ["python3", "-m", "venv", "/opt/faultlab/venv"] in run.commands
    pip = [c for c in run.commands if c[0] == "/opt/faultlab/venv/bin/pip" and "install" in c]
    assert pip and all(c[-1] == str(REPO) for c in pip[1:]), pip  # from the checkout
    assert ["/opt/faultlab/venv/bin/faultlab", "ca", "init", "--confdir", "/var/lib/faultlab"] in run.commands

    sysctl = run.files["/etc/sysctl.d/60-faultlab-gateway.conf"]
    assert re.search(r"^net\.ipv4\.ip_forward = 1$", sysctl, re.M)
    assert ["sysctl", "-q", "-p", "/etc/sysctl.d/60-faultlab-gateway.conf"] in run.commands

    assert ["systemctl", "daemon-reload"] in run.commands
    enable = next(c for c in run.commands if c[:2] == ["systemctl", "enable"])
    assert {"faultlab-proxy.service", "faultlab-push-gateway.service", "faultlab-nat.service"} <= set(enable)


def test_proxy_unit_runs_a_real_transparent_faultlab_proxy(stub_path):
    run = dry_run(stub_path, BASE)
    unit = run.unit("faultlab-proxy.service")
    (exec_start,) = unit["ExecStart"]
    args = check_faultlab_exec(exec_start)
    assert args[0] == "proxy" and "--transparent" in args
    assert _options(args, "--listen") == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060", "tls:0.0.0.0:5061"]
    assert _options(args, "--api") == ["0.0.0.0:5099"]
    assert "--upstream" not in args and "--spoof-source" not in args
    # the API token is not on the command line (ps would show it) but in the 0600 environment file
    assert "--api-token" not in args
    assert unit["EnvironmentFile"] == ["/etc/faultlab/faultlab.env"]
    assert run.modes["/etc/faultlab/faultlab.env"] == "0600"
    assert re.search(r"^FAULTLAB_API_TOKEN=", run.files["/etc/faultlab/faultlab.env"], re.M)
    assert "faultlab-intercept.service" in unit["Wants"]
    assert unit["WantedBy"] == ["multi-user.target"]


def test_push_gateway_unit_parses(stub_path):
    run = dry_run(stub_path, {**BASE, "FAULTLAB_PUSH_TLS": "1", "FAULTLAB_EVENTS": "0.0.0.0:8091"})
    (exec_start,) = run.unit("faultlab-push-gateway.service")["ExecStart"]
    args = check_faultlab_exec(exec_start)
    assert args[0] == "push-gateway"
    assert _options(args, "--listen") == ["0.0.0.0:2197"]
    assert _options(args, "--events") == ["0.0.0.0:8091"]
    assert "--tls" in args


RELAY = "https://api.sandbox.push.apple.com"
KEY_ID, TEAM_ID = "ABC123DEFG", "DEF123GHIJ"


@pytest.fixture
def apns_key(tmp_path: Path) -> Path:
    """A .p8 key as Apple hands it out: PKCS#8 PEM, EC P-256 (made here, signs nothing real)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _apns_settings(key: Path) -> dict[str, str]:
    return {"FAULTLAB_PUSH_RELAY": RELAY, "FAULTLAB_APNS_KEY": str(key), "FAULTLAB_APNS_KEY_ID": KEY_ID,
            "FAULTLAB_APNS_TEAM_ID": TEAM_ID}


def _key_material(key: Path) -> list[str]:
    """The key's secret lines (its base64 body), none of which may appear in the output."""
    return [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]


def test_push_gateway_relays_to_apns_and_signs_with_the_team_key(stub_path, apns_key):
    run = dry_run(stub_path, {**BASE, **_apns_settings(apns_key)})
    assert run.returncode == 0, run.stderr
    (exec_start,) = run.unit("faultlab-push-gateway.service")["ExecStart"]
    args = check_faultlab_exec(exec_start)
    assert args[0] == "push-gateway"
    assert _options(args, "--relay") == [RELAY]
    assert _options(args, "--apns-key") == ["/etc/faultlab/apns-key.p8"]
    assert _options(args, "--apns-key-id") == [KEY_ID] and _options(args, "--apns-team-id") == [TEAM_ID]
    # the key is copied for root alone, and checked with faultlab's own signer before the unit starts
    assert ["install", "-m", "0600", "-o", "root", "-g", "root", str(apns_key), "/etc/faultlab/apns-key.p8"] \
        in run.commands
    check = next(c for c in run.commands if c[:2] == ["/opt/faultlab/venv/bin/python", "-c"])
    assert "ApnsSigner.from_file" in check[2] and check[3:] == ["/etc/faultlab/apns-key.p8", KEY_ID, TEAM_ID]
    # that check passes on this key (run here, with the key where the unit would read it)
    done = subprocess.run([sys.executable, "-c", check[2], str(apns_key), KEY_ID, TEAM_ID], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "410" not in run.stdout  # no warning about a gateway that cannot reach real phones


def test_the_apns_key_is_never_printed(stub_path, apns_key):
    run = dry_run(stub_path, {**BASE, **_apns_settings(apns_key)})
    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    secret = _key_material(apns_key)
    assert secret and not any(line in output for line in secret)
    assert "PRIVATE KEY" not in output
    # its path and size are shown instead
    assert f"APNs key: {apns_key} ({apns_key.stat().st_size} bytes) -> /etc/faultlab/apns-key.p8" in run.stdout
    assert "/etc/faultlab/apns-key.p8" not in run.files  # copied by install, never printed as a file

    # nor when the configuration is refused
    bad = dry_run(stub_path, {**BASE, **_apns_settings(apns_key), "FAULTLAB_APNS_TEAM_ID": ""})
    assert bad.returncode == 2
    assert not any(line in bad.stdout + bad.stderr for line in secret)


def test_relay_without_a_key_passes_the_pbx_authorization_on(stub_path):
    run = dry_run(stub_path, {**BASE, "FAULTLAB_PUSH_RELAY": "https://api.push.apple.com"})
    assert run.returncode == 0, run.stderr
    args = check_faultlab_exec(run.unit("faultlab-push-gateway.service")["ExecStart"][0])
    assert _options(args, "--relay") == ["https://api.push.apple.com"]
    assert not {"--apns-key", "--apns-key-id", "--apns-team-id"} & set(args)
    assert not any("install" in c and "/etc/faultlab/apns-key.p8" in c for c in run.commands)


def test_without_a_relay_the_dry_run_warns_that_real_phones_get_410(stub_path):
    run = dry_run(stub_path, BASE)
    assert run.returncode == 0, run.stderr
    args = check_faultlab_exec(run.unit("faultlab-push-gateway.service")["ExecStart"][0])
    assert "--relay" not in args and "--apns-key" not in args
    assert "FAULTLAB_PUSH_RELAY is not set" in run.stdout and "410 Unregistered" in run.stdout


@pytest.mark.parametrize(("drop", "missing"), [
    (("FAULTLAB_APNS_KEY",), "FAULTLAB_APNS_KEY_ID, FAULTLAB_APNS_TEAM_ID given, FAULTLAB_APNS_KEY missing"),
    (("FAULTLAB_APNS_KEY_ID",), "FAULTLAB_APNS_KEY, FAULTLAB_APNS_TEAM_ID given, FAULTLAB_APNS_KEY_ID missing"),
    (("FAULTLAB_APNS_KEY_ID", "FAULTLAB_APNS_TEAM_ID"),
     "FAULTLAB_APNS_KEY given, FAULTLAB_APNS_KEY_ID, FAULTLAB_APNS_TEAM_ID missing"),
])
def test_a_partial_set_of_apns_settings_is_refused(stub_path, apns_key, drop, missing):
    settings = {k: v for k, v in _apns_settings(apns_key).items() if k not in drop}
    run = dry_run(stub_path, {**BASE, **settings})
    assert run.returncode == 2
    assert "the configuration is not valid, nothing was done" in run.stderr
    assert "FAULTLAB_APNS_KEY, FAULTLAB_APNS_KEY_ID and FAULTLAB_APNS_TEAM_ID go together" in run.stderr
    assert missing in run.stderr and "set all three, or none" in run.stderr
    assert not run.commands and not run.files


def test_bad_apns_settings_are_refused(stub_path, apns_key):
    def refused(extra: dict[str, str]) -> str:
        run = dry_run(stub_path, {**BASE, **_apns_settings(apns_key), **extra})
        assert run.returncode == 2 and not run.commands and not run.files
        return run.stderr

    assert "FAULTLAB_APNS_KEY_ID='ABC123' is not 10 letters or digits" in refused({"FAULTLAB_APNS_KEY_ID": "ABC123"})
    assert "FAULTLAB_APNS_TEAM_ID='DEF123GHI!' is not 10 letters or digits" in \
        refused({"FAULTLAB_APNS_TEAM_ID": "DEF123GHI!"})
    assert f"FAULTLAB_APNS_KEY='{apns_key}.missing' does not exist on this machine" in \
        refused({"FAULTLAB_APNS_KEY": f"{apns_key}.missing"})
    assert "FAULTLAB_APNS_KEY='AuthKey.p8': an absolute path" in refused({"FAULTLAB_APNS_KEY": "AuthKey.p8"})
    assert "they need FAULTLAB_PUSH_RELAY" in refused({"FAULTLAB_PUSH_RELAY": ""})
    assert "FAULTLAB_PUSH_RELAY='api.push.apple.com': the APNs URL" in \
        refused({"FAULTLAB_PUSH_RELAY": "api.push.apple.com"})


def _intercept_dry_run(args: list[str]) -> str:
    """The ruleset `faultlab gateway intercept ARGS --dry-run` prints (what the unit would apply)."""
    wide = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    done = CliRunner().invoke(app, [*args, "--dry-run"], env=wide)
    assert done.exit_code == 0, done.output
    return done.output.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0] + "\n"


def test_interception_is_faultlab_gateway_intercept_on_the_wifi_interface(stub_path):
    run = dry_run(stub_path, {**BASE, "FAULTLAB_PBX_PORTS": "5060,5061,5080"})
    assert run.returncode == 0, run.stderr
    unit = run.unit("faultlab-intercept.service")
    (exec_start,) = unit["ExecStart"]
    args = check_faultlab_exec(exec_start)
    assert args[:2] == ["gateway", "intercept"] and "--off" not in args and "--spoof-source" not in args
    assert _options(args, "--pbx") == [PBX] and _options(args, "--iface") == ["wlan0"]
    assert _options(args, "--ports") == ["5060,5061,5080"] and _options(args, "--tls-ports") == ["5061"]
    assert _options(args, "--table") == ["faultlab_gw"]
    assert (_options(args, "--proxy-udp-port"), _options(args, "--proxy-tcp-port"),
            _options(args, "--proxy-tls-port")) == (["5060"], ["5060"], ["5061"])
    (exec_stop,) = unit["ExecStop"]
    assert check_faultlab_exec(exec_stop) == ["gateway", "intercept", "--off", "--table", "faultlab_gw"]
    assert unit["BindsTo"] == ["faultlab-proxy.service"]
    # provisioning checks the values with the same command line before writing the unit
    assert ["/opt/faultlab/venv/bin/faultlab", *args, "--dry-run"] in run.commands
    assert ["systemctl", "restart", "faultlab-intercept.service"] in run.commands
    assert "/etc/faultlab/intercept.nft" not in run.files

    # what it applies is faultlab's own ruleset: the lab's, each rule toward the PBX restricted to wlan0
    rules = _intercept_dry_run(args)
    to_pbx = [line for line in rules.splitlines() if f"ip daddr {PBX}" in line]
    assert len(to_pbx) == 3 and all(line.lstrip().startswith('iifname "wlan0" ') for line in to_pbx)
    lab = InterceptSpec.make(pbx=PBX, ports=(5060, 5061, 5080), proxy_udp_port=5060, proxy_tcp_port=5060,
                             proxy_tls_port=5061, table="faultlab_gw")
    assert rules.replace('iifname "wlan0" ', "").replace("counter ", "") == ruleset(lab)


def test_spoof_source_marks_the_pbx_answers_on_any_interface(stub_path):
    run = dry_run(stub_path, {**BASE, "FAULTLAB_SPOOF_SOURCE": "1", "FAULTLAB_MASQUERADE": "0"})
    assert run.returncode == 0, run.stderr
    args = check_faultlab_exec(run.unit("faultlab-intercept.service")["ExecStart"][0])
    assert "--spoof-source" in args
    rules = _intercept_dry_run(args)
    answers = [line.strip() for line in rules.splitlines() if f"ip saddr {PBX}" in line]
    assert len(answers) == 2 and not any("iifname" in line for line in answers)
    args = check_faultlab_exec(run.unit("faultlab-proxy.service")["ExecStart"][0])
    assert "--spoof-source" in args
    assert "/etc/faultlab/masquerade.nft" not in run.files


def test_listeners_decide_which_transports_are_intercepted(stub_path):
    run = dry_run(stub_path, {**BASE, "FAULTLAB_LISTEN": "udp:0.0.0.0:5070", "FAULTLAB_PBX_TLS_PORTS": "none"})
    assert run.returncode == 0, run.stderr
    args = check_faultlab_exec(run.unit("faultlab-intercept.service")["ExecStart"][0])
    assert _options(args, "--tls-ports") == ["none"]
    assert (_options(args, "--proxy-udp-port"), _options(args, "--proxy-tcp-port"),
            _options(args, "--proxy-tls-port")) == (["5070"], ["0"], ["0"])
    rules = _intercept_dry_run(args)
    assert "redirect" not in rules and "tproxy ip to :5070" in rules


def test_relay_mode_forwards_to_the_pbx_per_transport(stub_path):
    run = dry_run(stub_path, {**BASE, "FAULTLAB_TRANSPARENT": "0", "FAULTLAB_PBX_PORTS": "5070,5071",
                              "FAULTLAB_PBX_TLS_PORTS": "5071", "FAULTLAB_API": "127.0.0.1:5099",
                              "FAULTLAB_PROFILE": "invite-delay-3s", "FAULTLAB_UPSTREAM_INSECURE": "1"})
    assert run.returncode == 0, run.stderr
    args = check_faultlab_exec(run.unit("faultlab-proxy.service")["ExecStart"][0])
    assert "--transparent" not in args
    assert _options(args, "--upstream") == [f"udp:{PBX}:5070", f"tcp:{PBX}:5070", f"tls:{PBX}:5071"]
    assert _options(args, "--profile") == ["invite-delay-3s"]
    assert ["/opt/faultlab/venv/bin/faultlab", "profiles", "show", "invite-delay-3s"] in run.commands
    assert "--upstream-insecure" in args
    assert "/etc/faultlab/intercept.nft" not in run.files
    assert "/etc/systemd/system/faultlab-intercept.service" not in run.files


def test_masquerade_rules(stub_path):
    run = dry_run(stub_path, BASE)
    nat = run.files["/etc/faultlab/masquerade.nft"]
    assert 'iifname "wlan0" oifname != "wlan0" masquerade' in nat
    assert "type nat hook postrouting" in nat
    assert run.unit("faultlab-nat.service")["ExecStart"] == ["/usr/sbin/nft -f /etc/faultlab/masquerade.nft"]


def test_a_given_api_token_is_never_printed(stub_path):
    token = "s3cret-token-for-the-lab"
    run = dry_run(stub_path, {**BASE, "FAULTLAB_API_TOKEN": token})
    assert run.returncode == 0, run.stderr
    assert token not in run.stdout + run.stderr
    assert "FAULTLAB_API_TOKEN=********" in run.files["/etc/faultlab/faultlab.env"]


def test_dry_run_env_variable_equals_the_flag(stub_path):
    flag = dry_run(stub_path, BASE, "--dry-run")
    env = dry_run(stub_path, {**BASE, "DRY_RUN": "1"}, "-n")
    assert flag.stdout == env.stdout and flag.returncode == env.returncode == 0


@pytest.mark.parametrize(("settings", "expected"), [
    ({"FAULTLAB_PBX": ""}, "FAULTLAB_PBX is not set: give the PBX's IPv4 address, e.g. FAULTLAB_PBX="),
    ({"FAULTLAB_PBX": "pbx.example.test"}, "FAULTLAB_PBX='pbx.example.test' is not an IPv4 address"),
    ({"FAULTLAB_PBX": "192.168.50.300"}, "FAULTLAB_PBX='192.168.50.300' is not an IPv4 address"),
    ({"FAULTLAB_PBX": "fd00::10"}, "IPv4 only"),
    ({"FAULTLAB_PBX_PORTS": "5060,sip"}, "FAULTLAB_PBX_PORTS='5060,sip': comma-separated port numbers"),
    ({"FAULTLAB_PBX_PORTS": "70000"}, "FAULTLAB_PBX_PORTS='70000'"),
    ({"FAULTLAB_WIFI_IF": "wlan0; rm -rf /"}, "FAULTLAB_WIFI_IF='wlan0; rm -rf /' is not an interface name"),
    ({"FAULTLAB_TRANSPARENT": "yes"}, "FAULTLAB_TRANSPARENT='yes': use 1 (yes) or 0 (no)"),
    ({"FAULTLAB_LISTEN": "udp:0.0.0.0:5060 sctp:0.0.0.0:5060"}, "'sctp:0.0.0.0:5060' is not TRANSPORT:HOST:PORT"),
    ({"FAULTLAB_LISTEN": "udp:0.0.0.0:5060 udp:0.0.0.0:5062"}, "two udp listeners"),
    ({"FAULTLAB_API": "5099"}, "FAULTLAB_API='5099': HOST:PORT"),
    ({"FAULTLAB_SPOOF_SOURCE": "1"}, "set FAULTLAB_MASQUERADE=0"),
    ({"FAULTLAB_TRANSPARENT": "0", "FAULTLAB_SPOOF_SOURCE": "1", "FAULTLAB_MASQUERADE": "0"},
     "FAULTLAB_SPOOF_SOURCE=1 needs FAULTLAB_TRANSPARENT=1"),
    ({"FAULTLAB_UPSTREAM_CA": "/vagrant/ca.pem", "FAULTLAB_UPSTREAM_INSECURE": "1"}, "contradict each other"),
    ({"FAULTLAB_TRANSPARENT": "0", "FAULTLAB_PBX_TLS_PORTS": "none"}, "a tls listener but no TLS port"),
    ({"FAULTLAB_SRC": "/nonexistent"}, "FAULTLAB_SRC='/nonexistent' is not a faultlab checkout"),
])
def test_bad_configuration_stops_before_doing_anything(stub_path, settings, expected):
    run = dry_run(stub_path, {**BASE, **settings})
    assert run.returncode == 2
    assert "the configuration is not valid, nothing was done" in run.stderr
    assert expected in run.stderr
    assert not run.commands and not run.files


def test_every_problem_is_reported_at_once(stub_path):
    run = dry_run(stub_path, {"FAULTLAB_PBX": "pbx", "FAULTLAB_API": "x", "FAULTLAB_PUSH": "maybe"})
    assert run.returncode == 2
    assert all(s in run.stderr for s in ("FAULTLAB_PBX='pbx'", "FAULTLAB_API='x'", "FAULTLAB_PUSH='maybe'"))


def test_unknown_argument(stub_path):
    run = dry_run(stub_path, BASE, "--dryrun")
    assert run.returncode == 2 and "unknown argument '--dryrun'" in run.stderr


def test_help_lists_the_settings(stub_path):
    run = dry_run(stub_path, {}, "--help")
    assert run.returncode == 0
    assert "FAULTLAB_PBX" in run.stdout and "--dry-run" in run.stdout


def test_unit_templates_have_no_unknown_placeholders():
    script = SCRIPT.read_text()
    for template in (REPO / "deploy" / "systemd").glob("*.service"):
        for key in set(re.findall(r"@([A-Z_]+)@", template.read_text())):
            assert f"{key}=" in script, f"{template.name}: @{key}@ is never filled in by provision.sh"


@pytest.mark.netns
def test_generated_rulesets_pass_nft_check_in_a_scratch_namespace(stub_path, tmp_path):
    """nft -c (check only, nothing applied) in a network namespace made for this test and gone after it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: nft -c in a new network namespace")
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.skip("needs nft (nftables) and unshare (util-linux)")
    nft = shutil.which("nft")
    plain = dry_run(stub_path, BASE)
    spoof = dry_run(stub_path, {**BASE, "FAULTLAB_SPOOF_SOURCE": "1", "FAULTLAB_MASQUERADE": "0"})
    scripts = {"masquerade.nft": plain.files["/etc/faultlab/masquerade.nft"]}
    for label, run in (("plain", plain), ("spoof", spoof)):
        args = check_faultlab_exec(run.unit("faultlab-intercept.service")["ExecStart"][0])
        scripts[f"{label}-intercept.nft"] = _intercept_dry_run(args)
    for name, text in scripts.items():
        path = tmp_path / name
        path.write_text(text)
        done = subprocess.run(["unshare", "--net", nft, "-c", "-f", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"{name}: {done.stderr}"


@pytest.mark.integration
def test_the_install_step_installs_a_wheel_that_carries_the_library(stub_path, tmp_path):
    """The dry run's pip commands, run for real (the last one, which installs this checkout; the dependencies
    come from this environment instead of PyPI) into a fresh virtualenv: the gateway's faultlab is not an
    editable install of the checkout, and has every built-in profile and scenario. tests/ship runs the rest of
    what ships (demo, proxy) from a wheel."""
    from tests.ship.install import check_isolated, copy_checkout, fresh_venv, run as run_cmd, user_env

    dry = dry_run(stub_path, {**BASE, "FAULTLAB_PROFILE": "register-drop"})
    assert dry.returncode == 0, dry.stderr
    pip = [c for c in dry.commands if c[0] == "/opt/faultlab/venv/bin/pip" and c[-1] == str(REPO)]
    assert len(pip) == 2 and not any({"-e", "--editable"} & set(c) for c in pip), pip
    install = pip[-1]
    assert {"--force-reinstall", "--no-deps"} <= set(install), install
    after = dry.commands[dry.commands.index(install) + 1:]
    assert ["/opt/faultlab/venv/bin/faultlab", "profiles", "list"] in after
    assert ["/opt/faultlab/venv/bin/faultlab", "profiles", "show", "register-drop"] in after

    src = copy_checkout(tmp_path / "src")  # the VM builds in its own copy too (rsync of the checkout)
    python = fresh_venv(tmp_path / "venv")
    done = run_cmd([sys.executable, "-m", "pip", "--python", python, *install[1:-1], src])
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = user_env(tmp_path / "venv", tmp_path / "home")
    check_isolated(python, tmp_path / "venv", env, elsewhere)
    faultlab = tmp_path / "venv" / "bin" / "faultlab"
    listed = run_cmd([faultlab, "profiles", "list"], env=env, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == \
        sorted(p.stem for p in (REPO / "profiles").glob("*.toml"))
    shown = run_cmd([faultlab, "profiles", "show", "register-drop"], env=env, cwd=elsewhere)
    assert shown.returncode == 0 and "drop" in shown.stdout, shown.stderr
    scenarios = run_cmd([faultlab, "lab", "scenarios"], env=env, cwd=elsewhere)
    assert scenarios.returncode == 0, scenarios.stderr
    assert f"{len(list((REPO / 'scenarios').glob('*.toml')))} scenarios." in scenarios.stdout
