"""``delay = "2s"`` (``jitter``, ``distribution``): forward later; delays of continued rules add up."""

from __future__ import annotations

from typing import Any

from ...tables import choice, one_of
from .._decision import round9
from .._kind import ActionKind
from .._link import draw_delay
from .._model import DelaySpec
from .._units import DURATION_ALLOWED, parse_duration

DISTRIBUTIONS = ("uniform", "normal")


class Delay(ActionKind):
    name = "delay"
    keep_alive = True
    keys = ("jitter", "distribution")

    def parse(self, t, match) -> dict[str, Any]:
        return {
            "delay": DelaySpec(
                delay=t.require("delay", parse_duration, DURATION_ALLOWED),
                jitter=t.get("jitter", parse_duration, DURATION_ALLOWED, 0.0),
                distribution=t.get("distribution", choice(DISTRIBUTIONS), one_of(DISTRIBUTIONS), "uniform"),
            )
        }

    def on_message(self, action, rule, draft, detail):
        spec = action.delay
        d = draw_delay(draft.rng, spec.delay, spec.jitter, spec.distribution)
        draft.delay += d
        detail["delay"] = round9(d)
        draft.fire(rule, "delay", detail)
        return None
