"""The embedded PBX: a registrar and stateless-ish proxy that speaks RFC 8599 push.

* :mod:`.logic` -- :class:`PbxLogic`, sans-IO: (message, flow, now) in, outputs out (:class:`SendBytes`,
  :class:`RequestPush`, :class:`Note`). No trio, no sockets. Its parts: :mod:`.registrar`, :mod:`.calls`,
  :mod:`.transactions`, :mod:`.lifetimes` (what is forgotten when), and the data in :mod:`.model`.
* :mod:`.driver` -- :class:`PBX`, the trio driver: UDP/TCP/TLS listeners, timers, pushes, the timeline.

The driver is loaded on first use of ``PBX``, so importing the logic never loads trio.
"""

from __future__ import annotations

from typing import Any

from .logic import ELSEWHERE_REASONS, Binding, Flow, Note, Output, PbxLogic, RequestPush, SendBytes

__all__ = ["PBX", "PbxLogic", "Output", "Binding", "Flow", "Note", "RequestPush", "SendBytes", "ELSEWHERE_REASONS"]


def __getattr__(name: str) -> Any:
    if name == "PBX":
        from .driver import PBX

        return PBX
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
