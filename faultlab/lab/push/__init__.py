"""The lab's push side: an APNs-compatible gateway with push faults, and the senders that reach it.

* :mod:`.apns` -- what APNs accepts (request validation), what it warns about (lint), the :class:`Push` model.
  Sans-IO.
* :mod:`.faults` -- :class:`PushFaults`: drop cancel pushes, drop all, delay, duplicate. Sans-IO.
* :mod:`.gateway` -- :class:`PushGateway` (trio, ASGI) and :func:`serve_push_gateway` (hypercorn, h2c/h2).
* :mod:`.client` -- :class:`PushClient` (HTTP/2 to a gateway or APNs) and :func:`open_push_stream`.
* :mod:`.auth` -- APNs provider tokens (:class:`ApnsSigner`).

The trio modules are loaded on first use of their names, so importing the sans-IO parts never loads trio.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .apns import MAX_PAYLOAD, Push, PushError, PushRejected, push_kind
from .faults import PushFaults

__all__ = [
    "MAX_PAYLOAD",
    "Push",
    "PushClient",
    "PushError",
    "PushRejected",
    "PushFaults",
    "PushGateway",
    "open_push_stream",
    "push_kind",
    "serve_push_gateway",
]

_LAZY = {"PushGateway": ".gateway", "serve_push_gateway": ".gateway", "PushClient": ".client",
         "open_push_stream": ".client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
