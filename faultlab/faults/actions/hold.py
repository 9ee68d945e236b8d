"""``hold = true`` (``timeout``, ``then``): keep the message until released, or until the timeout."""

from __future__ import annotations

from typing import Any

from ...tables import choice, one_of, true
from .._kind import ActionKind
from .._model import HoldSpec
from .._units import DURATION_ALLOWED, parse_duration


class Hold(ActionKind):
    name = "hold"
    keys = ("timeout", "then")
    terminal = True

    def parse(self, t, match) -> dict[str, Any]:
        t.get("hold", true, "true")
        spec = HoldSpec(
            timeout=t.get("timeout", parse_duration, DURATION_ALLOWED),
            then=t.get("then", choice(("forward", "drop")), one_of(("forward", "drop")), "forward"),
        )
        if "then" in t and spec.timeout is None:
            raise t.error("then", "then applies after a timeout: set timeout too")
        return {"hold": spec}

    def on_message(self, action, rule, draft, detail):
        spec = action.hold
        detail.update(timeout=spec.timeout, then=spec.then)
        draft.fire(rule, "hold", detail)
        return draft.final(hold=True, held=draft.data, hold_timeout=spec.timeout, hold_then=spec.then)
