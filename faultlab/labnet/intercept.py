"""Transparent interception on the lab gateway: a faultlab-owned nftables table.

SIP traffic a device sends to the PBX's real address is handed to the local
faultlab proxy (``faultlab proxy --transparent``), which recovers the
original destination and relays there:

- TCP (and TLS): ``redirect to :PORT`` in a nat prerouting chain; the proxy
  reads the original destination with ``SO_ORIGINAL_DST``.
- UDP: ``tproxy`` in a filter prerouting chain at mangle priority, with
  ``meta mark set MARK`` and a policy route (``ip rule add fwmark MARK
  lookup TABLE`` + ``ip route add local 0.0.0.0/0 dev lo table TABLE``) so
  the marked datagrams are delivered locally, to the proxy's IP_TRANSPARENT
  socket, which reads the original destination with ``IP_RECVORIGDSTADDR``.
- With ``spoof_source`` (the PBX sees the device's own address), the PBX's
  answers are addressed to the device, not to the gateway: a rule marks
  those that belong to one of faultlab's transparent sockets (``socket
  transparent 1``), so they are delivered to faultlab instead of being
  forwarded past it.
- With ``iface`` (a real gateway, in its own namespace: ``faultlab gateway
  intercept``), every rule that catches traffic *to* the PBX also matches
  ``iifname IFACE``, so only what arrives on that (Wi-Fi-side) interface is
  handed to faultlab; the rules for the PBX's answers are not restricted
  (those arrive on the uplink). ``counter`` adds an nftables counter to each
  rule, so ``nft list table`` shows what was caught.

The ruleset is generated as text from validated values only (addresses
through :mod:`ipaddress`, ports and marks as ints, the table name checked)
and applied with ``nft -f -``; ``ip`` is called with argument lists. IPv4.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_PORTS = (5060, 5061)
DEFAULT_TLS_PORTS = (5061,)
DEFAULT_MARK = 1
DEFAULT_ROUTE_TABLE = 100

_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not "." or "..";
# quotes and backslashes are refused too, since the name is written into the nft script between quotes.
_IFNAME = re.compile(r'^(?!\.{1,2}$)[^\s/"\'\\]{1,15}$')


class InterceptError(RuntimeError):
    """Interception cannot be set up; the message says what failed and how to fix it."""


@dataclass(frozen=True)
class InterceptSpec:
    """What to intercept and where to send it (validated on construction)."""

    pbx: ipaddress.IPv4Address
    ports: tuple[int, ...]
    proxy_udp_port: int | None
    proxy_tcp_port: int | None
    proxy_tls_port: int | None
    tls_ports: tuple[int, ...] = DEFAULT_TLS_PORTS
    table: str = "faultlab_lab"
    mark: int = DEFAULT_MARK
    route_table: int = DEFAULT_ROUTE_TABLE
    spoof_source: bool = False
    iface: str | None = None
    counter: bool = False

    @classmethod
    def make(
        cls,
        *,
        pbx: str | ipaddress.IPv4Address,
        ports: Iterable[int] = DEFAULT_PORTS,
        proxy_udp_port: int | None,
        proxy_tcp_port: int | None,
        proxy_tls_port: int | None = None,
        tls_ports: Iterable[int] = DEFAULT_TLS_PORTS,
        table: str = "faultlab_lab",
        mark: int = DEFAULT_MARK,
        route_table: int = DEFAULT_ROUTE_TABLE,
        spoof_source: bool = False,
        iface: str | None = None,
        counter: bool = False,
    ) -> InterceptSpec:
        try:
            address = ipaddress.ip_address(str(pbx))
        except ValueError:
            raise InterceptError(f"PBX address {pbx!r} is not an IP address: give the PBX's IPv4 address as "
                                 "the phones reach it, e.g. 192.168.50.10 (for a host name, "
                                 "'getent ahostsv4 NAME' shows it)") from None
        if not isinstance(address, ipaddress.IPv4Address):
            raise InterceptError(f"PBX address {address}: transparent interception supports IPv4 only")
        port_list = tuple(dict.fromkeys(_port(p, "SIP port") for p in ports))
        if not port_list:
            raise InterceptError("no SIP ports to intercept: give at least one (default 5060 and 5061)")
        tls_list = tuple(dict.fromkeys(_port(p, "TLS port") for p in tls_ports))
        udp = None if proxy_udp_port is None else _port(proxy_udp_port, "proxy UDP port")
        tcp = None if proxy_tcp_port is None else _port(proxy_tcp_port, "proxy TCP port")
        tls = None if proxy_tls_port is None else _port(proxy_tls_port, "proxy TLS port")
        if udp is None and tcp is None and tls is None:
            raise InterceptError("nothing to intercept to: give the proxy's UDP, TCP or TLS port")
        check_table_name(table)
        if not isinstance(mark, int) or isinstance(mark, bool) or not 1 <= mark <= 0xFFFFFFFF:
            raise InterceptError(f"firewall mark {mark!r}: must be an integer 1..4294967295")
        if (not isinstance(route_table, int) or isinstance(route_table, bool)
                or not 1 <= route_table <= 0xFFFFFFFF or route_table in (253, 254, 255)):
            raise InterceptError(f"route table {route_table!r}: must be an integer 1..4294967295, "
                                 "not 253/254/255 (default, main, local)")
        if iface is not None:
            check_iface_name(iface)
        return cls(address, port_list, udp, tcp, tls, tls_list, table, mark, route_table, bool(spoof_source),
                   iface, bool(counter))


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InterceptError(f"{what} {value!r}: must be an integer 1..65535")
    return value


def check_table_name(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
        raise InterceptError(f"nftables table name {table!r}: letters, digits and _ only, starting "
                             "with a letter, at most 63 characters")
    return table


def check_iface_name(iface: str) -> str:
    if not isinstance(iface, str) or not _IFNAME.fullmatch(iface):
        raise InterceptError(f"interface name {iface!r} is not a Linux interface name (1-15 characters, "
                             "no spaces, '/', quotes or backslashes): see 'ip -br link'")
    return iface


def _set(ports: Sequence[int]) -> str:
    return "{ " + ", ".join(str(p) for p in ports) + " }"


def ruleset(spec: InterceptSpec) -> str:
    """The nftables script (for ``nft -f -``) that (re)creates the table atomically."""
    t = spec.table
    # traffic to the PBX: only from the given interface, when there is one
    to_pbx = (f'iifname "{spec.iface}" ' if spec.iface is not None else "") + f"ip daddr {spec.pbx}"
    from_pbx = f"ip saddr {spec.pbx}"
    count = "counter " if spec.counter else ""
    lines = [
        # create-then-delete makes the replace idempotent: the table may or may not exist
        f"table inet {t}",
        f"delete table inet {t}",
        f"table inet {t} {{",
    ]
    tcp_rules = []
    plain_tcp = [p for p in spec.ports if p not in spec.tls_ports]
    tls_tcp = [p for p in spec.ports if p in spec.tls_ports]
    if spec.proxy_tcp_port is not None and plain_tcp:
        tcp_rules.append(f"{to_pbx} tcp dport {_set(plain_tcp)} {count}redirect to :{spec.proxy_tcp_port}")
    if spec.proxy_tls_port is not None and tls_tcp:
        tcp_rules.append(f"{to_pbx} tcp dport {_set(tls_tcp)} {count}redirect to :{spec.proxy_tls_port}")
    if tcp_rules:
        lines += ["  chain intercept_tcp {",
                  "    type nat hook prerouting priority dstnat; policy accept;"]
        lines += [f"    {rule}" for rule in tcp_rules]
        lines.append("  }")
    udp_rules = []
    if spec.proxy_udp_port is not None:
        udp_rules.append(f"{to_pbx} udp dport {_set(spec.ports)} "
                         f"{count}tproxy ip to :{spec.proxy_udp_port} meta mark set {spec.mark} accept")
    if spec.spoof_source:
        # the PBX answers the device's own address: deliver what belongs to
        # one of faultlab's transparent sockets to faultlab, not past it
        for proto in ("udp", "tcp"):
            udp_rules.append(f"{from_pbx} {proto} sport {_set(spec.ports)} "
                             f"socket transparent 1 {count}meta mark set {spec.mark} accept")
    if udp_rules:
        lines += ["  chain intercept_mark {",
                  "    type filter hook prerouting priority mangle; policy accept;"]
        lines += [f"    {rule}" for rule in udp_rules]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def needs_policy_route(spec: InterceptSpec) -> bool:
    return spec.proxy_udp_port is not None or spec.spoof_source


def _ns(netns: str | None, argv: list[str]) -> list[str]:
    if netns is None:
        return argv
    if not isinstance(netns, str) or not _NETNS_NAME.fullmatch(netns):
        raise InterceptError(f"network namespace name {netns!r} is not valid")
    return ["ip", "netns", "exec", netns, *argv]


def _ip(netns: str | None, *args: str) -> list[str]:
    if netns is None:
        return ["ip", *args]
    _ns(netns, [])  # validates the name
    return ["ip", "-n", netns, *args]


def rule_argv(netns: str | None, action: str, mark: int, route_table: int) -> list[str]:
    return _ip(netns, "-4", "rule", action, "fwmark", str(mark), "lookup", str(route_table))


def route_argv(netns: str | None, action: str, route_table: int) -> list[str]:
    return _ip(netns, "-4", "route", action, "local", "0.0.0.0/0", "dev", "lo", "table", str(route_table))


def apply_argv(netns: str | None) -> list[str]:
    """``nft -f -``: the ruleset comes on stdin."""
    return _ns(netns, ["nft", "-f", "-"])


def delete_table_argv(netns: str | None, table: str) -> list[str]:
    check_table_name(table)
    return _ns(netns, ["nft", "delete", "table", "inet", table])


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise InterceptError(f"{exc.filename} not found: install nftables and iproute2") from None
    if check and done.returncode != 0:
        raise InterceptError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done


def intercept_on(netns: str | None, **options: Any) -> InterceptSpec:
    """Send SIP traffic for ``pbx`` in namespace ``netns`` (None: this one) to the local proxy.

    TCP to a port in ``tls_ports`` goes to ``proxy_tls_port`` (not intercepted
    when it is None), other TCP ports to ``proxy_tcp_port``, UDP to
    ``proxy_udp_port``. With ``iface``, only traffic arriving on that
    interface is intercepted. Replaces a table of the same name. On failure
    nothing of it is left behind. ``options`` are those of :meth:`InterceptSpec.make`.
    """
    spec = InterceptSpec.make(**options)
    apply(netns, spec)
    return spec


def apply(netns: str | None, spec: InterceptSpec) -> None:
    """Install ``spec`` in namespace ``netns`` (None: this one); on failure nothing of it is left behind."""
    try:
        if needs_policy_route(spec):
            if not has_rule(netns, spec.mark, spec.route_table):
                _run(rule_argv(netns, "add", spec.mark, spec.route_table))
            _run(route_argv(netns, "replace", spec.route_table))
        _run(apply_argv(netns), stdin=ruleset(spec))
    except BaseException:
        intercept_off(netns, spec.table, mark=spec.mark, route_table=spec.route_table)
        raise


def has_rule(netns: str | None, mark: int, route_table: int) -> bool:
    done = _run(_ip(netns, "-4", "rule", "show", "fwmark", str(mark), "lookup", str(route_table)), check=False)
    return done.returncode == 0 and bool(done.stdout.strip())


def intercept_off(
    netns: str | None,
    table: str = "faultlab_lab",
    *,
    mark: int = DEFAULT_MARK,
    route_table: int = DEFAULT_ROUTE_TABLE,
) -> None:
    """Remove the table and the policy route; idempotent (nothing there is fine)."""
    check_table_name(table)
    _run(delete_table_argv(netns, table), check=False)
    for _ in range(16):  # the rule may have been added more than once by hand
        if _run(rule_argv(netns, "del", mark, route_table), check=False).returncode != 0:
            break
    _run(route_argv(netns, "del", route_table), check=False)


def table_exists(netns: str | None, table: str) -> bool:
    check_table_name(table)
    return _run(_ns(netns, ["nft", "list", "table", "inet", table]), check=False).returncode == 0


def has_route(netns: str | None, route_table: int) -> bool:
    """Whether table ``route_table`` holds the ``local 0.0.0.0/0 dev lo`` route TPROXY needs."""
    done = _run(_ip(netns, "-4", "route", "show", "table", str(route_table), "type", "local",
                     "exact", "0.0.0.0/0"), check=False)
    return done.returncode == 0 and re.search(r"\bdev lo(\s|$)", done.stdout) is not None


def list_table(netns: str | None, table: str) -> str | None:
    """``nft list table inet TABLE`` (rules with their counters), or None when there is no such table."""
    check_table_name(table)
    done = _run(_ns(netns, ["nft", "list", "table", "inet", table]), check=False)
    return done.stdout if done.returncode == 0 else None
