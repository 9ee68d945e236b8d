"""Link impairment through the kernel's netem qdisc, driven by pyroute2.

netem shapes a link on *egress*: the gateway's device-side interfaces carry
the ``to-device`` direction, its PBX-side interface the ``to-pbx`` one.

What :func:`netem_request` can express with pyroute2 0.9.x
(``pyroute2/netlink/rtnl/tcmsg/sched_netem.py``): delay and jitter
(microseconds), random loss, duplication and reordering (percent), and rate
(``TCA_NETEM_RATE``, bytes per second, 32 bits). It cannot express, and
:func:`netem_unsupported` names:

- Gilbert-Elliott loss: pyroute2 declares ``TCA_NETEM_LOSS`` (netem's
  ``gemodel``) as an opaque ``none`` attribute, so it cannot encode it;
- a normal jitter distribution: pyroute2 sends no ``TCA_NETEM_DELAY_DIST``
  table, and without one netem spreads the delay uniformly in
  [delay - jitter, delay + jitter] (faultlab's ``uniform``);
- rates of 2**32 bytes/s (34 Gbit/s) and more (``TCA_NETEM_RATE64``).

For those, faultlab impairs through its own TUN wire (:mod:`faultlab.labnet.wire`)
with the same parameters. Everything here calls pyroute2's synchronous API:
call it outside trio (or through ``trio.to_thread``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as namespaces

from ..faults import LinkSpec

__all__ = [
    "NETEM_LIMIT",
    "NetemUnsupported",
    "netem_available",
    "netem_unsupported",
    "netem_request",
    "apply_netem",
    "clear_netem",
]

NETEM_LIMIT = 10_000
"""netem's queue in packets (its default is 1000). A long delay at a high
packet rate holds many packets at once; faultlab's wire has no such limit, so
the netem path gets a large one to avoid losses the profile did not ask for."""

_RATE_MAX = 2**32 - 1  # TCA_NETEM_RATE's rate is a u32 in bytes per second


class NetemUnsupported(ValueError):
    """The spec needs something pyroute2's netem request cannot express."""


def netem_unsupported(spec: LinkSpec) -> list[str]:
    """What in ``spec`` the netem request cannot express (empty: all of it)."""
    out = []
    if spec.loss_model is not None:
        out.append("Gilbert-Elliott loss (pyroute2 cannot encode netem's gemodel, TCA_NETEM_LOSS)")
    if spec.jitter and spec.distribution != "uniform":
        out.append(
            f"a {spec.distribution} jitter distribution"
            " (pyroute2 sends no TCA_NETEM_DELAY_DIST; netem's default is uniform)"
        )
    if spec.rate_bps is not None and spec.rate_bps / 8 > _RATE_MAX:
        out.append("a rate of 2**32 bytes/s or more (TCA_NETEM_RATE64)")
    return out


def _percent(p: float) -> float:
    return round(p * 100.0, 9)


def netem_request(spec: LinkSpec) -> dict:
    """The keyword arguments of ``ipr.tc("add", "netem", index=..., **kwargs)``
    for one direction: ``delay``/``jitter`` in microseconds, ``loss``,
    ``duplicate`` and ``prob_reorder`` in percent (netem's reorder with
    pyroute2's default gap of 1: each packet skips the delay with that
    probability, as in :class:`~faultlab.faults.LinkState`), ``rate`` in
    bytes per second, and ``limit`` (:data:`NETEM_LIMIT`). Raises
    :class:`NetemUnsupported` naming what it cannot express."""
    missing = netem_unsupported(spec)
    if missing:
        raise NetemUnsupported("netem through pyroute2 cannot do " + "; ".join(missing))
    req: dict = {"limit": NETEM_LIMIT}
    if spec.delay:
        req["delay"] = round(spec.delay * 1_000_000)
    if spec.jitter:
        req["jitter"] = round(spec.jitter * 1_000_000)
    if spec.loss:
        req["loss"] = _percent(spec.loss)
    if spec.duplicate:
        req["duplicate"] = _percent(spec.duplicate)
    if spec.reorder:
        req["prob_reorder"] = _percent(spec.reorder)
    if spec.rate_bps is not None:
        req["rate"] = max(1, round(spec.rate_bps / 8))
    return req


def _module_present() -> bool:
    if Path("/sys/module/sch_netem").exists():
        return True
    try:
        return any(line.split(" ", 1)[0] == "sch_netem" for line in Path("/proc/modules").read_text().splitlines())
    except OSError:
        return False


def netem_available() -> tuple[bool, str]:
    """Whether this kernel has ``sch_netem``, and why (or why not).

    A loaded module answers at once; otherwise (it may be built in, or load on
    demand) a netem qdisc is tried on a veth pair in a throwaway namespace,
    which needs root. The namespace is removed in any case."""
    if _module_present():
        return True, "sch_netem is loaded"
    if os.geteuid() != 0:
        return False, "sch_netem is not loaded and probing for it needs root"
    name = f"fl-netem-probe-{os.getpid()}"
    try:
        namespaces.create(name)
    except OSError as e:
        return False, f"cannot create a namespace to probe for sch_netem: {e}"
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("add", ifname="flprobe0", kind="veth", peer={"ifname": "flprobe1"})
            idx = ipr.link_lookup(ifname="flprobe0")[0]
            ipr.link("set", index=idx, state="up")
            try:
                ipr.tc("add", "netem", index=idx, delay=1000)
            except Exception as e:  # pyroute2 raises NetlinkError (an OSError subclass) or bare Exception
                code = getattr(e, "code", None)
                why = os.strerror(code) if isinstance(code, int) else str(e)
                if code == errno.EOPNOTSUPP or code == errno.ENOENT:
                    return False, f"this kernel has no sch_netem (tc qdisc add ... netem: {why})"
                return False, f"netem cannot be used here (tc qdisc add ... netem: {why})"
            return True, "sch_netem works (a probe qdisc was added)"
    except Exception as e:
        return False, f"probing for sch_netem failed: {e}"
    finally:
        try:
            namespaces.remove(name)
        except OSError:
            pass


def apply_netem(netns: str, ifname: str, spec: LinkSpec) -> None:
    """Replace the root qdisc of ``ifname`` in ``netns`` with netem for
    ``spec`` (just remove it when ``spec`` is clean). Needs sch_netem: not
    exercised on kernels without it (this project's CI kernel)."""
    req = None if spec.is_clean else netem_request(spec)
    with IPRoute(netns=netns, flags=0) as ipr:
        idx = _index(ipr, ifname)
        _del_root(ipr, idx)
        if req is not None:
            ipr.tc("add", "netem", index=idx, **req)


def clear_netem(netns: str, ifname: str) -> bool:
    """Remove the root qdisc of ``ifname`` (back to the default). False when
    the namespace or interface is gone or had none; idempotent."""
    try:
        with IPRoute(netns=netns, flags=0) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            return bool(found) and _del_root(ipr, found[0])
    except (FileNotFoundError, OSError):
        return False


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r}")
    return found[0]


def _del_root(ipr, idx: int) -> bool:
    try:
        ipr.tc("del", index=idx, root=True)
        return True
    except Exception:  # no root qdisc of ours: nothing to remove
        return False
