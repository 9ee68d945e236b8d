"""No primary action, only ``set_headers`` / ``remove_headers``: forward the message edited."""

from __future__ import annotations

from .._kind import ActionKind, primary_kinds


class Forward(ActionKind):
    name = "forward"
    primary = False

    def check(self, action, t, match) -> None:
        if not action.edits:
            raise t.whole("an action: one of " + ", ".join(primary_kinds()) + ", and/or set_headers / remove_headers")

