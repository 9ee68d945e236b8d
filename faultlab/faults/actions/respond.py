"""``respond = 503`` (``reason``, ``headers``): answer the request at once; it goes no further."""

from __future__ import annotations

from typing import Any

from ...sip import SipError, build_response
from ...tables import integer, text
from .._kind import NEXT_RULE, ActionKind
from .._model import RespondSpec
from ._headers import headers_table


class Respond(ActionKind):
    name = "respond"
    keys = ("reason", "headers")
    terminal = True

    def parse(self, t, match) -> dict[str, Any]:
        status = t.get("respond", integer(200, 699), "a final status code 200-699, e.g. 503")
        reason = t.get("reason", text, "a reason phrase (string)")
        if reason is not None and ("\r" in reason or "\n" in reason):
            raise t.error("reason", "a reason phrase without CR or LF")
        headers = headers_table(t, "headers") if "headers" in t else ()
        return {"respond": RespondSpec(status, reason, headers)}

    def check(self, action, t, match) -> None:
        if match.status is not None or match.on == "connect":
            raise t.error("respond", "respond answers requests: the rule must not match responses (status)")
        if match.method is not None and match.method <= {"ACK"}:
            raise t.error("respond", "an ACK gets no response (RFC 3261 §17.1.1.3)")

    def forwards(self, action) -> bool:
        return False

    def applies(self, facts) -> bool:
        msg = facts.message
        return msg.is_request and msg.method != "ACK"

    def on_message(self, action, rule, draft, detail):
        spec = action.respond
        try:
            response = build_response(draft.message, spec.status, spec.reason, headers=spec.headers)
        except (ValueError, SipError) as e:  # pragma: no cover - validated at load
            draft.fire(rule, "error", {"error": str(e)})
            return NEXT_RULE
        draft.fire(rule, "respond", {"status": spec.status})
        return draft.final(respond=response)
