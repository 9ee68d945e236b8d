"""A device that changes address in the lab network (Wi-Fi -> cellular, lab scenario S26).

:func:`add_device_address` gives device *i* another address in its block (e.g. ``10.213.i.3``) with the air's /32
route down to it (and lets its other addresses outlive the first: ``promote_secondaries``), so that the gateway
reaches it as it reaches the device's first address (proxy ARP in the air
answers for any address the air has a route to). :func:`remove_device_address` takes an address away again: the
address leaves the device's link and the air forgets its route, so what was still on its way to it is lost and
nothing can leave from it any more; the other end of a connection from that address learns nothing (no FIN, no RST
can get out). Both are plain sync functions (pyroute2), like :mod:`faultlab.labnet.topology`'s.
"""

from __future__ import annotations

import ipaddress

from faultlab.labnet.names import AIR, LabError, lab_ifname, netns_name
from faultlab.labnet.rtnl import add_addr, link_index, open_ipr, wait_for, write_sysctl_in

__all__ = ["add_device_address", "remove_device_address"]

PREFIX = 24  # each device's block (faultlab.labnet.topology's plan)


def _names(lab: str, number: int) -> tuple[str, str, str, str]:
    """Device *number*'s namespace and interface, and the air's namespace and interface toward it."""
    return (netns_name(lab, f"device{number}"), lab_ifname(lab, f"d{number}"), netns_name(lab, AIR),
            lab_ifname(lab, f"a{number}"))


def _address(address: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(address)
    except ValueError:
        raise LabError(f"{address!r} is not an IPv4 address (a device address in its lab block)") from None


def add_device_address(lab: str, number: int, address: str) -> None:
    """Give device ``number`` of ``lab`` the extra ``address`` (in its block), reachable through the air."""
    ip = _address(address)
    device_ns, device_if, air_ns, air_if = _names(lab, number)
    # the first address is the primary one: without this, taking it away would take the others with it
    write_sysctl_in(device_ns, f"/proc/sys/net/ipv4/conf/{device_if}/promote_secondaries", "1")
    with open_ipr(device_ns) as device, open_ipr(air_ns) as air:
        add_addr(device, link_index(device, device_if), ip, PREFIX, f"{device_if} in {device_ns}")
        air.route("add", dst=f"{ip}/32", oif=link_index(air, air_if))
        wait_for(f"route to {ip} in {air_ns}", lambda: bool(air.get_routes(dst=f"{ip}/32", dst_len=32)))


def remove_device_address(lab: str, number: int, address: str) -> None:
    """Take ``address`` away from device ``number`` of ``lab``: off its link, and out of the air's routes."""
    ip = _address(address)
    device_ns, device_if, air_ns, air_if = _names(lab, number)
    with open_ipr(device_ns) as device, open_ipr(air_ns) as air:
        index = link_index(device, device_if)
        device.addr("del", index=index, address=str(ip), prefixlen=PREFIX)
        air.route("del", dst=f"{ip}/32", oif=link_index(air, air_if))
        wait_for(f"{ip} gone from {device_if}", lambda: not any(
            a.get_attr("IFA_ADDRESS") == str(ip) for a in device.get_addr(index=index)) or None)
