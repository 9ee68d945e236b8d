"""The control HTTP API that runs inside the proxy: live profile switching, rules, holds, flows, events.

Server side (trio): ``await nursery.start(serve_api, control, "127.0.0.1", 5099, token=None)``, where
``control`` is the relay's implementation of :class:`Control`. The resources are listed in
:mod:`faultlab.api.app`; the synchronous client for the CLI is :mod:`faultlab.api.client`.

Names are loaded on first use, so that ``faultlab.api.client`` (stdlib only) does not pull in the
server's libraries (hypercorn, Starlette) for a one-shot CLI command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .protocol import Control, ProfileError
    from .server import (
        DEFAULT_API_HOST,
        DEFAULT_API_PORT,
        ApiAddressError,
        ApiBindError,
        check_api_bind,
        is_loopback,
        parse_api_address,
        serve_api,
    )

_WHERE = {
    "create_app": "app",
    "Control": "protocol",
    "ProfileError": "protocol",
    "DEFAULT_API_HOST": "server",
    "DEFAULT_API_PORT": "server",
    "ApiAddressError": "server",
    "ApiBindError": "server",
    "check_api_bind": "server",
    "is_loopback": "server",
    "parse_api_address": "server",
    "serve_api": "server",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
