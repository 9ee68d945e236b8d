"""The lab network: device, air, gateway and PBX namespaces joined by veth pairs (pyroute2, sync).

Address plan (``subnet`` defaults to ``10.213.0.0/16``; it is cut into /24 blocks, taken in order):

* block 0 (``10.213.0.0/24``) joins the gateway and the PBX: gateway ``.1`` on ``fl-<lab>-gp``,
  PBX ``.2`` on ``fl-<lab>-p``;
* block *i* (``10.213.i.0/24``) joins the gateway and device *i*: gateway ``.1`` on ``fl-<lab>-g<i>``,
  device ``.2`` on ``fl-<lab>-d<i>``;
* between the devices and the gateway lies the **air** (``fl-<lab>-air``): a namespace with no address
  of its own that only forwards. Device *i*'s link ends there on ``fl-<lab>-a<i>``, and
  ``fl-<lab>-u<i>`` (its uplink) joins the air to the gateway's ``fl-<lab>-g<i>``. Proxy ARP on both
  makes the two ends of block *i* see each other as if on one wire: the device's next hop is still
  the gateway's ``.1``, and the gateway's neighbour is still the device's ``.2``. What a device sends
  goes up its own uplink (policy rules ``iif fl-<lab>-a<i>`` and, for packets the link impairment
  hands back, ``iif fltun0 from 10.213.i.0/24``, to table ``AIR_TABLE + i``); what comes down goes
  to the device by its /32 route. So every packet a device sends or receives crosses the air once,
  and that is where ``faultlab net impair`` impairs it (:mod:`faultlab.link`): before the gateway,
  and therefore before the gateway's interception and faultlab see it;
* the device and PBX namespaces route everything (default route) via the gateway's address on their
  link; the gateway forwards (``net.ipv4.ip_forward=1`` in its namespace) and is directly connected to
  every block, so device -> PBX traffic always crosses the gateway, where faultlab intercepts it;
* ``lo`` is up in every namespace.

A /16 thus holds up to 255 devices, a /22 three. Each role's main address (:attr:`Role.address`) is
the device's or PBX's ``.2`` and, for the gateway, its PBX-side ``.1`` (``10.213.0.1``).

Every object carries the lab's name: the namespaces are ``fl-<lab>-<role>`` and every interface is
``fl-<lab>-<suffix>``. All veths live inside the lab's namespaces (never in the host's), so removing
the namespaces removes them, and :func:`lab_down` finds whatever a crashed ``lab_up`` left by the
prefix alone. The subnet is remembered in the kernel, as the alias of the gateway's PBX-side link,
so :func:`lab_status` needs no state file.

pyroute2 drives its own asyncio loop and forks to open namespace sockets: call these plain sync
functions before ``trio.run`` or through ``trio.to_thread.run_sync``, never inside a trio task.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

PREFIX = "fl"
IFNAMSIZ = 15  # usable characters of a Linux interface name (IFNAMSIZ 16 minus the NUL)
MAX_NAME = IFNAMSIZ - len(PREFIX) - 2 - len("gp")  # "fl-" + name + "-gp": 9 characters
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SETTLE = 5.0  # seconds to wait for an RTNL change to show up before calling it failed
_ALIAS_KEY = "faultlab-lab"
AIR = "air"
"""The role of the namespace between the devices and the gateway, where the link impairment lives."""
AIR_TABLE = 3000
"""Routing table ``AIR_TABLE + i`` in the air holds device *i*'s uplink (default via the gateway)."""
AIR_RULE_PRIORITY = 3000
"""Priority of the air's uplink rules: after the link impairment's (:data:`faultlab.link.wire.PRIORITY`)."""
AIR_UP_TUN = "fltun0"
"""The TUN the link impairment writes packets bound up (toward the gateway) back to."""

T = TypeVar("T")


class LabError(Exception):
    """A lab operation failed; the message says what to do. ``usage`` is true for bad input."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


NOT_ROOT = "faultlab net needs root (network namespaces): run it with sudo"


# -- names ------------------------------------------------------------------------------------------

def _check_name(lab: str) -> None:
    if not isinstance(lab, str) or not _NAME_RE.fullmatch(lab):
        raise LabError(f"bad lab name {lab!r}: use letters, digits and '_' (no '-'), starting with a letter or digit",
                       usage=True)
    if len(lab) > MAX_NAME:
        raise LabError(f"lab name {lab!r} is too long ({len(lab)} characters): interface names "
                       f"'{PREFIX}-<name>-...' must fit in {IFNAMSIZ} characters (IFNAMSIZ), "
                       f"so the name may have at most {MAX_NAME}", usage=True)


def _max_name(devices: int) -> int:
    return min(MAX_NAME, IFNAMSIZ - len(PREFIX) - 2 - len(f"g{devices}"))


def _ns_prefix(lab: str) -> str:
    return f"{PREFIX}-{lab}-"


def netns_name(lab: str, role: str) -> str:
    """The namespace of ``role`` ("gateway", "pbx", "device1".."deviceN") in lab ``lab``: ``fl-<lab>-<role>``."""
    _check_name(lab)
    if not isinstance(role, str) or not _ROLE_RE.fullmatch(role):
        raise LabError(f"bad role {role!r}: expected gateway, pbx or device<N>", usage=True)
    return f"{_ns_prefix(lab)}{role}"


def _ifname(lab: str, suffix: str) -> str:
    return f"{_ns_prefix(lab)}{suffix}"


def _tool(name: str) -> str | None:
    """A system tool by name: on PATH, else in sbin (which a non-login PATH on Debian may lack)."""
    found = shutil.which(name)
    if found:
        return name
    for d in ("/usr/sbin", "/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def exec_argv(lab: str, role: str, argv: list[str]) -> list[str]:
    """The argument list that runs ``argv`` inside the role's namespace (for subprocess; no shell).

    ``["ip", "netns", "exec", "fl-<lab>-<role>", *argv]`` (``ip`` as /usr/sbin/ip when it is not on PATH).
    """
    if not argv:
        raise LabError("no command given to run in the namespace", usage=True)
    return [_tool("ip") or "ip", "netns", "exec", netns_name(lab, role), *argv]


# -- the model --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interface:
    name: str
    addresses: tuple[str, ...]  # with prefix length: "10.213.1.1/24"


@dataclass(frozen=True)
class Role:
    role: str
    netns: str
    interfaces: tuple[Interface, ...]
    address: str  # the role's main IPv4 address, without prefix ("" if it has none)


def _device_number(role: str) -> int | None:
    m = re.fullmatch(r"device([0-9]+)", role)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Lab:
    name: str
    subnet: str  # "" when unknown (a lab left half-built by a crash)
    roles: dict[str, Role] = field(hash=False)

    @property
    def gateway(self) -> Role | None:
        return self.roles.get("gateway")

    @property
    def pbx(self) -> Role | None:
        return self.roles.get("pbx")

    @property
    def devices(self) -> tuple[Role, ...]:
        found = [(n, r) for r in self.roles.values() if (n := _device_number(r.role)) is not None]
        return tuple(r for _, r in sorted(found, key=lambda x: x[0]))

    @property
    def complete(self) -> bool:
        """Gateway, PBX, air and at least one device, each with its address (the air has none)."""
        return (self.gateway is not None and self.pbx is not None and self.air is not None
                and bool(self.devices) and bool(self.air.interfaces)
                and all(r.address for r in (self.gateway, self.pbx, *self.devices)))

    @property
    def air(self) -> Role | None:
        return self.roles.get(AIR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnet": self.subnet,
            "complete": self.complete,
            "roles": {
                key: {
                    "role": r.role,
                    "netns": r.netns,
                    "address": r.address,
                    "interfaces": [{"name": i.name, "addresses": list(i.addresses)} for i in r.interfaces],
                }
                for key, r in self.roles.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- the plan ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Link:
    """One block: ``gw_if`` in the gateway, ``peer_if`` in ``peer_role``'s namespace.

    For a device, the block crosses the air: ``gw_if`` pairs with ``uplink_if`` and ``air_if`` with
    ``peer_if`` (both in the air). For the PBX (``uplink_if`` empty), one veth pair joins the two.
    """

    peer_role: str
    gw_if: str
    peer_if: str
    network: ipaddress.IPv4Network
    air_if: str = ""
    uplink_if: str = ""
    number: int = 0

    @property
    def gw_addr(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def peer_addr(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 2


def _plan(name: str, subnet: str, devices: int) -> tuple[ipaddress.IPv4Network, list[_Link]]:
    _check_name(name)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise LabError(f"--devices must be a whole number of at least 1, not {devices!r}", usage=True)
    limit = _max_name(devices)
    if len(name) > limit:
        raise LabError(f"lab name {name!r} is too long for {devices} devices: interface names "
                       f"'{PREFIX}-{name}-g{devices}' must fit in {IFNAMSIZ} characters (IFNAMSIZ), "
                       f"so the name may have at most {limit}", usage=True)
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise LabError(f"bad subnet {subnet!r}: expected an IPv4 network such as 10.213.0.0/16", usage=True) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise LabError(f"subnet {subnet!r} is IPv6: the lab needs an IPv4 network such as 10.213.0.0/16", usage=True)
    need = devices + 1
    if net.prefixlen > 24 or 2 ** (24 - net.prefixlen) < need:
        smallest = 24 - max(0, (need - 1).bit_length())
        raise LabError(f"subnet {net} is too small for {devices} device(s): the lab takes one /24 for the PBX "
                       f"and one per device ({need} in all), so it needs a /{smallest} or larger", usage=True)
    blocks = net.subnets(new_prefix=24)
    links = [_Link("pbx", _ifname(name, "gp"), _ifname(name, "p"), next(blocks))]
    for i in range(1, devices + 1):
        links.append(_Link(f"device{i}", _ifname(name, f"g{i}"), _ifname(name, f"d{i}"), next(blocks),
                           _ifname(name, f"a{i}"), _ifname(name, f"u{i}"), i))
    return net, links


# -- helpers ----------------------------------------------------------------------------------------

def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(NOT_ROOT)


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = _SETTLE) -> T:
    """Poll ``probe`` until it returns something truthy: RTNL changes are asynchronous."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"the kernel did not show {what} within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _lab_namespaces(lab: str) -> list[str]:
    from pyroute2 import netns

    prefix = _ns_prefix(lab)
    return sorted(ns for ns in netns.listnetns() if ns.startswith(prefix))


def _ipr(ns: str | None, create: bool = False) -> Any:
    from pyroute2 import IPRoute

    if ns is None:
        return IPRoute()
    return IPRoute(netns=ns, flags=os.O_CREAT if create else 0)


def _link_index(ipr: Any, ifname: str) -> int:
    return _wait_for(f"interface {ifname}", lambda: (ipr.link_lookup(ifname=ifname) or [None])[0])


def _has_addr(ipr: Any, index: int, address: str) -> bool:
    return any(a.get("address") == address for a in ipr.get_addr(index=index, family=socket.AF_INET))


def _add_addr(ipr: Any, index: int, address: ipaddress.IPv4Address, prefixlen: int, what: str) -> None:
    ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen)
    _wait_for(f"address {address} on {what}", lambda: _has_addr(ipr, index, str(address)))


def _up(ipr: Any, index: int, what: str) -> None:
    ipr.link("set", index=index, state="up")

    def is_up() -> bool:
        links = ipr.get_links(index)
        return bool(links) and bool(links[0]["flags"] & 1)  # IFF_UP

    _wait_for(f"{what} up", is_up)


def _write_sysctl_in(ns: str, path: str, value: str) -> None:
    """Write a /proc/sys file as seen from namespace ``ns``.

    setns() moves only the calling thread, and /proc/sys/net resolves through the opener's namespace,
    so a short-lived thread enters the namespace, writes and ends; the rest of the process stays put.
    """
    from pyroute2 import netns

    errors: list[BaseException] = []

    def run() -> None:
        try:
            netns.setns(ns, flags=0)
            with open(path, "w") as f:
                f.write(value)
            with open(path) as f:
                got = f.read().strip()
            if got != value:
                raise LabError(f"{path} in {ns} reads {got!r} after writing {value!r}")
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)

    t = threading.Thread(target=run, name=f"faultlab-sysctl-{ns}")
    t.start()
    t.join()
    if errors:
        e = errors[0]
        if isinstance(e, LabError):
            raise e
        raise LabError(f"could not write {path} in namespace {ns}: {e}") from e


def _write_sysctls_in(ns: str, items: list[tuple[str, str]]) -> None:
    """Several /proc/sys writes in namespace ``ns`` (as :func:`_write_sysctl_in`), in one thread."""
    from pyroute2 import netns

    errors: list[BaseException] = []

    def run() -> None:
        try:
            netns.setns(ns, flags=0)
            for path, value in items:
                with open(path, "w") as f:
                    f.write(value)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)

    t = threading.Thread(target=run, name=f"faultlab-sysctl-{ns}")
    t.start()
    t.join()
    if errors:
        raise LabError(f"could not configure namespace {ns}: {errors[0]}") from errors[0]


def _addr_text(a: Any) -> str:
    return f"{a.get('address')}/{a['prefixlen']}"


# -- up, status, down -------------------------------------------------------------------------------

def lab_up(name: str = "lab", subnet: str = "10.213.0.0/16", devices: int = 1) -> Lab:
    """Create the lab's namespaces, links, addresses and routes; return what exists afterwards.

    Refuses (:class:`LabError`) when anything of the lab already exists. If building fails midway,
    everything built so far is removed before the error is raised.
    """
    net, links = _plan(name, subnet, devices)
    _require_root()
    existing = _lab_namespaces(name) + [i for i in _host_links(name)]
    if existing:
        raise LabError(f"lab {name!r} already exists ({', '.join(existing)}): "
                       f"run faultlab net down --name {name} first")
    try:
        _build(name, net, links)
    except BaseException as e:
        try:
            lab_down(name)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        if isinstance(e, LabError):
            raise
        if isinstance(e, Exception):
            raise LabError(f"could not build lab {name!r}: {e}") from e
        raise
    lab = lab_status(name)
    if lab is None or not lab.complete:
        raise LabError(f"lab {name!r} was built but does not read back complete")
    return lab


def _build(name: str, net: ipaddress.IPv4Network, links: list[_Link]) -> None:
    from pyroute2 import netns

    gw_ns = netns_name(name, "gateway")
    air_ns = netns_name(name, AIR)
    for ns in [gw_ns, air_ns, *(netns_name(name, link.peer_role) for link in links)]:
        netns.create(ns)
        _wait_for(f"namespace {ns}", lambda ns=ns: ns in netns.listnetns())

    with _ipr(gw_ns) as gw, _ipr(air_ns) as air:
        _up(gw, _link_index(gw, "lo"), f"lo in {gw_ns}")
        _up(air, _link_index(air, "lo"), f"lo in {air_ns}")
        air_sysctls = [("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
                       ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
                       ("/proc/sys/net/ipv4/ip_forward", "1")]
        for link in links:
            peer_ns = netns_name(name, link.peer_role)
            via_air = bool(link.uplink_if)
            # Created inside the gateway (or the air), the peer end moved straight to its namespace: no lab
            # link ever exists in the host's namespace, even for an instant.
            gw.link("add", ifname=link.gw_if, kind="veth",
                    peer={"ifname": link.uplink_if if via_air else link.peer_if,
                          "net_ns_fd": air_ns if via_air else peer_ns})
            gi = _link_index(gw, link.gw_if)
            _add_addr(gw, gi, link.gw_addr, link.network.prefixlen, f"{link.gw_if} in {gw_ns}")
            if link.peer_role == "pbx":
                gw.link("set", index=gi, ifalias=f"{_ALIAS_KEY} name={name} subnet={net}")
            _up(gw, gi, f"{link.gw_if} in {gw_ns}")
            if via_air:
                air.link("add", ifname=link.air_if, kind="veth", peer={"ifname": link.peer_if, "net_ns_fd": peer_ns})
                ui = _link_index(air, link.uplink_if)
                ai = _link_index(air, link.air_if)
                for ifname in (link.uplink_if, link.air_if):
                    air_sysctls += [(f"/proc/sys/net/ipv4/conf/{ifname}/rp_filter", "0"),
                                    (f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp", "1"),
                                    (f"/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay", "0")]
            with _ipr(peer_ns) as peer:
                _up(peer, _link_index(peer, "lo"), f"lo in {peer_ns}")
                pi = _link_index(peer, link.peer_if)
                _add_addr(peer, pi, link.peer_addr, link.network.prefixlen, f"{link.peer_if} in {peer_ns}")
                _up(peer, pi, f"{link.peer_if} in {peer_ns}")
                if via_air:
                    _up(air, ui, f"{link.uplink_if} in {air_ns}")
                    _up(air, ai, f"{link.air_if} in {air_ns}")
                    _air_routes(air, link, ui, ai)
                # The route needs its gateway reachable (address present, link up): checked just above.
                peer.route("add", dst="0.0.0.0/0", gateway=str(link.gw_addr), oif=pi)
                _wait_for(f"default route in {peer_ns}",
                          lambda peer=peer: bool(peer.get_default_routes(family=socket.AF_INET)))
    _write_sysctl_in(gw_ns, "/proc/sys/net/ipv4/ip_forward", "1")
    _write_sysctls_in(air_ns, air_sysctls)


def _air_routes(air: Any, link: _Link, uplink: int, device: int) -> None:
    """Device *i*'s routes in the air: down to its /32 on ``air_if``; up, whatever it sends, to the
    gateway on its own uplink (table ``AIR_TABLE + i``), also when the link impairment hands it back."""
    table = AIR_TABLE + link.number
    air.route("add", dst=f"{link.peer_addr}/32", oif=device)
    air.route("add", dst="0.0.0.0/0", gateway=str(link.gw_addr), oif=uplink, table=table, flags=4)  # RTNH_F_ONLINK
    air.rule("add", family=socket.AF_INET, iifname=link.air_if, table=table, priority=AIR_RULE_PRIORITY)
    air.rule("add", family=socket.AF_INET, iifname=AIR_UP_TUN, src=str(link.network.network_address),
             src_len=link.network.prefixlen, table=table, priority=AIR_RULE_PRIORITY)


def _read_role(lab: str, ns: str) -> tuple[Role, str]:
    """The role living in namespace ``ns`` and the alias found on its links (where the gateway keeps the subnet)."""
    role = ns[len(_ns_prefix(lab)):]
    try:
        with _ipr(ns) as ipr:
            links = ipr.get_links()
            addrs = ipr.get_addr(family=socket.AF_INET)
            alias = ""
            interfaces = []
            for link in sorted(links, key=lambda msg: msg["index"]):
                ifname = link.get("ifname")
                if ifname == "lo":
                    continue
                mine = tuple(_addr_text(a) for a in addrs if a["index"] == link["index"])
                interfaces.append(Interface(ifname, mine))
                alias = alias or (link.get("ifalias") or "")
    except (OSError, FileNotFoundError):
        # A namespace file left without its mount by a process killed mid-create.
        return Role(role, ns, (), ""), ""
    address = ""
    main_if = _ifname(lab, "gp") if role == "gateway" else None
    for iface in interfaces:
        if iface.addresses and (main_if is None or iface.name == main_if):
            address = iface.addresses[0].split("/")[0]
            break
    if not address:
        address = next((i.addresses[0].split("/")[0] for i in interfaces if i.addresses), "")
    return Role(role, ns, tuple(interfaces), address), alias


def lab_status(name: str = "lab") -> Lab | None:
    """What exists of lab ``name`` (None if nothing): every ``fl-<name>-*`` namespace, its interfaces and addresses."""
    _check_name(name)
    _require_root()
    namespaces = _lab_namespaces(name)
    if not namespaces:
        return None
    roles: dict[str, Role] = {}
    subnet = ""
    for ns in namespaces:
        role, alias = _read_role(name, ns)
        m = re.search(r"\bsubnet=(\S+)", alias) if alias.startswith(_ALIAS_KEY) else None
        if m and role.role == "gateway":
            subnet = m.group(1)
        roles[role.role] = role

    def order(key: str) -> tuple[int, int, str]:
        n = _device_number(key)
        if key == "gateway":
            return (0, 0, key)
        if key == "pbx":
            return (1, 0, key)
        if key == AIR:
            return (2, 0, key)
        return (3, n, key) if n is not None else (4, 0, key)

    return Lab(name, subnet, {k: roles[k] for k in sorted(roles, key=order)})


def _host_links(lab: str) -> list[str]:
    """Interfaces with the lab's prefix in the host's own namespace (none unless something else made them)."""
    prefix = _ns_prefix(lab)
    with _ipr(None) as ipr:
        return sorted(n for link in ipr.get_links() if (n := link.get("ifname") or "").startswith(prefix))


def _nft_tables(argv_prefix: list[str], table: str) -> list[tuple[str, str]]:
    nft = _tool("nft")
    if nft is None or (argv_prefix and _tool("ip") is None):
        return []
    try:
        out = subprocess.run([*argv_prefix, nft, "list", "tables"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2] == table:
            found.append((parts[1], parts[2]))
    return found


def _stop_processes(ns: str, pids: list[int]) -> list[str]:
    """Processes still inside a lab namespace keep it (and its veths) alive after unmounting: end them."""
    removed = []
    me = os.getpid()
    pids = [p for p in pids if p != me]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            comm = "?"
        try:
            os.kill(pid, signal.SIGTERM)
            removed.append(f"process {pid} ({comm}) in {ns}")
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2.0
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return removed


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def lab_down(name: str = "lab") -> list[str]:
    """Remove everything of lab ``name``; idempotent; works after a crash. Returns what was removed.

    Removes: the link impairment (its wire process and ``/run/faultlab/<name>/``), the nftables tables
    ``faultlab_<name>`` (any family) in the lab's namespaces and the host's, the processes still running
    inside the lab's namespaces (SIGTERM, then SIGKILL after 2 s), every ``fl-<name>-*`` namespace (the
    air among them; its veths go with it) and any ``fl-<name>-*`` interface in the host's namespace.
    """
    from pyroute2 import netns

    _check_name(name)
    _require_root()
    removed: list[str] = []
    table = f"faultlab_{name}"
    namespaces = _lab_namespaces(name)
    try:  # the link impairment's wire process, state files and routes, the orderly way (also after a crash)
        from faultlab.link import clear_lab

        text = clear_lab(name)
        if "no link impairment" not in text:
            removed.append(f"link impairment ({text})")
    except Exception:  # noqa: BLE001 - whatever is left, the namespaces' removal below takes
        pass
    pids = netns.ns_pids() if namespaces else {}
    for ns in namespaces:
        for family, t in _nft_tables([_tool("ip") or "ip", "netns", "exec", ns], table):
            removed.append(f"nftables table {family} {t} in {ns}")  # goes with the namespace
        removed.extend(_stop_processes(ns, pids.get(ns, [])))
    for ns in namespaces:
        try:
            netns.remove(ns)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise LabError(f"could not remove namespace {ns}: {e}") from e
            continue
        removed.append(f"namespace {ns}")
    for family, t in _nft_tables([], table):
        subprocess.run([_tool("nft") or "nft", "delete", "table", family, t],
                       capture_output=True, timeout=10, check=False)
        removed.append(f"nftables table {family} {t} in the host namespace")
    leftovers = _host_links(name)
    if leftovers:
        with _ipr(None) as ipr:
            for ifname in leftovers:
                idx = ipr.link_lookup(ifname=ifname)
                if idx:
                    try:
                        ipr.link("del", index=idx[0])
                    except Exception as e:  # noqa: BLE001 - its veth peer may have taken it already
                        if ipr.link_lookup(ifname=ifname):
                            raise LabError(f"could not remove interface {ifname}: {e}") from e
                    removed.append(f"interface {ifname} in the host namespace")
    still = _lab_namespaces(name)
    if still:
        raise LabError(f"namespaces still present after removal: {', '.join(still)}")
    return removed
