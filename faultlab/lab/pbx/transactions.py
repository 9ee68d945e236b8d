"""The embedded PBX's transaction layer: branches, Via and Record-Route, forwarding a request, and the UDP
retransmissions and timeouts of its client transactions (RFC 3261 §17.1, Timers A/B/E/F). A part of
:class:`~faultlab.lab.pbx.logic.PbxLogic`, sans-IO."""

from __future__ import annotations

from faultlab.addr import format_hostport
from faultlab.sip import MAGIC_COOKIE, Message, add_top_header, build_response, format_via

from .model import (
    Address,
    RR_USER,
    ClientTxn,
    Flow,
    Note,
    Output,
    Retx,
    SendBytes,
    ServerTxn,
    digest,
    edit_top,
    parse_raw,
    set_request_uri,
)


class Transactions:
    """Client transactions and forwarding, for the PBX state machine. Mixed into :class:`~faultlab.lab.pbx.logic.PbxLogic`,
    whose state it shares."""

    def _local(self, flow: Flow) -> Address:
        return self.advertise.get(flow.transport, flow.local)

    def _new_branch(self, *parts: str) -> str:
        self._seq += 1
        return MAGIC_COOKIE + "pbx" + digest(str(self._seq), *parts)

    def _via(self, flow: Flow, branch: str) -> str:
        host, port = self._local(flow)
        return format_via(flow.transport.upper(), host, port, branch, rport=True)

    def _rr(self, flow: Flow) -> str:
        host, port = self._local(flow)
        uri = f"sip:{RR_USER}@{format_hostport(host, port)}"
        if flow.transport != "udp":
            uri += f";transport={flow.transport}"
        return f"<{uri};lr>"

    def _respond(self, request: Message, flow: Flow, status: int, reason: str | None = None,
                 **kwargs) -> SendBytes:
        return SendBytes(flow, build_response(request, status, reason, **kwargs))

    def _start_retx(self, send: SendBytes, branch: str, method: str, call_id: str | None, now: float) -> None:
        """Retransmit ``send`` (a request) until its transaction ends, when its flow is UDP."""
        if send.flow.transport != "udp" or method == "ACK":
            return
        self._retx[(branch, method)] = Retx(branch, method, send.flow, send.data, call_id, interval=self.t1,
                                             next_at=now + self.t1, timeout_at=now + 64 * self.t1)

    def _txn_response(self, branch: str, method: str, status: int) -> None:
        """A response for client transaction ``(branch, method)``: stop or slow its retransmissions."""
        retx = self._retx.get((branch, method))
        if retx is None:
            return
        if method == "INVITE" or status >= 200:
            del self._retx[(branch, method)]
        else:
            retx.proceeding = True  # Timer E now fires every T2

    def _txn_timeout(self, retx: Retx, now: float) -> list[Output]:
        """Timer B / F: the client transaction got no (final) response in 64*T1 (RFC 3261 §17.1)."""
        out: list[Output] = [Note({"action": "timeout", "timer": "B" if retx.method == "INVITE" else "F",
                                   "method": retx.method, "branch": retx.branch, "flow": str(retx.flow),
                                   "retransmissions": retx.count}, retx.call_id)]
        call = self._calls.get(retx.call_id or "")
        txn = self._txns.get(retx.branch)
        if retx.method == "CANCEL":
            if call is not None and call.device_final is None and call.state in ("forwarded", "cancelling"):
                out += self._give_up_on_device(call, "cancel-timeout")  # the device answers nothing any more
            return out
        if retx.method == "INVITE" and call is not None and retx.branch == call.out_branch:
            self._timers.pop(("ring", call.call_id), None)
            call.pending_cancel = None
            call.device_final = 408
            if call.final_sent is None:
                call.ended_by = call.ended_by or "timeout"
                call.state = "ended"
                if call.cancelled:
                    out += self._answer_caller(call, 487)
                else:
                    out += self._answer_caller(call, 408, "Request Timeout")
            elif call.state in ("forwarded", "cancelling"):
                call.state = "ended"
            return out
        if txn is not None:
            txn.final = 408
            self._client_done(retx.branch, txn, now, timed_out=True)
            server = txn.server
            if server is not None and server.final is None:  # tell the sender (RFC 3261 §16.7 step 6)
                data = build_response(server.request, 408, "Request Timeout")
                server.last_response = data
                server.final = 408
                self._server_done(server, now)
                out.append(SendBytes(server.flow, data))
        if retx.method == "BYE" and call is not None:
            call.state = "ended"
        return out

    def _forward(self, msg: Message, out_flow: Flow, in_flow: Flow | None, *, request_uri: str | None,
                 record_route: bool, call_id: str | None, now: float,
                 server: ServerTxn | None = None) -> tuple[Message, str, SendBytes]:
        raw = msg.raw
        if request_uri is not None:
            raw = set_request_uri(raw, request_uri)
        m = parse_raw(raw)
        mf = m.get("max-forwards")
        hops = int(mf) - 1 if mf is not None and mf.strip().isdigit() else 69
        # Max-Forwards set, Record-Route(s) and the Via on top: every edit placed in the received bytes (one
        # parse), as if made one after the other
        edits = [(m.header_fields("Max-Forwards"), f"Max-Forwards: {max(hops, 0)}\r\n", True)]
        if record_route:
            assert in_flow is not None
            rr = [self._rr(in_flow)]
            if (in_flow.transport, self._local(in_flow)) != (out_flow.transport, self._local(out_flow)):
                rr.insert(0, self._rr(out_flow))
            edits.append((m.header_fields("Record-Route"), "".join(f"Record-Route: {v}\r\n" for v in rr), False))
        branch = self._new_branch(msg.get("call-id") or "", msg.get("cseq") or "", str(out_flow))
        edits.append((m.header_fields("Via"), f"Via: {self._via(out_flow, branch)}\r\n", False))
        m = parse_raw(edit_top(raw, edits))
        send = SendBytes(out_flow, m.raw, message=m)
        if msg.method != "ACK":
            method = msg.cseq.method if msg.cseq else (msg.method or "")
            self._txns[branch] = ClientTxn(method, call_id, in_flow, server, transport=out_flow.transport)
            call = self._calls.get(call_id or "")
            if call is not None:
                call.branches.add(branch)
            self._start_retx(send, branch, method, call_id, now)
        return m, branch, send
