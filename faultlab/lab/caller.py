"""The caller: a scripted SIP UA for the calling side of a lab run, on trio sockets.

``Caller(transport, pbx_address, user, timeline)`` behaves like a softphone with an outbound proxy
(the embedded PBX, or Kamailio): it sends its INVITE to ``pbx_address`` and waits for 180/200/487/480
on a :class:`CallHandle`. The UA side is automatic, as in a real phone:

* every final response to the INVITE is ACKed: a 2xx with a new ACK transaction along the route set
  (the 2xx's Record-Route reversed, RFC 3261 §12.1.2, Request-URI = the callee's Contact), a non-2xx
  in the INVITE's transaction (same branch, §17.1.1.3);
* a BYE from the far end is answered 200 and ends the call; OPTIONS gets 200, other requests 501;
* with ``media=True`` each call carries RTP (:class:`~faultlab.lab.media.MediaStream`): the INVITE offers a PCMU
  stream on a port the caller listens on (RFC 3264/4566), the caller sends 20 ms packets to the address of the
  2xx's answer from the moment it ACKs, and stops sending and listening when the call ends for it: as it sends
  its BYE (RFC 3261 §15.1.1), on the far end's BYE, or on any other end. Without media the offer is an ``inactive`` stream.

One connection (TCP/TLS) or one socket (UDP) carries everything; requests in a dialog go to the first
Route's address over UDP, and over the one connection for TCP/TLS (the PBX Record-Routes itself, so
that is where they are going anyway). No retransmissions: loopback and reliable transports.

Its sockets, reading, sending and response routing are a :class:`~faultlab.lab.ua.UAWire` (the plumbing of
every UA of the lab); a keep-alive ping from the PBX gets a pong, and a connection that stops framing ends the
caller's reading with a ``warning`` (``unframeable: ...``).

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

from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.addr import format_hostport
from faultlab.lab.media import MediaStream
from faultlab.lab.rtp import parse_sdp
from faultlab.lab.timeline import Timeline
from faultlab.lab.ua import Address, Incoming, Link, UAWire, new_branch, route_uri, token
from faultlab.net.reader import Unframed
from faultlab.sip import Message, SipError, parse_datagram, parse_uri

__all__ = ["Caller", "CallHandle", "CallerTimeout"]

SOURCE = "caller"
USER_AGENT = "faultlab-caller"


class CallerTimeout(AssertionError):
    """What the script waited for did not happen in time."""


def _route_address(route: str) -> Address | None:
    try:
        uri = parse_uri(route_uri(route))
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
    media: MediaStream | None = None  # the call's RTP (Caller(media=True))
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
        media: bool = False,
    ) -> None:
        self.wire = UAWire(transport, user=user, on_message=self._handle, host=host, user_agent=USER_AGENT,
                           session="faultlab caller", observer=self._emit, on_unframed=self._unframed, pong=True,
                           ca_file=ca_file, tls_server_name=tls_server_name, connect_timeout=timeout)
        self.transport = transport
        self.pbx_address = pbx_address
        self.user = user
        self.timeline = timeline
        self.domain = domain or pbx_address[0]
        self.host = host
        self.timeout = timeout
        self.media = media
        self._nursery: trio.Nursery | None = None
        self.aor = f"sip:{user}@{format_hostport(self.domain, pbx_address[1]) if domain is None else domain}"
        self.calls: dict[str, CallHandle] = {}
        self.current: CallHandle | None = None
        self._cseq = 0
        self._pending: dict[str, tuple[trio.Event, list[Message]]] = {}  # branch -> final response waiters

    # ------------------------------------------------------------------ lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Bind the UDP socket, or connect (and handshake TLS) to the PBX."""
        self._nursery = nursery
        await self.wire.start(nursery, self.pbx_address)

    async def close(self) -> None:
        for handle in self.calls.values():
            if handle.media is not None:
                handle.media.close()
        await self.wire.aclose()

    @property
    def address(self) -> Address:
        return self.wire.local

    @property
    def contact(self) -> str:
        return self.wire.contact()

    # ------------------------------------------------------------------ scripted steps

    async def call(self, callee_aor: str) -> CallHandle:
        """Send the INVITE and return its handle at once (wait on the handle)."""
        call_id = f"{token()}@{self.host}"
        local = f'"{self.user}" <{self.aor}>;tag={token()}'
        self._cseq += 1
        branch = new_branch()
        media = None
        if self.media:
            assert self._nursery is not None, "call start() first"
            media = MediaStream(self.timeline, SOURCE, host=self.address[0], call_id=call_id)
            await media.open(self._nursery)
        data = self._request("INVITE", callee_aor, branch=branch, call_id=call_id, from_=local,
                             to=f"<{callee_aor}>", cseq=self._cseq, contact=self.contact,
                             body=self.wire.sdp(port=media.port if media is not None else None),
                             content_type="application/sdp")
        invite = parse_datagram(data)
        handle = CallHandle(self, call_id, callee_aor, local, invite, branch, self._cseq, media=media)
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
        if handle.media is not None:
            handle.media.close()  # the session is over as the BYE goes out: stop sending and listening (§15.1.1)
        self._cseq += 1
        branch = new_branch()
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

    def _request(self, method: str, uri: str, **kwargs) -> bytes:
        return self.wire.request(method, uri, local=self.address, **kwargs)

    def _next_hop(self, handle: CallHandle) -> Address:
        if handle.route_set:
            addr = _route_address(handle.route_set[0])
            if addr is not None:
                return addr
        return self.pbx_address

    async def _send(self, data: bytes, dest: Address) -> None:
        """On the one socket or connection (``dest``: where it goes over UDP, and on the timeline)."""
        assert self.wire.main is not None, "call start() first"
        await self.wire.send(self.wire.main, data, dest)

    async def _ack(self, handle: CallHandle, response: Message) -> None:
        if 200 <= response.status < 300:
            # a new transaction along the dialog's route set (§13.2.2.4)
            data = self._request("ACK", handle.remote_target or handle.callee_aor, branch=new_branch(),
                                 call_id=handle.call_id, from_=handle.local, to=handle.remote or response.get("to"),
                                 cseq=handle.cseq, routes=handle.route_set)
            await self._send(data, self._next_hop(handle))
        else:
            data = self._request("ACK", handle.callee_aor, branch=handle.branch, call_id=handle.call_id,
                                 from_=handle.local, to=response.get("to"), cseq=handle.cseq)
            await self._send(data, self.pbx_address)

    # ------------------------------------------------------------------ receiving

    def _unframed(self, link: Link, item: Unframed) -> None:  # the PBX's stream no longer frames: reading stops
        self.timeline.emit("warning", source=SOURCE, transport=self.transport, peer=format_hostport(*self.pbx_address),
                           summary=f"unframeable: {item.error}")

    async def _handle(self, incoming: Incoming) -> None:
        try:
            if incoming.message.is_request:
                await self._handle_request(incoming)
            else:
                await self._handle_response(incoming.message)
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
            answer = parse_sdp(response.body)
            if handle.media is not None and answer is not None and answer.address is not None:
                handle.media.start(answer.address)
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

    async def _handle_request(self, incoming: Incoming) -> None:
        request = incoming.message
        if request.method == "ACK":
            return
        if request.method == "BYE":
            handle = self.calls.get(request.call_id or "")
            await self.wire.reply(incoming, 200)
            if handle is not None:
                self._end(handle, "remote-bye")
            return
        await self.wire.reply(incoming, 200 if request.method == "OPTIONS" else 501)

    def _end(self, handle: CallHandle, how: str) -> None:
        if handle.ended is None:
            handle.ended = how
            self._note("ended", handle.call_id, how=how)
        if handle.media is not None:
            handle.media.close()
        handle._update()

    # ------------------------------------------------------------------ timeline

    def _note(self, action: str, call_id: str | None, **detail) -> None:
        self.timeline.emit("caller", source=SOURCE, call_id=call_id, summary=action,
                           detail={"action": action, "user": self.user, **detail})

    def _emit(self, kind: str, link: Link, peer: Address, message: Message, data: bytes) -> None:
        try:
            call_id = message.call_id
        except SipError:
            call_id = None
        self.timeline.emit(kind, source=SOURCE, transport=self.transport, peer=format_hostport(*peer),
                           summary=message.summary(), method=message.method, status=message.status,
                           call_id=call_id, raw=message.raw)
