"""``duplicate = 2`` (``spacing``): send extra copies; copies of continued rules add up."""

from __future__ import annotations

from typing import Any

from ...tables import integer
from .._kind import ActionKind
from .._model import DuplicateSpec
from .._units import DURATION_ALLOWED, parse_duration


class Duplicate(ActionKind):
    name = "duplicate"
    keys = ("spacing",)

    def parse(self, t, match) -> dict[str, Any]:
        return {
            "duplicate": DuplicateSpec(
                copies=t.get("duplicate", integer(1, 100), "the number of extra copies, 1-100"),
                spacing=t.get("spacing", parse_duration, DURATION_ALLOWED, 0.0),
            )
        }

    def on_message(self, action, rule, draft, detail):
        spec = action.duplicate
        draft.offsets.extend(i * spec.spacing for i in range(1, spec.copies + 1))
        detail.update(copies=spec.copies, spacing=spec.spacing)
        draft.fire(rule, "duplicate", detail)
        return None
