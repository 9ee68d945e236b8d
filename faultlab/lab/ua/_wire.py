"""The transport and message plumbing of a SIP user agent: one place for the sockets, the reading, the sending and
the response routing of the scripted UA (:class:`~faultlab.lab.ua.SipUA`), the lab's caller
(:class:`~faultlab.lab.caller.Caller`) and the reference device (:class:`~faultlab.lab.device.Device`).

* **Links**: the UDP socket (:meth:`UAWire.bind`), or a TCP/TLS connection (:meth:`UAWire.connect`; TLS verified
  against ``ca_file`` or the system's store, for ``tls_server_name`` or the peer's host), each read in a task of
  the nursery given to :meth:`UAWire.start`.
* **Reading**, with the one SIP reader (:mod:`faultlab.net.reader`): every message goes to ``on_message`` as an
  :class:`Incoming`, one at a time per link (while the handler awaits, its link is not read). A datagram that is
  not SIP is ignored. A connection whose bytes stop framing is given up (``on_unframed`` hears why); a keep-alive
  ping (CRLF CRLF) gets a pong (CRLF, RFC 5626 §4.4.1) when ``pong``, and every keep-alive goes to
  ``on_keep_alive(link, raw)`` (a UA that pings hears its pongs there); when a connection is over (EOF, reset,
  unframeable, or closed here), ``on_closed(link, ended)`` hears it at once, ``ended`` False when its reading was
  cancelled.
* **Sending**: :meth:`UAWire.send` (one writer at a time per connection); :meth:`UAWire.request` builds a request
  with this UA's Via (``rport``, RFC 3581) and User-Agent; :meth:`UAWire.response` a response (Record-Route copied
  into a dialog-making response to INVITE, RFC 3261 §12.1.1), which :meth:`UAWire.reply` sends where
  :meth:`UAWire.response_address` says: over the connection the request came on, or on UDP to the request's source
  address, at its source port with ``rport``, else at the Via's port (§18.2.2).
* **Observing**: ``observer(direction, link, peer, message, data)`` hears each message sent (just before it
  leaves) and received (just before ``on_message``): ``direction`` is ``"sent"`` or ``"received"``, ``peer`` where
  it went to or came from. A UA logs with it, or puts the message on a timeline.

Sockets are trio's (``trio.socket``, ``trio.open_tcp_stream``) and time is trio's clock, so all of it runs on the
in-memory network (:mod:`faultlab.net.memnet`) under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from faultlab.addr import format_hostport
from faultlab.lab.rtp import sdp_body
from faultlab.net.reader import SipStreamReader, Unframed, parse_or_raw
from faultlab.sip import Message, build_request, build_response, parse_datagram

Address = tuple[str, int]
TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
RECEIVE_SIZE = 65535

NO_MEDIA_PORT = 9  # the port an inactive stream names (discard): nothing is sent there


@dataclass(eq=False)
class Link:
    """The UDP socket, or one TCP/TLS connection. ``gone`` is set once it is over (closed by either side)."""

    transport: str
    local: Address
    peer: Address | None  # None for the UDP socket
    sock: trio.socket.SocketType | None = None
    stream: trio.abc.Stream | None = None
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    gone: trio.Event = field(default_factory=trio.Event)
    reading: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def closed(self) -> bool:
        return self.gone.is_set()


@dataclass(frozen=True)
class Incoming:
    """A message received: on which link, from where (for a connection, its peer)."""

    message: Message
    link: Link
    source: Address


Observer = Callable[[str, Link, Address, Message, bytes], None]


class UAWire:
    """The links of one SIP UA (all of one ``transport``) and the messages over them. :meth:`start` it first."""

    def __init__(self, transport: str, *, user: str, on_message: Callable[[Incoming], Awaitable[None]],
                 host: str = "127.0.0.1", user_agent: str = "faultlab", session: str = "faultlab",
                 observer: Observer | None = None, on_unframed: Callable[[Link, Unframed], None] | None = None,
                 on_closed: Callable[[Link, bool], None] | None = None, pong: bool = False,
                 ca_file: str | Path | None = None, tls_server_name: str | None = None,
                 connect_timeout: float = math.inf,
                 on_keep_alive: Callable[[Link, bytes], None] | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.transport = transport
        self.user = user
        self.on_message = on_message
        self.host = host  # the address the UDP socket binds
        self.user_agent = user_agent
        self.session = session  # the SDP's s= line
        self.observer = observer
        self.on_unframed = on_unframed
        self.on_closed = on_closed
        self.pong = pong
        self.ca_file = ca_file
        self.tls_server_name = tls_server_name
        self.connect_timeout = connect_timeout  # for the TCP connect, and again for the TLS handshake
        self.on_keep_alive = on_keep_alive
        self.bind_connections = False  # connections leave from ``host`` (a UA with an address of its own)
        self.main: Link | None = None  # the UDP socket, or the connection start() opened
        self.links: list[Link] = []  # the links being read
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ links

    async def start(self, nursery: trio.Nursery, peer: Address | None = None) -> None:
        """Read in ``nursery`` from now on; bind the UDP socket, or (TCP/TLS) connect to ``peer`` if given."""
        self._nursery = nursery
        if self.transport == "udp":
            self.main = await self.bind()
        elif peer is not None:
            self.main = await self.connect(peer)

    @property
    def local(self) -> Address:
        """The local address of :attr:`main`."""
        assert self.main is not None, "call start() first"
        return self.main.local

    async def bind(self) -> Link:
        family = trio.socket.AF_INET6 if ":" in self.host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        await sock.bind((self.host, 0))
        link = Link("udp", sock.getsockname()[:2], None, sock=sock)
        self._read(link, self._read_datagrams)
        return link

    async def connect(self, peer: Address) -> Link:
        """A new connection to ``peer`` (TLS: handshake done), read from now on. Raises ``trio.TooSlowError`` after
        ``connect_timeout``, and what the connect or the handshake raises (``OSError``, ``trio.BrokenResourceError``)."""
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(*peer, local_address=self.host if self.bind_connections else None)
        stream: trio.abc.Stream = tcp
        try:
            if self.transport == "tls":
                context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                stream = trio.SSLStream(tcp, context, server_hostname=self.tls_server_name or peer[0])
                with trio.fail_after(self.connect_timeout):
                    await stream.do_handshake()
            local = tcp.socket.getsockname()[:2]
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        link = Link(self.transport, local, peer, stream=stream)
        self._read(link, self._read_stream)
        return link

    async def link_to(self, peer: Address) -> Link:
        """The UDP socket, or the open connection to ``peer``, else a new one."""
        if self.transport == "udp":
            assert self.main is not None, "call start() first"
            return self.main
        for link in self.links:
            if link.peer == peer and not link.closed:
                return link
        return await self.connect(peer)

    async def close(self, link: Link) -> None:
        """Close ``link`` (this UA's doing); its reading ends, as at an EOF."""
        link.gone.set()
        if link.sock is not None:
            link.sock.close()
        else:
            assert link.stream is not None
            await trio.aclose_forcefully(link.stream)

    async def aclose(self) -> None:
        """Stop reading and close every link."""
        for link in list(self.links):
            link.reading.cancel()
            await self.close(link)

    # ------------------------------------------------------------------ receiving

    def _read(self, link: Link, reader: Callable[[Link], Awaitable[None]]) -> None:
        assert self._nursery is not None, "call start() first"
        self.links.append(link)
        self._nursery.start_soon(reader, link)

    async def _read_datagrams(self, link: Link) -> None:
        sock = link.sock
        assert sock is not None
        try:
            with link.reading, sock:
                while True:
                    try:
                        data, source = await sock.recvfrom(RECEIVE_SIZE)
                    except (OSError, trio.ClosedResourceError):
                        if link.closed or sock.fileno() < 0:
                            return
                        continue  # an error a datagram left behind (e.g. ICMP unreachable): not the socket's end
                    message, _ = parse_or_raw(data)  # keep-alives and bytes that do not parse are not messages
                    if isinstance(message, Message):
                        await self._receive(link, message, data, source[:2])
        finally:
            self._over(link, False)

    async def _read_stream(self, link: Link) -> None:
        assert link.stream is not None and link.peer is not None
        ended = False  # EOF, reset, unframeable or closed here: the connection is over (not a cancellation)
        try:
            with link.reading:
                async for item in SipStreamReader(link.stream).items():
                    if isinstance(item, Message):
                        await self._receive(link, item, item.raw, link.peer)
                    elif isinstance(item, Unframed):  # the last item: the connection is given up
                        if self.on_unframed is not None:
                            self.on_unframed(link, item)
                    else:  # a keep-alive
                        if self.on_keep_alive is not None:
                            self.on_keep_alive(link, item.raw)
                        if self.pong and item.raw == b"\r\n\r\n" and not await self._pong(link):
                            break
                ended = not link.reading.cancel_called  # aclose() may close the stream before the cancel lands
        finally:
            self._over(link, ended)
            await trio.aclose_forcefully(link.stream)

    async def _pong(self, link: Link) -> bool:
        assert link.stream is not None
        try:
            async with link.send_lock:
                await link.stream.send_all(b"\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        return True

    def _over(self, link: Link, ended: bool) -> None:
        link.gone.set()
        if link in self.links:
            self.links.remove(link)
        if self.on_closed is not None:
            self.on_closed(link, ended)

    async def _receive(self, link: Link, message: Message, data: bytes, source: Address) -> None:
        if self.observer is not None:
            self.observer("received", link, source, message, data)
        await self.on_message(Incoming(message, link, source))

    # ------------------------------------------------------------------ sending

    async def send(self, link: Link, data: bytes, dest: Address, message: Message | None = None) -> None:
        """Send ``data`` (``message``, parsed here if not given) on ``link``: on UDP to ``dest``; on a connection,
        ``dest`` only tells the observer where it is going."""
        if self.observer is not None:
            if message is None:
                parsed = parse_datagram(data)
                message = parsed if isinstance(parsed, Message) else None
            if message is not None:  # first: over loopback the answer can arrive before the send returns
                self.observer("sent", link, dest, message, data)
        if link.sock is not None:
            await link.sock.sendto(data, dest)
        else:
            assert link.stream is not None
            async with link.send_lock:
                await link.stream.send_all(data)

    def request(self, method: str, request_uri: str, *, local: Address, branch: str, call_id: str, from_: str, to: str,
                cseq: int, routes: Sequence[str] = (), contact: str | None = None,
                headers: Sequence[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None) -> bytes:
        """A request sent from ``local`` (the Via's sent-by), with ``rport`` and this UA's User-Agent."""
        return build_request(
            method, request_uri,
            via=f"SIP/2.0/{self.transport.upper()} {format_hostport(*local)};rport;branch={branch}",
            from_=from_, to=to, call_id=call_id, cseq=cseq, routes=routes, contact=contact,
            headers=[*headers, ("User-Agent", self.user_agent)], body=body, content_type=content_type)

    def response(self, request: Message, status: int, reason: str | None = None, *, to_tag: str | None = None,
                 contact: str | None = None, body: bytes = b"", content_type: str | None = None) -> bytes:
        headers = []
        if request.method == "INVITE" and 100 < status < 300:  # the UAS copies Record-Route (§12.1.1)
            headers += [("Record-Route", rr) for rr in request.get_all("Record-Route")]
        if contact:
            headers.append(("Contact", contact))
        headers.append(("User-Agent", self.user_agent))
        if content_type:
            headers.append(("Content-Type", content_type))
        return build_response(request, status, reason, to_tag=to_tag, headers=headers, body=body)

    @staticmethod
    def response_address(request: Incoming) -> Address:
        """Where the responses to ``request`` go (over a connection: its peer)."""
        via = request.message.top_via
        if request.link.sock is None or via is None or via.rport is not None:
            return request.source
        return request.source[0], via.port or DEFAULT_PORTS["udp"]

    async def reply(self, request: Incoming, status: int, reason: str | None = None, **kwargs: object) -> Message:
        """Answer ``request`` (keywords as :meth:`response`) on its link, to :meth:`response_address`."""
        data = self.response(request.message, status, reason, **kwargs)  # type: ignore[arg-type]
        response = parse_datagram(data)
        assert isinstance(response, Message)
        await self.send(request.link, data, self.response_address(request), response)
        return response

    # ------------------------------------------------------------------ what a softphone says

    def contact(self, local: Address | None = None, params: str = "") -> str:
        """``<sip:USER@LOCAL[;transport=T]PARAMS>``; ``local`` defaults to :attr:`main`'s."""
        uri = f"sip:{self.user}@{format_hostport(*(local or self.local))}"
        if self.transport != "udp":
            uri += f";transport={self.transport}"
        return f"<{uri}{params}>"

    def sdp(self, local: Address | None = None, *, port: int | None = None) -> bytes:
        """An offer or answer of one PCMU audio stream at ``local``'s host (default: :attr:`main`'s): sendrecv on
        ``port`` (an RTP port this UA listens on, :class:`~faultlab.lab.media.MediaStream`), or, with no port, an
        ``inactive`` stream (RFC 3264 §5.1: neither side sends media)."""
        host = (local or self.local)[0]
        if port is None:
            return sdp_body(user=self.user, host=host, port=NO_MEDIA_PORT, session=self.session, direction="inactive")
        return sdp_body(user=self.user, host=host, port=port, session=self.session)
