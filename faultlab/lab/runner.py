"""Lab runs: a scenario x a profile, in a lab of its own, judged by the checks.

One **run** (:func:`run_once`) starts a whole lab (:func:`faultlab.lab.stack.open_lab_stack`: push gateway,
embedded PBX, faultlab's relay, the reference device, the caller), lets the device register at start, switches on
the scenario's faults merged with the matrix profile, plays the scenario's call script, and stops when the device
has ended the call and ``SETTLE`` seconds more have passed (to see a second end) or at the scenario's ``duration``.
The run's timeline then goes through the checks (:mod:`faultlab.lab.checks`).

Each run is its own ``trio.run``:

* **virtual time** (default): the in-memory network (:mod:`faultlab.net.memnet`) under
  ``trio.testing.MockClock(autojump_threshold=0)``: no sockets, and a 30-second call takes milliseconds;
* **real time**: real sockets on 127.0.0.1 and the real clock.

Both give the same verdicts for the same seed (tests/lab/test_runner.py compares them).

A **case** (:func:`run_case`) is a scenario x profile x transport: one run, or for scenarios with check 3 two runs
(cancel pushes delivered and dropped). :func:`run_matrix` runs every case of scenarios x profiles x transports:
by default every transport each scenario applies to (:func:`transports_for`).
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from faultlab.faults import Profile
from faultlab.lab.caller import CallerTimeout, CallHandle
from faultlab.lab.checks import (
    CheckResult,
    anchors,
    check_cancel_push,
    check_early_answer,
    check_end,
    check_invariants,
)
from faultlab.lab.deadlines import device_settings
from faultlab.lab.device.logic import DeviceConfig
from faultlab.lab.duties import check_duties
from faultlab.lab.pbx import PBX
from faultlab.lab.push import MAX_PAYLOAD, PushFaults
from faultlab.lab.pushside import check_push_side
from faultlab.lab.scenario import Scenario, merge_profiles
from faultlab.lab.stack import DEVICE_HOSTS, open_lab_stack
from faultlab.lab.watchdog import DEFAULT_LIMIT, Watchdog
from faultlab.trace import Event, JsonlWriter

__all__ = ["Case", "Run", "case_faults", "judge", "play_call", "push_faults", "run_case", "run_matrix",
           "run_once", "SETTLE"]

IDLE = 1.0  # seconds between the device's REGISTER at start and the call
UNREGISTER_TIMEOUT = 2.0  # with a PBX of one's own: how long the device's REGISTER Expires: 0 may take
SETTLE = 2.0  # seconds after the device's end during which a second end (or a late message) is still seen


@dataclass
class Run:
    """One run's outcome: its timeline and the call it made."""

    scenario: Scenario
    profile: Profile | None
    transport: str
    seed: int
    behaviour: str | None
    cancel_pushes: str  # "delivered" | "dropped"
    virtual: bool
    network: str = ""  # "memory" | "loopback"; default: memory in virtual time, loopback in real time
    call_id: str | None = None
    events: list[Event] = field(default_factory=list)
    error: str | None = None  # the lab could not run the scenario (e.g. the device did not register at start)
    wall: float = 0.0  # wall-clock seconds the run took
    duration: float = 0.0  # lab seconds the run covered
    trace_path: str | None = None  # where its trace JSONL was written, if it was
    pbx: dict[str, tuple[str, int]] | None = None  # a PBX of one's own (real time): {transport: (host, port)}
    push_listen: tuple[str, int] | None = None  # where the push gateway listens for that PBX's pushes
    pbx_ca: Path | None = None  # verifies that PBX's TLS certificate (default: the system's CAs)
    pbx_behaviour: str | None = None  # a known-bad embedded PBX (faultlab.lab.pbx.model.MISBEHAVIOURS)
    watchdog: int = DEFAULT_LIMIT  # virtual time: scheduler rounds at one instant before the run fails; 0: off
    evidence: list[str] = field(default_factory=list)  # with ``error``: what the lab saw (e.g. the last events)


@dataclass
class Case:
    """A scenario x profile x transport: its runs and the checks' results."""

    scenario: Scenario
    profile: Profile | None
    transport: str
    runs: list[Run]
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def profile_name(self) -> str:
        return self.profile.name if self.profile is not None else "none"

    def times(self) -> dict[str, float]:
        """Key times of the first run, relative to the push: register-ok, invite, end..."""
        run = self.runs[0]
        if run.call_id is None:
            return {}
        found = anchors(run.events, run.call_id)
        if "push" not in found:
            return {}
        t0 = found["push"].t
        return {name: found[name].t - t0 for name in ("register-ok", "invite", "ok", "end") if name in found}


# ---------------------------------------------------------------------------------------------- one run


def device_config(scenario: Scenario, behaviour: str | None) -> DeviceConfig:
    """The reference device for ``scenario``: the app's declared deadlines, then the scenario's ``[device]``."""
    settings = {**device_settings(scenario.app_deadlines), **scenario.device}
    return DeviceConfig(answer_after=scenario.answer_at, decline_after=scenario.decline_at, behaviour=behaviour,
                        **settings)


def case_faults(scenario: Scenario, profile: Profile | None) -> Profile | None:
    """faultlab's profile for a case: the scenario's faults merged with the matrix profile (the scenario's first)."""
    faults = scenario.faults
    if profile is not None:
        faults = profile if faults is None else merge_profiles(faults, profile)
    return faults


def push_faults(scenario: Scenario, cancel_pushes: str, *, own_pbx: bool = False) -> PushFaults:
    """The push gateway's faults for one run: the scenario's, with cancel pushes dropped for check 3's second run.
    A PBX of one's own (``own_pbx``) sends its own payload: where the scenario wants it oversize
    (``pbx.payload_size`` over APNs's 5120 bytes), the gateway answers 413 PayloadTooLarge as if it were."""
    refuse = scenario.push_refuse
    if own_pbx and refuse is None and (scenario.pbx_payload_size or 0) > MAX_PAYLOAD:
        refuse = (413, "PayloadTooLarge")
    return PushFaults(drop_cancel=cancel_pushes == "dropped" or scenario.push_drop_cancel,
                      delay=scenario.push_delay, duplicate=scenario.push_duplicate, offline=scenario.push_offline,
                      refuse=refuse)


def pbx_options(scenario: Scenario, misbehaviour: str | None = None) -> dict:
    """The embedded PBX's push settings from the scenario (``[pbx]``), and a known-bad PBX's misbehaviour."""
    return {"push_ttl": scenario.pbx_apns_expiration, "payload_size": scenario.pbx_payload_size,
            "misbehaviour": misbehaviour}


async def play_call(scenario: Scenario, handle: CallHandle, *, pbx: PBX | None,
                    wait_ended: Callable[[], Awaitable[object]],
                    user: Callable[[float], Awaitable[None]] | None = None,
                    move: Callable[[], Awaitable[None]] | None = None) -> None:
    """Play the scenario's call script on a placed call (``handle``, just sent): the caller's CANCEL, the second
    device's answer/decline elsewhere, the caller's hang-up. Return ``SETTLE`` seconds after ``wait_ended()``
    returns (the device ended the call) and the caller's INVITE has its final response, or at the scenario's
    ``duration`` after the INVITE.

    ``user(start)``, if given, runs alongside (the external device's prompts: the reference device scripts its
    user itself); ``start`` is the trio time of the INVITE. ``move()``, if given, changes the device's address at
    the scenario's ``move_at``."""
    start = trio.current_time()
    async with trio.open_nursery() as script:
        if scenario.cancel_at is not None:
            async def cancel() -> None:
                await trio.sleep_until(start + scenario.cancel_at)
                if handle.final is None:
                    await handle.cancel(reason=scenario.cancel_reason)
            script.start_soon(cancel)
        if scenario.elsewhere is not None:
            async def elsewhere() -> None:
                await handle.wait_for(180, timeout=math.inf)
                await trio.sleep(scenario.elsewhere_at)
                if handle.final is None:
                    if pbx is None:
                        raise ValueError(f"{scenario.id}: answered/declined elsewhere needs the embedded PBX")
                    await pbx.cancel_elsewhere(handle.call_id, scenario.elsewhere)
            script.start_soon(elsewhere)
        if scenario.hang_up_after is not None:
            async def hang_up() -> None:
                final = await handle.wait_final(timeout=math.inf)
                if 200 <= final.status < 300:
                    await trio.sleep(scenario.hang_up_after)
                    try:
                        await handle.hang_up()
                    except CallerTimeout:  # the BYE was lost (S21): the caller's call is over all the same
                        pass
            script.start_soon(hang_up)
        if user is not None:
            script.start_soon(user, start)
        if move is not None and scenario.move_at is not None:
            async def moving() -> None:
                await trio.sleep_until(start + scenario.move_at)
                await move()
            script.start_soon(moving)
        with trio.move_on_at(start + scenario.duration):
            await wait_ended()
            await handle.wait_final(timeout=math.inf)  # and the caller's INVITE is over (e.g. a late one rejected)
            await trio.sleep(SETTLE)
        script.cancel_scope.cancel()


async def play(run: Run, *, network: str, confdir: Path | None, watchdog: Watchdog | None = None) -> None:
    """Run ``run``'s scenario in a new lab in the current ``trio.run``; fill in its events and call id."""
    scenario = run.scenario
    faults = case_faults(scenario, run.profile)
    start_wall = time.perf_counter()
    lab_kwargs: dict = {"new_connection_on_push": True} if scenario.new_connection else {}
    if scenario.move_at is not None:
        lab_kwargs["device_host"] = DEVICE_HOSTS[0]
    if run.pbx is not None:
        lab_kwargs.update(external_pbx=run.pbx, push_listen=run.push_listen, pbx_ca=run.pbx_ca)
    else:
        lab_kwargs.update(pbx_options=pbx_options(scenario, run.pbx_behaviour))
    async with open_lab_stack(run.transport, device_config=device_config(scenario, run.behaviour),
                              push_faults=push_faults(scenario, run.cancel_pushes, own_pbx=run.pbx is not None),
                              seed=run.seed,
                              pbx_hold=scenario.pbx_hold, cancel_push=scenario.pbx_cancel_push, confdir=confdir,
                              network=network, media=scenario.media, rtt=scenario.network_rtt if network == "memory" else 0.0,
                              **lab_kwargs) as lab:
        if watchdog is not None:
            watchdog.t0 = lab.timeline.t0
        try:
            if lab.device.initial_register != 200:
                run.error = f"the device did not register at start: {lab.device.initial_register}"
                return
            await trio.sleep(IDLE)  # the app idles, registered, before the call
            if faults is not None:
                lab.proxy.activate(faults)
            handle = await lab.caller.call(lab.device_aor)
            run.call_id = handle.call_id
            await play_call(scenario, handle, pbx=lab.pbx,
                            wait_ended=lambda: lab.wait_device_ended(handle.call_id, math.inf),
                            move=lambda: lab.move_device(DEVICE_HOSTS[1]))
            if scenario.call_again:  # once more: what the PBX does for the next INVITE (push-side checks)
                again = await lab.caller.call(lab.device_aor)
                with trio.move_on_after(scenario.pbx_hold + SETTLE):
                    await again.wait_final(timeout=math.inf)
                await trio.sleep(SETTLE)
            if run.pbx is not None:  # that PBX outlives the lab: leave no binding behind for the next run
                with trio.move_on_after(UNREGISTER_TIMEOUT):
                    await lab.device.unregister()
        finally:
            run.duration = lab.timeline.now()
            run.events = list(lab.timeline.events)
            run.wall = time.perf_counter() - start_wall


LAST_EVENTS = 8  # the timeline events a stuck run's evidence shows


def run_once(run: Run, *, confdir: Path | None = None) -> Run:
    """Play ``run`` in a ``trio.run`` of its own: virtual time (on memory by default) or real time (loopback).

    In virtual time :mod:`faultlab.lab.watchdog` watches the clock: a run whose virtual time stops advancing for
    ``run.watchdog`` scheduler rounds is cancelled and fails with the instant, the busy tasks and the last events."""
    if not run.network:
        run.network = "memory" if run.virtual else "loopback"
    async def main() -> None:
        with trio.CancelScope() as scope:
            watchdog = Watchdog(run.watchdog, on_stall=scope.cancel) if run.virtual and run.watchdog else None
            if watchdog is not None:
                trio.lowlevel.add_instrument(watchdog)
            try:
                await play(run, network=run.network, confdir=confdir, watchdog=watchdog)
            except Exception as exc:  # a lab that broke is a failed run with its reason, not a crashed matrix
                run.error = f"{type(exc).__name__}: {exc}"
            finally:
                if watchdog is not None and watchdog.stalled_at is None:
                    trio.lowlevel.remove_instrument(watchdog)
        if watchdog is not None and watchdog.stalled_at is not None:
            run.error = watchdog.describe()
            run.evidence = ["last events:"] + [_line(e) for e in run.events[-LAST_EVENTS:]]

    clock = trio.testing.MockClock(autojump_threshold=0) if run.virtual else None
    begun = time.perf_counter()
    trio.run(main, clock=clock)
    run.wall = time.perf_counter() - begun
    return run


def _line(e: Event) -> str:
    what = e.summary or " ".join(str(v) for v in (e.detail.get("event"), e.detail.get("reason")) if v) or ""
    return f"t={e.t:.3f} {e.source} {e.kind} {what}".rstrip()


# ---------------------------------------------------------------------------------------------- cases


def judge(scenario: Scenario, runs: Sequence[Run]) -> list[CheckResult]:
    """The checks of a case: checks 1 and 2, the invariants and the push-side check on the first run, check 3 over
    both runs."""
    first = runs[0]
    if first.error is not None or first.call_id is None:
        return [CheckResult("ends-right", False, f"the run failed: {first.error or 'no call was placed'}",
                            evidence=list(first.evidence))]
    results = [check_end(first.events, first.call_id, scenario)]
    if scenario.early_answer:
        results.append(check_early_answer(first.events, first.call_id, scenario))
    if len(runs) > 1:
        other = runs[1]
        if other.error is not None or other.call_id is None:
            results.append(CheckResult("cancel-push", False, f"the run without cancel pushes failed: {other.error}",
                                       evidence=list(other.evidence)))
        else:
            results.append(check_cancel_push((first.events, first.call_id), (other.events, other.call_id), scenario))
    elif scenario.cancel_push_required:  # check 3 must run, but there was no cancel push to drop: not exercised
        results.append(_no_cancel_push(first))
    results.append(check_invariants(first.events, first.call_id, scenario))
    results.append(check_duties(first.events, first.call_id, scenario, known_device=first.network != "external"))
    results.append(check_push_side(first.events, first.call_id, scenario))  # the PBX's side (faultlab.lab.pushside)
    return results


def _no_cancel_push(run: Run) -> CheckResult:
    """Check 3 failed as not exercised: the run had no cancel push to drop; the evidence says why."""
    found = anchors(run.events, run.call_id or "")
    evidence = [f"t={found[n].t:.3f} {n}" for n in ("push", "cancel", "end") if n in found]
    if "cancel" not in found:
        why = ("the caller never cancelled" + (f" (the device had ended the call at t={found['end'].t:.3f}, before "
               "the scripted CANCEL)" if "end" in found else ""))
    else:
        why = f"the caller cancelled at t={found['cancel'].t:.3f} but the PBX sent no cancel push"
    return CheckResult("cancel-push", False, f"check 3 must run in this scenario but {why}: there was no cancel "
                       "push to drop, so the check was not exercised (for a PBX that never sends one: --set "
                       "expect.cancel_push=false)", evidence + ["cancel pushes: none sent"])


def run_case(scenario: Scenario, profile: Profile | None = None, *, transport: str | None = None, seed: int = 0,
             behaviour: str | None = None, virtual: bool = True, network: str = "", confdir: Path | None = None,
             trace_dir: Path | None = None, pbx: dict[str, tuple[str, int]] | None = None,
             push_listen: tuple[str, int] | None = None, pbx_ca: Path | None = None,
             watchdog: int = DEFAULT_LIMIT, pbx_behaviour: str | None = None) -> Case:
    """Every run of one case (two when check 3 applies), judged. ``transport``: one the scenario applies to
    (default: its first). ``watchdog``: virtual time's limit of scheduler rounds at one instant (0: off). ``pbx``/``push_listen``/``pbx_ca``: a PBX of one's own instead of the embedded one
    (:func:`faultlab.lab.stack.open_lab_stack`'s ``external_pbx``), real time only. ``pbx_behaviour``: a known-bad
    embedded PBX (:data:`faultlab.lab.pbx.model.MISBEHAVIOURS`)."""
    transport = transport or scenario.transports[0]
    if transport not in scenario.transports:
        raise ValueError(f"{scenario.id} applies to {', '.join(scenario.transports)}, not {transport}")
    if pbx is not None:
        if virtual:
            raise ValueError("a PBX of one's own runs in real time (virtual=False)")
        if needs_embedded_pbx(scenario):
            raise ValueError(f"{scenario.id}: {needs_embedded_pbx(scenario)}")
    if transport == "tls" and confdir is None:
        confdir = _lab_ca_dir()
    runs = []
    for mode in ("delivered", "dropped"):
        if mode == "dropped" and not (scenario.cancel_push_check and sent_cancel_push(runs[0])):
            break  # no check 3, or no cancel push to drop (judge fails check 3 as not exercised if required)
        run = Run(scenario, profile, transport, seed, behaviour, mode, virtual, network, pbx=pbx,
                  push_listen=push_listen, pbx_ca=pbx_ca, watchdog=watchdog, pbx_behaviour=pbx_behaviour)
        run_once(run, confdir=confdir)
        runs.append(run)
        if trace_dir is not None:
            run.trace_path = str(write_trace(run, trace_dir))
    return Case(scenario, profile, transport, runs, judge(scenario, runs))


def sent_cancel_push(run: Run) -> bool:
    """The run's call had a cancel push (whatever the gateway did with it)."""
    return any(e.source == "push" and e.kind == "push" and e.call_id == run.call_id
               and e.detail.get("push_kind") == "cancel" for e in run.events)


def needs_embedded_pbx(scenario: Scenario) -> str | None:
    """Why ``scenario`` cannot run against a PBX of one's own (``None``: it can)."""
    if scenario.elsewhere is not None:
        return "a second device answering or declining is scripted through the embedded PBX"
    if scenario.pbx_apns_expiration:
        return "the PBX's apns-expiration is the scenario's (pbx.apns_expiration): set on the embedded PBX only"
    return None


def trace_name(run: Run) -> str:
    profile = run.profile.name if run.profile is not None else "none"
    extra = "-no-cancel-push" if run.cancel_pushes == "dropped" and run.scenario.cancel_push_check else ""
    return f"{run.scenario.id}-{run.scenario.slug}--{profile}--{run.transport}{extra}.jsonl"


def write_trace(run: Run, trace_dir: Path) -> Path:
    trace_dir.mkdir(parents=True, exist_ok=True)
    path = trace_dir / trace_name(run)
    writer = JsonlWriter(path)
    try:
        for event in run.events:
            writer(event)
    finally:
        writer.close()
    return path


_CA_DIR: tempfile.TemporaryDirectory | None = None


_CA_LOCK = threading.Lock()


def _lab_ca_dir() -> Path:
    """A lab CA for TLS runs, made once per process in a temporary directory (runs in several threads at once
    share it: it is made before any of them uses it)."""
    global _CA_DIR
    with _CA_LOCK:
        if _CA_DIR is None:
            from faultlab.ca import LabCA

            directory = tempfile.TemporaryDirectory(prefix="faultlab-lab-ca-")
            LabCA.load_or_init(Path(directory.name))
            _CA_DIR = directory
    return Path(_CA_DIR.name)


def transports_for(scenario: Scenario, wanted: Sequence[str] | None) -> list[str]:
    """The transports a scenario's cases run on: the wanted ones it applies to; by default every one it applies
    to (``scenario.transports``, in its order)."""
    if not wanted:
        return list(scenario.transports)
    return [t for t in wanted if t in scenario.transports]


def run_matrix(scenarios: Sequence[Scenario], profiles: Sequence[Profile | None] = (None,), *,
               transports: Sequence[str] | None = None, seed: int = 0, behaviour: str | None = None,
               virtual: bool = True, network: str = "", trace_dir: Path | None = None,
               on_case: Callable[[Case], None] | None = None, watchdog: int = DEFAULT_LIMIT) -> list[Case]:
    """Every case of ``scenarios`` x ``profiles`` x transports, in order; ``on_case`` after each."""
    cases = []
    for scenario in scenarios:
        for profile in profiles or (None,):
            for transport in transports_for(scenario, transports):
                case = run_case(scenario, profile, transport=transport, seed=seed, behaviour=behaviour,
                                virtual=virtual, network=network, trace_dir=trace_dir, watchdog=watchdog)
                cases.append(case)
                if on_case is not None:
                    on_case(case)
    return cases
