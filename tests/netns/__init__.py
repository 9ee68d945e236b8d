"""Tests that need Linux network namespaces (marker ``netns``, root)."""

from __future__ import annotations

import os
import sys

from faultlab.labnet.names import find_tool


def netns_skip_reason() -> str | None:
    """Why namespace tests cannot run here (``None``: they can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root for network namespaces (run the suite with sudo; CI runs it as root)"
    if find_tool("ip") is None:
        return "needs the `ip` command from iproute2 (apt-get install iproute2)"
    return None
