"""The embedded PBX: a registrar and stateless-ish proxy that speaks RFC 8599 push.

* :mod:`.logic` -- :class:`PbxLogic`, sans-IO: (message, flow, now) in, outputs out. No trio, no sockets.
* :mod:`.driver` -- :class:`PBX`, the trio driver: UDP/TCP/TLS listeners, timers, pushes, the timeline.

The driver is loaded on first use of ``PBX``, so importing the logic never loads trio.
"""

from __future__ import annotations

from typing import Any

from .logic import ELSEWHERE_REASONS, Action, Binding, Flow, Note, PbxLogic, Push, Send

__all__ = ["PBX", "PbxLogic", "Action", "Binding", "Flow", "Note", "Push", "Send", "ELSEWHERE_REASONS"]


def __getattr__(name: str) -> Any:
    if name == "PBX":
        from .driver import PBX

        return PBX
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
