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

Requests are built with :func:`faultlab.sip.build_request`; what arrives is read with :mod:`faultlab.net.reader`
(the reader the relay and the lab actors use).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.addr import format_hostport
from faultlab.lab.ua._parts import (
    DEFAULT_PORTS,
    DEFAULT_TIMEOUT,
    SDP_TEMPLATE,
    TRANSPORTS,
    USER_AGENT,
    Address,
    CallFailed,
    Incoming,
    Link,
    Record,
    UATimeout,
    new_branch,
    route_uri,
    token,
)
from faultlab.net.reader import SipStreamReader, parse_or_raw
from faultlab.sip import Message, build_request, build_response, parse_datagram, parse_uri


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
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.user = user
        self.transport = transport
        self.proxy = proxy
        self.domain = domain
        self.host = host
        self.timeout = timeout
        self.aor = f"sip:{user}@{domain}"
        self.log: list[Record] = []
        self._ca_file = ca_file
        self._tls_server_name = tls_server_name
        self._links: list[Link] = []
        self._main: Link | None = None
        self._nursery: trio.Nursery | None = None
        self._inbox: list[Incoming] = []
        self._arrival = trio.Event()
        self._cseq = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Bind the UDP socket, or connect (and for TLS, handshake) to the outbound proxy."""
        self._nursery = nursery
        if self.transport == "udp":
            sock = trio.socket.socket(self._family(self.host), trio.socket.SOCK_DGRAM)
            await sock.bind((self.host, 0))
            link = Link("udp", sock.getsockname()[:2], None, sock=sock)
            nursery.start_soon(self._read_datagrams, link)
            self._main = link
        else:
            self._main = await self._connect(self.proxy)

    @property
    def address(self) -> Address:
        """The local address of the UDP socket, or of the connection to the outbound proxy."""
        assert self._main is not None, "call start() first"
        return self._main.local

    @property
    def contact(self) -> str:
        uri = f"sip:{self.user}@{format_hostport(*self.address)}"
        if self.transport != "udp":
            uri += f";transport={self.transport}"
        return f"<{uri}>"

    async def _connect(self, peer: Address) -> Link:
        assert self._nursery is not None, "call start() first"
        with trio.fail_after(self.timeout):
            tcp = await trio.open_tcp_stream(*peer)
        stream: trio.abc.Stream = tcp
        if self.transport == "tls":
            context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
            stream = trio.SSLStream(tcp, context, server_hostname=self._tls_server_name or peer[0])
            try:
                with trio.fail_after(self.timeout):
                    await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        link = Link(self.transport, tcp.socket.getsockname()[:2], peer, stream=stream)
        self._links.append(link)
        self._nursery.start_soon(self._read_stream, link)
        return link

    @staticmethod
    def _family(host: str) -> int:
        return trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET

    # ------------------------------------------------------------------ receiving

    async def _read_datagrams(self, link: Link) -> None:
        assert link.sock is not None
        with link.sock:
            while True:
                data, source = await link.sock.recvfrom(65535)
                message, _ = parse_or_raw(data)  # keep-alives and bytes that do not parse are not messages
                if isinstance(message, Message):
                    self._deliver(link, message, data, source[:2])

    async def _read_stream(self, link: Link) -> None:
        assert link.stream is not None and link.peer is not None
        try:
            async for item in SipStreamReader(link.stream).items():  # ends at EOF, reset, or bytes that do not frame
                if isinstance(item, Message):
                    self._deliver(link, item, item.raw, link.peer)
        finally:
            link.closed = True
            await trio.aclose_forcefully(link.stream)

    def _deliver(self, link: Link, message: Message, data: bytes, source: Address) -> None:
        self.log.append(Record(trio.current_time(), "received", link.transport, link.local, source, message, data))
        self._inbox.append(Incoming(message, link, source))
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

    async def _send(self, link: Link, data: bytes, dest: Address, message: Message) -> None:
        # Logged first: over loopback the answer can arrive before sendto() returns to this task.
        self.log.append(Record(trio.current_time(), "sent", link.transport, link.local, dest, message, data))
        if link.sock is not None:
            await link.sock.sendto(data, dest)
        else:
            assert link.stream is not None
            async with link.send_lock:
                await link.stream.send_all(data)

    async def _link_to(self, dest: Address) -> Link:
        """The socket (UDP) or the open connection to ``dest``, else a new connection."""
        if self.transport == "udp":
            assert self._main is not None
            return self._main
        for link in self._links:
            if link.peer == dest and not link.closed:
                return link
        return await self._connect(dest)

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

    def _build_request(
        self,
        link: Link,
        method: str,
        request_uri: str,
        *,
        call_id: str,
        from_: str,
        to: str,
        cseq: int,
        branch: str,
        routes: Sequence[str] = (),
        contact: bool = True,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> bytes:
        return build_request(
            method, request_uri,
            via=f"SIP/2.0/{link.transport.upper()} {format_hostport(*link.local)};rport;branch={branch}",
            from_=from_, to=to, call_id=call_id, cseq=cseq, routes=routes, contact=self.contact if contact else None,
            headers=[*headers, ("User-Agent", USER_AGENT)], body=body, content_type=content_type)

    async def _send_request(
        self, dest: Address, method: str, request_uri: str, *, branch: str | None = None, **kwargs: object
    ) -> tuple[Message, str]:
        link = await self._link_to(dest)
        branch = branch or new_branch()
        data = self._build_request(link, method, request_uri, branch=branch, **kwargs)  # type: ignore[arg-type]
        message = parse_datagram(data)
        assert isinstance(message, Message)
        await self._send(link, data, dest, message)
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
        m = request.message
        headers = []
        if m.method == "INVITE" and 100 < status < 300:  # the UAS copies Record-Route (§12.1.1)
            headers += [("Record-Route", rr) for rr in m.get_all("Record-Route")]
        if contact:
            headers.append(("Contact", self.contact))
        headers.append(("User-Agent", USER_AGENT))
        if content_type:
            headers.append(("Content-Type", content_type))
        data = build_response(m, status, reason, to_tag=to_tag, headers=headers, body=body)
        if request.link.sock is None:
            dest = request.source
        else:
            via = m.top_via
            port = request.source[1] if via.rport is not None else via.port or DEFAULT_PORTS["udp"]
            dest = (request.source[0], port)
        response = parse_datagram(data)
        assert isinstance(response, Message)
        await self._send(request.link, data, dest, response)
        return response

    # ------------------------------------------------------------------ scripted operations

    def sdp(self) -> bytes:
        host = self.address[0]
        ipv = "IP6" if ":" in host else "IP4"
        return SDP_TEMPLATE.format(user=self.user, ipv=ipv, host=host, rtp_port=40000).encode()

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
