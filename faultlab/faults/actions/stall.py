"""``stall = "10s"`` / ``stall = true``: stop reading the connection for a while (or until it ends) after
forwarding; of several stalls the longest wins."""

from __future__ import annotations

import math
from typing import Any

from .._kind import ActionKind
from .._units import DURATION_ALLOWED, format_duration, parse_duration


def _stall(value: Any) -> float:
    if value is True:
        return math.inf
    return parse_duration(value)


class Stall(ActionKind):
    name = "stall"
    connect = True
    streams_only = True

    def parse(self, t, match) -> dict[str, Any]:
        return {"stall": t.get("stall", _stall, DURATION_ALLOWED + ", or true (until the connection ends)")}

    def on_message(self, action, rule, draft, detail):
        self._extend(action, rule, draft, detail)
        return None

    def on_connect(self, action, rule, draft):
        self._extend(action, rule, draft, {})
        return None

    @staticmethod
    def _extend(action, rule, draft, detail) -> None:
        draft.stall = action.stall if draft.stall is None else max(draft.stall, action.stall)
        detail["for"] = format_duration(action.stall)
        draft.fire(rule, "stall", detail)
