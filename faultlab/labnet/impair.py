"""A profile's ``[link]`` section on every packet of a lab: ``faultlab net impair``.

The lab's devices reach the gateway across the **air** (:mod:`faultlab.labnet.topology`): a namespace
between the devices and the gateway that only forwards. The impairment lives there, on the device side
of the gateway, so every packet a device sends or receives (SIP over UDP, TCP and TLS, RTP, DNS, push
traffic, ...) is impaired once on its way across, whatever the gateway then does with it: forward it, or
hand it to faultlab by interception (TPROXY/REDIRECT). faultlab in the gateway sees a device's packets
after the air and sends to it before the air, as a proxy on a real Wi-Fi network would. ``to-pbx`` is
the way up (from a device), ``to-device`` the way down; the link between the gateway and the PBX is
clean.

- Where the kernel has ``sch_netem`` and pyroute2 can express the spec, a netem qdisc on each of the
  air's interfaces (:mod:`faultlab.labnet.netem`): ``to-device`` on those facing the devices, ``to-pbx``
  on those facing the gateway (netem shapes egress).
- Otherwise (this project's CI kernel has no netem) faultlab's own TUN wire (:mod:`faultlab.labnet.wire`),
  a background process in the air namespace (:mod:`faultlab.labnet.wire_process`) that applies the same
  :class:`~faultlab.faults.LinkState` the proxy uses per SIP message, with a seed.

A faultlab proxy whose profile has a ``[link]`` section applies it per SIP message on its own; in an
impaired lab that comes on top (twice per message): :func:`impair_lab` says so in its text.

:func:`impair_lab` and :func:`clear_lab` are what ``faultlab net impair`` calls, :func:`lab_impairment`
what ``faultlab net status`` shows. They use pyroute2's synchronous API: call them outside trio (or
through ``trio.to_thread``). State lives in ``/run/faultlab/<lab>/`` (``link.json``, ``wire.pid``,
``wire.log``); ``faultlab net down`` removes it.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from ..faults import LinkSpec, Profile, load_profile
from .names import AIR, netns_name
from .netem import apply_netem, clear_netem, netem_available, netem_request, netem_unsupported
from .tun import remove_tuns, unsteer
from .wire_process import WireFailed, is_wire, start_wire, stop_wire, wire_counts

__all__ = [
    "impair_lab",
    "clear_lab",
    "lab_impairment",
    "describe_spec",
    "wire_counts",
    "air_sides",
    "AirSides",
    "PROXY_LINK_NOTE",
    "proxies_with_link",
    "netem_available",
    "netem_request",
    "apply_netem",
    "STATE_ROOT",
]

STATE_ROOT = Path("/run/faultlab")


PROXY_LINK_NOTE = (
    "note: this impairs every packet between the devices and the gateway; a faultlab proxy in the lab "
    "whose profile has a [link] section applies that link per SIP message on top (twice in all): give "
    "the proxy a profile without [link] (e.g. clean) unless you mean both"
)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _profile_arg(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("--profile", "-p") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--profile="):
            return a.split("=", 1)[1]
    return None


def proxies_with_link(lab: str) -> list[tuple[int, str]]:
    """The faultlab proxies running in lab ``lab``'s namespaces whose ``--profile`` has a ``[link]``
    impairment, as (pid, profile name): their SIP messages are impaired by the proxy and by the air."""
    prefix = f"fl-{lab}-"
    try:
        pids = netns.ns_pids()
    except Exception:  # noqa: BLE001 - a namespace that vanished meanwhile: nothing to warn of
        return []
    found = []
    for ns, plist in sorted(pids.items()):
        if not ns.startswith(prefix):
            continue
        for pid in sorted(plist):
            args = _cmdline(pid)
            if "proxy" not in args:
                continue
            head = args[: args.index("proxy")]
            if not any(a == "faultlab" or a.endswith("/faultlab") for a in head):
                continue
            name = _profile_arg(args)
            if name is None:
                continue
            if ("/" in name or name.endswith(".toml")) and not os.path.isabs(name):
                try:
                    name = os.path.join(os.readlink(f"/proc/{pid}/cwd"), name)
                except OSError:
                    continue
            try:
                profile = load_profile(name)
            except Exception:  # noqa: BLE001 - a profile we cannot read: not ours to judge
                continue
            link = profile.link
            if link is not None and not (link.to_pbx.is_clean and link.to_device.is_clean and not link.dns_delay):
                found.append((pid, profile.name))
    return found


def _double_link_warning(lab: str) -> str:
    found = proxies_with_link(lab)
    if not found:
        return PROXY_LINK_NOTE
    who = ", ".join(f"pid {pid} (profile {name})" for pid, name in found)
    return (f"warning: the faultlab proxy {who} in this lab applies its profile's [link] per SIP message on "
            "top of the air's: each SIP message is impaired twice; restart it with a profile without [link] "
            "unless you mean both")


@dataclass(frozen=True)
class AirSides:
    """The air namespace and its interfaces on each side: facing the devices, facing the gateway."""

    air: str
    device_ifs: tuple[str, ...]
    pbx_ifs: tuple[str, ...]  # toward the gateway (and, beyond it, the PBX)


def air_sides(lab: str) -> AirSides:
    """The air of lab ``lab`` (made by :func:`faultlab.labnet.lab_up`): ``fl-<lab>-a<i>`` face the devices,
    ``fl-<lab>-u<i>`` the gateway. :class:`LookupError` if the lab or its air does not exist."""
    air = netns_name(lab, AIR)
    if not _netns_exists(air):
        if _netns_exists(netns_name(lab, "gateway")):
            raise LookupError(f"lab {lab!r} has no air namespace ({air}): it was made by an older faultlab; "
                              f"faultlab net down --name {lab} && faultlab net up --name {lab} makes it anew")
        raise LookupError(f"no lab {lab!r} (no namespace {air}): faultlab net up --name {lab} creates it")
    prefix = f"fl-{lab}-"
    with IPRoute(netns=air, flags=0) as ipr:
        names = sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())
    device = tuple(n for n in names if re.fullmatch(re.escape(prefix) + r"a[0-9]+", n))
    uplink = tuple(n for n in names if re.fullmatch(re.escape(prefix) + r"u[0-9]+", n))
    if not device or not uplink:
        raise LookupError(f"the air of lab {lab!r} ({air}) has no device-side or gateway-side interface: "
                          f"faultlab net down --name {lab} && faultlab net up --name {lab} makes it anew")
    return AirSides(air, device, uplink)


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


def _state_dir(lab: str) -> Path:
    if not lab or "/" in lab or lab in (".", ".."):
        raise ValueError(f"bad lab name {lab!r}")
    return STATE_ROOT / lab


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


_MY_FILES = ("link.json", "wire.pid", "wire.ready", "wire.log", "profile")


def lab_impairment(lab: str) -> dict | None:
    """What impairs lab ``lab`` now (``/run/faultlab/<lab>/link.json``: mode, profile, seed, pid,
    description, ...), with ``"running": False`` when the wire recorded there is gone; None when nothing
    does."""
    try:
        state = json.loads((_state_dir(lab) / "link.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if state.get("mode") == "wire":
        try:
            pid = int((_state_dir(lab) / "wire.pid").read_text().strip())
        except (OSError, ValueError):
            pid = None
        state["pid"] = pid
        state["running"] = pid is not None and is_wire(pid, lab)
    return state


def clear_lab(lab: str) -> str:
    """Undo :func:`impair_lab`: stop the wire it started (only that PID, and
    only while it is still that process), remove its rules, routes and TUNs,
    or delete the netem qdiscs, and its state files. Idempotent: says so when
    there was nothing."""
    state_dir = _state_dir(lab)
    state: dict = {}
    try:
        state = json.loads((state_dir / "link.json").read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(state, dict):
        state = {}
    done: list[str] = []
    pid_file = state_dir / "wire.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None:
        done.append(stop_wire(pid, lab))
        counts = wire_counts(state_dir / "wire.log")
        if counts:
            done.append("it saw " + "; ".join(
                f"{direction} {c.get('in', 0)} packets in, {c.get('lost', 0)} lost, {c.get('out', 0)} out"
                for direction, c in sorted(counts.items())
            ))
    air = state.get("air")
    if not isinstance(air, str):
        try:
            air = netns_name(lab, AIR)
        except Exception:  # noqa: BLE001 - a name topology refuses has no air
            air = None
    if air and _netns_exists(air):
        if state.get("mode") == "netem":
            ifs = [i for i in [*state.get("device_ifs", []), *state.get("pbx_ifs", [])] if isinstance(i, str)]
            cleared = [i for i in ifs if clear_netem(air, i)]
            if cleared:
                done.append(f"removed netem from {', '.join(cleared)}")
        if unsteer(air):
            done.append("removed the wire's routing rules")
        remove_tuns(air)
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
    return f"lab {lab!r}: " + "; ".join(done) + "; the air is clean"


def impair_lab(
    lab: str,
    profile: Profile,
    *,
    seed: int | None = None,
    use_netem: bool | None = None,
    log_packets: bool = False,
) -> str:
    """Apply ``profile``'s ``[link]`` to every packet crossing the lab's
    air, replacing any earlier impairment; a text saying how.

    netem when the kernel has it and it can express the spec, else faultlab's
    TUN wire, started as a detached process in the air namespace (PID in
    ``/run/faultlab/<lab>/wire.pid``) with ``seed`` (a fresh one if None;
    the text names it). ``use_netem`` forces the choice (False: the wire even
    where netem exists)."""
    clear_lab(lab)
    sides = air_sides(lab)
    link = profile.link
    if link is None or (link.to_pbx.is_clean and link.to_device.is_clean and not link.dns_delay):
        return f"lab {lab!r}: profile {profile.name!r} has no [link] impairment; the air is clean"

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
            return _impair_netem(lab, profile, sides) + "\n" + _double_link_warning(lab)
        reason = why if not have else "netem through pyroute2 cannot do " + "; ".join(unsupported)
    else:
        reason = "the wire was asked for"
    return _impair_wire(lab, profile, sides, seed, reason, log_packets) + "\n" + _double_link_warning(lab)


def _write_state(lab: str, state: dict) -> Path:
    state_dir = _state_dir(lab)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "link.json").write_text(json.dumps(state, indent=2) + "\n")
    return state_dir


def _impair_netem(lab: str, profile: Profile, sides: AirSides) -> str:
    link = profile.link
    assert link is not None
    _write_state(
        lab,
        {"mode": "netem", "air": sides.air, "device_ifs": sides.device_ifs, "pbx_ifs": sides.pbx_ifs,
         "profile": profile.name, "description": _describe_link(profile)},
    )
    for ifname in sides.device_ifs:
        apply_netem(sides.air, ifname, link.to_device)
    for ifname in sides.pbx_ifs:
        apply_netem(sides.air, ifname, link.to_pbx)
    return (
        f"lab {lab!r}: sch_netem on the air's links in {sides.air} (to-device on {', '.join(sides.device_ifs)}, "
        f"to-pbx on {', '.join(sides.pbx_ifs)}; the kernel's random numbers, no seed): {_describe_link(profile)}"
    )


def _impair_wire(
    lab: str, profile: Profile, sides: AirSides, seed: int | None, reason: str, log_packets: bool
) -> str:
    if not profile.text:
        raise ValueError(f"profile {profile.name!r} has no TOML text to hand to the wire process")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    state_dir = _write_state(
        lab,
        {
            "mode": "wire",
            "air": sides.air,
            "device_ifs": sides.device_ifs,
            "pbx_ifs": sides.pbx_ifs,
            "seed": seed,
            "profile": profile.name,
            "description": _describe_link(profile),
        },
    )
    profile_dir = state_dir / "profile"
    profile_dir.mkdir(exist_ok=True)
    profile_file = profile_dir / f"{profile.name}.toml"
    profile_file.write_text(profile.text)
    try:
        pid = start_wire(lab, sides.air, profile_file=profile_file, seed=seed, device_ifs=sides.device_ifs,
                         pbx_ifs=sides.pbx_ifs, state_dir=state_dir, log_packets=log_packets)
    except WireFailed:
        clear_lab(lab)
        raise
    return (
        f"lab {lab!r}: {reason}; impairing every packet across the air ({sides.air}) with faultlab's TUN "
        f"wire (pid {pid}, seed {seed}): {_describe_link(profile)}"
    )
