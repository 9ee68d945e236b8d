"""A scripted SIP user agent (softphone) for tests, on trio sockets.

It behaves like a real softphone configured with an outbound proxy, which is what makes a relay test honest:

- REGISTER and initial INVITEs go to the outbound proxy (``proxy``). Everything inside a dialog follows RFC 3261
  routing: the route set comes from Record-Route (reversed by the caller, §12.1.2; as is by the callee, §12.1.1),
  the Request-URI is the remote target (the peer's Contact), and the request goes to the first route when it is a
  loose router (§12.2.1.1), else to the remote target. A relay that does not Record-Route itself is bypassed,
  exactly as with a real phone.
- UDP: one socket for everything. Responses go to the source address of the request when its top Via has
  ``rport`` (RFC 3581), else to the Via's sent-by port at the source address (§18.2.2). They are built by
  :func:`faultlab.sip.build_response`, which copies the Vias as they came (no ``received``/``rport`` values added:
  only the hop that removes that Via would read them).
- TCP/TLS: one connection, opened to the outbound proxy and reused for every request whose next hop is that
  address; requests the far side sends on it are accepted, and responses go back on the connection a request came
  on. A next hop elsewhere gets a new connection (the relay was bypassed; the test will see it).
- No retransmissions (loopback does not lose datagrams) and no authentication (the test PBX asks for none).
- A datagram that is not SIP is ignored; a connection whose bytes stop framing as SIP is closed.

Every message sent or received is kept in :attr:`SipUA.log` for assertions. Every wait runs under
``trio.fail_after`` on trio's clock and raises :class:`UATimeout` with the UA's message log.

Its sockets, reading, sending and response routing are a :class:`~faultlab.lab.ua.UAWire`, the plumbing the lab's
caller and the reference device share; what arrives is read with :mod:`faultlab.net.reader` (the reader the relay
and the lab actors use).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.lab.ua._parts import (
    DEFAULT_TIMEOUT,
    USER_AGENT,
    CallFailed,
    Record,
    UATimeout,
    new_branch,
    route_uri,
    token,
)
from faultlab.lab.ua._wire import DEFAULT_PORTS, Address, Incoming, Link, UAWire
from faultlab.sip import Message, parse_datagram, parse_uri


@dataclass
class Dialog:
    """One side of an INVITE dialog (RFC 3261 §12)."""

    ua: SipUA
    call_id: str
    local: str  # our From (as caller) / To (as callee) value, with our tag
    remote: str  # the peer's, with its tag
    remote_target: str  # the peer's Contact URI
    route_set: list[str]  # Route values, first = next hop
    local_cseq: int
    invite: Message
    final: Message  # the 2xx that set the dialog up
    provisional: list[Message] = field(default_factory=list)

    async def bye(self) -> Message:
        """Hang up: send BYE in the dialog and return its final response."""
        self.local_cseq += 1
        _, final = await self.ua.request_in_dialog(self, "BYE")
        return final

    async def expect_bye(self) -> Message:
        """Wait for the peer's BYE in this dialog, answer 200 and return the BYE."""
        bye = await self.ua.expect_request("BYE", call_id=self.call_id)
        await self.ua.reply(bye, 200)
        return bye.message


class SipUA:
    """A scripted softphone. Call :meth:`start` with a nursery first; cancel the nursery to stop it."""

    def __init__(
        self,
        user: str,
        transport: str,
        proxy: Address,
        *,
        domain: str = "127.0.0.1",
        ca_file: str | Path | None = None,
        tls_server_name: str | None = None,
        host: str = "127.0.0.1",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.wire = UAWire(transport, user=user, on_message=self._deliver, host=host, user_agent=USER_AGENT,
                           session="faultlab test", observer=self._record, ca_file=ca_file,
                           tls_server_name=tls_server_name, connect_timeout=timeout)
        self.user = user
        self.transport = transport
        self.proxy = proxy
        self.domain = domain
        self.host = host
        self.timeout = timeout
        self.aor = f"sip:{user}@{domain}"
        self.log: list[Record] = []
        self._inbox: list[Incoming] = []
        self._arrival = trio.Event()
        self._cseq = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Bind the UDP socket, or connect (and for TLS, handshake) to the outbound proxy."""
        await self.wire.start(nursery, self.proxy)

    @property
    def address(self) -> Address:
        """The local address of the UDP socket, or of the connection to the outbound proxy."""
        return self.wire.local

    @property
    def contact(self) -> str:
        return self.wire.contact()

    # ------------------------------------------------------------------ receiving

    def _record(self, direction: str, link: Link, peer: Address, message: Message, data: bytes) -> None:
        self.log.append(Record(trio.current_time(), direction, link.transport, link.local, peer, message, data))

    async def _deliver(self, incoming: Incoming) -> None:
        self._inbox.append(incoming)
        self._arrival.set()
        self._arrival = trio.Event()

    async def expect(self, what: str, match: Callable[[Message], bool]) -> Incoming:
        """Wait for (and take) the first unconsumed message that ``match`` accepts."""
        try:
            with trio.fail_after(self.timeout):
                while True:
                    for i, incoming in enumerate(self._inbox):
                        if match(incoming.message):
                            return self._inbox.pop(i)
                    await self._arrival.wait()
        except trio.TooSlowError:
            raise UATimeout(f"{self.user}: no {what} within {self.timeout} s\n{self.ladder()}") from None

    async def expect_request(self, method: str, *, call_id: str | None = None) -> Incoming:
        def match(m: Message) -> bool:
            return m.is_request and m.method == method and (call_id is None or m.call_id == call_id)

        return await self.expect(method if call_id is None else f"{method} in call {call_id}", match)

    # ------------------------------------------------------------------ sending

    def _next_hop(self, request_uri: str, route_set: Sequence[str]) -> Address:
        """Where a request with this Request-URI and route set goes (RFC 3261 §8.1.2, §12.2.1.1)."""
        target = parse_uri(route_uri(route_set[0]) if route_set else request_uri)
        if route_set and "lr" not in target.params:
            raise NotImplementedError(f"strict router as first route: {route_set[0]} (this UA needs lr)")
        want = target.params.get("transport") or ("tls" if target.scheme == "sips" else "udp")
        if want.lower() != self.transport:
            raise AssertionError(
                f"{self.user}: next hop {route_set[0] if route_set else request_uri} asks for transport {want}, "
                f"but this UA is configured for {self.transport}"
            )
        return target.host, target.port or DEFAULT_PORTS[self.transport]

    async def _send_request(
        self, dest: Address, method: str, request_uri: str, *, branch: str | None = None, **kwargs: object
    ) -> tuple[Message, str]:
        link = await self.wire.link_to(dest)
        branch = branch or new_branch()
        contact = self.contact if kwargs.pop("contact", True) else None
        data = self.wire.request(method, request_uri, local=link.local, branch=branch, contact=contact,
                                 **kwargs)  # type: ignore[arg-type]
        message = parse_datagram(data)
        assert isinstance(message, Message)
        await self.wire.send(link, data, dest, message)
        return message, branch

    async def _responses(self, method: str, branch: str) -> tuple[list[Message], Message]:
        """Provisional responses and the final response of a client transaction."""

        def match(m: Message) -> bool:
            return not m.is_request and m.top_via.branch == branch and m.cseq.method == method

        provisional = []
        while True:
            response = (await self.expect(f"response to {method}", match)).message
            if response.status >= 200:
                return provisional, response
            provisional.append(response)

    def _next_cseq(self) -> int:
        self._cseq += 1
        return self._cseq

    # ------------------------------------------------------------------ responding

    async def reply(
        self,
        request: Incoming,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        contact: bool = False,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Message:
        """Answer ``request``: over its connection (TCP/TLS), or per its top Via (UDP, §18.2.2 + RFC 3581)."""
        return await self.wire.reply(request, status, reason, to_tag=to_tag, contact=self.contact if contact else None,
                                     body=body, content_type=content_type)

    # ------------------------------------------------------------------ scripted operations

    def sdp(self) -> bytes:
        return self.wire.sdp()

    async def register(self, aor: str | None = None, contact: str | None = None, expires: int = 60) -> Message:
        """REGISTER ``aor`` (default: this UA's) with ``contact`` (default: its own address); final response."""
        aor = aor or self.aor
        registrar = parse_uri(aor)
        _, branch = await self._send_request(
            self.proxy,
            "REGISTER",
            f"{registrar.scheme}:{registrar.host}",
            call_id=token() + "@" + self.host,
            from_=f"<{aor}>;tag={token()}",
            to=f"<{aor}>",
            cseq=self._next_cseq(),
            contact=False,
            headers=[("Contact", contact or self.contact), ("Expires", str(expires))],
        )
        _, final = await self._responses("REGISTER", branch)
        return final

    async def call(self, callee_aor: str) -> Dialog:
        """INVITE ``callee_aor`` through the outbound proxy, wait for the 2xx, ACK it; the caller's dialog.

        Raises :class:`CallFailed` when the final response is not a 2xx, after ACKing it in the INVITE's
        transaction (same branch and Request-URI, the response's To; §17.1.1.3).
        """
        call_id = token() + "@" + self.host
        local = f'"{self.user}" <{self.aor}>;tag={token()}'
        cseq = self._next_cseq()
        invite, branch = await self._send_request(
            self.proxy,
            "INVITE",
            callee_aor,
            call_id=call_id,
            from_=local,
            to=f"<{callee_aor}>",
            cseq=cseq,
            body=self.sdp(),
            content_type="application/sdp",
        )
        provisional, final = await self._responses("INVITE", branch)
        if not 200 <= final.status < 300:
            await self._send_request(
                self.proxy,
                "ACK",
                callee_aor,
                branch=branch,
                call_id=call_id,
                from_=local,
                to=final.get("To"),
                cseq=cseq,
                contact=False,
            )
            raise CallFailed(f"{self.user}: INVITE to {callee_aor} got {final.status}\n{self.ladder()}", final)
        dialog = Dialog(
            ua=self,
            call_id=call_id,
            local=local,
            remote=final.get("To"),
            remote_target=final.contacts[0].uri,
            # UAC: Record-Route of the 2xx in reverse order (§12.1.2)
            route_set=final.get_all("Record-Route")[::-1],
            local_cseq=cseq,
            invite=invite,
            final=final,
            provisional=provisional,
        )
        await self.ack(dialog)
        return dialog

    async def ack(self, dialog: Dialog) -> None:
        """ACK the dialog's 2xx: a new transaction, same CSeq number as the INVITE (§13.2.2.4)."""
        await self.request_in_dialog(dialog, "ACK", cseq=dialog.invite.cseq.number)

    async def request_in_dialog(
        self, dialog: Dialog, method: str, *, cseq: int | None = None
    ) -> tuple[list[Message], Message | None]:
        """Send ``method`` in ``dialog`` (§12.2.1.1); its responses, except for ACK, which has none."""
        dest = self._next_hop(dialog.remote_target, dialog.route_set)
        _, branch = await self._send_request(
            dest,
            method,
            dialog.remote_target,
            call_id=dialog.call_id,
            from_=dialog.local,
            to=dialog.remote,
            cseq=dialog.local_cseq if cseq is None else cseq,
            routes=dialog.route_set,
            contact=method not in ("ACK", "BYE"),
        )
        if method == "ACK":
            return [], None
        return await self._responses(method, branch)

    async def answer(self, *, ring: bool = True) -> Dialog:
        """Wait for an INVITE, answer 180 (if ``ring``) and 200, wait for the ACK; the callee's dialog."""
        incoming = await self.expect("INVITE", lambda m: m.is_request and m.method == "INVITE" and m.to_tag is None)
        invite = incoming.message
        tag = token()
        provisional = []
        if ring:
            provisional.append(await self.reply(incoming, 180, to_tag=tag, contact=True))
        final = await self.reply(
            incoming, 200, to_tag=tag, contact=True, body=self.sdp(), content_type="application/sdp"
        )
        dialog = Dialog(
            ua=self,
            call_id=invite.call_id,
            local=final.get("To"),
            remote=invite.get("From"),
            remote_target=invite.contacts[0].uri,
            # UAS: Record-Route of the request in order (§12.1.1)
            route_set=invite.get_all("Record-Route"),
            local_cseq=0,
            invite=invite,
            final=final,
            provisional=provisional,
        )
        await self.expect_request("ACK", call_id=dialog.call_id)
        return dialog

    # ------------------------------------------------------------------ assertions

    def sent(self, summary: str | None = None) -> list[Record]:
        return [r for r in self.log if r.direction == "sent" and summary in (None, r.summary)]

    def received(self, summary: str | None = None) -> list[Record]:
        return [r for r in self.log if r.direction == "received" and summary in (None, r.summary)]

    def ladder(self) -> str:
        """The UA's message log, one line per message."""
        return "\n".join(str(record) for record in self.log) or "(no messages)"
