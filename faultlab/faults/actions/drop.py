"""``drop = true``: the message goes no further."""

from __future__ import annotations

from typing import Any

from ...tables import true
from .._kind import ActionKind


class Drop(ActionKind):
    name = "drop"
    keep_alive = True
    terminal = True

    def parse(self, t, match) -> dict[str, Any]:
        t.get("drop", true, "true (to not drop, remove the rule)")
        return {}

    def forwards(self, action) -> bool:
        return False

    def on_message(self, action, rule, draft, detail):
        draft.fire(rule, "drop", detail)
        return draft.final()
