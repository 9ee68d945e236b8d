"""The embedded PBX's record lifetimes: finished transactions, finished calls and expired registrations are
forgotten, so a PBX that runs for days holds only what is live. A part of
:class:`~faultlab.lab.pbx.logic.PbxLogic`, sans-IO: the deadlines are in the logic's own timers (``now`` is
passed in), kept in one heap.

* A **server transaction** (a request relayed in a dialog, remembered to absorb its retransmissions) is
  forgotten after its final response (the PBX's 408 included) plus Timer J: 64*T1 when the request came over
  UDP, at once over TCP/TLS (RFC 3261 §17.2.2); an INVITE's (a re-INVITE's) after 64*T1 on any transport
  (RFC 6026 Timer L: its 2xx is retransmitted end to end).
* A **client transaction** is forgotten after its final response plus Timer K: T4 over UDP, at once over
  TCP/TLS (§17.1.2.2); at once when it timed out (Timer F); a relayed re-INVITE's after 64*T1 (RFC 6026
  Timer M, so 2xx retransmissions still reach the caller). The forwarded INVITE of a call lives as long as
  the call.
* A **call** is forgotten once it has ended (final non-2xx, BYE answered, timeouts) and has stayed ended for
  at least 64*T1 (a retransmitted INVITE or ACK is still absorbed, a retransmitted 2xx still ACKed), and
  its transactions are gone. Each call is looked at every 64*T1; a call whose transactions never finish
  (a request over TCP that is never answered) is forgotten with them 3*64*T1 after it ended. A confirmed
  call that is never hung up is a dialog and stays.
* **Registrations**: a binding is removed when it expires; an AOR without bindings is removed. What the
  registrar holds is bounded by the number of AORs times their unexpired contacts.
"""

from __future__ import annotations

import heapq

from .model import Call, ClientTxn, ServerTxn


class Lifetimes:
    """Pruning for the PBX state machine. Mixed into :class:`~faultlab.lab.pbx.logic.PbxLogic`, whose state
    it shares (``_prune``: a heap of ``(deadline, seq, kind, key)``, checked when due: an entry whose record
    changed meanwhile is skipped)."""

    def sizes(self) -> dict[str, int]:
        """How many records each table holds (for tests, benchmarks and the curious)."""
        return {"calls": len(self._calls), "client_transactions": len(self._txns),
                "server_transactions": len(self._servers), "retransmitting": len(self._retx),
                "timers": len(self._timers), "aors": len(self._bindings),
                "bindings": sum(len(b) for b in self._bindings.values()), "pending": len(self._prune)}

    def _schedule(self, when: float, kind: str, key: object) -> None:
        self._prune_seq += 1
        heapq.heappush(self._prune, (when, self._prune_seq, kind, key))

    def _next_prune(self) -> float | None:
        return self._prune[0][0] if self._prune else None

    def _run_prune(self, now: float) -> None:
        while self._prune and self._prune[0][0] <= now:
            _, _, kind, key = heapq.heappop(self._prune)
            if kind == "server":
                self._servers.pop(key, None)
            elif kind == "client":
                self._prune_client(key)
            elif kind == "call":
                self._check_call(key, now)
            elif kind == "aor":
                self._check_aor(key, now)

    # ------------------------------------------------------------------ transactions

    def _server_done(self, server: ServerTxn, now: float) -> None:
        """``server`` has its final response: forget it after Timer J (or Timer L for an INVITE)."""
        if server.key is None:
            return
        reliable = server.flow.transport != "udp"
        life = 64 * self.t1 if server.key[1] == "INVITE" or not reliable else 0.0
        self._schedule(now + life, "server", server.key)

    def _client_done(self, branch: str, txn: ClientTxn, now: float, *, timed_out: bool = False) -> None:
        """The client transaction ``branch`` has its final response (or timed out): forget it after Timer K
        (Timer M for a relayed INVITE). A call's forwarded INVITE is not one of these: it lives with the call."""
        call = self._calls.get(txn.call_id or "")
        if txn.method == "INVITE" and call is not None and call.out_branch == branch:
            return
        if timed_out:
            life = 0.0
        elif txn.method == "INVITE":
            life = 64 * self.t1
        else:
            life = self.t4 if txn.transport == "udp" else 0.0
        self._schedule(now + life, "client", branch)

    def _prune_client(self, branch: str) -> None:
        txn = self._txns.get(branch)
        if txn is None:
            return
        call = self._calls.get(txn.call_id or "")
        if txn.method == "INVITE" and call is not None and call.out_branch == branch:
            return  # it became the call's forwarded INVITE meanwhile (cannot happen: branches are unique)
        del self._txns[branch]
        self._retx.pop((branch, txn.method), None)

    # ------------------------------------------------------------------ calls

    def _watch_call(self, call: Call, now: float) -> None:
        """Start looking at a new call every 64*T1, to forget it once it has ended."""
        self._schedule(now + 64 * self.t1, "call", call.call_id)

    def _check_call(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        life = 64 * self.t1
        if call.state != "ended":
            call.ended_seen = None
            self._schedule(now + life, "call", call_id)
            return
        if call.ended_seen is None:  # ended since the last look: keep it one more lifetime
            call.ended_seen = now
            self._schedule(now + life, "call", call_id)
            return
        live = [b for b in call.branches if b != call.out_branch and b in self._txns]
        live += [k for k in call.server_keys if k in self._servers]
        if live and now - call.ended_seen < 3 * life:
            self._schedule(now + life, "call", call_id)
            return
        self._forget_call(call)

    def _forget_call(self, call: Call) -> None:
        del self._calls[call.call_id]
        ringing = self._ringing.get(call.user)
        if ringing is not None and ringing.get(call.call_id) is call:
            del ringing[call.call_id]
            if not ringing:
                del self._ringing[call.user]
        for branch in call.branches | ({call.out_branch} if call.out_branch else set()):
            txn = self._txns.pop(branch, None)
            for method in ("INVITE", "CANCEL", txn.method if txn else "BYE"):
                self._retx.pop((branch, method), None)
        for key in call.server_keys:
            self._servers.pop(key, None)
        for kind in ("hold", "ring", "cancel"):
            self._timers.pop((kind, call.call_id), None)

    # ------------------------------------------------------------------ registrations

    def _watch_aor(self, user: str, expires_at: float) -> None:
        """Look at ``user``'s bindings when the earliest of them expires (one entry per AOR and deadline)."""
        due = self._aor_due.get(user)
        if due is not None and due <= expires_at:
            return
        self._aor_due[user] = expires_at
        self._schedule(expires_at, "aor", user)

    def _check_aor(self, user: str, now: float) -> None:
        if self._aor_due.get(user, now + 1) > now:
            return  # a stale entry: a later look is scheduled (or none is needed)
        del self._aor_due[user]
        live = self.bindings(user, now)  # drops the expired ones, and the AOR when none is left
        if live:
            self._watch_aor(user, min(b.expires_at for b in live))
