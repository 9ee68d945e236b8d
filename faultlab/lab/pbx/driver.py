"""The embedded PBX: :class:`~faultlab.lab.pbx.logic.PbxLogic` driven by trio transports.

``PBX(listen, timeline=..., send_push=...)`` serves UDP sockets and TCP/TLS listeners (TLS certificates
from the lab CA, :func:`faultlab.net.tls.server_context`), feeds every message to the sans-IO logic, runs
its timers on trio's clock, carries out its actions and writes the timeline (source ``"pbx"``):

* ``received`` / ``sent`` for every SIP message (``flow``, ``transport``, ``peer``, ``summary``,
  ``method``, ``status``, ``call_id``, ``raw``); a request the PBX retransmits over UDP is a ``sent``
  event again, with ``detail={"retransmission": n}``;
* ``pbx`` for each decision, ``detail={"action": ...}``: ``register``, ``unregister``, ``hold``,
  ``release``, ``forward``, ``hold-timeout``, ``cancel-held``, ``cancel-push``, ``forward-cancel``,
  ``ring-timeout``, ``elsewhere``, ``push-sent``, ``push-failed``, ``bye``, ``drop``, ``cancel-deferred``,
  ``timeout`` (Timer B or F fired: ``timer``, ``method``, ``branch``, ``flow``, ``retransmissions``), ...

Requests sent over UDP are retransmitted per RFC 3261 Timers A/E until their transaction ends, and
time out per Timers B/F (64*T1); the sans-IO logic decides (it keeps each UDP client transaction's
retransmission state, keyed by branch and method, and returns the retransmissions as ``SendBytes`` actions
from ``on_timer``); this driver only runs its deadlines on trio's clock. Nothing is retransmitted on
TCP/TLS.

Each UDP socket asks for 4 MiB of buffer (:func:`faultlab.net.udp.enlarge_buffers`), so a burst of requests
waits in the kernel instead of being dropped; when the kernel gives less (without root, Linux caps it at
``net.core.rmem_max``), a ``warning`` on the timeline and in :attr:`PBX.warnings` says what to set. The
timers also run the logic's pruning of finished calls and transactions (:mod:`faultlab.lab.pbx.lifetimes`).

Pushes go through the injected ``send_push(token, payload)`` coroutine (the push gateway client),
each in its own task so a slow gateway never blocks SIP; a failing call push ends the held INVITE
with 480 at once, and is not retried. When APNs says the token is no longer valid (410 Unregistered or
ExpiredToken, 400 BadDeviceToken or DeviceTokenNotForTopic) the PBX forgets the bindings that push to it
(``token-dropped``), so the next INVITE for that user sends no push. Pushes carry ``apns-expiration: 0`` (deliver
now or never), or ``now + push_ttl`` when ``push_ttl`` is set (``send_push(token, payload, expiration_at=...)``).
Without ``send_push`` pushes are only recorded (``push-unsent``) and the INVITE waits for a REGISTER as usual.
``misbehaviour`` makes a known-bad PBX (:data:`~faultlab.lab.pbx.model.MISBEHAVIOURS`), for the lab's push-side
checks.

For tests without sockets, pass ``transmit=`` (an ``async (flow, data)`` callable) and feed messages
with :meth:`PBX.receive`; :meth:`PBX.run` then only runs the timers.

Stop the PBX by cancelling the nursery that runs :meth:`PBX.run`, or with :meth:`PBX.stop`.
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
import time
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import trio

from faultlab.lab.pbx.logic import (
    ELSEWHERE_REASONS,
    Output,
    Binding,
    Flow,
    Note,
    PbxLogic,
    RequestPush,
    SendBytes,
)
from faultlab.lab.push.apns import PushRejected
from faultlab.lab.timeline import Timeline
from faultlab.addr import Endpoint, format_hostport, listen_error, parse_endpoint
from faultlab.net.resolve import resolve
from faultlab.net.udp import SOCKET_BUFFER, enlarge_buffers
from faultlab.net.reader import SipStreamReader, Unframed, parse_or_raw
from faultlab.sip import KeepAlive, Message, SipError

__all__ = ["PBX", "Flow", "Binding", "ELSEWHERE_REASONS", "SendPush", "Transmit"]

log = logging.getLogger(__name__)

SendPush = Callable[[str, dict], Awaitable[None]]
Transmit = Callable[[Flow, bytes], Awaitable[None]]
Address = tuple[str, int]

SOURCE = "pbx"
TOKEN_GONE = frozenset({"Unregistered", "ExpiredToken", "BadDeviceToken", "DeviceTokenNotForTopic"})
STORED_TTL = 90.0  # seconds: the known-bad "stores-pushes" PBX's push TTL (Flexisip's default call-fork-timeout)
RETRIES = 3  # the known-bad "retries-push" PBX's extra tries ...
RETRY_INTERVAL = 1.0  # ... this many seconds apart
_WILDCARDS = ("0.0.0.0", "::", "")


class PBX:
    """The embedded registrar/proxy with RFC 8599 push (see :mod:`faultlab.lab.pbx.logic`)."""

    def __init__(
        self,
        listen: Sequence[Endpoint | str] = (),
        *,
        timeline: Timeline,
        send_push: SendPush | None = None,
        hold: float = 8.0,
        ring_timeout: float = 45.0,
        cancel_push: bool = True,
        default_expires: int = 3600,
        t1: float = 0.5,
        t2: float = 4.0,
        advertise_host: str | None = None,
        confdir: Path | None = None,
        tls_name: str | None = None,
        transmit: Transmit | None = None,
        wall_clock: Callable[[], float] = time.time,
        push_ttl: float = 0.0,
        payload_size: int | None = None,
        misbehaviour: str | None = None,
    ) -> None:
        self.wall_clock = wall_clock
        self.push_ttl = push_ttl
        self.listen = [parse_endpoint(e) if isinstance(e, str) else e for e in listen]
        self.timeline = timeline
        self.send_push = send_push
        self.advertise_host = advertise_host
        self.confdir = confdir
        self.tls_name = tls_name
        self.logic = PbxLogic(hold=hold, ring_timeout=ring_timeout, cancel_push=cancel_push,
                              default_expires=default_expires, wall_clock=wall_clock, t1=t1, t2=t2,
                              payload_size=payload_size, misbehaviour=misbehaviour)
        self.listeners: list[tuple[Endpoint, Address]] = []
        self._transmit_override = transmit
        self._udp: dict[Address, trio.socket.SocketType] = {}
        self._conns: dict[int, tuple[trio.abc.Stream, trio.Lock]] = {}
        self._conn_ids = itertools.count(1)
        self._wake = trio.Event()
        self._parked_until = -math.inf  # the deadline the timer task waits for; -inf: it is not waiting
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self.warnings: list[str] = []  # said at start (e.g. a UDP buffer smaller than asked), also on the timeline

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Open the listeners, report ``self`` as started, serve until cancelled or :meth:`stop`."""
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for endpoint in self.listen:
                        if endpoint.transport == "udp":
                            await nursery.start(self._serve_udp, endpoint)
                        else:
                            await nursery.start(self._serve_stream, endpoint)
                    nursery.start_soon(self._timers)
                    self._emit_note({"action": "start", "listen": [
                        f"{ep.transport}:{format_hostport(*addr)}" for ep, addr in self.listeners]})
                    task_status.started(self)
            finally:
                self._nursery = None
                for sock in self._udp.values():
                    sock.close()
                self._udp.clear()
                for stream, _ in list(self._conns.values()):
                    await trio.aclose_forcefully(stream)
                self._conns.clear()

    def stop(self) -> None:
        """Stop :meth:`run`: close every socket and connection."""
        if self._scope is not None:
            self._scope.cancel()

    def address(self, transport: str) -> Address:
        """The bound address of the first listener of ``transport``."""
        for endpoint, addr in self.listeners:
            if endpoint.transport == transport:
                return addr
        raise KeyError(f"no {transport} listener")

    # ------------------------------------------------------------------ the API

    async def receive(self, message: Message | KeepAlive | bytes, flow: Flow) -> None:
        """Handle one message that arrived on ``flow`` (the transports call this; so can tests)."""
        if isinstance(message, bytes):
            data = message
            message, error = parse_or_raw(data)
            if error is not None:
                self.timeline.emit("warning", source=SOURCE, flow=str(flow), transport=flow.transport,
                                   peer=format_hostport(*flow.peer), summary=f"unparseable: {error}", raw=data)
                return
        if isinstance(message, Message):
            self._emit_message("received", message, flow)
        try:
            actions = self.logic.receive(message, flow, trio.current_time())
        except Exception as exc:  # a PBX bug must not take the lab down: say so on the timeline and go on
            self.timeline.emit("warning", source=SOURCE, flow=str(flow), transport=flow.transport,
                               peer=format_hostport(*flow.peer), summary=f"internal error: {exc!r}")
            return
        await self._execute(actions)

    async def cancel_elsewhere(self, call_id: str, reason: str = "answered") -> None:
        """A second device "answered" or "declined": CANCEL toward the device with the matching Reason
        (``SIP;cause=200;text="Call completed elsewhere"`` / ``SIP;cause=600;text="Busy Everywhere"``),
        487 to the caller. See :meth:`PbxLogic.cancel_elsewhere`."""
        await self._execute(self.logic.cancel_elsewhere(call_id, reason, trio.current_time()))

    def bindings(self, user: str) -> list[Binding]:
        return self.logic.bindings(user, trio.current_time())

    def call_state(self, call_id: str) -> str | None:
        return self.logic.call_state(call_id)

    # ------------------------------------------------------------------ actions

    async def _execute(self, actions: list[Output]) -> None:
        self._poke_timers()
        for action in actions:
            if isinstance(action, SendBytes):
                await self._send(action.flow, action.data, action.retransmission, action.message)
            elif isinstance(action, Note):
                self._emit_note(action.detail, action.call_id)
            elif isinstance(action, RequestPush):
                if self._nursery is not None:
                    self._nursery.start_soon(self._push, action)
                else:
                    await self._push(action)

    async def _push(self, push: RequestPush) -> None:
        detail = {"action": "push-sent", "token": push.token, "type": push.payload.get("type"),
                  "payload": push.payload}
        if self.send_push is None:
            self._emit_note({**detail, "action": "push-unsent", "why": "no push gateway configured"}, push.call_id)
            return
        misbehaviour = self.logic.misbehaviour
        ttl = STORED_TTL if misbehaviour == "stores-pushes" else self.push_ttl
        options = {"expiration_at": int(self.wall_clock() + ttl)} if ttl > 0 else {}
        self._emit_note(detail, push.call_id)
        for attempt in range(1 + (RETRIES if misbehaviour == "retries-push" else 0)):
            if attempt:  # the known-bad PBX tries again
                await trio.sleep(RETRY_INTERVAL)
                self._emit_note({**detail, "action": "push-retry", "attempt": attempt}, push.call_id)
            try:
                await self.send_push(push.token, push.payload, **options)
                return
            except Exception as exc:  # the gateway refused or is unreachable
                error = exc
        await self._push_failed(push, error)

    async def _push_failed(self, push: RequestPush, exc: Exception) -> None:
        log.info("push for %s failed: %s", push.call_id, exc)  # a decision on the timeline (push-failed)
        if (isinstance(exc, PushRejected) and exc.reason in TOKEN_GONE
                and self.logic.misbehaviour != "retries-push"):
            await self._execute(self.logic.drop_token(push.token, f"{exc.status} {exc.reason}"))
        if push.payload.get("type") == "call":
            await self._execute(self.logic.push_failed(push.call_id, f"{type(exc).__name__}: {exc}",
                                                       trio.current_time()))
        else:
            self._emit_note({"action": "push-failed", "type": push.payload.get("type"),
                             "error": f"{type(exc).__name__}: {exc}"}, push.call_id)

    async def _send(self, flow: Flow, data: bytes, retransmission: int = 0, message: Message | None = None) -> None:
        if message is None and data.strip(b"\r\n"):
            parsed, _ = parse_or_raw(data)
            message = parsed if isinstance(parsed, Message) else None
        if message is not None:
            self._emit_message("sent", message, flow,
                               {"retransmission": retransmission} if retransmission else None)
        try:
            if self._transmit_override is not None:
                await self._transmit_override(flow, data)
            elif flow.conn is None:
                sock = self._udp.get(flow.local)
                if sock is None:
                    raise OSError(f"no UDP socket on {format_hostport(*flow.local)}")
                await sock.sendto(data, flow.peer)
            else:
                entry = self._conns.get(flow.conn)
                if entry is None:
                    raise OSError(f"connection {flow} is closed")
                stream, lock = entry
                async with lock:
                    await stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.timeline.emit("warning", source=SOURCE, flow=str(flow), transport=flow.transport,
                               peer=format_hostport(*flow.peer), summary=f"send failed: {exc}")

    # ------------------------------------------------------------------ timeline

    def _emit_note(self, detail: dict, call_id: str | None = None) -> None:
        self.timeline.emit("pbx", source=SOURCE, call_id=call_id, summary=str(detail.get("action")), detail=detail)

    def _emit_message(self, kind: str, message: Message, flow: Flow, detail: dict | None = None) -> None:
        try:
            call_id = message.call_id
        except SipError:
            call_id = None
        self.timeline.emit(kind, source=SOURCE, flow=str(flow), transport=flow.transport,
                           peer=format_hostport(*flow.peer), summary=message.summary(),
                           method=message.method, status=message.status, call_id=call_id, raw=message.raw,
                           direction="to-pbx" if kind == "received" else None, **({"detail": detail} if detail else {}))

    # ------------------------------------------------------------------ timers

    def _poke_timers(self) -> None:
        """Wake the timer task unless it waits for the very deadline the logic now wants (most messages change no
        timer). A deadline that moved, even later, wakes it: the deadlines the run waits for stay the ones the
        logic has, so virtual time jumps through the same instants (and the same float sums) as always."""
        if self._parked_until > -math.inf:
            deadline = self.logic.next_wakeup()
            if (math.inf if deadline is None else deadline) == self._parked_until:
                return
        self._wake.set()

    async def _timers(self) -> None:
        while True:
            self._wake = trio.Event()
            deadline = self.logic.next_wakeup()
            self._parked_until = math.inf if deadline is None else deadline
            try:
                with trio.move_on_at(self._parked_until):
                    await self._wake.wait()
            finally:
                self._parked_until = -math.inf
            now = trio.current_time()
            deadline = self.logic.next_wakeup()
            if deadline is not None and deadline <= now:
                await self._execute(self.logic.on_timer(now))

    # ------------------------------------------------------------------ transports

    def _advertised(self, bound: Address) -> Address:
        host = self.advertise_host or bound[0]
        if host in _WILDCARDS:
            host = "::1" if bound[0] == "::" else "127.0.0.1"
        return host, bound[1]

    async def _serve_udp(self, endpoint: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        family, addr = await resolve(endpoint)
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        try:
            await sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise listen_error(endpoint, exc) from None
        local = self._advertised(sock.getsockname()[:2])
        self._enlarge(sock, f"udp:{format_hostport(*sock.getsockname()[:2])}")
        self._udp[local] = sock
        self.listeners.append((endpoint, sock.getsockname()[:2]))
        task_status.started()
        with sock:
            while True:
                try:
                    data, source = await sock.recvfrom(65535)
                except OSError:  # e.g. ICMP port unreachable reported on Linux
                    continue
                await self.receive(data, Flow("udp", source[:2], local))

    def _enlarge(self, sock: trio.socket.SocketType, where: str) -> None:
        """Large socket buffers, so a burst of requests waits in the kernel instead of being dropped; a word
        when the kernel gave less (without root, Linux caps the receive buffer at net.core.rmem_max)."""
        enlarge_buffers(sock, SOCKET_BUFFER)
        got = udp_receive_buffer(sock)
        if got is not None and got < SOCKET_BUFFER:
            warning = (f"the UDP receive buffer on {where} is {got // 1024} KiB, not the {SOCKET_BUFFER // 1024} KiB "
                       f"asked: a burst of requests may be dropped; as root run "
                       f"`sysctl -w net.core.rmem_max={SOCKET_BUFFER}` (or run faultlab as root)")
            self.warnings.append(warning)
            self.timeline.emit("warning", source=SOURCE, transport="udp", summary=warning)

    async def _serve_stream(self, endpoint: Endpoint, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        _, addr = await resolve(endpoint)
        ssl_ctx = None
        if endpoint.transport == "tls":
            fallback = [self.tls_name] if self.tls_name else []
            if addr[0] not in _WILDCARDS:
                fallback.append(addr[0])
            ssl_ctx = _server_context(self.confdir, self.tls_name, tuple(fallback or ["localhost"]))
        try:
            listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
        except OSError as exc:
            raise listen_error(endpoint, exc) from None
        bound = listeners[0].socket.getsockname()[:2]
        self.listeners.append((endpoint, bound))

        async def handle(conn: trio.SocketStream) -> None:
            conn_id = next(self._conn_ids)
            peer = conn.socket.getpeername()[:2]
            local = self._advertised(conn.socket.getsockname()[:2])
            stream: trio.abc.Stream = conn
            if ssl_ctx is not None:
                stream = trio.SSLStream(conn, ssl_ctx, server_side=True)
            flow = Flow(endpoint.transport, peer, local, conn_id)
            self._conns[conn_id] = (stream, trio.Lock())
            try:
                async for item in SipStreamReader(stream).items():
                    if isinstance(item, Unframed):  # the connection is given up: as closed by the peer
                        self.timeline.emit("warning", source=SOURCE, flow=str(flow), transport=flow.transport,
                                           peer=format_hostport(*peer), summary=f"unframeable: {item.error}")
                        break
                    await self.receive(item, flow)
            finally:
                self._conns.pop(conn_id, None)
                await trio.aclose_forcefully(stream)
            await self._execute(self.logic.flow_closed(flow, trio.current_time()))  # the peer closed it

        task_status.started()
        await trio.serve_listeners(handle, listeners)


def udp_receive_buffer(sock: trio.socket.SocketType) -> int | None:
    """The receive buffer the kernel gave ``sock``, in bytes of data (Linux reports twice the size set, the
    other half being its bookkeeping), or ``None`` when it does not say (an in-memory socket says 0)."""
    import socket
    import sys

    try:
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        return None
    if not isinstance(size, int) or size <= 0:
        return None
    return size // 2 if sys.platform.startswith("linux") else size


_TLS_CONTEXTS: dict[tuple, ssl.SSLContext] = {}  # (CA directory, its certificate's stamp, names) -> context
_TLS_CONTEXTS_SIZE = 16


def _server_context(confdir: Path | None, tls_name: str | None, fallback: tuple[str, ...]) -> ssl.SSLContext:
    """The PBX's TLS server context from the lab CA in ``confdir``, made once per process for the same CA (its
    certificate file unchanged) and names: every lab run over TLS starts a PBX, and loading the CA and a
    certificate chain each time is most of the cost of its start."""
    from faultlab.ca import CA_CERT_FILE, LabCA, default_confdir
    from faultlab.net.tls import server_context

    directory = Path(confdir or default_confdir())
    key = (str(directory.absolute()), _stamp(directory / CA_CERT_FILE), tls_name, fallback)
    ctx = _TLS_CONTEXTS.get(key) if key[1] is not None else None
    if ctx is None:
        ca = LabCA.load_or_init(directory)
        ctx = server_context(ca, default_name=tls_name, fallback_names=list(fallback))
        key = key[:1] + (_stamp(directory / CA_CERT_FILE),) + key[2:]  # load_or_init may have made the CA
        if key[1] is not None:
            if len(_TLS_CONTEXTS) >= _TLS_CONTEXTS_SIZE:
                _TLS_CONTEXTS.clear()
            _TLS_CONTEXTS[key] = ctx
    return ctx


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
