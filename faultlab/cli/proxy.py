"""``faultlab proxy``: the relay in front of a PBX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from faultlab.cli._common import ConfdirOption, failing
from faultlab.cli._common import hostport as _hp
from faultlab.cli._common import single as _single
from faultlab.cli._hep import HepIdOption, HepOption, HepPasswordOption, hep_target

_fail = failing("faultlab")


MaxFlowsOption = Annotated[Optional[int], typer.Option(
    help="UDP flows (devices) open at once; a new device then closes the flow idle longest. Default: half of the "
         "descriptor limit after 64 reserved, one per flow (two with --transparent); the limit is raised to the "
         "hard one at start.", min=1)]
MaxConnectionsOption = Annotated[Optional[int], typer.Option(
    help="TCP/TLS device connections open at once; more are closed as soon as accepted. Default: the other half "
         "of the descriptor limit after 64 reserved, two per connection (device and PBX).", min=1)]
MaxMessageSizeOption = Annotated[int, typer.Option(
    help="Largest SIP message in octets. Over TCP/TLS a larger message (or a head that never ends) closes the "
         "connection; over UDP a larger request is answered 513 Message Too Large and a larger response dropped "
         "(a UDP datagram holds at most 65,507 octets).", min=1300, max=16 * 1024 * 1024)]
StreamIdleTimeoutOption = Annotated[float, typer.Option(
    help="TCP/TLS: seconds without a byte either way (CRLF keep-alives count) after which a connection is "
         "closed; a connection that carried a registration stays open until it expires.", min=1)]
MessageTimeoutOption = Annotated[float, typer.Option(
    help="TCP/TLS: seconds a message may take to arrive whole once it has begun (64*T1).", min=0.1)]
DrainOption = Annotated[float, typer.Option(
    help="At SIGINT/SIGTERM: seconds what is in flight may take to be forwarded and answered before every "
         "connection is closed.", min=0)]


TransparentOption = Annotated[bool, typer.Option(
    "--transparent",
    help="Transparent mode (Linux, root, on the lab gateway, with the interception table of "
         "faultlab.labnet.intercept): relay each intercepted flow to the address the device sent it to, adding "
         "no headers.")]
SpoofSourceOption = Annotated[bool, typer.Option(
    "--spoof-source",
    help="With --transparent: connect to the PBX from the device's own address, so the PBX sees the "
         "device (the interception table must mark the PBX's answers: spoof_source).")]


def proxy(
    listen: Annotated[list[str], typer.Option(
        "--listen", "-l", metavar="TRANSPORT:HOST:PORT",
        help="Address devices send SIP to: udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT "
             "(IPv6 in brackets: udp:[::1]:5060). Repeat for several.")],
    upstream: Annotated[Optional[list[str]], typer.Option(
        "--upstream", "-u", metavar="TRANSPORT:HOST:PORT",
        help="The PBX, one per transport: each listener forwards to the upstream of its own "
             "transport. HOST may be a name (resolved at start; the TLS server name). "
             "Required, except with --transparent.")] = None,
    transparent: TransparentOption = False,
    spoof_source: SpoofSourceOption = False,
    no_record_route: Annotated[bool, typer.Option(
        "--no-record-route",
        help="Do not Record-Route dialogs through faultlab (for a PBX that advertises faultlab's address itself).")] = False,
    tls_name: Annotated[Optional[str], typer.Option(
        help="Name put on the certificate shown to TLS devices, besides the SNI name the device sends and "
             "the address it connected to. With --transparent it is also the name the PBX's certificate is "
             "verified against, unless --upstream-tls-name is given: needed when that certificate names a "
             "host while devices dial the PBX's IP (else: 'IP address mismatch').")] = None,
    upstream_tls_name: Annotated[Optional[str], typer.Option(
        help="Name the PBX's TLS certificate is verified against (and sent as SNI), e.g. pbx.example.com when "
             "the PBX is reached by IP. Default: the --upstream host; with --transparent, --tls-name, else "
             "the PBX's address.")] = None,
    upstream_ca: Annotated[Optional[Path], typer.Option(
        help="CA file (PEM) to verify the upstream's TLS certificate instead of the system CAs.",
        exists=True, dir_okay=False, readable=True)] = None,
    upstream_insecure: Annotated[bool, typer.Option(
        help="Do not verify the upstream's TLS certificate (lab use only).")] = False,
    trace: Annotated[Optional[Path], typer.Option(
        help="Write every event (each message received and sent, with its bytes) to this JSONL file.",
        dir_okay=False)] = None,
    udp_idle_timeout: Annotated[float, typer.Option(
        help="Seconds without traffic after which a device's UDP flow is closed.", min=1)] = 600.0,
    stream_idle_timeout: StreamIdleTimeoutOption = 3600.0,
    message_timeout: MessageTimeoutOption = 32.0,
    drain: DrainOption = 5.0,
    max_flows: MaxFlowsOption = None,
    max_connections: MaxConnectionsOption = None,
    max_message_size: MaxMessageSizeOption = 65536,
    profile: Annotated[Optional[str], typer.Option(
        "--profile", "-p", metavar="NAME|FILE",
        help="Fault profile to apply from the start: a name from `faultlab profiles list` or a TOML file.")] = None,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the run's random choices (loss, jitter, probability). Default: drawn and printed.",
        min=0)] = None,
    api: Annotated[Optional[str], typer.Option(
        metavar="HOST:PORT",
        help="Serve the control API (switch profiles, add rules, release holds, follow the timeline) here, "
             "e.g. 127.0.0.1:5099. Any address but loopback needs --api-token.")] = None,
    api_token: Annotated[Optional[str], typer.Option(
        envvar="FAULTLAB_API_TOKEN", help="Bearer token the control API requires.")] = None,
    confdir: ConfdirOption = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Nothing on the console: no line per message or fault.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Console: also each message faultlab receives, and under every message its "
                                "first line as on the wire.")] = False,
    hep: HepOption = None,
    hep_id: HepIdOption = 1,
    hep_password: HepPasswordOption = None,
) -> None:
    """Relay SIP between devices and a PBX, applying a fault profile and recording every message.

    Example: faultlab proxy --listen udp:0.0.0.0:5060 --upstream udp:pbx.example.test:5060
    """
    config = _config(dict(
        profile=profile, seed=seed, api=api, api_token=api_token, listen=listen, upstream=upstream or [],
        transparent=transparent, spoof_source=spoof_source, record_route=not no_record_route, tls_name=tls_name,
        upstream_tls_name=upstream_tls_name, upstream_ca=upstream_ca, upstream_insecure=upstream_insecure,
        confdir=confdir, trace_path=trace, quiet=quiet, verbose=verbose, udp_idle_timeout=udp_idle_timeout,
        stream_idle_timeout=stream_idle_timeout, message_timeout=message_timeout, drain=drain,
        max_flows=max_flows, max_connections=max_connections, max_message_size=max_message_size,
        hep=hep_target(hep, hep_id, hep_password), hep_id=hep_id, hep_password=hep_password))
    _run(config)
    typer.echo("faultlab: stopped", err=True)


def _config(options: dict):
    """The checked :class:`~faultlab.proxy.ProxyConfig` of the command line's options (exits with the
    problem's message when one is wrong, before anything listens)."""
    from faultlab.addr import EndpointError, parse_endpoint
    from faultlab.api.run import check_config
    from faultlab.api.server import ApiAddressError, ApiBindError, parse_api_address
    from faultlab.faults import ProfileError, load_profile
    from faultlab.proxy import ConfigError, ProxyConfig

    try:
        options["profile"] = load_profile(options["profile"]) if options["profile"] else None
        options["api"] = parse_api_address(options["api"]) if options["api"] else None
        options["listen"] = [parse_endpoint(spec) for spec in options["listen"]]
        options["upstream"] = [parse_endpoint(spec, allow_port_zero=False) for spec in options["upstream"]]
        # the control API shows the recent events; without it nobody reads them from memory
        config = ProxyConfig(**options, keep_events=1000 if options["api"] else 0, handle_signals=True)
        check_config(config)
    except (EndpointError, ConfigError, ProfileError, ApiAddressError, ApiBindError) as exc:
        _fail(str(exc))
    return config


def _run(config) -> None:
    """Serve the proxy (and its control API with --api) until SIGINT/SIGTERM; errors end the command with
    their message."""
    import gc
    import logging

    import trio

    from faultlab.addr import EndpointError
    from faultlab.api.run import serve_proxy_with_api
    from faultlab.api.server import ApiBindError
    from faultlab.ca import CAError
    from faultlab.proxy import ConfigError

    logging.basicConfig(level=logging.WARNING, format="faultlab: %(name)s: %(levelname)s: %(message)s")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve_proxy_with_api, config)
            _announce(config, running)
            # What start-up made (modules, configuration, listeners) lives as long as the process: out of the
            # cyclic collector's sight, so that its full passes scan only what the relay holds (docs/PERFORMANCE.md)
            gc.freeze()
            running.trace.add_sink(_say_stopping, kinds=("stopping",))

    try:
        try:
            trio.run(main)
        except BaseExceptionGroup as group:
            raise _single(group) from None
    except (EndpointError, ConfigError, CAError, ApiBindError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""), 1)
    except KeyboardInterrupt:
        pass


def _say_stopping(event) -> None:
    """At the first SIGINT/SIGTERM: one line saying that the proxy drains, and how to stop at once."""
    drain = event.detail.get("drain") if event.kind == "stopping" else None
    if drain:
        typer.echo(f"faultlab: stopping: what is in flight has up to {drain:g} s (--drain); "
                   f"{event.detail.get('signal', 'a signal')} again stops at once", err=True)


def _announce(config, running) -> None:
    """The startup lines: each listener and where it relays to, the CA, the profile and seed, the API."""
    for ep, addr in running.listeners:
        target = config.upstream_for(ep.transport) or "original destination (transparent)"
        typer.echo(f"faultlab: listening on {ep.transport}:{_hp(addr)} -> {target}", err=True)
    if running.ca_cert_path:
        typer.echo(f"faultlab: TLS certificates from the lab CA {running.ca_cert_path}", err=True)
    name = config.profile.name if config.profile else "none (faithful relay)"
    typer.echo(f"faultlab: profile {name}; seed {running.seed} (--seed {running.seed} repeats it)", err=True)
    bounds = running.limits
    typer.echo(f"faultlab: limits: {bounds.descriptors} descriptors, {bounds.max_flows} UDP flows, "
               f"{bounds.max_connections} TCP/TLS connections, messages up to {bounds.max_message_size} octets",
               err=True)
    if running.api_address:
        typer.echo(f"faultlab: control API on http://{_hp(running.api_address)}", err=True)
