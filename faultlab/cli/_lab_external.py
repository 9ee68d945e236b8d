"""``faultlab lab run --device external`` and ``--pbx HOST:PORT``: their options checked, and the external lab run
case by case."""

from __future__ import annotations

from pathlib import Path

import trio
from rich.console import Console

from faultlab.addr import EndpointError, parse_endpoint
from faultlab.cli._common import failing
from faultlab.faults import parse_duration
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


def _run_external(settings: ExternalSettings, todo: list, trace_dir: Path | None, err: Console) -> list[Case]:
    """Open the external lab once, wait for the device, run every case in order (printing prompts)."""
    from faultlab.ca import CAError

    cases: list[Case] = []

    async def main() -> None:
        async with open_external_lab(settings, say=lambda line: err.print(line, highlight=False)) as lab:
            await lab.wait_ready()
            for scenario, profile in todo:
                case = await lab.run_case(scenario, profile, trace_dir=trace_dir)
                if case is not None:
                    cases.append(case)
                    err.print(f"{scenario.name}: " + ("[green]pass[/green]" if case.passed else "[red]FAIL[/red]"))

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
