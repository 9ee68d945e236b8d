"""faultlab.link: a profile's ``[link]`` section on every packet of a lab.

Each direction is shaped on the lab gateway: ``to-device`` on its
device-side interfaces, ``to-pbx`` on its PBX-side interface, for every
packet (SIP, RTP, DNS, push traffic...), not only SIP.

- Where the kernel has ``sch_netem`` and pyroute2 can express the spec, a
  netem qdisc per gateway interface (:mod:`faultlab.link.netem`).
- Otherwise (this project's CI kernel has no netem) faultlab's own TUN wire
  (:mod:`faultlab.link.wire`), a background process in the gateway namespace
  that applies the same :class:`~faultlab.faults.LinkState` the proxy uses
  per SIP message, with a seed.

:func:`impair_lab` and :func:`clear_lab` are what ``faultlab net impair``
calls. Both use pyroute2's synchronous API: call them outside trio (or through
``trio.to_thread``). State lives in ``/run/faultlab/<lab>/`` (``link.json``,
``wire.pid``, ``wire.log``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..faults import LinkSpec, Profile
from .netem import apply_netem, clear_netem, netem_available, netem_request, netem_unsupported

__all__ = [
    "impair_lab",
    "clear_lab",
    "describe_spec",
    "wire_counts",
    "gateway_sides",
    "GatewaySides",
    "netem_available",
    "netem_request",
    "apply_netem",
    "STATE_ROOT",
]

STATE_ROOT = Path("/run/faultlab")
READY_TIMEOUT = 15.0
"""Seconds to wait for the wire to steer packets (importing scapy and trio included)."""
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class GatewaySides:
    """The gateway namespace and its interfaces on each side."""

    gateway: str
    device_ifs: tuple[str, ...]
    pbx_ifs: tuple[str, ...]


def _addresses(ipr) -> list[tuple[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    out = []
    for msg in ipr.get_addr():
        iface = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        if not (iface.ip.is_loopback or iface.ip.is_link_local):
            out.append((msg["index"], iface))
    return out


def gateway_sides(gateway_netns: str, pbx_netns: str, device_netns: tuple[str, ...] | list[str] = ()) -> GatewaySides:
    """Which gateway interfaces face the PBX (their subnet holds one of the PBX
    namespace's addresses) and which face the devices (their subnet holds an
    address of one of ``device_netns``; with none given, every other
    interface with an address). Interfaces on neither side are not impaired."""
    from pyroute2 import IPRoute

    def addresses_of(ns: str) -> list:
        with IPRoute(netns=ns, flags=0) as ipr:
            return [iface.ip for _, iface in _addresses(ipr)]

    pbx_addrs = addresses_of(pbx_netns)
    device_addrs = [a for ns in device_netns for a in addresses_of(ns)]
    with IPRoute(netns=gateway_netns, flags=0) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        device: list[str] = []
        pbx: list[str] = []
        for index, iface in _addresses(ipr):
            name = names.get(index)
            if not name or name.startswith("fltun"):
                continue
            if any(a in iface.network for a in pbx_addrs):
                side = pbx
            elif not device_netns or any(a in iface.network for a in device_addrs):
                side = device
            else:
                continue
            if name not in side:
                side.append(name)
    device = [n for n in device if n not in pbx]
    if not pbx:
        raise LookupError(f"no interface of {gateway_netns!r} shares a subnet with {pbx_netns!r}")
    if not device:
        raise LookupError(f"{gateway_netns!r} has no device-side interface")
    return GatewaySides(gateway_netns, tuple(device), tuple(pbx))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def describe_spec(spec: LinkSpec) -> str:
    """``"100 ms ±30 ms, 10% loss, 780 kbit/s"``; ``"clean"``."""
    if spec.is_clean:
        return "clean"
    parts = []
    if spec.delay or spec.jitter:
        text = _ms(spec.delay)
        if spec.jitter:
            text += f" ±{_ms(spec.jitter)}" + (" (normal)" if spec.distribution == "normal" else "")
        parts.append(text)
    if spec.loss_model is not None:
        m = spec.loss_model
        parts.append(f"Gilbert-Elliott loss p={m.p:.3g} r={m.r:.3g} h={m.h:.3g} k={m.k:.3g} (mean {m.mean_loss:.1%})")
    elif spec.loss:
        parts.append(f"{spec.loss * 100:g}% loss")
    if spec.duplicate:
        parts.append(f"{spec.duplicate * 100:g}% duplicate")
    if spec.reorder:
        parts.append(f"{spec.reorder * 100:g}% reorder")
    if spec.rate_bps is not None:
        parts.append(f"{spec.rate_bps / 1000:g} kbit/s")
    return ", ".join(parts)


def _describe_link(profile: Profile) -> str:
    link = profile.link
    assert link is not None
    text = "; ".join(f"{d} {describe_spec(link.for_direction(d))}" for d in ("to-device", "to-pbx"))
    if link.dns_delay:
        text += f"; DNS answers {_ms(link.dns_delay)} late"
    return text


def _lab_netns(lab: str, namespaces: Mapping | None) -> tuple[str, str, tuple[str, ...]]:
    """(gateway, pbx, devices) namespaces: from ``namespaces`` or the topology's names."""
    if namespaces is not None:
        return namespaces["gateway"], namespaces["pbx"], tuple(namespaces.get("devices", ()))
    from ..netns.topology import netns_name  # the lab topology's naming: fl-<lab>-<role>

    prefix = netns_name(lab, "device")
    try:
        found = os.listdir("/run/netns")
    except OSError:
        found = []
    devices = sorted(n for n in found if n.startswith(prefix) and n[len(prefix) :].isdigit())
    return netns_name(lab, "gateway"), netns_name(lab, "pbx"), tuple(devices)


def _state_dir(lab: str) -> Path:
    if not lab or "/" in lab or lab in (".", ".."):
        raise ValueError(f"bad lab name {lab!r}")
    return STATE_ROOT / lab


def _is_wire(pid: int, lab: str) -> bool:
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
    return b"faultlab.link.wire" in args and args[i + 1 : i + 2] == [lab.encode()]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass


def _stop_wire(pid: int, lab: str) -> str:
    if not _is_wire(pid, lab):
        _reap(pid)
        return f"the wire (pid {pid}) was not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        _reap(pid)
        if not _is_wire(pid, lab):
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


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _remove_tun(gateway: str) -> None:
    from pyroute2 import IPRoute

    from .wire import TUN_NAME

    with IPRoute(netns=gateway, flags=0) as ipr:
        for index in ipr.link_lookup(ifname=TUN_NAME):
            try:
                ipr.link("del", index=index)
            except Exception:
                pass


_MY_FILES = ("link.json", "wire.pid", "wire.ready", "wire.log", "profile")


def clear_lab(lab: str, *, namespaces: Mapping[str, str] | None = None) -> str:
    """Undo :func:`impair_lab`: stop the wire it started (only that PID, and
    only while it is still that process), remove its rules, routes and TUN,
    or delete the netem qdiscs. Idempotent: says so when there was nothing.
    ``namespaces`` (as for :func:`impair_lab`) is only needed when
    there is no record of the impairment and the lab was not made by
    faultlab's topology."""
    state_dir = _state_dir(lab)
    state: dict = {}
    try:
        state = json.loads((state_dir / "link.json").read_text())
    except (OSError, ValueError):
        pass
    done: list[str] = []
    pid_file = state_dir / "wire.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None:
        done.append(_stop_wire(pid, lab))
        counts = wire_counts(state_dir / "wire.log")
        if counts:
            done.append("it saw " + "; ".join(
                f"{direction} {c.get('in', 0)} packets in, {c.get('lost', 0)} lost, {c.get('out', 0)} out"
                for direction, c in sorted(counts.items())
            ))
    gateway = state.get("gateway")
    if gateway is None:
        try:
            gateway = _lab_netns(lab, namespaces)[0]
        except (ImportError, KeyError):
            gateway = None
    if gateway and _netns_exists(gateway):
        if state.get("mode") == "netem":
            cleared = [i for i in state.get("device_ifs", []) + state.get("pbx_ifs", []) if clear_netem(gateway, i)]
            if cleared:
                done.append(f"removed netem from {', '.join(cleared)}")
        from .wire import unsteer

        if unsteer(gateway):
            done.append("removed the wire's routing rules")
        _remove_tun(gateway)
    for name in _MY_FILES:
        path = state_dir / name
        if path.is_dir():
            for child in path.iterdir():
                child.unlink(missing_ok=True)
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass  # other parts of faultlab keep files there, or it is gone
    if not done:
        return f"lab {lab!r}: no link impairment to clear"
    return f"lab {lab!r}: " + "; ".join(done) + "; the links are clean"


def impair_lab(
    lab: str,
    profile: Profile,
    *,
    seed: int | None = None,
    namespaces: Mapping[str, str] | None = None,
    use_netem: bool | None = None,
    log_packets: bool = False,
) -> str:
    """Apply ``profile``'s ``[link]`` to every packet crossing the lab's
    gateway, replacing any earlier impairment; a text saying how.

    netem when the kernel has it and it can express the spec, else faultlab's
    TUN wire, started as a detached process in the gateway namespace (PID in
    ``/run/faultlab/<lab>/wire.pid``) with ``seed`` (a fresh one if None;
    the text names it). ``use_netem`` forces the choice (False: the wire even
    where netem exists). ``namespaces`` (``{"gateway": ..., "pbx": ...}``)
    (optionally ``"devices": [...]``) overrides the topology's names, for
    labs made by other means."""
    clear_lab(lab, namespaces=namespaces)
    gateway, pbx, devices = _lab_netns(lab, namespaces)
    link = profile.link
    if link is None or (link.to_pbx.is_clean and link.to_device.is_clean and not link.dns_delay):
        return f"lab {lab!r}: profile {profile.name!r} has no [link] impairment; the links are clean"
    sides = gateway_sides(gateway, pbx, devices)

    unsupported = netem_unsupported(link.to_device) + netem_unsupported(link.to_pbx)
    if link.dns_delay:
        unsupported.append("a DNS delay (netem delays a whole link, not DNS answers)")
    if use_netem is None or use_netem:
        have, why = netem_available()
        if use_netem and not have:
            raise RuntimeError(f"lab {lab!r}: netem requested, but {why}")
        if use_netem and unsupported:
            raise RuntimeError(f"lab {lab!r}: netem requested, but it cannot do " + "; ".join(unsupported))
        if have and not unsupported:
            return _impair_netem(lab, profile, sides)
        reason = why if not have else "netem through pyroute2 cannot do " + "; ".join(unsupported)
    else:
        reason = "the wire was asked for"
    return _impair_wire(lab, profile, sides, seed, reason, log_packets)


def _write_state(lab: str, state: dict) -> Path:
    state_dir = _state_dir(lab)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "link.json").write_text(json.dumps(state, indent=2) + "\n")
    return state_dir


def _impair_netem(lab: str, profile: Profile, sides: GatewaySides) -> str:
    link = profile.link
    assert link is not None
    _write_state(
        lab,
        {"mode": "netem", "gateway": sides.gateway, "device_ifs": sides.device_ifs, "pbx_ifs": sides.pbx_ifs},
    )
    for ifname in sides.device_ifs:
        apply_netem(sides.gateway, ifname, link.to_device)
    for ifname in sides.pbx_ifs:
        apply_netem(sides.gateway, ifname, link.to_pbx)
    return (
        f"lab {lab!r}: sch_netem on the gateway's links (to-device on {', '.join(sides.device_ifs)}, "
        f"to-pbx on {', '.join(sides.pbx_ifs)}; the kernel's random numbers, no seed): {_describe_link(profile)}"
    )


def _impair_wire(
    lab: str, profile: Profile, sides: GatewaySides, seed: int | None, reason: str, log_packets: bool
) -> str:
    if not profile.text:
        raise ValueError(f"profile {profile.name!r} has no TOML text to hand to the wire process")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    state_dir = _write_state(
        lab,
        {
            "mode": "wire",
            "gateway": sides.gateway,
            "device_ifs": sides.device_ifs,
            "pbx_ifs": sides.pbx_ifs,
            "seed": seed,
            "profile": profile.name,
        },
    )
    profile_dir = state_dir / "profile"
    profile_dir.mkdir(exist_ok=True)
    profile_file = profile_dir / f"{profile.name}.toml"
    profile_file.write_text(profile.text)
    ready = state_dir / "wire.ready"
    ready.unlink(missing_ok=True)
    cmd = ["ip", "netns", "exec", sides.gateway, sys.executable, "-m", "faultlab.link.wire"]
    cmd += ["--lab", lab, "--profile-file", str(profile_file), "--seed", str(seed), "--ready-file", str(ready)]
    for ifname in sides.device_ifs:
        cmd += ["--device-if", ifname]
    for ifname in sides.pbx_ifs:
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
            clear_lab(lab)
            if proc.returncode is not None:
                what = f"exited with {proc.returncode}"
            else:
                what = f"was not ready in {READY_TIMEOUT:g} s"
            raise RuntimeError(f"lab {lab!r}: the TUN wire {what}; its log:\n{tail}")
        time.sleep(0.02)
    return (
        f"lab {lab!r}: {reason}; impairing every packet through faultlab's TUN wire "
        f"(pid {proc.pid}, seed {seed}): {_describe_link(profile)}"
    )
