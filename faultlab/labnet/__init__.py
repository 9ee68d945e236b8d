"""faultlab.labnet: the lab network on Linux, built with pyroute2 and nftables.

* :mod:`.names` -- the lab's names (``fl-<lab>-<role>``), the air's tables and TUNs, :class:`LabError`.
  Pure: the topology and the impairment share it.
* :mod:`.topology` -- device, air, gateway and PBX namespaces joined by veths: :func:`lab_up`,
  :func:`lab_status`, :func:`lab_down` (the address plan is in its docstring); :mod:`.rtnl` its
  pyroute2 helpers.
* :mod:`.intercept` -- the gateway's nftables table that hands SIP to ``faultlab proxy --transparent``.
* :mod:`.impair` -- a profile's ``[link]`` on every packet crossing the air: :func:`impair_lab`,
  :func:`clear_lab`; with netem (:mod:`.netem`) or faultlab's own TUN wire (:mod:`.wire`, run as a
  process by :mod:`.wire_process`, steered by :mod:`.tun`).

Plain sync functions: call them before ``trio.run`` or through ``trio.to_thread.run_sync``. The names
below load their module (and pyroute2) on first use, so importing :mod:`.names` stays cheap.
See docs/ci-with-namespaces.md for CI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .names import AIR, PREFIX, LabError, exec_argv, netns_name

__all__ = [
    "AIR",
    "PREFIX",
    "Interface",
    "Lab",
    "LabError",
    "Role",
    "clear_lab",
    "exec_argv",
    "impair_lab",
    "intercept_off",
    "intercept_on",
    "lab_down",
    "lab_impairment",
    "lab_status",
    "lab_up",
    "netns_name",
]

_LAZY = {
    "Interface": ".topology",
    "Lab": ".topology",
    "Role": ".topology",
    "lab_down": ".topology",
    "lab_status": ".topology",
    "lab_up": ".topology",
    "clear_lab": ".impair",
    "impair_lab": ".impair",
    "lab_impairment": ".impair",
    "intercept_off": ".intercept",
    "intercept_on": ".intercept",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
