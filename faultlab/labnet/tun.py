"""The TUN wire's plumbing in the air namespace: its TUN devices, and the policy routing that steers every
packet crossing the air into them (:func:`steer`) and takes that away again (:func:`unsteer`).

- two TUN devices (IFF_TUN | IFF_NO_PI) held open by the wire process: :data:`~.names.UP_TUN`
  (``fltun0``) for packets on their way up, from a device toward the gateway, and
  :data:`~.names.DOWN_TUN` (``fltun1``) for packets on their way down, from the gateway toward a device;
- routing tables :data:`~.names.WIRE_TABLE_UP` and :data:`~.names.WIRE_TABLE_DOWN`, each with one route,
  ``default dev <tun>`` (IPv4 and IPv6), and policy rules (priority :data:`~.names.WIRE_PRIORITY`)
  ``iif <device-side if> lookup TABLE_UP`` and ``iif <gateway-side if> lookup TABLE_DOWN``.

pyroute2, sync: :func:`steer` runs in the wire process before its trio loop starts, :func:`unsteer` there
after it ends and in ``faultlab net impair --clear`` (:func:`faultlab.labnet.impair.clear_lab`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
from pathlib import Path

from pyroute2 import IPRoute

from .names import DOWN_TUN, UP_TUN, WIRE_PRIORITY, WIRE_TABLE_DOWN, WIRE_TABLE_UP

__all__ = ["open_tun", "remove_tuns", "steer", "unsteer"]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

log = logging.getLogger("faultlab.labnet.wire")


def open_tun(name: str = UP_TUN) -> int:
    """Create the TUN ``name`` (IFF_TUN | IFF_NO_PI) and return its
    non-blocking fd; the device goes away when the fd is closed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _sysctl(path: str, value: str) -> None:
    try:
        Path("/proc/sys", path).write_text(value)
    except OSError as e:
        log.debug("sysctl %s=%s: %s", path, value, e)


def _rule_kwargs(family: int, ifname: str, table: int) -> dict:
    return {"family": family, "iifname": ifname, "table": table, "priority": WIRE_PRIORITY}


def steer(up_ifs: list[str], down_ifs: list[str], up_tun: str = UP_TUN, down_tun: str = DOWN_TUN) -> None:
    """Bring both TUNs up; route everything arriving on ``up_ifs`` (the
    device side) into ``up_tun`` and everything arriving on ``down_ifs``
    (the gateway side) into ``down_tun``."""
    # A packet written to a TUN arrives "on" it from an address routed
    # elsewhere: reverse-path filtering would drop it.
    for conf in ("all", "default", up_tun, down_tun):
        _sysctl(f"net/ipv4/conf/{conf}/rp_filter", "0")
    for tun in (up_tun, down_tun):
        _sysctl(f"net/ipv6/conf/{tun}/addr_gen_mode", "1")  # no link-local address, no router solicitations
    with IPRoute() as ipr:
        for tun, table, ifnames in ((up_tun, WIRE_TABLE_UP, up_ifs), (down_tun, WIRE_TABLE_DOWN, down_ifs)):
            idx = ipr.link_lookup(ifname=tun)[0]
            ipr.link("set", index=idx, state="up")
            ipr.route("replace", dst="0.0.0.0/0", oif=idx, table=table)
            try:
                ipr.route("replace", family=socket.AF_INET6, dst="::/0", oif=idx, table=table)
            except Exception as e:  # IPv6 disabled in this namespace
                log.info("no IPv6 route into %s: %s", tun, e)
            for ifname in ifnames:
                for family in (socket.AF_INET, socket.AF_INET6):
                    try:
                        ipr.rule("add", **_rule_kwargs(family, ifname, table))
                    except Exception as e:
                        if family == socket.AF_INET:
                            raise
                        log.info("no IPv6 rule for %s: %s", ifname, e)


def unsteer(netns: str | None = None) -> int:
    """Remove every rule pointing to :data:`~.names.WIRE_TABLE_UP` or :data:`~.names.WIRE_TABLE_DOWN`
    at :data:`~.names.WIRE_PRIORITY`, and those tables' routes (in ``netns``, default the
    current namespace); the number of rules removed. Idempotent."""
    removed = 0
    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                rules = ipr.get_rules(family=family)
            except Exception:
                continue
            for rule in rules:
                table = rule.get_attr("FRA_TABLE") or rule["table"]
                if table in (WIRE_TABLE_UP, WIRE_TABLE_DOWN) and rule.get_attr("FRA_PRIORITY") == WIRE_PRIORITY:
                    try:
                        ipr.rule("del", **_rule_kwargs(family, rule.get_attr("FRA_IFNAME"), table))
                        removed += 1
                    except Exception as e:
                        log.debug("rule del: %s", e)
            for table in (WIRE_TABLE_UP, WIRE_TABLE_DOWN):
                try:
                    ipr.flush_routes(table=table, family=family)
                except Exception as e:
                    log.debug("route flush: %s", e)
    return removed


def remove_tuns(netns: str) -> None:
    """Delete the wire's TUNs in ``netns`` if a killed wire left them (closing their fds removes them)."""
    with IPRoute(netns=netns, flags=0) as ipr:
        for name in (UP_TUN, DOWN_TUN):
            for index in ipr.link_lookup(ifname=name):
                try:
                    ipr.link("del", index=index)
                except Exception:
                    pass
