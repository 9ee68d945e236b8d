"""``faultlab lab run --device external``: the scenario catalogue against a real, instrumented device.

One long-lived, real-time lab on fixed addresses (:func:`open_external_lab`), on one
:class:`~faultlab.lab.timeline.Timeline` and real sockets::

    caller ──(udp, 127.0.0.1)──> embedded PBX <──(127.0.0.1)── faultlab relay <──(--listen)── the device
                                      │                                                          ▲  │
                                      └─ send_push ─> push gateway (--push-listen) ─(stream/APNs)┘  │
                                                       event collector (--events-listen) <── POST /events

The device (an iPhone on the lab Wi-Fi, or ``faultlab device``) registers through faultlab's relay with RFC 8599
Contact parameters (``pn-provider``, ``pn-prid``, ``pn-param``) and posts its CallKit milestones to the event
collector (docs/device-events.md). :meth:`ExternalLab.wait_ready` waits for that registration (printing where to
point the device). Then, per case (:meth:`ExternalLab.run_case`): the scenario's faults are switched on with
``proxy.activate``, the push gateway's faults set (cancel pushes dropped for check 3's second run), the caller
calls the user's AOR and the call script runs (:func:`faultlab.lab.runner.play_call`, the same code as for the
reference device); the case waits for the device's ``ended`` event (or the scenario's ``duration``), releases
every fault, cleans up a call still up, and pauses before the next call. The case's slice of the timeline is
judged by the same checks (:func:`faultlab.lab.runner.judge`).

A real app may post device events with the CallKit ``uuid`` only: the PBX's ``push-sent`` notes carry each call
push's payload (``call-id`` and ``uuid``), so :func:`with_call_ids` gives those events the call's SIP Call-ID
before the checks read them.

The user's steps of a script (``answer_at``, ``decline_at``) cannot be forced on a real phone: the lab prints a
prompt ("tap Answer now") that long after the device reported the call, publishes it for programs (``GET
/prompts`` on the event collector's port, and a ``"kind": "prompt"`` line on the device's push stream:
:mod:`faultlab.lab.prompts`), and judges what the user and the app did. The scenario's ``[device]`` table (the
reference device's deadlines) does not apply to a real device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import AsyncIterator

import trio

from faultlab.faults import Profile
from faultlab.lab.push.auth import ApnsSigner
from faultlab.lab.caller import Caller
from faultlab.lab.collector import serve_collector
from faultlab.lab.pbx import PBX
from faultlab.lab.pbx.logic import Binding
from faultlab.lab.prompts import PromptHub
from faultlab.lab.push import PushFaults, PushGateway, serve_push_gateway
from faultlab.lab.runner import (
    Case,
    Run,
    _lab_ca_dir,
    case_faults,
    judge,
    play_call,
    push_faults,
    write_trace,
)
from faultlab.lab.estimate import skip_reason
from faultlab.lab.scenario import Scenario
from faultlab.lab.timeline import Timeline
from faultlab.addr import Endpoint, format_hostport
from faultlab.proxy import Proxy, ProxyConfig, serve_proxy
from faultlab.trace import Event

__all__ = ["ExternalLab", "ExternalLabError", "ExternalSettings", "open_external_lab", "with_call_ids"]

HOST = "127.0.0.1"  # where the PBX and the caller live (only faultlab's relay faces the device)
DEFAULT_TOPIC = "org.faultlab.device.voip"
CLEANUP = 5.0  # seconds to cancel or hang up a call still up after its case
PROMPT_DEADLINE = 2.0  # an answer/decline prompt's deadline: this long after it is due


class ExternalLabError(Exception):
    """The external lab cannot go on (e.g. no device registered in time); the message says what to do."""


@dataclass
class ExternalSettings:
    """Where the lab listens, and whom it calls. Ports may be 0 (tests): the bound ones are on the lab."""

    listen: Sequence[Endpoint]  # faultlab's relay, where the device sends its SIP
    push_listen: tuple[str, int] = ("0.0.0.0", 2197)  # the APNs-compatible push gateway
    events_listen: tuple[str, int] = ("0.0.0.0", 8090)  # the event collector
    user: str = "alice"  # the AOR's user the caller calls (sip:USER@DOMAIN)
    domain: str = "lab.test"
    caller_user: str = "bob"
    apns_url: str | None = None  # relay mode: pushes for devices not subscribed to the gateway go here
    apns_ca: str | None = None
    apns_key: Path | None = None  # with apns_key_id and apns_team_id: the gateway signs relayed pushes (apns_auth)
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    register_timeout: float = 120.0
    pause: float = 5.0  # seconds between calls, for the device to settle
    seed: int = 0
    confdir: Path | None = None  # the lab CA (TLS listeners)


@dataclass
class ExternalLab:
    """The running external lab (see the module docstring)."""

    settings: ExternalSettings
    timeline: Timeline
    gateway: PushGateway
    pbx: PBX
    proxy: Proxy
    caller: Caller
    push_address: tuple[str, int]
    events_address: tuple[str, int]
    say: Callable[[str], None] = print
    binding: Binding | None = None
    prompts: PromptHub = field(default_factory=PromptHub)  # served as GET /prompts by the event collector
    _uuids: dict[str, str] = field(default_factory=dict)  # CallKit uuid (lower case) -> SIP Call-ID

    def __post_init__(self) -> None:
        self.timeline.trace.add_sink(self._on_emit)

    def _on_emit(self, event: Event) -> None:
        if event.kind == "pbx" and event.detail.get("action") == "push-sent" and event.call_id:
            uuid = (event.detail.get("payload") or {}).get("uuid")
            if isinstance(uuid, str):
                self._uuids[uuid.lower()] = event.call_id

    # -- addresses and instructions -----------------------------------------------------------------

    @property
    def aor(self) -> str:
        return f"sip:{self.settings.user}@{self.settings.domain}"

    @property
    def push_url(self) -> str:
        return f"http://{format_hostport(*self.push_address)}"

    @property
    def events_url(self) -> str:
        return f"http://{format_hostport(*self.events_address)}/events"

    @property
    def transport(self) -> str | None:
        """The transport the device registered over (its cases run on it)."""
        return self.binding.flow.transport if self.binding is not None else None

    def instructions(self) -> list[str]:
        relay = ", ".join(f"{ep.transport}:{format_hostport(*addr)}" for ep, addr in self.proxy.listeners)
        wildcard = any(h in ("0.0.0.0", "::") for h in
                       [a[0] for _, a in self.proxy.listeners] + [self.push_address[0], self.events_address[0]])
        lines = [
            f"waiting up to {self.settings.register_timeout:g} s for the device of {self.aor} to register:",
            f"  SIP     the device's outbound proxy: faultlab's relay {relay}; REGISTER as {self.settings.user} with "
            "RFC 8599 Contact parameters pn-provider=apns;pn-prid=<VoIP token>;pn-param=<TEAMID>.<bundle>.voip",
        ]
        if self.settings.apns_url:
            signed = (f", signed with APNs key {self.settings.apns_key_id}" if self.settings.apns_key is not None
                      else " unsigned (no --apns-key: Apple refuses them)")
            lines.append(f"  pushes  the PBX pushes through {self.push_url}, relayed to "
                         f"{self.settings.apns_url}{signed}")
        else:
            lines.append(f"  pushes  the PBX pushes through {self.push_url}; no --apns-url, so the device must read "
                         f"its pushes from GET {self.push_url}/devices/<token>/pushes")
        lines.append(f"  events  the app POSTs its CallKit events to {self.events_url} (docs/device-events.md)")
        if wildcard:
            lines.append("  (0.0.0.0 / ::: use this machine's address on the lab network)")
        return lines

    # -- waiting --------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = math.inf,
                       start: int = 0) -> Event | None:
        """The first timeline event from index ``start`` on for which ``predicate`` holds; None after ``timeout``."""
        with trio.move_on_after(timeout):
            return await self.timeline.wait_for(predicate, start=start)
        return None

    def _ready_binding(self) -> Binding | None:
        for binding in reversed(self.pbx.bindings(self.settings.user)):
            if binding.token and binding.push.get("pn-provider"):
                if self.settings.apns_url or binding.token.lower() in self.gateway.tokens:
                    return binding
        return None

    async def wait_ready(self, timeout: float | None = None) -> Binding:
        """Wait until the user's device has a push binding (RFC 8599) at the PBX and its pushes can reach it
        (subscribed to the gateway, or ``apns_url``); :class:`ExternalLabError` after ``timeout``."""
        timeout = self.settings.register_timeout if timeout is None else timeout
        binding = self._ready_binding()
        if binding is None:
            for line in self.instructions():
                self.say(line)
            registered_plain = False
            with trio.move_on_after(timeout):
                while (binding := self._ready_binding()) is None:
                    plain = self.pbx.bindings(self.settings.user)
                    if plain and not registered_plain:
                        registered_plain = True
                        if not any(b.token for b in plain):
                            self.say(f"{self.aor} registered without RFC 8599 push parameters (pn-prid): the PBX "
                                     "cannot push to it; register with pn-provider, pn-prid and pn-param")
                        elif not self.settings.apns_url:
                            self.say(f"{self.aor} registered; waiting for it to read its pushes from "
                                     f"{self.push_url}/devices/<token>/pushes (or give --apns-url)")
                    await self.timeline.changed()
            if binding is None:
                raise ExternalLabError(f"no device registered as {self.aor} with RFC 8599 push parameters "
                                       f"within {timeout:g} s" + ("" if self.settings.apns_url else
                                                                  " and read its pushes from the gateway"))
        if self.binding is None or self.binding.token != binding.token or self.binding.flow != binding.flow:
            self.say(f"device registered: {self.aor} over {binding.flow.transport}, token {binding.token[:8]}..., "
                     f"pn-param {binding.push.get('pn-param')}")
        self.binding = binding
        return binding

    def _is_call(self, event: Event, call_id: str) -> bool:
        if event.call_id == call_id:
            return True
        uuid = event.detail.get("uuid")
        return isinstance(uuid, str) and self._uuids.get(uuid.lower()) == call_id

    async def wait_ended(self, call_id: str, start: int = 0) -> Event | None:
        """The device's ``ended`` event for ``call_id`` (by Call-ID, or by the CallKit uuid of its push)."""
        return await self.wait_for(lambda e: e.kind == "device" and e.detail.get("event") == "ended"
                                   and self._is_call(e, call_id), start=start)

    # -- cases ----------------------------------------------------------------------------------------

    async def run_case(self, scenario: Scenario, profile: Profile | None = None, *,
                       trace_dir: Path | None = None) -> Case | None:
        """Every run of one case on the device's transport (two runs when check 3 applies), judged; None when
        the scenario does not apply to that transport."""
        if self.binding is None:
            await self.wait_ready()
        transport = self.transport
        assert transport is not None
        why = skip_reason(scenario, transport)
        if why is not None:
            self.say(f"{scenario.name}: {why}")
            return None
        modes = ["delivered", "dropped"] if scenario.cancel_push_check else ["delivered"]
        runs = []
        for mode in modes:
            run = Run(scenario, profile, transport, self.settings.seed, None, mode, False, "external")
            await self.play(run)
            runs.append(run)
            if trace_dir is not None:
                run.trace_path = str(write_trace(run, trace_dir))
        return Case(scenario, profile, transport, runs, judge(scenario, runs))

    async def play(self, run: Run) -> Run:
        """One call of ``run``'s scenario to the device; fills in the run's call id, events and times."""
        scenario = run.scenario
        begun = time.perf_counter()
        first = len(self.timeline.events)
        start_t = self.timeline.now()
        handle = None
        try:
            try:
                await self.wait_ready(timeout=self.settings.register_timeout)
            except ExternalLabError as exc:
                run.error = str(exc)
                return run
            faults = case_faults(scenario, run.profile)
            self.gateway.faults = push_faults(scenario, run.cancel_pushes)
            self.pbx.logic.hold, self.pbx.logic.cancel_push = scenario.pbx_hold, scenario.pbx_cancel_push
            self.pbx.push_ttl = scenario.pbx_apns_expiration  # S23: a push APNs may store
            if faults is not None:
                self.proxy.activate(faults)
            self.say(f"{scenario.name}: calling {self.aor}" + (" (cancel pushes dropped)"
                     if run.cancel_pushes == "dropped" and scenario.cancel_push_check else "")
                     + f"; {_user_script(scenario)}")
            handle = await self.caller.call(self.aor)
            run.call_id = handle.call_id
            call_id = handle.call_id
            await play_call(scenario, handle, pbx=self.pbx, wait_ended=lambda: self.wait_ended(call_id, first),
                            user=lambda start: self._prompt(scenario, call_id, first))
        except Exception as exc:  # a broken run is a failed run with its reason, the lab goes on
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            run.events = with_call_ids(list(self.timeline.events)[first:], self._uuids)
            run.duration = self.timeline.now() - start_t
            self.proxy.activate(None)
            self.gateway.faults = PushFaults()
            if handle is not None:
                with trio.CancelScope(shield=True):
                    await self._clean_up(handle)
            await trio.sleep(self.settings.pause)  # the device settles before the next call
            run.wall = time.perf_counter() - begun
        return run

    async def _prompt(self, scenario: Scenario, call_id: str, first: int) -> None:
        """Tell the person at the device when to tap Answer or Decline: ``answer_at`` / ``decline_at`` after
        the device reported the call (its ``reported`` event). The console line (``say``), and a machine-readable
        prompt (:mod:`faultlab.lab.prompts`) on ``GET /prompts`` of the event collector and on the device's push
        stream, with the call's uuid (from its push) and Call-ID."""
        step = ("Answer", scenario.answer_at) if scenario.answer_at is not None else \
            ("Decline", scenario.decline_at) if scenario.decline_at is not None else None
        if step is None:
            return
        what, after = step
        reported = await self.wait_for(lambda e: e.kind == "device" and e.detail.get("event") == "reported"
                                       and self._is_call(e, call_id), start=first)
        assert reported is not None
        await trio.sleep_until(self.timeline.t0 + reported.t + after)
        text = f"{scenario.id}: tap {what} now on the device"
        self.say(f">>> {text}")
        at = self.prompts.wall_clock()
        uuid = next((u for u, c in self._uuids.items() if c == call_id), None)
        prompt = self.prompts.publish(what.lower(), text, at=at, deadline=at + PROMPT_DEADLINE,
                                      scenario=scenario.id, transport=self.transport, uuid=uuid, call_id=call_id)
        if self.binding is not None and self.binding.token:
            self.gateway.send_prompt(self.binding.token, prompt)

    async def _clean_up(self, handle) -> None:
        """Cancel a call still ringing, hang up one still up, so that the next case starts clean."""
        with trio.move_on_after(CLEANUP):
            try:
                if handle.final is None:
                    await handle.cancel()
                elif 200 <= handle.final.status < 300 and handle.ended is None:
                    await handle.hang_up()
            except Exception:  # the call went away by itself meanwhile
                pass


def _user_script(scenario: Scenario) -> str:
    if scenario.answer_at is not None:
        return f"the user taps Answer when prompted ({scenario.answer_at:g} s after the call shows)"
    if scenario.decline_at is not None:
        return f"the user taps Decline when prompted ({scenario.decline_at:g} s after the call shows)"
    return "do not touch the phone"


def with_call_ids(events: Sequence[Event], uuids: dict[str, str]) -> list[Event]:
    """``events`` with each device event that names its call by CallKit uuid only (or by a Call-ID the lab does
    not know) given the SIP Call-ID of that uuid's push, so that the checks find it."""
    known = set(uuids.values())
    out = []
    for event in events:
        if event.kind == "device" and event.call_id not in known:
            uuid = event.detail.get("uuid")
            call_id = uuids.get(uuid.lower()) if isinstance(uuid, str) else None
            if call_id is not None:
                event = replace(event, call_id=call_id)
        out.append(event)
    return out


@asynccontextmanager
async def open_external_lab(settings: ExternalSettings, *,
                            say: Callable[[str], None] = print) -> AsyncIterator[ExternalLab]:
    """Start the push gateway, the event collector, the embedded PBX, faultlab's relay and the caller on one
    timeline (real clock, real sockets); yield the :class:`ExternalLab`; stop everything on exit."""
    if not settings.listen:
        raise ValueError("the external lab needs at least one --listen address for faultlab's relay")
    transports = sorted({ep.transport for ep in settings.listen})
    confdir = settings.confdir
    if "tls" in transports and confdir is None:
        confdir = _lab_ca_dir()
    timeline = Timeline()
    async with trio.open_nursery() as nursery:
        signer = None
        if settings.apns_key is not None:
            signer = ApnsSigner.from_file(settings.apns_key, settings.apns_key_id or "", settings.apns_team_id or "")
        gateway = PushGateway(timeline, relay_url=settings.apns_url, relay_ca=settings.apns_ca, relay_auth=signer)
        push_address = await nursery.start(serve_push_gateway, gateway, *settings.push_listen)
        prompts = PromptHub()
        events_address = await nursery.start(partial(serve_collector, prompts=prompts), timeline,
                                             *settings.events_listen)

        pbx: PBX

        async def send_push(token: str, payload: dict) -> None:
            # the apns-topic from the binding's pn-param (<TEAMID>.<topic>), as a PBX pushing to APNs does
            topic = DEFAULT_TOPIC
            for binding in pbx.bindings(settings.user):
                param = binding.push.get("pn-param")
                if binding.token and binding.token.lower() == token.lower() and param and "." in param:
                    topic = param.split(".", 1)[1]
            await gateway.local_sender(topic=topic)(token, payload)

        listen = [f"{t}:{HOST}:0" for t in transports] + ([] if "udp" in transports else [f"udp:{HOST}:0"])
        pbx = PBX(listen, timeline=timeline, send_push=send_push, confdir=confdir)
        await nursery.start(pbx.run)
        ca_file = None
        if "tls" in transports:
            from faultlab.ca import LabCA

            ca_file = LabCA.load_or_init(confdir).cert_path
        upstream = [Endpoint(t, HOST, pbx.address(t)[1]) for t in transports]
        proxy: Proxy = await nursery.start(serve_proxy, ProxyConfig(
            listen=list(settings.listen), upstream=upstream, seed=settings.seed, confdir=confdir,
            upstream_ca=ca_file, trace=timeline.trace, trace_t0=timeline.t0))
        caller = Caller("udp", pbx.address("udp"), settings.caller_user, timeline, domain=settings.domain,
                        timeout=60.0)
        await caller.start(nursery)
        lab = ExternalLab(settings, timeline, gateway, pbx, proxy, caller, push_address, events_address, say=say,
                          prompts=prompts)
        try:
            yield lab
        finally:
            nursery.cancel_scope.cancel()
