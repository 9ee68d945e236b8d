"""Removing a lab: :func:`lab_down` takes away everything of it, also what a crash left half-built.

The link impairment first (its wire process, rules and state files, the orderly way: :func:`clear_lab`),
then nftables tables, processes still inside the lab's namespaces, the namespaces themselves (their veths
go with them) and any interface with the lab's prefix in the host's namespace.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

from pyroute2 import netns

from .impair import clear_lab
from .names import LabError, check_name, find_tool, require_root
from .rtnl import host_links, lab_namespaces, open_ipr

__all__ = ["lab_down"]


def _nft_tables(argv_prefix: list[str], table: str) -> list[tuple[str, str]]:
    nft = find_tool("nft")
    if nft is None or (argv_prefix and find_tool("ip") is None):
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
    check_name(name)
    require_root()
    removed: list[str] = []
    table = f"faultlab_{name}"
    namespaces = lab_namespaces(name)
    try:  # the link impairment's wire process, state files and routes, the orderly way (also after a crash)
        text = clear_lab(name)
        if "no link impairment" not in text:
            removed.append(f"link impairment ({text})")
    except Exception:  # noqa: BLE001 - whatever is left, the namespaces' removal below takes
        pass
    pids = netns.ns_pids() if namespaces else {}
    for ns in namespaces:
        for family, t in _nft_tables([find_tool("ip") or "ip", "netns", "exec", ns], table):
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
        subprocess.run([find_tool("nft") or "nft", "delete", "table", family, t],
                       capture_output=True, timeout=10, check=False)
        removed.append(f"nftables table {family} {t} in the host namespace")
    leftovers = host_links(name)
    if leftovers:
        with open_ipr(None) as ipr:
            for ifname in leftovers:
                idx = ipr.link_lookup(ifname=ifname)
                if idx:
                    try:
                        ipr.link("del", index=idx[0])
                    except Exception as e:  # noqa: BLE001 - its veth peer may have taken it already
                        if ipr.link_lookup(ifname=ifname):
                            raise LabError(f"could not remove interface {ifname}: {e}") from e
                    removed.append(f"interface {ifname} in the host namespace")
    still = lab_namespaces(name)
    if still:
        raise LabError(f"namespaces still present after removal: {', '.join(still)}")
    return removed
