"""The whole lab in one trio process over loopback, on one shared :class:`~faultlab.lab.timeline.Timeline`.

::

    caller ──(udp)──> embedded PBX <──(udp|tcp|tls)── faultlab relay <──(udp|tcp|tls)── reference device
                          │                                                                  ▲
                          └── send_push ──> push gateway ──(channel for the device's token)──┘

* **push gateway**: :class:`~faultlab.lab.push.PushGateway` with the given :class:`PushFaults`; the PBX reaches it
  in-process (``push="local"``, :meth:`PushGateway.local_sender`, no sockets) or over HTTP/2 on loopback
  (``push="http"``, :func:`serve_push_gateway` + :meth:`PushClient.sender`);
* **PBX**: :class:`~faultlab.lab.pbx.PBX` on ``127.0.0.1:0`` for the device's transport (and UDP for the caller);
* **faultlab**: :func:`faultlab.proxy.serve_proxy` in relay mode in front of the PBX, with ``profile`` and ``seed``,
  writing its events (source ``"proxy"``) to the same timeline;
* **device**: :class:`~faultlab.lab.device.Device`, outbound proxy = faultlab's listen address, pushes = the
  gateway's channel for its token; it REGISTERs (with RFC 8599 parameters) through faultlab at start;
* **caller**: :class:`~faultlab.lab.caller.Caller`, straight to the PBX. With ``media=True`` its calls carry RTP
  (:mod:`faultlab.lab.media`) and so do the device's answers: the packets go straight between the two, never
  through faultlab, which relays SIP only (as a SIP proxy in a real deployment).

Usage::

    async with open_lab_stack("udp", device_config=DeviceConfig(answer_after=1.0)) as lab:
        result = await lab.call(hang_up_after=2.0)
        assert result.final == 200 and result.ended == "remoteEnded"
        lab.timeline.events  # every actor's events, times from one t0

``LabStack.call`` scripts one call (cancel at t, answered elsewhere at t, hang up at t) and waits until the device
ends it. Leaving the ``async with`` stops every actor.

``network="loopback"`` (the default) uses real sockets on 127.0.0.1; ``network="memory"`` puts every actor's
sockets on an in-memory network (:mod:`faultlab.net.memnet`) for this ``trio.run``: the same code, no kernel, no
ports; ``rtt=`` then gives every hop (device-faultlab, faultlab-PBX, caller-PBX) that round trip, half of it each
way (lab runs take it from the scenario, ``[network] rtt``); loopback keeps the kernel's. Either runs in real time or under ``trio.testing.MockClock(autojump_threshold=0)`` (virtual time); memory
under the mock clock is the fast, deterministic way (a 30-second call in milliseconds). The actors as separate
processes: ``faultlab push-gateway``, ``faultlab pbx``, ``faultlab proxy``, ``faultlab device``.
"""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import trio

from faultlab.faults import Profile, parse_profile, parse_rule
from faultlab.lab.caller import Caller, CallHandle
from faultlab.lab.device import Device
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.pbx import PBX
from faultlab.lab.push import PushClient, PushFaults, PushGateway, serve_push_gateway
from faultlab.lab.timeline import Timeline
from faultlab.net import memnet
from faultlab.addr import Endpoint, format_hostport
from faultlab.proxy import Proxy, ProxyConfig, serve_proxy
from faultlab.trace import Event

__all__ = ["LabCall", "LabStack", "open_lab_stack"]

HOST = "127.0.0.1"
DEVICE_HOSTS = ("127.0.0.11", "127.0.0.12")  # a device with addresses of its own: "Wi-Fi", then "cellular" (S26)
TRANSPORTS = ("udp", "tcp", "tls")
NETWORKS = ("loopback", "memory")


@dataclass
class LabCall:
    """What :meth:`LabStack.call` saw: the caller's handle, its final status, and how the device ended the call."""

    handle: CallHandle
    call_id: str
    final: int | None  # the caller's final response to the INVITE (None: none in time)
    ended: str | None  # the device's end reason (None: it did not end in time)
    device_events: list[tuple[float, str, str | None]] = field(default_factory=list)  # (t, event, reason)


class LabStack:
    """The running lab: its actors and the shared timeline (see the module docstring)."""

    def __init__(self, *, timeline: Timeline, gateway: PushGateway, pbx: PBX | None, proxy: Proxy, device: Device,
                 caller: Caller, transport: str, nursery: trio.Nursery) -> None:
        self.timeline = timeline
        self.gateway = gateway
        self.pbx = pbx
        self.proxy = proxy
        self.device = device
        self.caller = caller
        self.transport = transport
        self.nursery = nursery
        self._ended: dict[str, str] = {}
        self._ended_changed = trio.Event()

    async def wait_for_event(self, predicate: Callable[[Event], bool], timeout: float = 60.0) -> Event:
        """The first timeline event (already there, or the next ones) for which ``predicate`` is true;
        :class:`trio.TooSlowError` after ``timeout`` seconds."""
        with trio.fail_after(timeout):
            return await self.timeline.wait_for(predicate)

    @property
    def device_aor(self) -> str:
        return f"sip:{self.device.user}@{self.device.domain}"

    def _on_device_event(self, detail: dict) -> None:
        if detail.get("event") == "ended" and detail.get("call_id"):
            self._ended.setdefault(detail["call_id"], detail.get("reason"))
            self._ended_changed.set()
            self._ended_changed = trio.Event()

    async def wait_device_ended(self, call_id: str, timeout: float = 60.0) -> str | None:
        """The device's end reason for ``call_id``; ``None`` when it has not ended within ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while call_id not in self._ended:
                await self._ended_changed.wait()
        return self._ended.get(call_id)

    def device_events(self, call_id: str) -> list[tuple[float, str, str | None]]:
        return [(e.t, e.detail["event"], e.detail.get("reason")) for e in self.timeline.events
                if e.kind == "device" and e.source == self.device.source and e.call_id == call_id]

    async def call(
        self,
        *,
        cancel_at: float | None = None,
        cancel_reason: str | None = None,
        answer_elsewhere: float | None = None,
        elsewhere: str = "answered",
        hang_up_after: float | None = 1.0,
        end_timeout: float = 60.0,
    ) -> LabCall:
        """Call the device from the caller, following a small script; return when the device has ended the call
        (or ``end_timeout`` seconds after the caller's last step).

        ``cancel_at``: the caller CANCELs this many seconds after its INVITE (if no final response by then).
        ``answer_elsewhere``: this many seconds after the caller's 180, "a second device" answers (``elsewhere=
        "answered"``) or declines (``"declined"``): :meth:`PBX.cancel_elsewhere`. ``hang_up_after``: after a 200,
        the caller hangs up this many seconds later (``None``: the call stays up; the device's end is not awaited).
        """
        handle = await self.caller.call(self.device_aor)
        start = trio.current_time()
        final: int | None = None
        async with trio.open_nursery() as script:
            if cancel_at is not None:
                async def cancel() -> None:
                    await trio.sleep_until(start + cancel_at)
                    if handle.final is None:
                        await handle.cancel(reason=cancel_reason)
                script.start_soon(cancel)
            if answer_elsewhere is not None:
                async def elsewhere_() -> None:
                    await handle.wait_for(180, timeout=math.inf)
                    await trio.sleep(answer_elsewhere)
                    if handle.final is None:
                        if self.pbx is None:
                            raise RuntimeError("answered/declined elsewhere needs the embedded PBX")
                        await self.pbx.cancel_elsewhere(handle.call_id, elsewhere)
                script.start_soon(elsewhere_)
            with trio.move_on_after(end_timeout):
                final = (await handle.wait_final(timeout=math.inf)).status
            script.cancel_scope.cancel()
        if final is not None and 200 <= final < 300:
            if hang_up_after is None:
                return LabCall(handle, handle.call_id, final, None, self.device_events(handle.call_id))
            await trio.sleep(hang_up_after)
            await handle.hang_up()
        ended = await self.wait_device_ended(handle.call_id, end_timeout)
        return LabCall(handle, handle.call_id, final, ended, self.device_events(handle.call_id))

    async def move_device(self, host: str) -> None:
        """The device's address changes to ``host`` (Wi-Fi -> cellular). On the memory network its old address
        leaves the network first, so its old flow dies without a word (no FIN, no RST). On loopback the lab cannot
        take an address away: faultlab drops every message to and from the old address from then on (a rule
        ``address-gone`` first in its profile), and a device that closes its old connection still sends its FIN."""
        old = self.device.host
        net = memnet.current()
        if net is not None and old is not None:
            net.remove_address(old)
        elif old is not None:
            rule = parse_rule({"name": "address-gone", "match": {"device": old}, "action": {"drop": True}})
            engine = self.proxy.engine or self.proxy.activate(parse_profile('name = "address-gone"'))
            assert engine is not None
            engine.add_rule(rule, 0, now=self.proxy.now())
        await self.device.move(host)

    # -- the timeline, by actor --------------------------------------------------------------------

    def proxy_messages(self, call_id: str | None = None, *, kind: str = "sent",
                       direction: str | None = None) -> list:
        """faultlab's own events for SIP messages (``kind`` ``sent``/``received``/``dropped``...), optionally of
        one call and one direction (``"to-device"`` / ``"to-pbx"``)."""
        return [e for e in self.timeline.events if e.source == "proxy" and e.kind == kind
                and (call_id is None or e.call_id == call_id) and (direction is None or e.direction == direction)]


def _check_options(transport: str, *, push: str, network: str, confdir: Path | None,
                   external_pbx: dict[str, tuple[str, int]] | None, push_listen: tuple[str, int] | None,
                   rtt: float) -> None:
    """Raise ValueError, saying what to change, for options :func:`open_lab_stack` cannot start with; then install
    the memory network (with ``rtt``) if asked for."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if push not in ("local", "http"):
        raise ValueError(f"push must be 'local' or 'http', not {push!r}")
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    if transport == "tls" and confdir is None:
        raise ValueError("a TLS lab needs confdir= (where the lab CA lives)")
    if external_pbx is not None:
        if network != "loopback":
            raise ValueError("a lab with an external PBX runs on real sockets (network='loopback')")
        if push_listen is None:
            raise ValueError("a lab with an external PBX needs push_listen=(host, port): where that PBX pushes")
        missing = [t for t in {transport, "udp"} if t not in external_pbx]
        if missing:
            raise ValueError(f"external_pbx has no address for {', '.join(sorted(missing))}")
    if network == "memory":
        memnet.install(memnet.MemoryNetwork(delay=rtt / 2))


def lab_wall_clock(timeline: Timeline) -> Callable[[], float]:
    """UNIX time at the start plus the timeline's time: a push's ``send-time``, its expiry at the gateway and its
    age at the device, on one clock that virtual time moves too."""
    epoch = time.time() - timeline.now()
    return lambda: epoch + timeline.now()


def _lab_ca_file(confdir: Path | None) -> Path:
    """The lab CA's certificate (made on first use in ``confdir``): what the device and faultlab trust over TLS."""
    from faultlab.ca import LabCA

    return LabCA.load_or_init(confdir).cert_path


async def _start_pbx(nursery: trio.Nursery, transport: str, timeline: Timeline, send_push: Any, *, hold: float,
                     ring_timeout: float, cancel_push: bool, confdir: Path | None, **options: Any) -> PBX:
    """The embedded PBX on loopback, for ``transport`` and UDP (the caller's); ``options``: more of
    :class:`PBX`'s keywords."""
    listen = [f"{transport}:{HOST}:0"] + ([] if transport == "udp" else [f"udp:{HOST}:0"])
    pbx = PBX(listen, timeline=timeline, send_push=send_push, hold=hold, ring_timeout=ring_timeout,
              cancel_push=cancel_push, confdir=confdir, **options)
    await nursery.start(pbx.run)
    return pbx


async def _start_push(nursery: trio.Nursery, gateway: PushGateway, topic: str, push: str,
                      external_listen: tuple[str, int] | None) -> tuple[Any, PushClient | None]:
    """Start the push gateway: on ``external_listen`` for a PBX of one's own (no sender of ours), else in-process
    (``push="local"``) or on loopback over HTTP/2 (``"http"``). -> (the embedded PBX's ``send_push``, the client
    to close)."""
    if external_listen is not None:
        await nursery.start(serve_push_gateway, gateway, *external_listen)
        return None, None
    if push == "local":
        await nursery.start(gateway.run)
        return gateway.local_sender(topic=topic), None
    _, port = await nursery.start(serve_push_gateway, gateway, HOST, 0)
    client = PushClient(f"http://{format_hostport(HOST, port)}")
    return client.sender(topic=topic), client


@asynccontextmanager
async def open_lab_stack(
    transport: str = "udp",
    *,
    profile: Profile | None = None,
    device_config: DeviceConfig | None = None,
    push_faults: PushFaults = PushFaults(),
    seed: int = 0,
    push: str = "local",
    pbx_hold: float = 8.0,
    ring_timeout: float = 45.0,
    cancel_push: bool = True,
    confdir: Path | None = None,
    user: str = "alice",
    domain: str = "lab.test",
    token: str = "a1b2c3d4e5f60718",
    bundle: str = "org.faultlab.device",
    caller_user: str = "bob",
    timeline: Timeline | None = None,
    network: str = "loopback", new_connection_on_push: bool = False,
    external_pbx: dict[str, tuple[str, int]] | None = None,
    push_listen: tuple[str, int] | None = None,
    pbx_ca: Path | None = None, pbx_options: dict[str, Any] | None = None, media: bool = False,
    device_host: str | None = None, rtt: float = 0.0,
) -> AsyncIterator[LabStack]:
    """Start every actor (see the module docstring) and yield the :class:`LabStack`; stop them all on exit.

    ``transport``: how the device reaches faultlab and faultlab the PBX (``udp``, ``tcp``, ``tls``); the caller
    always uses UDP to the PBX. TLS certificates come from the lab CA in ``confdir`` (required for ``tls``: use a
    temporary directory in tests). ``push``: ``"local"`` (in-process) or ``"http"`` (HTTP/2 on loopback).
    ``profile`` is faultlab's profile from the start, so it also meets the device's REGISTER at start (and its
    retransmissions); to fault only a call, switch it on later with ``lab.proxy.activate(profile)``.
    ``seed`` seeds faultlab's random choices (recorded in its ``start`` event). ``network``: ``"loopback"`` or
    ``"memory"`` (see the module docstring; memory installs :mod:`faultlab.net.memnet` for the rest of this run).
    ``new_connection_on_push``: the device's ``Device(new_connection_on_push=...)``: over TCP/TLS a call push
    makes it close its connection and REGISTER on a new one (connect and handshake anew, S14/S15).

    ``external_pbx``: a PBX of one's own instead of the embedded one, ``{transport: (host, port)}`` (real sockets,
    real time): faultlab relays to it, the caller calls through its UDP address, and the push gateway listens on
    ``push_listen`` over HTTP/2, where that PBX must send its RFC 8599 pushes (``lab.pbx`` is then ``None``).
    ``pbx_ca`` verifies its TLS certificate (default: the system's CAs). ``pbx_options``: more keywords for the
    embedded :class:`PBX` (``push_ttl``, ``payload_size``, ``misbehaviour``). One wall clock: :func:`lab_wall_clock`.
    ``media``, ``rtt``: see the module docstring; ``device_host``: :meth:`LabStack.move_device` (S26).
    """
    _check_options(transport, push=push, network=network, confdir=confdir, external_pbx=external_pbx,
                   push_listen=push_listen, rtt=rtt)
    timeline = timeline if timeline is not None else Timeline()
    topic = f"{bundle}.voip"
    async with trio.open_nursery() as nursery:
        gateway = PushGateway(timeline, faults=push_faults, wall_clock=lab_wall_clock(timeline))
        send_push, client = await _start_push(nursery, gateway, topic, push, push_listen if external_pbx else None)
        pushes = gateway.channel(token, topic=topic)
        pbx = None if external_pbx is not None else await _start_pbx(
            nursery, transport, timeline, send_push, hold=pbx_hold, ring_timeout=ring_timeout,
            cancel_push=cancel_push, confdir=confdir, wall_clock=gateway.wall_clock, **(pbx_options or {}))
        ca_file = _lab_ca_file(confdir) if transport == "tls" else None
        if pbx is not None:
            upstream, upstream_ca = Endpoint(transport, HOST, pbx.address(transport)[1]), ca_file
        else:
            upstream, upstream_ca = Endpoint(transport, *external_pbx[transport]), pbx_ca
        proxy: Proxy = await nursery.start(serve_proxy, ProxyConfig(
            listen=[Endpoint(transport, HOST, 0)], upstream=[upstream], profile=profile, seed=seed,
            confdir=confdir, upstream_ca=upstream_ca, trace=timeline.trace, trace_t0=timeline.t0))
        device = Device(proxy=Endpoint(transport, HOST, proxy.bound[transport][1]), user=user, domain=domain,
                        token=token, pushes=pushes, timeline=timeline, config=device_config or DeviceConfig(),
                        bundle=bundle, ca_file=ca_file, on_event=lambda detail: stack._on_device_event(detail),
                        new_connection_on_push=new_connection_on_push, wall_clock=gateway.wall_clock,
                        host=device_host, bind=bool(device_host))
        caller_to = pbx.address("udp") if pbx is not None else external_pbx["udp"]
        caller = Caller("udp", caller_to, caller_user, timeline, domain=domain, timeout=60.0, media=media)
        stack = LabStack(timeline=timeline, gateway=gateway, pbx=pbx, proxy=proxy, device=device, caller=caller,
                         transport=transport, nursery=nursery)
        await nursery.start(device.run)
        await caller.start(nursery)
        try:
            yield stack
        finally:
            nursery.cancel_scope.cancel()
            if client is not None:
                with trio.CancelScope(shield=True):
                    await client.aclose()
