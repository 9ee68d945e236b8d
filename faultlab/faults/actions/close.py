"""``close = true`` / ``reset = true`` (``when``): end the connection with FIN or RST, before or after
forwarding the message; a connect rule ends the new connection at once."""

from __future__ import annotations

from typing import Any

from ...tables import choice, one_of, true
from .._kind import ActionKind
from .._model import CloseSpec


class Close(ActionKind):
    name = "close"
    keys = ("when",)
    connect = True
    streams_only = True
    how = "fin"

    def parse(self, t, match) -> dict[str, Any]:
        t.get(self.name, true, "true")
        default_when = "before" if match.on == "connect" else "after"
        when = t.get("when", choice(("before", "after")), one_of(("before", "after")), default_when)
        if match.on == "connect" and when != "before":
            raise t.error("when", "a connect rule closes the new connection at once: leave when out")
        if match.transport == frozenset({"udp"}):
            raise t.error(self.name, "UDP has no connection to close: match transport = \"tcp\" or \"tls\"")
        return {"close": CloseSpec(self.how, when)}

    def forwards(self, action) -> bool:
        return action.close.when != "before"

    def ends(self, action) -> bool:
        return action.close.when == "before"

    def on_message(self, action, rule, draft, detail):
        spec = action.close
        detail["when"] = spec.when
        draft.fire(rule, self.name, detail)
        if spec.when == "before":
            return draft.final(close=spec.kind, close_when="before")
        if draft.close is None:
            draft.close, draft.close_when = spec.kind, "after"
        return None

    def on_connect(self, action, rule, draft):
        draft.fire(rule, self.name, {"when": "before"})
        return draft.final(close=action.close.kind, close_when="before", stall=draft.stall)


class Reset(Close):
    name = "reset"
    how = "rst"
