"""``faultlab lab run --device external`` and ``--pbx HOST:PORT``: their options checked, and the external lab run
case by case."""

from __future__ import annotations

from pathlib import Path

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from faultlab.addr import EndpointError, parse_endpoint
from faultlab.cli._common import failing
from faultlab.faults import parse_duration
from faultlab.lab.estimate import Estimate, approx, estimate
from faultlab.lab.external import ExternalLabError, ExternalSettings, open_external_lab
from faultlab.lab.runner import Case

_fail = failing("faultlab lab")


def _external_settings(options: dict, *, virtual: bool | None, behaviour: str | None, network: str,
                       transports: list[str]) -> ExternalSettings:
    """The external lab's settings from the options of ``--device external``; refuses what cannot apply."""
    if virtual is True:
        _fail("--device external runs in real time only (a real device lives on the real clock): drop "
              "--virtual-time")
    if behaviour is not None:
        _fail("--behaviour is the reference device's; with --device external the device behaves as it does")
    if network:
        _fail(f"--network {network}: with --device external the lab listens on --listen, --push-listen and "
              "--events-listen")
    if transports:
        _fail("--transport: with --device external each case runs on the transport the device registered over; "
              "choose it with --listen (udp:, tcp: or tls:)")
    listen = []
    for spec in options.get("listen") or ["udp:0.0.0.0:5060"]:
        try:
            listen.append(parse_endpoint(spec))
        except EndpointError as exc:
            _fail(f"--listen: {exc}")
    pause = options.get("pause")
    confdir = None
    if any(ep.transport == "tls" for ep in listen):  # the lab CA the phone trusts (faultlab ca export), not a new one
        from faultlab.ca import default_confdir

        confdir = default_confdir()
    return ExternalSettings(
        listen=listen,
        push_listen=_hostport("--push-listen", options.get("push_listen") or "0.0.0.0:2197"),
        events_listen=_hostport("--events-listen", options.get("events_listen") or "0.0.0.0:8090"),
        user=options.get("user") or "alice",
        domain=options.get("domain") or "lab.test",
        apns_url=options.get("apns_url") or None,
        **_apns_auth(options),
        register_timeout=_duration("--register-timeout", options.get("register_timeout") or "120s"),
        pause=_duration("--pause", pause) if pause else 5.0,
        confdir=confdir,
    )


def _apns_auth(options: dict) -> dict:
    """``--apns-key``, ``--apns-key-id``, ``--apns-team-id`` checked (all three, with ``--apns-url``; a readable EC
    P-256 key, 10-character ids) as ExternalSettings keywords; none given: {}."""
    names = ("apns_key", "apns_key_id", "apns_team_id")
    given = [f"--{n.replace('_', '-')}" for n in names if options.get(n)]
    if not given:
        return {}
    if len(given) < 3:
        _fail(f"--apns-key, --apns-key-id and --apns-team-id go together (APNs token authentication); only "
              f"{', '.join(given)} given")
    if not options.get("apns_url"):
        _fail("--apns-key signs the pushes relayed to APNs: it needs --apns-url (e.g. "
              "https://api.sandbox.push.apple.com)")
    from faultlab.lab.push.auth import ApnsAuthError, ApnsSigner

    try:
        ApnsSigner.from_file(options["apns_key"], options["apns_key_id"], options["apns_team_id"]).token()
    except ApnsAuthError as exc:
        _fail(str(exc))
    return {n: options[n] for n in names}


def _own_pbx(spec: str, push_listen: str | None, tls_port: int | None, ca: Path | None) -> dict:
    """``run_case``'s keywords for ``--pbx HOST:PORT``: UDP and TCP on PORT, TLS on ``--pbx-tls-port``
    (default PORT + 1); the push gateway on ``--push-listen`` (required: that PBX must push there)."""
    host, port = _hostport("--pbx", spec)
    if not push_listen:
        _fail("--pbx HOST:PORT needs --push-listen HOST:PORT: where your PBX sends its RFC 8599 pushes "
              "(faultlab's push gateway; configure the PBX's APNs URL as http://HOST:PORT)")
    if ca is not None and not ca.is_file():
        _fail(f"--pbx-ca {ca}: no such file")
    tls = tls_port if tls_port is not None else port + 1
    return {"pbx": {"udp": (host, port), "tcp": (host, port), "tls": (host, tls)},
            "push_listen": _hostport("--push-listen", push_listen), "pbx_ca": ca}


def _hostport(option: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        _fail(f"{option} {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8090 or [::]:8090")
    return host, int(port)


def _duration(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        _fail(f"{option} {text!r}: expected a duration such as 120s or 2m")
    return 0.0


def _run_external(settings: ExternalSettings, todo: list, trace_dir: Path | None, err: Console, *,
                  quiet: bool = False, hep=None) -> list[Case]:
    """Open the external lab once, wait for the device, print the estimate (:mod:`faultlab.lab.estimate`), run
    every case in order (printing prompts), with a progress bar and the time left on a terminal (not with -q) and
    a line per case."""
    from faultlab.ca import CAError

    cases: list[Case] = []

    async def main() -> None:
        async with open_external_lab(settings, say=lambda line: err.print(line, highlight=False)) as lab:
            if hep is not None:  # live: the device's messages as they come
                hep.attach(lab.timeline.trace, every_kind=True)
            await lab.wait_ready()
            assert lab.transport is not None
            plan = estimate(todo, lab.transport, settings.pause)
            for line in plan.lines():
                err.print(line, highlight=False, soft_wrap=True)
            await _play(lab, plan, trace_dir, err, cases, bar=not quiet and err.is_terminal)

    try:
        trio.run(main)
    except ExternalLabError as exc:
        _fail(str(exc), code=1)
    except CAError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot open the external lab: {exc}")
    except KeyboardInterrupt:
        err.print("interrupted: the cases run so far follow")
    return cases


async def _play(lab, plan: Estimate, trace_dir: Path | None, err: Console, cases: list[Case], *,
                bar: bool) -> None:
    """Run the cases of ``plan`` that run, in order, into ``cases``; a progress bar (``bar``) whose time left follows the estimate,
    ticking through each case up to its estimated share; a line per case with its verdict and the time left."""
    running = [c for c in plan.cases if not c.skipped]  # the estimate said why the others are skipped
    now = {"done": 0.0, "share": 0.0, "began": trio.current_time()}  # estimated seconds of the cases run, ...
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[left]}"),
                  console=err, transient=True, disable=not bar) as progress:
        task = progress.add_task("external", total=max(plan.seconds, 1.0), left=_left(plan.seconds))

        async def tick() -> None:
            while True:
                into = min(trio.current_time() - now["began"], now["share"])  # a case may outlast its estimate
                progress.update(task, completed=now["done"] + into, left=_left(plan.seconds - now["done"] - into))
                await trio.sleep(1.0)

        async with trio.open_nursery() as nursery:
            if bar:
                nursery.start_soon(tick)
            for n, case_plan in enumerate(running, 1):
                scenario = case_plan.scenario
                now.update(share=plan.case_seconds(case_plan), began=trio.current_time())
                progress.update(task, description=f"{scenario.id} ({n}/{len(running)})")
                case = await lab.run_case(scenario, case_plan.profile, trace_dir=trace_dir)
                now.update(done=now["done"] + now["share"], share=0.0)
                left = _left(plan.seconds - now["done"])
                progress.update(task, completed=now["done"], left=left)
                if case is not None:
                    cases.append(case)
                    verdict = "[green]pass[/green]" if case.passed else "[red]FAIL[/red]"
                    err.print(f"{scenario.name}: {verdict} ({n}/{len(running)} cases, {left})", highlight=False,
                              soft_wrap=True)
            nursery.cancel_scope.cancel()


def _left(seconds: float) -> str:
    """The time left, as the estimate says it."""
    return f"about {approx(seconds)} left" if seconds > 0 else "done"
