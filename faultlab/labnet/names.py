"""The lab network's names: namespaces ``fl-<lab>-<role>``, interfaces ``fl-<lab>-<suffix>``, the air's
tables and TUNs, and the one error type. Pure (no pyroute2): the topology and the link impairment both read
these, and the ``faultlab net`` command checks a lab name with them before loading anything heavy.
"""

from __future__ import annotations

import os
import re
import shutil

PREFIX = "fl"
IFNAMSIZ = 15  # usable characters of a Linux interface name (IFNAMSIZ 16 minus the NUL)
MAX_NAME = IFNAMSIZ - len(PREFIX) - 2 - len("gp")  # "fl-" + name + "-gp": 9 characters
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

AIR = "air"
"""The role of the namespace between the devices and the gateway, where the link impairment lives."""
AIR_TABLE = 3000
"""Routing table ``AIR_TABLE + i`` in the air holds device *i*'s uplink (default via the gateway)."""
AIR_RULE_PRIORITY = 3000
"""Priority of the air's uplink rules: after the link impairment's (:data:`WIRE_PRIORITY`)."""

UP_TUN = "fltun0"
"""The wire's TUN for packets from the devices, on their way to the gateway (``to-pbx``); the air routes
what the wire writes back to it up to the gateway."""
DOWN_TUN = "fltun1"
"""The wire's TUN for packets from the gateway, on their way to a device (``to-device``)."""
WIRE_TABLE_UP = 2160
"""The policy-routing table that sends packets from the devices into :data:`UP_TUN`."""
WIRE_TABLE_DOWN = 2161
"""The policy-routing table that sends packets from the gateway into :data:`DOWN_TUN`."""
WIRE_PRIORITY = 2160
"""The priority of the wire's ``iif`` rules: after ``local`` (0), before the air's own (3000) and ``main``."""

NOT_ROOT = "faultlab net needs root (network namespaces): run it with sudo"


class LabError(Exception):
    """A lab operation failed; the message says what to do. ``usage`` is true for bad input."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def require_root() -> None:
    """:class:`LabError` with :data:`NOT_ROOT` unless this process runs as root."""
    if os.geteuid() != 0:
        raise LabError(NOT_ROOT)


def check_name(lab: str) -> None:
    """:class:`LabError` (usage) unless ``lab`` can name a lab: letters, digits, '_', short enough."""
    if not isinstance(lab, str) or not _NAME_RE.fullmatch(lab):
        raise LabError(f"bad lab name {lab!r}: use letters, digits and '_' (no '-'), starting with a letter or digit",
                       usage=True)
    if len(lab) > MAX_NAME:
        raise LabError(f"lab name {lab!r} is too long ({len(lab)} characters): interface names "
                       f"'{PREFIX}-<name>-...' must fit in {IFNAMSIZ} characters (IFNAMSIZ), "
                       f"so the name may have at most {MAX_NAME}", usage=True)


def max_name(devices: int) -> int:
    """The longest lab name whose interfaces still fit IFNAMSIZ with ``devices`` devices."""
    return min(MAX_NAME, IFNAMSIZ - len(PREFIX) - 2 - len(f"g{devices}"))


def ns_prefix(lab: str) -> str:
    """``fl-<lab>-``: what every namespace and interface of the lab starts with."""
    return f"{PREFIX}-{lab}-"


def netns_name(lab: str, role: str) -> str:
    """The namespace of ``role`` ("gateway", "pbx", "device1".."deviceN") in lab ``lab``: ``fl-<lab>-<role>``."""
    check_name(lab)
    if not isinstance(role, str) or not _ROLE_RE.fullmatch(role):
        raise LabError(f"bad role {role!r}: expected gateway, pbx or device<N>", usage=True)
    return f"{ns_prefix(lab)}{role}"


def lab_ifname(lab: str, suffix: str) -> str:
    """The interface ``fl-<lab>-<suffix>``."""
    return f"{ns_prefix(lab)}{suffix}"


def find_tool(name: str) -> str | None:
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
    return [find_tool("ip") or "ip", "netns", "exec", netns_name(lab, role), *argv]
