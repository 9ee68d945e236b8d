"""The embedded PBX's registrar (RFC 3261 §10, RFC 8599 push bindings): REGISTER in, bindings kept per user
with the flow each came on. A part of :class:`~faultlab.lab.pbx.logic.PbxLogic`, sans-IO."""

from __future__ import annotations

from faultlab.sip import Message, push_params

from .model import Binding, Flow, Note, Output, user_of


class Registrar:
    """The registrar half of the PBX state machine. Mixed into :class:`~faultlab.lab.pbx.logic.PbxLogic`,
    whose state it shares."""

    def bindings(self, user: str, now: float) -> list[Binding]:
        """The user's unexpired bindings, oldest first."""
        live = [b for b in self._bindings.get(user, []) if b.expires_at > now]
        if live:
            self._bindings[user] = live
        else:
            self._bindings.pop(user, None)
        return list(live)

    def drop_token(self, token: str, why: str) -> list[Output]:
        """APNs said ``token`` is no longer valid (410 Unregistered, 400 BadDeviceToken): forget every binding that
        pushes to it (RFC 8599: the proxy stops using the push binding), so no more pushes go there."""
        out: list[Output] = []
        for user, bindings in list(self._bindings.items()):
            kept = [b for b in bindings if b.token != token]
            if len(kept) == len(bindings):
                continue
            out.append(Note({"action": "token-dropped", "user": user, "token": token, "why": why}))
            if kept:
                self._bindings[user] = kept
            else:
                del self._bindings[user]
        return out

    def _register(self, msg: Message, flow: Flow, now: float) -> list[Output]:
        to = msg.to_addr
        user = user_of(to.uri) if to is not None else None
        if user is None:
            return [self._respond(msg, flow, 400, "Bad To")]
        header_expires = msg.expires
        contacts = msg.contacts
        out: list[Output] = []
        refreshed: Binding | None = None
        bindings = self.bindings(user, now)
        if any(c.uri == "*" for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return [self._respond(msg, flow, 400, "Invalid Contact *")]
            self._bindings.pop(user, None)
            out.append(Note({"action": "unregister", "user": user, "contact": "*"}))
            bindings = []
        for contact in contacts:
            if contact.uri == "*":
                continue
            param = contact.params.get("expires")
            if param is not None:
                if not param.isdigit():
                    return [self._respond(msg, flow, 400, "Bad expires")]
                expires = int(param)
            else:
                expires = header_expires if header_expires is not None else self.default_expires
            pn = push_params(contact)
            token = pn.get("pn-prid")
            same = [b for b in bindings if b.contact == contact.uri or (token and b.token == token)]
            bindings = [b for b in bindings if b not in same]
            if expires == 0:
                out.append(Note({"action": "unregister", "user": user, "contact": contact.uri}))
                continue
            binding = Binding(user, contact.uri, now + expires, flow, pn, now)
            bindings.append(binding)
            refreshed = binding
            out.append(Note({"action": "register", "user": user, "contact": contact.uri, "expires": expires,
                             "flow": str(flow), "push": pn, "refresh": bool(same)}))
        if bindings:
            self._bindings[user] = bindings
            self._watch_aor(user, min(b.expires_at for b in bindings))
        else:
            self._bindings.pop(user, None)
        listed = [("Contact", f"<{b.contact}>;expires={b.remaining(now)}") for b in bindings]
        out.append(self._respond(msg, flow, 200, headers=listed))
        if refreshed is not None:
            for call in self._ringing_calls(user):
                if (call.state == "forwarded" and call.user == user and not call.device_responded
                        and not call.cancelled and call.callee_flow is not None and call.callee_flow != flow):
                    # the device registered on a new connection (or from a new address) before the PBX learnt the
                    # old one died: the INVITE sent there got no answer, so it goes on the new flow (and the old
                    # branch is forgotten)
                    out.append(Note({"action": "reforward", "from_flow": str(call.callee_flow), "flow": str(flow)},
                                    call.call_id))
                    self._forget_branch(call)
                    out += self._forward_invite(call, refreshed, now)
                    continue
                if call.state == "held" and call.user == user:
                    self._timers.pop(("hold", call.call_id), None)
                    held_for = None if call.held_at is None else round(now - call.held_at, 6)
                    out.append(Note({"action": "release", "user": user, "flow": str(flow),
                                     "held_for": held_for}, call.call_id))
                    out += self._forward_invite(call, refreshed, now)
        return out
