"""The embedded PBX's calls: INVITE (held for a push, then forwarded on the fresh REGISTER's flow), CANCEL,
in-dialog requests and the device's responses. A part of :class:`~faultlab.lab.pbx.logic.PbxLogic`, sans-IO."""

from __future__ import annotations

import json
import uuid

from faultlab.sip import Message, build_response, remove_top_value

from .model import (
    RR_USER,
    Binding,
    Call,
    ClientTxn,
    Flow,
    Note,
    Output,
    RequestPush,
    SendBytes,
    ServerTxn,
    parse_raw,
    user_of,
)


RINGING = ("new", "held", "forwarded", "cancelling")  # a call leaves these states for good


class Calls:
    """The call half of the PBX state machine. Mixed into :class:`~faultlab.lab.pbx.logic.PbxLogic`,
    whose state it shares."""

    def _ringing_calls(self, user: str | None = None) -> list[Call]:
        """The calls of ``user`` (or of everyone) not yet confirmed or ended, oldest first. The index
        (``_ringing``: user -> call-ID -> call) forgets the others on the way, so a REGISTER costs the
        user's ringing calls, not every call the PBX remembers."""
        found: list[Call] = []
        for who in [user] if user is not None else list(self._ringing):
            calls = self._ringing.get(who)
            for call_id, call in list((calls or {}).items()):
                if call.state in RINGING and self._calls.get(call_id) is call:
                    found.append(call)
                else:
                    del calls[call_id]
            if calls is not None and not calls:
                del self._ringing[who]
        return found

    def _invite(self, msg: Message, flow: Flow, now: float) -> list[Output]:
        call_id = msg.call_id
        if call_id is None or msg.cseq is None:
            return [self._respond(msg, flow, 400, "Missing Call-ID or CSeq")]
        branch = msg.top_via.branch if msg.top_via else None
        call = self._calls.get(call_id)
        if call is not None:
            if call.server_branch == branch and call.last_response is not None:
                return [SendBytes(call.caller_flow, call.last_response)]  # a retransmission
            if call.state != "ended":
                return [self._respond(msg, flow, 482, "Loop Detected")]
            self._forget_call(call)  # a new call with the Call-ID of an ended one: the old one's records go
        mf = msg.get("max-forwards")
        if mf is not None and mf.strip() == "0":
            return [self._respond(msg, flow, 483)]
        user = user_of(msg.request_uri or "")
        bindings = self.bindings(user, now) if user else []
        if not bindings:
            return [Note({"action": "no-binding", "user": user}, call_id), self._respond(msg, flow, 404)]
        call = Call(call_id, user, msg, flow, msg.from_tag, branch)
        self._calls[call_id] = call
        self._ringing.setdefault(user, {})[call_id] = call
        self._watch_call(call, now)
        trying = build_response(msg, 100)
        call.last_response = trying
        out: list[Output] = [SendBytes(flow, trying)]
        binding = bindings[-1]
        if binding.token:
            call.state = "held"
            call.token = binding.token
            call.held_at = now
            self._timers[("hold", call_id)] = now + self.hold
            payload = self._payload("call", call)
            out.append(Note({"action": "hold", "user": user, "token": binding.token, "hold": self.hold,
                             "provider": binding.push.get("pn-provider")}, call_id))
            out.append(RequestPush(binding.token, payload, call_id))
        else:
            out += self._forward_invite(call, binding, now)
        return out

    def _payload(self, kind: str, call: Call) -> dict:
        payload = self._bare_payload(kind, call)
        if kind == "call" and self.payload_size is not None:  # padded to exactly that size as compact JSON
            payload["pad"] = ""
            payload["pad"] = "x" * max(0, self.payload_size - len(json.dumps(payload, separators=(",", ":"))))
        return payload

    def _bare_payload(self, kind: str, call: Call) -> dict:
        frm = call.invite.from_addr
        return {
            "aps": {},
            "type": kind,
            "call-id": call.call_id,
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, "faultlab-call:" + call.call_id)),
            "from-uri": frm.uri if frm else "",
            "display-name": (frm.display if frm and frm.display else (user_of(frm.uri) if frm else "")) or "",
            "send-time": self.wall_clock(),
        }

    def _forward_invite(self, call: Call, binding: Binding, now: float) -> list[Output]:
        fwd, branch, send = self._forward(call.invite, binding.flow, call.caller_flow, request_uri=binding.contact,
                                          record_route=True, call_id=call.call_id, now=now)
        call.state = "forwarded"
        call.callee_flow = binding.flow
        call.out_invite = fwd
        call.out_branch = branch
        self._timers[("ring", call.call_id)] = now + self.ring_timeout
        return [Note({"action": "forward", "user": call.user, "flow": str(binding.flow),
                      "contact": binding.contact}, call.call_id), send]

    def _cancel(self, msg: Message, flow: Flow, now: float) -> list[Output]:
        call = self._calls.get(msg.call_id or "")
        branch = msg.top_via.branch if msg.top_via else None
        if call is None or call.server_branch != branch:
            return [self._respond(msg, flow, 481)]
        out: list[Output] = [self._respond(msg, flow, 200)]
        if call.final_sent is not None or call.cancelled:
            return out  # too late (the INVITE already has its final response), or a retransmitted CANCEL
        reasons = msg.get_all("reason")
        call.ended_by = "cancel"
        if call.state == "held":
            out.append(Note({"action": "cancel-held", "reason": reasons}, call.call_id))
            out += self._end_held(call)
        elif call.state == "forwarded":
            out.append(Note({"action": "forward-cancel", "reason": reasons}, call.call_id))
            out += self._cancel_device(call, reasons=[h.value for h in msg.header_fields("reason")],
                                       relay_487=True, now=now)
        return out

    def _end_held(self, call: Call) -> list[Output]:
        self._timers.pop(("hold", call.call_id), None)
        call.state = "ended"
        out = self._answer_caller(call, 487)
        if self.cancel_push and call.token and self.misbehaviour != "forgets-cancel-push":
            out.append(Note({"action": "cancel-push", "token": call.token}, call.call_id))
            out.append(RequestPush(call.token, self._payload("cancel", call), call.call_id))
        return out

    def _cancel_device(self, call: Call, *, reasons: list[str], now: float,
                       relay_487: bool = False) -> list[Output]:
        """CANCEL the forwarded INVITE (same branch, Request-URI, Route; RFC 3261 §9.1).

        While the INVITE is still retransmitted without any response, the CANCEL waits for the first
        provisional response (§9.1: no CANCEL before a provisional response)."""
        self._timers.pop(("ring", call.call_id), None)
        inv = call.out_invite
        assert inv is not None and call.callee_flow is not None
        lines = [f"CANCEL {inv.request_uri} SIP/2.0", f"Via: {inv.get_all('via')[0]}", "Max-Forwards: 70"]
        lines += [f"Route: {r}" for r in inv.get_all("route")]
        lines += [f"From: {inv.get('from')}", f"To: {inv.get('to')}", f"Call-ID: {inv.call_id}",
                  f"CSeq: {inv.cseq.number} CANCEL"]
        lines += [f"Reason: {r}" for r in reasons]
        data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")
        if not relay_487:
            call.state = "cancelling"
        call.cancelled = True
        # RFC 3261 §9.1: if the INVITE gets no final response within 64*T1 of the CANCEL, the PBX ends it itself
        self._timers[("cancel", call.call_id)] = now + 64 * self.t1
        assert call.out_branch is not None
        if (call.out_branch, "INVITE") in self._retx:
            call.pending_cancel = data
            return [Note({"action": "cancel-deferred", "why": "no response to the INVITE yet"}, call.call_id)]
        send = SendBytes(call.callee_flow, data)
        self._start_retx(send, call.out_branch, "CANCEL", call.call_id, now)
        return [send]

    def _in_dialog(self, msg: Message, flow: Flow, now: float) -> list[Output]:
        call = self._calls.get(msg.call_id or "")
        if msg.method == "ACK" and call is not None and call.final_sent is not None and call.final_sent >= 300:
            branch = msg.top_via.branch if msg.top_via else None
            if branch == call.server_branch:
                return []  # ACK to our own non-2xx final response: absorbed (hop by hop)
        if call is None or call.callee_flow is None:
            if msg.method == "ACK":
                return [Note({"action": "drop", "why": "ACK outside any dialog"}, msg.call_id)]
            return [self._respond(msg, flow, 481)]
        m = msg
        while True:
            routes = m.get_all("route")
            if not routes or f"sip:{RR_USER}@" not in routes[0]:
                break
            m = parse_raw(remove_top_value(m, "Route"))
        from_caller = msg.from_tag == call.caller_tag
        out_flow = call.callee_flow if from_caller else call.caller_flow
        server = None
        if msg.method != "ACK":
            branch = msg.top_via.branch if msg.top_via else None
            key = (branch or "", msg.cseq.method if msg.cseq else (msg.method or ""))
            known = self._servers.get(key) if branch else None
            if known is not None and known.flow == flow:  # a retransmission of a request already relayed
                return [SendBytes(flow, known.last_response)] if known.last_response is not None else []
            server = ServerTxn(msg, flow)
            if branch:
                server.key = key
                self._servers[key] = server
                call.server_keys.add(key)
        _, _, send = self._forward(m, out_flow, None if msg.method == "ACK" else flow, request_uri=None,
                                   record_route=False, call_id=call.call_id, now=now, server=server)
        out: list[Output] = [send]
        if msg.method == "BYE":
            out.insert(0, Note({"action": "bye", "from": "caller" if from_caller else "callee"}, call.call_id))
        return out

    def _response(self, msg: Message, flow: Flow, now: float) -> list[Output]:
        via = msg.top_via
        txn = self._txns.get(via.branch) if via is not None and via.branch else None
        if txn is None:
            return [Note({"action": "drop", "why": "response to no transaction of the PBX",
                          "status": msg.status}, msg.call_id)]
        status = msg.status
        if msg.cseq is not None and msg.cseq.method == "CANCEL":
            self._txn_response(via.branch, "CANCEL", status)
            return []  # the device's answer to the PBX's CANCEL (same branch as the INVITE, §9.1)
        self._txn_response(via.branch, txn.method, status)
        stripped = parse_raw(remove_top_value(msg, "Via"))
        out: list[Output] = []
        call = self._calls.get(txn.call_id or "")
        if txn.method == "INVITE" and call is not None and via.branch == call.out_branch:
            call.device_responded = True
            if call.pending_cancel is not None:  # the first response to the INVITE: the deferred CANCEL goes
                data, call.pending_cancel = call.pending_cancel, None
                if status < 200 and call.callee_flow is not None:
                    send = SendBytes(call.callee_flow, data)
                    self._start_retx(send, via.branch, "CANCEL", call.call_id, now)
                    out.append(send)
            if status == 100:
                return out
            if status >= 200:
                self._timers.pop(("ring", call.call_id), None)
                self._timers.pop(("cancel", call.call_id), None)
                call.device_final = status
            if status >= 300:
                out.append(self._ack_device(call, msg))
            if call.final_sent is not None:
                if 200 <= status < 300 and call.final_sent == status:
                    return [SendBytes(call.caller_flow, stripped.raw, message=stripped)]  # a 2xx retransmission
                if 200 <= status < 300 and call.late_ack is not None and call.callee_flow is not None:
                    return [SendBytes(call.callee_flow, call.late_ack)]  # the late 2xx again: ACK it again
                if 200 <= status < 300 and call.state != "late-answer":
                    # the device answered as the CANCEL crossed it: close its dialog (ACK, then BYE)
                    call.state = "late-answer"
                    out.append(Note({"action": "late-answer", "status": status,
                                     "caller_got": call.final_sent}, call.call_id))
                    out += self._ack_and_bye_device(call, msg, now)
                return out  # the caller already has its final response (timeout, elsewhere)
            if status >= 200:
                call.final_sent = status
                call.state = "confirmed" if status < 300 else "ended"
            call.last_response = stripped.raw  # what a retransmitted INVITE gets
            out.append(SendBytes(call.caller_flow, stripped.raw, message=stripped))
            return out
        if status >= 200 and txn.final is None:
            txn.final = status
            self._client_done(via.branch, txn, now)
        elif status >= 200 and txn.method != "INVITE":
            return out  # a retransmitted final response: absorbed (RFC 3261 §17.1.2.2)
        if txn.in_flow is None:  # response to the PBX's own CANCEL or BYE
            if txn.method == "BYE" and status >= 200 and call is not None:
                call.state = "ended"
            return out
        if txn.method == "BYE" and status >= 200 and call is not None:
            call.state = "ended"
        if txn.server is not None and (status > 100 or txn.server.last_response is None):
            txn.server.last_response = stripped.raw
            if status >= 200 and txn.server.final is None:
                txn.server.final = status
                self._server_done(txn.server, now)
        out.append(SendBytes(txn.in_flow, stripped.raw, message=stripped))
        return out

    def _ack_and_bye_device(self, call: Call, response: Message, now: float) -> list[Output]:
        """ACK a 2xx the caller will never see, and hang up that dialog (RFC 3261 §13.2.2.4, §15)."""
        inv = call.out_invite
        assert inv is not None and call.callee_flow is not None
        contacts = response.contacts
        target = contacts[0].uri if contacts else inv.request_uri
        out: list[Output] = []
        for method, number in (("ACK", inv.cseq.number), ("BYE", inv.cseq.number + 1)):
            branch = self._new_branch(call.call_id, method)
            lines = [f"{method} {target} SIP/2.0", f"Via: {self._via(call.callee_flow, branch)}",
                     "Max-Forwards: 70", f"From: {inv.get('from')}", f"To: {response.get('to')}",
                     f"Call-ID: {inv.call_id}", f"CSeq: {number} {method}"]
            if method == "BYE":
                lines.append('Reason: SIP;cause=487;text="Request Terminated"')
                self._txns[branch] = ClientTxn("BYE", call.call_id, None, transport=call.callee_flow.transport)
                call.branches.add(branch)
            data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")
            send = SendBytes(call.callee_flow, data)
            if method == "ACK":
                call.late_ack = data
            else:
                self._start_retx(send, branch, method, call.call_id, now)
            out.append(send)
        return out

    def _ack_device(self, call: Call, response: Message) -> SendBytes:
        """ACK a non-2xx final response from the device (RFC 3261 §17.1.1.3)."""
        inv = call.out_invite
        assert inv is not None and call.callee_flow is not None
        lines = [f"ACK {inv.request_uri} SIP/2.0", f"Via: {inv.get_all('via')[0]}", "Max-Forwards: 70"]
        lines += [f"Route: {r}" for r in inv.get_all("route")]
        lines += [f"From: {inv.get('from')}", f"To: {response.get('to')}", f"Call-ID: {inv.call_id}",
                  f"CSeq: {inv.cseq.number} ACK", "Content-Length: 0"]
        return SendBytes(call.callee_flow, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
