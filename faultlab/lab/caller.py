"""The caller: a scripted SIP UA for the calling side of a lab run, on trio sockets.

``Caller(transport, pbx_address, user, timeline)`` behaves like a softphone with an outbound proxy
(the embedded PBX, or Kamailio): it sends its INVITE to ``pbx_address`` and waits for 180/200/487/480
on a :class:`CallHandle`. The UA side is automatic, as in a real phone:

* every final response to the INVITE is ACKed: a 2xx with a new ACK transaction along the route set
  (the 2xx's Record-Route reversed, RFC 3261 §12.1.2, Request-URI = the callee's Contact), a non-2xx
  in the INVITE's transaction (same branch, §17.1.1.3);
* a BYE from the far end is answered 200 and ends the call; OPTIONS gets 200, other requests 501.

One connection (TCP/TLS) or one socket (UDP) carries everything; requests in a dialog go to the first
Route's address over UDP, and over the one connection for TCP/TLS (the PBX Record-Routes itself, so
that is where they are going anyway). No retransmissions: loopback and reliable transports.

Timeline (source ``"caller"``): ``received`` / ``sent`` per message, ``caller`` for each scripted step
(``detail={"action": "call" | "cancel" | "hang-up" | "ended", ...}``).

Usage::

    caller = Caller("udp", ("127.0.0.1", 5060), "alice", timeline)
    await caller.start(nursery)
    call = await caller.call("sip:bob@127.0.0.1")
    await call.wait_for(180)
    await call.cancel()               # or: await call.wait_for(200); await call.hang_up()
    final = await call.wait_final()   # 487
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.lab.timeline import Timeline
from faultlab.addr import format_hostport
from faultlab.net.reader import SipStreamReader, Unframed, parse_or_raw
from faultlab.sip import Message, SipError, build_request, build_response, parse_datagram

__all__ = ["Caller", "CallHandle", "CallerTimeout"]

Address = tuple[str, int]
SOURCE = "caller"
USER_AGENT = "faultlab-caller"
SDP = (
    "v=0\r\no={user} 1 1 IN {ipv} {host}\r\ns=faultlab caller\r\nc=IN {ipv} {host}\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


class CallerTimeout(AssertionError):
    """What the script waited for did not happen in time."""


def _token() -> str:
    return secrets.token_hex(6)


def _route_address(route: str) -> Address | None:
    from faultlab.sip import parse_uri

    try:
        uri = parse_uri(route[route.index("<") + 1 : route.index(">")])
    except (ValueError, SipError):
        return None
    return uri.host, uri.port or 5060


@dataclass
class CallHandle:
    """One outgoing call. ``responses`` holds every response to the INVITE, in order."""

    caller: "Caller"
    call_id: str
    callee_aor: str
    local: str  # our From value, with tag
    invite: Message
    branch: str
    cseq: int
    responses: list[Message] = field(default_factory=list)
    final: Message | None = None
    remote: str | None = None  # the callee's To value with tag (after a 2xx)
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    ended: str | None = None  # "remote-bye", "local-bye", "rejected-<status>", "cancelled"
    cancel_response: Message | None = None
    bye_response: Message | None = None
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def _update(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait(self, what: str, predicate, timeout: float | None):
        timeout = self.caller.timeout if timeout is None else timeout
        try:
            with trio.fail_after(timeout):
                while True:
                    found = predicate()
                    if found is not None and found is not False:
                        return found
                    await self._changed.wait()
        except trio.TooSlowError:
            raise CallerTimeout(f"{self.caller.user}: no {what} in call {self.call_id} within {timeout} s "
                                f"(responses so far: {self.statuses})") from None

    async def wait_for(self, *statuses: int, timeout: float | None = None) -> Message:
        """The first response to the INVITE with one of ``statuses`` (already received, or the next)."""

        def found():
            return next((r for r in self.responses if r.status in statuses), None)

        return await self._wait(f"response {statuses}", found, timeout)

    async def wait_final(self, timeout: float | None = None) -> Message:
        """The final response to the INVITE."""
        return await self._wait("final response", lambda: self.final, timeout)

    async def wait_ended(self, timeout: float | None = None) -> str:
        """How the call ended (``remote-bye``, ``local-bye``, ``rejected-487``, ...)."""
        return await self._wait("end of call", lambda: self.ended, timeout)

    async def cancel(self, reason: str | None = None) -> None:
        await self.caller.cancel(self, reason=reason)

    async def hang_up(self) -> Message:
        return await self.caller.hang_up(self)


class Caller:
    """The scripted calling UA. :meth:`start` it in a nursery; cancel that nursery (or :meth:`close`) to stop."""

    def __init__(
        self,
        transport: str,
        pbx_address: Address,
        user: str,
        timeline: Timeline,
        *,
        domain: str | None = None,
        host: str = "127.0.0.1",
        ca_file: str | Path | None = None,
        tls_server_name: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        self.transport = transport
        self.pbx_address = pbx_address
        self.user = user
        self.timeline = timeline
        self.domain = domain or pbx_address[0]
        self.host = host
        self.ca_file = ca_file
        self.tls_server_name = tls_server_name
        self.timeout = timeout
        self.aor = f"sip:{user}@{format_hostport(self.domain, pbx_address[1]) if domain is None else domain}"
        self.calls: dict[str, CallHandle] = {}
        self.current: CallHandle | None = None
        self._sock: trio.socket.SocketType | None = None
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._local: Address | None = None
        self._cseq = 0
        self._pending: dict[str, tuple[trio.Event, list[Message]]] = {}  # branch -> final response waiters
        self._scope: trio.CancelScope | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Bind the UDP socket, or connect (and handshake TLS) to the PBX."""
        if self.transport == "udp":
            family = trio.socket.AF_INET6 if ":" in self.host else trio.socket.AF_INET
            self._sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
            await self._sock.bind((self.host, 0))
            self._local = self._sock.getsockname()[:2]
        else:
            with trio.fail_after(self.timeout):
                tcp = await trio.open_tcp_stream(*self.pbx_address)
            self._local = tcp.socket.getsockname()[:2]
            stream: trio.abc.Stream = tcp
            if self.transport == "tls":
                ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                stream = trio.SSLStream(tcp, ctx, server_hostname=self.tls_server_name or self.pbx_address[0])
                with trio.fail_after(self.timeout):
                    await stream.do_handshake()
            self._stream = stream
        nursery.start_soon(self._reader)

    async def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self._sock is not None:
            self._sock.close()
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    @property
    def address(self) -> Address:
        assert self._local is not None, "call start() first"
        return self._local

    @property
    def contact(self) -> str:
        uri = f"sip:{self.user}@{format_hostport(*self.address)}"
        return f"<{uri}>" if self.transport == "udp" else f"<{uri};transport={self.transport}>"

    # ------------------------------------------------------------------ scripted steps

    async def call(self, callee_aor: str) -> CallHandle:
        """Send the INVITE and return its handle at once (wait on the handle)."""
        call_id = f"{_token()}@{self.host}"
        local = f'"{self.user}" <{self.aor}>;tag={_token()}'
        self._cseq += 1
        branch = "z9hG4bK" + _token() + _token()
        host = self.address[0]
        body = SDP.format(user=self.user, ipv="IP6" if ":" in host else "IP4", host=host).encode()
        data = self._request("INVITE", callee_aor, branch=branch, call_id=call_id, from_=local,
                             to=f"<{callee_aor}>", cseq=self._cseq, contact=True, body=body,
                             content_type="application/sdp")
        invite = parse_datagram(data)
        handle = CallHandle(self, call_id, callee_aor, local, invite, branch, self._cseq)
        self.calls[call_id] = handle
        self.current = handle
        self._note("call", call_id, callee=callee_aor)
        await self._send(data, self.pbx_address)
        return handle

    async def cancel(self, handle: CallHandle | None = None, *, reason: str | None = None) -> None:
        """CANCEL the pending INVITE (RFC 3261 §9.1), optionally with a Reason header."""
        handle = handle or self._current()
        self._note("cancel", handle.call_id, reason=reason)
        data = self._request("CANCEL", handle.callee_aor, branch=handle.branch, call_id=handle.call_id,
                             from_=handle.local, to=f"<{handle.callee_aor}>", cseq=handle.cseq,
                             headers=[("Reason", reason)] if reason else [])
        await self._send(data, self.pbx_address)

    async def hang_up(self, handle: CallHandle | None = None) -> Message:
        """BYE in the confirmed dialog; returns its final response."""
        handle = handle or self._current()
        if handle.remote is None or handle.remote_target is None:
            raise RuntimeError(f"call {handle.call_id} is not established")
        self._note("hang-up", handle.call_id)
        self._cseq += 1
        branch = "z9hG4bK" + _token() + _token()
        waiter = trio.Event()
        self._pending[branch] = (waiter, [])
        data = self._request("BYE", handle.remote_target, branch=branch, call_id=handle.call_id,
                             from_=handle.local, to=handle.remote, cseq=self._cseq, routes=handle.route_set)
        await self._send(data, self._next_hop(handle))
        try:
            with trio.fail_after(self.timeout):
                await waiter.wait()
        except trio.TooSlowError:
            raise CallerTimeout(f"{self.user}: no response to BYE in call {handle.call_id}") from None
        response = self._pending.pop(branch)[1][0]
        handle.bye_response = response
        self._end(handle, "local-bye")
        return response

    def _current(self) -> CallHandle:
        if self.current is None:
            raise RuntimeError("no call")
        return self.current

    # ------------------------------------------------------------------ building and sending

    def _request(self, method: str, uri: str, *, branch: str, call_id: str, from_: str, to: str, cseq: int,
                 routes=(), contact: bool = False, headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                 content_type: str | None = None) -> bytes:
        return build_request(
            method, uri, via=f"SIP/2.0/{self.transport.upper()} {format_hostport(*self.address)};rport;branch={branch}",
            from_=from_, to=to, call_id=call_id, cseq=cseq, routes=routes, contact=self.contact if contact else None,
            headers=[*headers, ("User-Agent", USER_AGENT)], body=body, content_type=content_type)

    def _next_hop(self, handle: CallHandle) -> Address:
        if handle.route_set:
            addr = _route_address(handle.route_set[0])
            if addr is not None:
                return addr
        return self.pbx_address

    async def _send(self, data: bytes, dest: Address) -> None:
        message = parse_datagram(data)
        if isinstance(message, Message):
            self._emit("sent", message, dest)
        if self._sock is not None:
            await self._sock.sendto(data, dest if self.transport == "udp" else self.pbx_address)
        else:
            assert self._stream is not None
            async with self._send_lock:
                await self._stream.send_all(data)

    async def _ack(self, handle: CallHandle, response: Message) -> None:
        if 200 <= response.status < 300:
            # a new transaction along the dialog's route set (§13.2.2.4)
            data = self._request("ACK", handle.remote_target or handle.callee_aor, branch="z9hG4bK" + _token(),
                                 call_id=handle.call_id, from_=handle.local, to=handle.remote or response.get("to"),
                                 cseq=handle.cseq, routes=handle.route_set)
            await self._send(data, self._next_hop(handle))
        else:
            data = self._request("ACK", handle.callee_aor, branch=handle.branch, call_id=handle.call_id,
                                 from_=handle.local, to=response.get("to"), cseq=handle.cseq)
            await self._send(data, self.pbx_address)

    # ------------------------------------------------------------------ receiving

    async def _reader(self) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._sock is not None:
                while True:
                    try:
                        data, source = await self._sock.recvfrom(65535)
                    except OSError:
                        if self._sock.fileno() < 0:
                            return
                        continue
                    message, _ = parse_or_raw(data)
                    if isinstance(message, Message):
                        await self._handle(message, source[:2])
            else:
                assert self._stream is not None
                async for item in SipStreamReader(self._stream).items():
                    if isinstance(item, Unframed):  # the PBX's stream no longer frames: the caller stops reading
                        self.timeline.emit("warning", source=SOURCE, transport=self.transport,
                                           peer=format_hostport(*self.pbx_address),
                                           summary=f"unframeable: {item.error}")
                        return
                    if isinstance(item, Message):
                        await self._handle(item, self.pbx_address)
                    elif item.raw == b"\r\n\r\n":  # a keep-alive ping: pong
                        async with self._send_lock:
                            await self._stream.send_all(b"\r\n")

    async def _handle(self, message: Message, source: Address) -> None:
        self._emit("received", message, source)
        try:
            if message.is_request:
                await self._handle_request(message, source)
            else:
                await self._handle_response(message)
        except SipError:
            pass

    async def _handle_response(self, response: Message) -> None:
        branch = response.top_via.branch if response.top_via else None
        if branch in self._pending and response.status >= 200:
            waiter, found = self._pending[branch]
            found.append(response)
            waiter.set()
            return
        handle = self.calls.get(response.call_id or "")
        if handle is None or response.cseq is None:
            return
        if response.cseq.method == "CANCEL":
            handle.cancel_response = response
            handle._update()
            return
        if response.cseq.method != "INVITE" or branch != handle.branch:
            return
        if handle.final is not None:
            if 200 <= response.status < 300:
                await self._ack(handle, response)  # a 2xx retransmission
            return
        # A 2xx is ACKed before anyone sees it (a BYE may follow at once); a non-2xx ends the call
        # before its ACK is sent (sending yields), so a waiter on the final response sees ``ended``.
        if 200 <= response.status < 300:
            handle.remote = response.get("to")
            contacts = response.contacts
            handle.remote_target = contacts[0].uri if contacts else handle.callee_aor
            handle.route_set = response.get_all("record-route")[::-1]
            await self._ack(handle, response)
            handle.final = response
            handle.responses.append(response)
            handle._update()
            return
        handle.responses.append(response)
        if response.status >= 300:
            handle.final = response
            self._end(handle, "cancelled" if response.status == 487 else f"rejected-{response.status}")
        handle._update()
        if response.status >= 300:
            await self._ack(handle, response)

    async def _handle_request(self, request: Message, source: Address) -> None:
        if request.method == "ACK":
            return
        dest = source
        if self.transport == "udp" and request.top_via is not None and request.top_via.rport is None:
            dest = (source[0], request.top_via.port or 5060)
        if request.method == "BYE":
            handle = self.calls.get(request.call_id or "")
            await self._send(build_response(request, 200, headers=[("User-Agent", USER_AGENT)]), dest)
            if handle is not None:
                self._end(handle, "remote-bye")
            return
        status = 200 if request.method == "OPTIONS" else 501
        await self._send(build_response(request, status, headers=[("User-Agent", USER_AGENT)]), dest)

    def _end(self, handle: CallHandle, how: str) -> None:
        if handle.ended is None:
            handle.ended = how
            self._note("ended", handle.call_id, how=how)
        handle._update()

    # ------------------------------------------------------------------ timeline

    def _note(self, action: str, call_id: str | None, **detail) -> None:
        self.timeline.emit("caller", source=SOURCE, call_id=call_id, summary=action,
                           detail={"action": action, "user": self.user, **detail})

    def _emit(self, kind: str, message: Message, peer: Address) -> None:
        try:
            call_id = message.call_id
        except SipError:
            call_id = None
        self.timeline.emit(kind, source=SOURCE, transport=self.transport, peer=format_hostport(*peer),
                           summary=message.summary(), method=message.method, status=message.status,
                           call_id=call_id, raw=message.raw)
