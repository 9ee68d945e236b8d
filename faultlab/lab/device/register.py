"""The reference device's registration: REGISTER with RFC 8599 push parameters in the Contact, retransmitted on
UDP per Timer E until a final response or Timer F. A part of :class:`~faultlab.lab.device.driver.Device`."""

from __future__ import annotations

import math
import re
import secrets
import ssl

import trio

from faultlab.addr import format_hostport
from faultlab.lab.ua import Link, new_branch
from faultlab.sip import Message
from .base import T1, T2, TIMER_F, Address, _Call

__all__ = ["contact_uri", "Registering"]


def contact_uri(user: str, local: Address, transport: str, token: str, team_id: str, bundle: str) -> str:
    """The Contact URI with RFC 8599 push parameters (in the URI, §4.1)."""
    uri = f"sip:{user}@{format_hostport(*local)}"
    if transport != "udp":
        uri += f";transport={transport}"
    return f"{uri};pn-provider=apns;pn-prid={token};pn-param={team_id}.{bundle}.voip"


def _retry_after(message: Message) -> float | None:
    value = message.get("Retry-After")
    m = re.match(r"\s*(\d+)", value or "")
    return float(m.group(1)) if m else None


class Registering:
    """The REGISTER transactions of :class:`~faultlab.lab.device.driver.Device` (mixed in; shares its state)."""

    def _contact(self) -> str:
        assert self._local is not None
        t = self.proxy.transport
        return f"<{contact_uri(self.user, self._local, t, self.token, self.team_id, self.bundle)}>"

    async def unregister(self) -> tuple:
        """Remove this device's binding (REGISTER with ``Expires: 0``), e.g. before leaving a PBX that outlives the
        lab; returns as :meth:`_register_transaction`."""
        return await self._register_transaction(expires=0)

    async def _register_transaction(self, expires: int | None = None) -> tuple:
        """One REGISTER transaction (``Expires`` is ``self.expires`` unless ``expires`` is given).

        Returns ``("response", status, retry_after)``, ``("timeout",)`` (Timer F) or ``("transport", exc)``.
        """
        with trio.move_on_after(TIMER_F) as connect_scope:  # a handshake that never ends is a Timer F timeout
            try:
                await self._ensure_stream()
            except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
                return ("transport", exc)
        if connect_scope.cancelled_caught:
            return ("timeout",)
        flow = self._flow
        assert self._local is not None
        self._cseq += 1
        branch = new_branch()
        aor = f"sip:{self.user}@{self.domain}"
        data = self.wire.request(
            "REGISTER", f"sip:{self.domain}", local=self._local, branch=branch,
            from_=f"<{aor}>;tag={secrets.token_hex(6)}", to=f"<{aor}>", call_id=self._reg_call_id, cseq=self._cseq,
            contact=self._contact(), headers=[("Expires", str(self.expires if expires is None else expires))])
        send, receive = trio.open_memory_channel[Message](16)
        self._transactions[branch] = send
        try:
            with trio.move_on_after(TIMER_F):
                interval = T1
                while True:
                    try:
                        await self._send(data)
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        return ("transport", exc)
                    # Timer E on UDP; on a reliable transport, just wait (Timer F bounds it) or until the
                    # connection is lost: then the transaction fails at once (RFC 3261 §8.1.3.1)
                    with trio.move_on_after(interval if self._udp is not None else math.inf):
                        while True:
                            response = await self._next_response(receive, flow)
                            if response is None:
                                return ("transport", trio.BrokenResourceError("connection lost"))
                            if response.status >= 200:
                                return ("response", response.status, _retry_after(response))
                            interval = T2  # a provisional response: retransmit at T2 (§17.1.2.2)
                    interval = min(2 * interval, T2)
            return ("timeout",)
        finally:
            del self._transactions[branch]

    @staticmethod
    async def _next_response(receive: trio.MemoryReceiveChannel, flow: Link | None) -> Message | None:
        """The next response of a transaction; None when its connection (``flow``; None on UDP) is lost first."""
        if flow is None:
            return await receive.receive()
        result: list[Message | None] = []
        async with trio.open_nursery() as race:
            async def response() -> None:
                result.append(await receive.receive())
                race.cancel_scope.cancel()

            async def lost() -> None:
                await flow.gone.wait()
                result.append(None)
                race.cancel_scope.cancel()

            race.start_soon(response)
            race.start_soon(lost)
        # a response read before the connection went (2xx then reset, at one instant) still counts
        response = next((r for r in result if r is not None), None)
        if response is None:
            try:
                response = receive.receive_nowait()
            except trio.WouldBlock:
                pass
        return response

    async def _register_for(self, call: _Call) -> None:
        with trio.CancelScope() as scope:
            call.register_scope = scope
            result = await self._register_transaction()
        if scope.cancelled_caught or call.register_scope is not scope:
            return
        call.register_scope = None
        now = trio.current_time()
        if result[0] == "response":
            await self._feed(call, call.logic.register_response(now, result[1], result[2]))
        elif result[0] == "timeout":
            await self._feed(call, call.logic.register_timeout(now))
        else:
            await self._feed(call, call.logic.transport_failed(now))
