"""One call on the external device: the app's CallKit logic and its SIP duties (deadlines as in the lab's contract:
register 8 s after the push, INVITE 5 s after the REGISTER 2xx, 15 s cap, ring timeout 45 s).

Standalone on purpose (standard library only). The device (device.py) drives it: each input method is called
with the current time and acts through the device's ``post`` (device events), ``reply`` (SIP answers) and
``register`` (a REGISTER transaction for this call).
"""

from __future__ import annotations

import asyncio
import time

import extsip

REGISTER_DEADLINE, INVITE_DEADLINE, TOTAL_DEADLINE, RING_TIMEOUT = 8.0, 5.0, 15.0, 45.0
MAX_RECOVERIES = 3


def cancel_reason(reason_header: str | None) -> str:
    """CallKit's end reason for a CANCEL: by the Reason header's SIP cause only, never its text."""
    protocol, cause = extsip.reason_cause(reason_header)
    if protocol == "SIP" and cause == 200:
        return "answeredElsewhere"
    if protocol == "SIP" and cause in (600, 603):
        return "declinedElsewhere"
    return "remoteEnded"


class Call:
    def __init__(self, device, uuid: str | None, call_id: str | None) -> None:
        self.device, self.uuid, self.call_id = device, uuid, call_id
        self.bugs = device.bugs
        self.t0 = time.monotonic()
        self.t_registered: float | None = None
        self.registered = self.registering = False
        self.invite: extsip.Msg | None = None
        self.invite_path = None  # (flow, addr) the INVITE came on: its responses go back there
        self.t_invite: float | None = None
        self.final: int | None = None
        self.final_bytes: bytes | None = None
        self.acked = False
        self.to_tag = extsip.new_branch()[7:]
        self.answer_held = self.fulfilled = self.declined = False
        self.ended = False
        self.reason: str | None = None
        self.deadline_passed = False
        self.retried_503 = False
        self.reregister_at: float | None = None
        self.recoveries = 0
        self.changed = asyncio.Event()
        self.timer = asyncio.ensure_future(self._timers())

    def matches(self, call_id: str | None, uuid: str | None) -> bool:
        return bool((call_id and call_id == self.call_id) or (uuid and self.uuid and uuid.lower() == self.uuid.lower()))

    # -- outputs ------------------------------------------------------------------------------------

    def post(self, event: str, reason: str | None = None, **detail) -> None:
        self.device.post(event, self, reason, detail)

    def end(self, reason: str, **detail) -> None:
        if self.ended:
            return
        self.ended, self.reason = True, reason
        self.registering = False
        self.reregister_at = None
        self.device.stop_register(self)
        self.post("ended", reason, **detail)
        self.changed.set()

    def _reply_invite(self, status: int) -> None:
        if self.invite is None or self.final is not None and status >= 200:
            return
        body, ctype, contact = b"", None, None
        if status == 200:
            flow = self.invite_path[0]
            host, port = flow.local
            body = (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                    f"m=audio 9 RTP/AVP 0\r\na=inactive\r\n").encode()
            ctype = "application/sdp"
            contact = self.device.contact_uri(flow)
        if status >= 200:
            self.final = status
        data = self.device.reply(self.invite, status, self.invite_path, to_tag=self.to_tag, contact=contact,
                                 body=body, content_type=ctype)
        if status >= 200:
            self.final_bytes = data
            self.device.retransmit_final(self)
        self.changed.set()

    def _connect(self) -> None:
        self._reply_invite(200)
        if not self.fulfilled:
            self.fulfilled = True
            self.post("answer-fulfilled")

    # -- inputs -------------------------------------------------------------------------------------

    def pushed(self, payload: dict) -> None:
        """The call push: report to CallKit at once, then REGISTER (a stale push is ended at once)."""
        self.post("reported")
        send_time = payload.get("send-time")
        if isinstance(send_time, (int, float)) and time.time() - send_time > TOTAL_DEADLINE:
            self.end("unanswered", local="stale-push")
        self.start_register()

    def start_register(self) -> None:
        self.registering = True
        self.registered = False
        self.device.register_for(self)

    def register_result(self, kind: str, status: int = 0, retry_after: float | None = None) -> None:
        """``kind``: response (``status``), timeout (Timer F) or transport (the connection failed)."""
        if self.ended or not self.registering:
            return
        self.registering = False
        now = time.monotonic()
        if kind == "response" and 200 <= status < 300:
            self.registered, self.t_registered = True, now
            if self.device.flow_dead():  # the 2xx came just before the connection died: recover now
                self.flow_lost()
            self.changed.set()
            return
        if kind == "response" and status == 503 and retry_after is not None and not self.retried_503:
            if now + retry_after < self.invite_deadline():
                self.retried_503 = True
                self.reregister_at = now + retry_after
                self.changed.set()
                return
        if self.invite is not None:
            return  # the INVITE came anyway
        self._fail_held()
        self.end("failed", register=f"{kind} {status or ''}".strip())

    def _fail_held(self) -> None:
        if self.answer_held:
            self.answer_held = False
            self.post("answer-failed")

    def flow_lost(self) -> None:
        """The network ended the connection: while waiting for the INVITE, or connected, REGISTER again at once."""
        if self.ended or self.deadline_passed or self.registering or self.recoveries >= MAX_RECOVERIES:
            return
        if self.invite is None and not self.registered:
            return
        if self.invite is not None and self.final != 200:
            return
        self.recoveries += 1
        self.start_register()

    def invite_deadline(self) -> float:
        cap = self.t0 + TOTAL_DEADLINE
        if self.t_registered is not None:
            return min(self.t_registered + INVITE_DEADLINE, cap)
        return min(self.t0 + REGISTER_DEADLINE, cap)

    def invite_received(self, msg: extsip.Msg, path) -> None:
        if self.invite is not None:
            return
        self.invite, self.invite_path, self.t_invite = msg, path, time.monotonic()
        if self.call_id is None:
            self.call_id = msg.call_id
        if self.ended:  # late INVITE: 603 if the user declined, else 480
            self._reply_invite(603 if self.declined else 480)
            return
        if self.registering:
            self.registering = False
            self.device.stop_register(self)
        self.reregister_at = None
        self._reply_invite(180)
        if self.answer_held:  # answered before the INVITE: connect at once
            self.answer_held = False
            self._connect()
        self.changed.set()

    def cancel_received(self, msg: extsip.Msg, path) -> None:
        if self.invite is None:
            self.device.reply(msg, 481, path)
            return
        self.device.reply(msg, 200, path)
        if self.final is not None:
            return  # crossed our final response: nothing to cancel
        if "no-487" in self.bugs:
            self.final = 487  # the planted bug: the INVITE is never answered 487
        else:
            self._reply_invite(487)
        header = msg.get("reason")
        reason = "remoteEnded" if "wrong-reason" in self.bugs else cancel_reason(header)
        self._fail_held()
        self.end(reason, cancel_reason=header)

    def bye_received(self) -> None:
        self.end("remoteEnded", by="BYE")

    def ack_received(self) -> None:
        self.acked = True

    def cancel_push(self) -> None:
        """A cancel push is a hint only: the call ends by its own rules (the planted bug ends it here)."""
        if "waits-for-cancel-push" in self.bugs and self.invite is None and not self.ended:
            self._fail_held()
            self.end("remoteEnded", by="cancel-push")

    def tap_answer(self) -> None:
        if self.ended or self.fulfilled or self.answer_held or self.declined:
            return
        self.post("answer-tapped")
        if self.invite is None:
            self.answer_held = True  # wait for the INVITE; answer at once when it comes
        elif self.final is None:
            self._connect()

    def tap_decline(self) -> None:
        if self.ended or self.fulfilled or self.answer_held:
            return
        self.declined = True
        if self.invite is not None and self.final is None:
            self._reply_invite(603)
        self.end("declined", local="user-declined")

    # -- timers -------------------------------------------------------------------------------------

    def _next(self) -> float | None:
        if self.ended:
            return None
        times = [t for t in (self.reregister_at,) if t is not None]
        if self.invite is None and not self.deadline_passed:
            times.append(self.invite_deadline())
        if self.invite is not None and self.final is None:
            times.append(self.t_invite + RING_TIMEOUT)
        return min(times) if times else None

    def _on_timer(self, now: float) -> None:
        if self.reregister_at is not None and now >= self.reregister_at:
            self.reregister_at = None
            self.start_register()
        if self.invite is None and not self.deadline_passed and now >= self.invite_deadline():
            self.deadline_passed = True
            if self.registering:
                self.registering = False
                self.device.stop_register(self)
            if "waits-for-cancel-push" in self.bugs:
                return  # the planted bug: keeps ringing until a cancel push says otherwise
            reason = "unanswered" if self.registered else "failed"
            if self.answer_held:
                self._fail_held()
                reason = "failed"
            self.end(reason, local="no-invite-in-time")
        if self.invite is not None and self.final is None and now >= self.t_invite + RING_TIMEOUT:
            self._reply_invite(480)
            self.end("unanswered", local="ring-timeout")

    async def _timers(self) -> None:
        while not self.ended:
            due = self._next()
            self.changed.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._on_timer(time.monotonic())
