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
  and that is where ``faultlab net impair`` impairs it (:mod:`faultlab.labnet.impair`): before the gateway,
  and therefore before the gateway's interception and faultlab see it;
* the device and PBX namespaces route everything (default route) via the gateway's address on their
  link; the gateway forwards (``net.ipv4.ip_forward=1`` in its namespace) and is directly connected to
  every block, so device -> PBX traffic always crosses the gateway, where faultlab intercepts it;
* ``lo`` is up in every namespace.

A /16 thus holds up to 255 devices, a /22 three. Each role's main address (:attr:`Role.address`) is
the device's or PBX's ``.2`` and, for the gateway, its PBX-side ``.1`` (``10.213.0.1``).

Every object carries the lab's name: the namespaces are ``fl-<lab>-<role>`` and every interface is
``fl-<lab>-<suffix>`` (:mod:`faultlab.labnet.names`). All veths live inside the lab's namespaces (never in the host's), so removing
the namespaces removes them, and :func:`lab_down` finds whatever a crashed ``lab_up`` left by the
prefix alone. The subnet is remembered in the kernel, as the alias of the gateway's PBX-side link,
so :func:`lab_status` needs no state file.

pyroute2 drives its own asyncio loop and forks to open namespace sockets: call these plain sync
functions before ``trio.run`` or through ``trio.to_thread.run_sync``, never inside a trio task.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import netns

from .names import (
    AIR,
    AIR_RULE_PRIORITY,
    AIR_TABLE,
    IFNAMSIZ,
    MAX_NAME,
    NOT_ROOT,
    PREFIX,
    UP_TUN,
    LabError,
    check_name,
    exec_argv,
    lab_ifname,
    max_name,
    netns_name,
    ns_prefix,
    require_root,
)
from .rtnl import (
    add_addr,
    host_links,
    lab_namespaces,
    link_index,
    open_ipr,
    set_up,
    wait_for,
    write_sysctl_in,
    write_sysctls_in,
)
from .teardown import lab_down

__all__ = [
    "AIR",
    "MAX_NAME",
    "NOT_ROOT",
    "PREFIX",
    "Interface",
    "Lab",
    "LabError",
    "Role",
    "exec_argv",
    "lab_down",
    "lab_status",
    "lab_up",
    "netns_name",
]

_ALIAS_KEY = "faultlab-lab"


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
    check_name(name)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise LabError(f"--devices must be a whole number of at least 1, not {devices!r}", usage=True)
    limit = max_name(devices)
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
    links = [_Link("pbx", lab_ifname(name, "gp"), lab_ifname(name, "p"), next(blocks))]
    for i in range(1, devices + 1):
        links.append(_Link(f"device{i}", lab_ifname(name, f"g{i}"), lab_ifname(name, f"d{i}"), next(blocks),
                           lab_ifname(name, f"a{i}"), lab_ifname(name, f"u{i}"), i))
    return net, links


# -- up, status, down -------------------------------------------------------------------------------

def lab_up(name: str = "lab", subnet: str = "10.213.0.0/16", devices: int = 1) -> Lab:
    """Create the lab's namespaces, links, addresses and routes; return what exists afterwards.

    Refuses (:class:`LabError`) when anything of the lab already exists. If building fails midway,
    everything built so far is removed before the error is raised.
    """
    net, links = _plan(name, subnet, devices)
    require_root()
    existing = lab_namespaces(name) + [i for i in host_links(name)]
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
    gw_ns = netns_name(name, "gateway")
    air_ns = netns_name(name, AIR)
    for ns in [gw_ns, air_ns, *(netns_name(name, link.peer_role) for link in links)]:
        netns.create(ns)
        wait_for(f"namespace {ns}", lambda ns=ns: ns in netns.listnetns())

    with open_ipr(gw_ns) as gw, open_ipr(air_ns) as air:
        set_up(gw, link_index(gw, "lo"), f"lo in {gw_ns}")
        set_up(air, link_index(air, "lo"), f"lo in {air_ns}")
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
            gi = link_index(gw, link.gw_if)
            add_addr(gw, gi, link.gw_addr, link.network.prefixlen, f"{link.gw_if} in {gw_ns}")
            if link.peer_role == "pbx":
                gw.link("set", index=gi, ifalias=f"{_ALIAS_KEY} name={name} subnet={net}")
            set_up(gw, gi, f"{link.gw_if} in {gw_ns}")
            if via_air:
                air.link("add", ifname=link.air_if, kind="veth", peer={"ifname": link.peer_if, "net_ns_fd": peer_ns})
                ui = link_index(air, link.uplink_if)
                ai = link_index(air, link.air_if)
                for iface in (link.uplink_if, link.air_if):
                    air_sysctls += [(f"/proc/sys/net/ipv4/conf/{iface}/rp_filter", "0"),
                                    (f"/proc/sys/net/ipv4/conf/{iface}/proxy_arp", "1"),
                                    (f"/proc/sys/net/ipv4/neigh/{iface}/proxy_delay", "0")]
            with open_ipr(peer_ns) as peer:
                set_up(peer, link_index(peer, "lo"), f"lo in {peer_ns}")
                pi = link_index(peer, link.peer_if)
                add_addr(peer, pi, link.peer_addr, link.network.prefixlen, f"{link.peer_if} in {peer_ns}")
                set_up(peer, pi, f"{link.peer_if} in {peer_ns}")
                if via_air:
                    set_up(air, ui, f"{link.uplink_if} in {air_ns}")
                    set_up(air, ai, f"{link.air_if} in {air_ns}")
                    _air_routes(air, link, ui, ai)
                # The route needs its gateway reachable (address present, link up): checked just above.
                peer.route("add", dst="0.0.0.0/0", gateway=str(link.gw_addr), oif=pi)
                wait_for(f"default route in {peer_ns}",
                          lambda peer=peer: bool(peer.get_default_routes(family=socket.AF_INET)))
    write_sysctl_in(gw_ns, "/proc/sys/net/ipv4/ip_forward", "1")
    write_sysctls_in(air_ns, air_sysctls)


def _air_routes(air: Any, link: _Link, uplink: int, device: int) -> None:
    """Device *i*'s routes in the air: down to its /32 on ``air_if``; up, whatever it sends, to the
    gateway on its own uplink (table ``AIR_TABLE + i``), also when the link impairment hands it back."""
    table = AIR_TABLE + link.number
    air.route("add", dst=f"{link.peer_addr}/32", oif=device)
    air.route("add", dst="0.0.0.0/0", gateway=str(link.gw_addr), oif=uplink, table=table, flags=4)  # RTNH_F_ONLINK
    air.rule("add", family=socket.AF_INET, iifname=link.air_if, table=table, priority=AIR_RULE_PRIORITY)
    air.rule("add", family=socket.AF_INET, iifname=UP_TUN, src=str(link.network.network_address),
             src_len=link.network.prefixlen, table=table, priority=AIR_RULE_PRIORITY)


def _addr_text(a: Any) -> str:
    return f"{a.get('address')}/{a['prefixlen']}"


def _read_role(lab: str, ns: str) -> tuple[Role, str]:
    """The role living in namespace ``ns`` and the alias found on its links (where the gateway keeps the subnet)."""
    role = ns[len(ns_prefix(lab)):]
    try:
        with open_ipr(ns) as ipr:
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
    main_if = lab_ifname(lab, "gp") if role == "gateway" else None
    for iface in interfaces:
        if iface.addresses and (main_if is None or iface.name == main_if):
            address = iface.addresses[0].split("/")[0]
            break
    if not address:
        address = next((i.addresses[0].split("/")[0] for i in interfaces if i.addresses), "")
    return Role(role, ns, tuple(interfaces), address), alias


def lab_status(name: str = "lab") -> Lab | None:
    """What exists of lab ``name`` (None if nothing): every ``fl-<name>-*`` namespace, its interfaces and addresses."""
    check_name(name)
    require_root()
    namespaces = lab_namespaces(name)
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
