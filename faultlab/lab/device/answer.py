"""The reference device answering requests: 100 at once, then what the logic says (180, 200 with SDP, 487, 480,
603); the 2xx retransmitted on UDP until the ACK; a request's retransmission gets the last response again. A part
of :class:`~faultlab.lab.device.driver.Device`.

Media: an INVITE whose offer has a PCMU stream the caller sends (RFC 3264) gets a 200 whose answer names an RTP
port the device listens on (:class:`~faultlab.lab.media.MediaStream`); at the ACK the device sends RTP to the
offer's address and its logic starts the media-silence timeout; every packet received is
:meth:`~faultlab.lab.device.silence.Silence.hear`. An offer with no media gets an ``inactive`` answer.

A connected call the device ends itself (not on the far end's BYE: its media-silence timeout) is hung up with a BYE
in the INVITE's dialog (RFC 3261 §15), so that the PBX and the caller do not keep it."""

from __future__ import annotations

import math
import secrets
import ssl

import trio

from faultlab.lab.media import MediaStream
from faultlab.lab.rtp import parse_sdp
from faultlab.lab.ua import Incoming, new_branch
from faultlab.sip import Message, SipError
from .base import T1, T2, TIMER_F, Address, _Call, _Request

__all__ = ["Answering"]


class Answering:
    """The server side of :class:`~faultlab.lab.device.driver.Device` (mixed in; shares its state)."""

    async def _on_request(self, incoming: Incoming) -> None:
        message = incoming.message
        method = message.method
        branch = message.top_via.branch
        now = trio.current_time()
        if method != "ACK" and (branch, method) in self._responses:  # a retransmission
            await self._send(self._responses[(branch, method)], self.wire.response_address(incoming))
            return
        call = self._find(message.call_id)
        if method == "INVITE" and message.to_tag is None:
            if call is None:  # no push named this Call-ID: the newest call still waiting for its INVITE, else a new one
                waiting = [c for c in self.calls if c.logic.invite is None and not c.logic.ended]
                call = waiting[-1] if waiting else self._new_call()
            ref = _Request(incoming, secrets.token_hex(6))
            await self._reply(ref, 100, call)
            if call.logic.invite is None and not call.logic.ended:
                call.invite_branch = branch
                call.offer = parse_sdp(message.body)
            await self._feed(call, call.logic.invite_received(now, ref, message.call_id))
        elif method == "ACK":
            if call is not None:
                call.acked.set()
                await self._feed(call, call.logic.ack_received(now))
                await self._media_connected(call, now)
        elif method == "CANCEL":
            ref = _Request(incoming, "")
            if call is None or call.invite_branch != branch:
                await self._reply(ref, 481, None)
                return
            try:
                reason = message.reason
            except SipError:
                reason = None
            await self._feed(call, call.logic.cancel_received(now, ref, reason))
        elif method == "BYE":
            ref = _Request(incoming, "")
            if call is None:
                await self._reply(ref, 481, None)
                return
            await self._feed(call, call.logic.bye_received(now, ref))
        elif method == "OPTIONS":
            await self._reply(_Request(incoming, secrets.token_hex(6)), 200, None)
        else:
            await self._reply(_Request(incoming, secrets.token_hex(6)), 501, None)

    async def _reply(self, ref: _Request, status: int, call: _Call | None) -> None:
        m = ref.message
        dialog = m.method == "INVITE" and 100 < status < 300
        answer = m.method == "INVITE" and status == 200
        media = await self._open_media(call) if answer else None
        sdp = self.wire.sdp(self._local, port=media.port if media is not None else None) if answer else b""
        data = self.wire.response(m, status, to_tag=ref.to_tag or None,
                                  contact=self.wire.contact(self._local) if dialog else None, body=sdp,
                                  content_type="application/sdp" if answer else None)
        dest = self.wire.response_address(ref.incoming)
        key = (m.top_via.branch, m.method)
        if status >= 200 or m.method == "INVITE":
            self._responses[key] = data
        try:
            await self._send(data, dest)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if answer and self._udp is not None and call is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._retransmit_2xx, call, data, dest)

    async def _retransmit_2xx(self, call: _Call, data: bytes, dest: Address) -> None:
        """UDP: resend the 2xx at T1, doubling to T2, until the ACK or 64*T1 (RFC 3261 §13.3.1.4)."""
        interval = T1
        with trio.move_on_after(64 * T1):
            while True:
                with trio.move_on_after(interval):
                    await call.acked.wait()
                    return
                try:
                    await self._send(data, dest)
                except OSError:
                    return
                interval = min(2 * interval, T2)

    async def _open_media(self, call: _Call | None) -> MediaStream | None:
        """The call's RTP port for its 200's answer (opened once), when the offer has a stream to answer."""
        if call is None or call.offer is None or call.offer.address is None:
            return None
        if call.media is None:
            assert self._nursery is not None and self._local is not None
            logic = call.logic
            call.media = MediaStream(self.timeline, self.source, host=self._local[0], call_id=logic.call_id,
                                     on_packet=logic.silence.hear)
            await call.media.open(self._nursery)
        return call.media

    async def _media_connected(self, call: _Call, now: float) -> None:
        """The ACK of the 200: send RTP to the offer's address; expect RTP if the offer sends it."""
        if call.media is None or call.logic.ended or call.logic.final_sent != 200:
            return
        call.media.start(call.offer.address)
        if call.offer.sends:  # its silence is timed from now on (the logic's timers hear of it through _feed)
            call.logic.silence.start(now)
            await self._feed(call, [])

    async def _hang_up(self, call: _Call) -> None:
        """BYE in the call's dialog (RFC 3261 §12.1.1: Request-URI the INVITE's Contact, Route its Record-Route in
        order), through the outbound proxy; retransmitted on UDP per Timer E until a final response or Timer F."""
        invite: Message = call.logic.invite.message
        try:
            contacts = invite.contacts
            if not contacts:
                return  # an INVITE must have a Contact (RFC 3261 §8.1.1.8): no target to hang up
            target = contacts[0].uri
            dialog = {"call_id": invite.call_id, "from_": f"{invite.get('to')};tag={call.logic.invite.to_tag}",
                      "to": invite.get("from"), "routes": invite.get_all("record-route")}
        except SipError:
            return
        branch = new_branch()
        send, receive = trio.open_memory_channel[Message](16)
        self._transactions[branch] = send
        try:
            with trio.move_on_after(TIMER_F):
                await self._ensure_stream()
                assert self._local is not None
                data = self.wire.request("BYE", target, local=self._local, branch=branch, cseq=1, **dialog)
                interval = T1
                while True:
                    await self._send(data)
                    with trio.move_on_after(interval if self._udp is not None else math.inf):
                        while (await receive.receive()).status < 200:
                            pass
                        return
                    interval = min(2 * interval, T2)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # no way to the proxy: the dialog is over for the device all the same
        finally:
            del self._transactions[branch]
