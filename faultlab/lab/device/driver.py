"""The reference device: a simulated, well-behaved iOS VoIP app (or a known-bad one), on trio.

:class:`Device` owns a small SIP UA that talks to one outbound proxy (faultlab's address) over UDP, TCP or TLS,
reads VoIP pushes from a channel, and runs one :class:`~faultlab.lab.device.logic.DeviceLogic` per call: the
CallKit/app rules live there (sans-IO); this module and its two parts, :mod:`.register` (REGISTER) and
:mod:`.answer` (answering requests), only do the I/O, over a :class:`~faultlab.lab.ua.UAWire` (the plumbing of every
UA of the lab: sockets, reading, sending, response routing):

* REGISTER with RFC 8599 Contact parameters
  (``;pn-provider=apns;pn-prid=<token>;pn-param=<TEAMID>.<bundle>.voip``) and ``Expires``; on UDP retransmitted
  per Timer E (0, 0.5, 1.5, 3.5, 7.5, 11.5 ... s) until a final response, Timer F (32 s), or the logic stops it;
* answers INVITEs (100 at once, then whatever the logic says: 180, 200 with SDP, 487, 480, 603), retransmits the
  2xx on UDP until the ACK (Timer G style), absorbs request retransmissions by resending the last response;
* CANCEL (200, + 487 through the logic), BYE (200), ACK, OPTIONS (200); anything else 501;
* media: RTP with the caller when the INVITE offers it, and a BYE of its own when the logic ends a connected call
  (its media-silence timeout), in :mod:`.answer`;
* on TCP/TLS a CRLF keep-alive ping every ``keepalive_interval`` s; no pong within ``keepalive_timeout`` s (10 s)
  and the flow has failed (RFC 5626 §4.4.1), and :meth:`Device.move` takes the device to a new address
  (Wi-Fi -> cellular): either way it recovers its flow on a new connection or socket (:mod:`.flows`);
* the TCP/TLS connection is opened on demand and kept; when the network closes or resets it, every call's logic
  hears ``flow_lost`` (flow recovery: a call waiting for its INVITE re-REGISTERs at once on a new connection) and
  a REGISTER in flight on it fails at once. With ``new_connection_on_push`` a call push closes the connection
  first, so that its REGISTER connects (and handshakes) anew, as a backgrounded app does;
* device events go to the shared :class:`~faultlab.lab.timeline.Timeline` as kind ``"device"``, source
  ``"device:<name>"``, with ``call_id`` and ``detail = {"event", "reason" (ended only), "uuid"}``.

Pushes are any objects with ``.kind`` (``"call"`` | ``"cancel"``) and ``.payload`` (dict with ``call-id``,
``uuid``, ``send-time``...). Time is trio's clock, so a Device runs under ``trio.testing.MockClock``; the one
exception is a push's age (``wall_clock()`` minus its ``send-time``, UNIX seconds), which tells a stale push:
give a lab's clock (:func:`faultlab.lab.stack.open_lab_stack` does) for virtual time.
"""

from __future__ import annotations

import math
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from faultlab.lab.device.logic import (
    BEHAVIOURS,
    DeviceConfig,
    DeviceLogic,
    Emit,
    Output,
    Reply,
    SendRegister,
    StopRegister,
)
from faultlab.addr import Endpoint, format_hostport, is_ip, parse_endpoint
from faultlab.lab.timeline import Timeline
from faultlab.lab.ua import Incoming, Link, UAWire
from faultlab.net.reader import Unframed
from faultlab.net.udp import local_address_towards
from faultlab.sip import SipError

from .answer import Answering
from .base import T1, T2, TIMER_F, USER_AGENT, Address, _Call
from .flows import Flows
from .register import Registering, contact_uri

__all__ = ["Device", "DeviceConfig", "BEHAVIOURS", "contact_uri", "T1", "T2", "TIMER_F"]


async def _source_address(proxy: Endpoint) -> str:
    """The local address the system sends from toward the proxy, so that the device's socket and Via work beyond
    loopback (e.g. in a lab namespace); loopback for a host name or when there is no route."""
    loopback = "::1" if ":" in proxy.host else "127.0.0.1"
    if not is_ip(proxy.host):
        return loopback
    family = socket.AF_INET6 if ":" in proxy.host else socket.AF_INET
    try:
        return await local_address_towards(family, (proxy.host, proxy.port or 5060))
    except OSError:  # no route: binding loopback, the send fails with a clear error later
        return loopback


class Device(Registering, Answering, Flows):
    """The reference device. ``await device.run()`` (or ``nursery.start(device.run)``) until cancelled.

    ``proxy``: ``"udp:HOST:PORT"`` / ``"tcp:..."`` / ``"tls:..."`` or an :class:`Endpoint` (HOST an IP address).
    ``pushes``: a receive channel of push objects, or None (no pushes: only INVITEs while "in the foreground").
    ``register_at_start``: send one REGISTER at start, as the app does at launch to leave its push binding.
    ``on_event``: called with each device event's detail dict (after the timeline has it).
    ``new_connection_on_push``: (TCP/TLS) a call push that starts a new call, with no other call in progress,
    closes the connection to the proxy first, so that the binding-refresh REGISTER opens a new one (TCP connect
    and TLS handshake), as an app woken in the background does (S14, S15).
    ``bind``: the device's sockets and connections leave from ``host`` (a device with an address of its own, which
    :meth:`move` can change).
    """

    def __init__(
        self,
        *,
        proxy: str | Endpoint,
        user: str,
        domain: str,
        token: str,
        pushes: Any = None,
        timeline: Timeline | None = None,
        config: DeviceConfig | None = None,
        name: str | None = None,
        team_id: str = "ABCDE12345",
        bundle: str = "org.faultlab.device",
        expires: int = 600,
        host: str | None = None,
        ca_file: str | Path | None = None,
        tls_server_name: str | None = None,
        register_at_start: bool = True,
        on_event: Callable[[dict], None] | None = None,
        new_connection_on_push: bool = False,
        wall_clock: Callable[[], float] = time.time,
        bind: bool = False,
    ) -> None:
        self.wall_clock = wall_clock
        self.proxy = parse_endpoint(proxy) if isinstance(proxy, str) else proxy
        self.user, self.domain, self.token = user, domain, token
        self.pushes = pushes
        self.timeline = timeline
        self.config = config or DeviceConfig()
        self.name = name or user
        self.team_id, self.bundle, self.expires = team_id, bundle, expires
        self.host = host  # None: the address that reaches the proxy, found when the device starts
        self.wire = UAWire(self.proxy.transport, user=user, on_message=self._on_message, user_agent=USER_AGENT,
                           session="faultlab device", on_unframed=self._unframed, on_closed=self._on_closed,
                           ca_file=ca_file, tls_server_name=tls_server_name, on_keep_alive=self._on_keep_alive)
        self.wire.bind_connections = bind
        self.register_at_start = register_at_start
        self.on_event = on_event
        self.new_connection_on_push = new_connection_on_push
        self.calls: list[_Call] = []
        self.initial_register: int | str | None = None  # status, "timeout" or "transport: ..."
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._udp: Link | None = None  # the UDP socket
        self._flow: Link | None = None  # the open TCP/TLS connection
        self._connect_lock = trio.Lock()
        self.connections = 0  # TCP/TLS connections opened (handshake done)
        self.flows_lost = 0  # connections closed or reset by the network
        self._pong: trio.Event | None = None  # set by the pong to the last keep-alive ping
        self._local: Address | None = None  # of the UDP socket, or of the last connection
        self._transactions: dict[str, trio.MemorySendChannel] = {}  # branch -> REGISTER responses
        self._responses: dict[tuple[str | None, str | None], bytes] = {}  # (branch, method) -> last response
        self._reg_call_id = secrets.token_hex(8)  # "@host" follows once the host is known (run)
        self._cseq = 0

    @property
    def source(self) -> str:
        return f"device:{self.name}"

    @property
    def proxy_address(self) -> Address:
        return self.proxy.host, self.proxy.port

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.timeline is None:
            self.timeline = Timeline()
        if self.host is None:
            self.host = await _source_address(self.proxy)
        self._reg_call_id = self._reg_call_id.partition("@")[0] + "@" + self.host
        self.wire.host = self.host
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.wire.start(nursery)  # UDP: binds; TCP/TLS: connects on demand (_ensure_stream)
            if self.wire.main is not None:
                self._udp = self.wire.main
                self._local = self._udp.local
            if self.register_at_start:
                result = await self._register_transaction()
                if result[0] == "response":
                    self.initial_register = result[1]
                else:
                    self.initial_register = "timeout" if result[0] == "timeout" else f"transport failure: {result[1]}"
            if self.pushes is not None:
                nursery.start_soon(self._read_pushes)
            if self._udp is None and self.config.keepalive_interval > 0:
                nursery.start_soon(self._keep_alive)
            task_status.started()

    # ------------------------------------------------------------------ transport

    async def _ensure_stream(self) -> None:
        """Connect (and for TLS, handshake) to the proxy if there is no open connection."""
        if self._udp is not None or self._flow is not None:
            return
        async with self._connect_lock:  # one connection attempt at a time
            if self._flow is not None:
                return
            flow = await self.wire.connect(self.proxy_address)
            self._flow = flow
            self._local = flow.local
            self.connections += 1

    async def _close_stream(self) -> None:
        """Close the connection to the proxy (the device's own doing: no ``flow_lost``)."""
        flow, self._flow = self._flow, None
        if flow is not None:
            await self.wire.close(flow)

    async def _send(self, data: bytes, dest: Address | None = None) -> None:
        link = self._udp or self._flow
        if link is None:
            raise trio.BrokenResourceError("no connection to the proxy")
        await self.wire.send(link, data, dest or self.proxy_address)

    def _unframed(self, link: Link, item: Unframed) -> None:  # the connection is given up: as closed by the network
        assert self.timeline is not None
        self.timeline.emit("warning", source=self.source, transport=self.proxy.transport,
                           peer=format_hostport(*self.proxy_address), summary=f"unframeable: {item.error}")

    def _on_closed(self, link: Link, ended: bool) -> None:
        if link is self._flow:  # still the device's connection: the network ended it (or a cancellation)
            self._flow = None
            if ended and self._nursery is not None:
                self._nursery.start_soon(self._on_flow_lost)

    async def _on_flow_lost(self) -> None:
        """The network closed or reset the connection: tell every call (flow recovery, S24)."""
        self.flows_lost += 1
        now = trio.current_time()
        for call in list(self.calls):
            await self._feed(call, call.logic.flow_lost(now))

    # ------------------------------------------------------------------ calls

    def _new_call(self) -> _Call:
        call = _Call(DeviceLogic(self.config))
        self.calls.append(call)
        assert self._nursery is not None
        self._nursery.start_soon(self._timers, call)
        return call

    def _find(self, call_id: str | None = None, uuid: str | None = None) -> _Call | None:
        for call in reversed(self.calls):
            if call.logic.matches(call_id, uuid):
                return call
        return None

    async def _feed(self, call: _Call, outputs: list[Output]) -> None:
        """Apply outputs in order (under the device lock: one input at a time), then wake the call's timers."""
        async with self._lock:
            for output in outputs:
                await self._apply(call, output)
        if call.logic.ended and call.media is not None:
            call.media.close()  # the call is over for the device: no more RTP either way
        logic = call.logic
        if logic.ended and logic.final_sent == 200 and logic.acked and logic.end_reason != "remoteEnded" \
                and not call.hung_up and self._nursery is not None:  # it ended a connected call itself
            call.hung_up = True
            self._nursery.start_soon(self._hang_up, call)
        due = logic.next_timer()
        if logic.ended or (math.inf if due is None else due) != call.parked_until:
            # wake the call's timer task to end, or to wait for the deadline that moved (even later: the deadlines
            # the run waits for stay the logic's, so virtual time jumps through the same instants as always); it
            # waits on when the input changed no timer (or it is not waiting: it reads the deadline itself)
            call.changed.set()
            call.changed = trio.Event()

    async def _apply(self, call: _Call, output: Output) -> None:
        if isinstance(output, Emit):
            detail: dict[str, Any] = {"event": output.event}
            if output.reason is not None:
                detail["reason"] = output.reason
            detail["uuid"] = call.logic.uuid
            assert self.timeline is not None
            self.timeline.emit("device", source=self.source, call_id=call.logic.call_id, detail=detail)
            if self.on_event is not None:
                self.on_event({"t": self.timeline.now(), "call_id": call.logic.call_id, **detail})
        elif isinstance(output, SendRegister):
            assert self._nursery is not None
            self._nursery.start_soon(self._register_for, call)
        elif isinstance(output, StopRegister):
            if call.register_scope is not None:
                call.register_scope.cancel()
                call.register_scope = None
        elif isinstance(output, Reply):
            await self._reply(output.ref, output.status, call)

    async def _timers(self, call: _Call) -> None:
        logic = call.logic
        while not (logic.ended and logic.next_timer() is None):
            changed = call.changed
            deadline = logic.next_timer()
            call.parked_until = math.inf if deadline is None else deadline
            try:
                with trio.move_on_at(call.parked_until) as scope:
                    await changed.wait()
            finally:
                call.parked_until = -math.inf
            if scope.cancelled_caught:
                await self._feed(call, logic.on_timer(trio.current_time()))

    async def _read_pushes(self) -> None:
        assert self.pushes is not None
        async for push in self.pushes:
            kind, payload = getattr(push, "kind", None), dict(getattr(push, "payload", None) or {})
            call = self._find(payload.get("call-id"), payload.get("uuid"))
            if call is None and kind == "call":
                if self.config.behaviour == "loops-at-one-instant":
                    while True:  # polls a state that never changes, yielding but never waiting
                        await trio.sleep(0)
                if self.new_connection_on_push and not any(not c.logic.ended for c in self.calls):
                    await self._close_stream()  # woken in the background: the old connection is gone
                call = self._new_call()
            if call is not None:
                await self._feed(call, call.logic.push(trio.current_time(), kind, payload, self._age(payload)))

    def _age(self, payload: dict) -> float | None:
        """Seconds since the push's ``send-time`` (None when it has none that makes sense)."""
        sent = payload.get("send-time")
        if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not math.isfinite(sent):
            return None
        return self.wall_clock() - sent

    # ------------------------------------------------------------------ SIP in

    async def _on_message(self, incoming: Incoming) -> None:
        message = incoming.message
        try:
            if message.top_via is None or message.cseq is None:
                return
            if not message.is_request:
                branch = message.top_via.branch
                if branch in self._transactions and message.cseq.method in ("REGISTER", "BYE"):
                    self._transactions[branch].send_nowait(message)
                return
            await self._on_request(incoming)
        except (SipError, trio.WouldBlock):
            return  # malformed or unexpected: a real phone ignores it
