"""faultlab.netns: the lab network on Linux (device, air, gateway and PBX namespaces), built with pyroute2.

Plain sync functions: call them before ``trio.run`` or through ``trio.to_thread.run_sync``.
See :mod:`faultlab.netns.topology` for the address plan and docs/ci-with-namespaces.md for CI.
"""

from .topology import (
    AIR,
    PREFIX,
    Interface,
    Lab,
    LabError,
    Role,
    exec_argv,
    lab_down,
    lab_status,
    lab_up,
    netns_name,
)

__all__ = [
    "AIR",
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
