"""Small pyroute2 helpers for the lab network: open a namespace's RTNL socket, wait for a change to show,
bring links up, add addresses, write sysctls inside a namespace, list a lab's namespaces.

pyroute2 drives its own asyncio loop and forks to open namespace sockets: plain sync functions, called
before ``trio.run`` or through ``trio.to_thread.run_sync``, never inside a trio task.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from typing import Any, Callable, TypeVar

from pyroute2 import IPRoute, netns

from .names import LabError, ns_prefix

SETTLE = 5.0
"""Seconds to wait for an RTNL change to show up before calling it failed."""

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = SETTLE) -> T:
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


def lab_namespaces(lab: str) -> list[str]:
    """Every namespace named ``fl-<lab>-*``, sorted."""
    prefix = ns_prefix(lab)
    return sorted(ns for ns in netns.listnetns() if ns.startswith(prefix))


def open_ipr(ns: str | None, create: bool = False) -> Any:
    """An :class:`IPRoute` in namespace ``ns`` (None: this process's own)."""
    if ns is None:
        return IPRoute()
    return IPRoute(netns=ns, flags=os.O_CREAT if create else 0)


def host_links(lab: str) -> list[str]:
    """Interfaces with the lab's prefix in the host's own namespace (none unless something else made them)."""
    prefix = ns_prefix(lab)
    with open_ipr(None) as host:
        return sorted(n for link in host.get_links() if (n := link.get("ifname") or "").startswith(prefix))


def link_index(ipr: Any, ifname: str) -> int:
    return wait_for(f"interface {ifname}", lambda: (ipr.link_lookup(ifname=ifname) or [None])[0])


def _has_addr(ipr: Any, index: int, address: str) -> bool:
    return any(a.get("address") == address for a in ipr.get_addr(index=index, family=socket.AF_INET))


def add_addr(ipr: Any, index: int, address: ipaddress.IPv4Address, prefixlen: int, what: str) -> None:
    ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen)
    wait_for(f"address {address} on {what}", lambda: _has_addr(ipr, index, str(address)))


def set_up(ipr: Any, index: int, what: str) -> None:
    ipr.link("set", index=index, state="up")

    def is_up() -> bool:
        links = ipr.get_links(index)
        return bool(links) and bool(links[0]["flags"] & 1)  # IFF_UP

    wait_for(f"{what} up", is_up)


def _in_namespace(ns: str, work: Callable[[], None]) -> BaseException | None:
    """Run ``work`` in namespace ``ns``; what it raised, if anything.

    setns() moves only the calling thread, and /proc/sys/net resolves through the opener's namespace,
    so a short-lived thread enters the namespace, works and ends; the rest of the process stays put.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            netns.setns(ns, flags=0)
            work()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)

    t = threading.Thread(target=run, name=f"faultlab-sysctl-{ns}")
    t.start()
    t.join()
    return errors[0] if errors else None


def write_sysctl_in(ns: str, path: str, value: str) -> None:
    """Write a /proc/sys file as seen from namespace ``ns``, and check that it reads back."""

    def write() -> None:
        with open(path, "w") as f:
            f.write(value)
        with open(path) as f:
            got = f.read().strip()
        if got != value:
            raise LabError(f"{path} in {ns} reads {got!r} after writing {value!r}")

    e = _in_namespace(ns, write)
    if isinstance(e, LabError):
        raise e
    if e is not None:
        raise LabError(f"could not write {path} in namespace {ns}: {e}") from e


def write_sysctls_in(ns: str, items: list[tuple[str, str]]) -> None:
    """Several /proc/sys writes in namespace ``ns`` (as :func:`write_sysctl_in`, unchecked), in one thread."""

    def write() -> None:
        for path, value in items:
            with open(path, "w") as f:
                f.write(value)

    e = _in_namespace(ns, write)
    if e is not None:
        raise LabError(f"could not configure namespace {ns}: {e}") from e
