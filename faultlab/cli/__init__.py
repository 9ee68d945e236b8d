"""The ``faultlab`` command. Thin: parse arguments, call the library, print."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from faultlab import __version__

# The subcommands that live in modules of their own, loaded only when run: `faultlab --help` and `faultlab
# version` import none of them (docs/PERFORMANCE.md, bench/startup.py). The one-line help shown by
# `faultlab --help` is written here; tests/unit/test_cli_lazy.py checks it against each command's own.
LAZY: dict[str, tuple[str, str, str]] = {
    "demo": ("faultlab.cli.lab", "demo",
             "Run the whole scenario catalogue against the embedded PBX and the reference device (no root, nothing "
             "outside this process in virtual time) and print the verdicts."),
    "sweep": ("faultlab.cli.sweep", "sweep_command",
              "Sweep a scenario over device deadlines, link and fault parameters, each point run --runs times in "
              "virtual time on every core; write results.csv, results.json and plot.html and print the smallest "
              "deadline that passes."),
    "net": ("faultlab.cli.net", "app",
            "The lab network: device, gateway and PBX namespaces joined through the gateway (needs root)."),
    "gateway": ("faultlab.cli.gateway", "app",
                "Transparent interception on a real Linux gateway, in this network namespace (needs root)."),
    "push-gateway": ("faultlab.cli.push_gateway", "app",
                     "Run an APNs-compatible push gateway: validate VoIP pushes as APNs would, lint them, apply push "
                     "faults, and deliver them to devices (or relay them to APNs)."),
    "device": ("faultlab.cli.device", "app",
               "Run the reference device: a simulated, well-behaved iOS VoIP app (CallKit rules, tunable deadlines), "
               "or one of its known-bad behaviours."),
    "pbx": ("faultlab.cli.pbx", "app",
            "Run the embedded PBX: a registrar and Record-Routing proxy that speaks RFC 8599 push."),
    "call": ("faultlab.cli.call", "app",
             "Place one call through a PBX, follow the script, print the outcome; exit 0 if the call went as "
             "scripted."),
    "trace": ("faultlab.cli.trace", "app", "Views of a trace file: pcap for Wireshark, ladder diagrams."),
    "lab": ("faultlab.cli.lab", "app",
            "Lab runs: the scenario catalogue, and runs that give a pass/fail verdict per check."),
}
ORDER = ("demo", "sweep", "version", "proxy", "ca", "profiles", "profile", "net", "gateway", "push-gateway",
         "device", "pbx", "call", "trace", "lab")


def load_lazy(name: str) -> Any:
    """The command (typer's click command object) of a lazily loaded subcommand, imported now."""
    module_name, attr, _ = LAZY[name]
    target = getattr(importlib.import_module(module_name), attr)
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    else:  # a plain function: a one-command app gives the command itself
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """The root group: its own commands plus :data:`LAZY`, imported on first use. While it formats its own
    help it shows the lazy ones by their one-line help, without importing them."""

    _formatting_help = False

    def list_commands(self, ctx: Any) -> list[str]:
        names = [*self.commands, *(n for n in LAZY if n not in self.commands)]
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands or cmd_name not in LAZY:
            return self.commands.get(cmd_name)
        if self._formatting_help:
            return TyperCommand(cmd_name, help=LAZY[cmd_name][2], short_help=LAZY[cmd_name][2])
        self.commands[cmd_name] = load_lazy(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._formatting_help = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._formatting_help = False

app = typer.Typer(
    help="faultlab: a SIP fault-injection proxy and latency lab for VoIP apps.",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ca_app = typer.Typer(help="The lab CA that signs faultlab's TLS certificates for devices.", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
profiles_app = typer.Typer(help="The fault profile library: list, show, check.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
profile_app = typer.Typer(help="Switch a running proxy's faults through its control API.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")

ConfdirOption = Annotated[
    Optional[Path],
    typer.Option("--confdir", help="Config directory holding the lab CA (default: $FAULTLAB_HOME or ~/.faultlab)",
                 file_okay=False),
]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"faultlab: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@app.callback()
def root(
    library: Annotated[Optional[list[Path]], typer.Option(
        "--library", metavar="DIR",
        help="A team library of profiles and scenarios (DIR/profiles/*.toml, DIR/scenarios/*.toml), searched "
             "before the built-in one: its entries add to it and replace built-ins of the same name. Repeat for "
             "more (the first wins); also FAULTLAB_PATH (directories separated by ':').")] = None,
) -> None:
    # No docstring: the root's help is the Typer's. Imports nothing unless --library is given.
    if library:
        from faultlab.library import LibraryError, add_to_path

        try:
            add_to_path(library)  # into FAULTLAB_PATH: every lookup, and every child process, sees it
        except LibraryError as exc:
            _fail(str(exc))


@app.command()
def version() -> None:
    """Print faultlab's version."""
    typer.echo(f"faultlab {__version__}")


@app.command()
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
    transparent: Annotated[bool, typer.Option(
        "--transparent",
        help="Transparent mode (Linux, root, on the lab gateway, with the interception table of "
             "faultlab.netns.intercept): relay "
             "each intercepted flow to the address the device sent it to, adding no headers.")] = False,
    spoof_source: Annotated[bool, typer.Option(
        "--spoof-source",
        help="With --transparent: connect to the PBX from the device's own address, so the PBX sees the "
             "device (the interception table must mark the PBX's answers: spoof_source).")] = False,
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
) -> None:
    """Relay SIP between devices and a PBX, applying a fault profile and recording every message.

    Example: faultlab proxy --listen udp:0.0.0.0:5060 --upstream udp:pbx.example.test:5060
    """
    import trio

    from faultlab.api.server import ApiAddressError, ApiBindError, parse_api_address
    from faultlab.ca import CAError
    from faultlab.faults import ProfileError, load_profile
    from faultlab.net.addr import EndpointError, parse_endpoint
    from faultlab.proxy import ConfigError, ProxyConfig, serve_proxy

    try:
        config = ProxyConfig(
            profile=load_profile(profile) if profile else None,
            seed=seed,
            api=parse_api_address(api) if api else None,
            api_token=api_token,
            listen=[parse_endpoint(spec) for spec in listen],
            upstream=[parse_endpoint(spec, allow_port_zero=False) for spec in upstream or []],
            transparent=transparent,
            spoof_source=spoof_source,
            record_route=not no_record_route,
            tls_name=tls_name,
            upstream_tls_name=upstream_tls_name,
            upstream_ca=upstream_ca,
            upstream_insecure=upstream_insecure,
            confdir=confdir,
            trace_path=trace,
            quiet=quiet,
            verbose=verbose,
            udp_idle_timeout=udp_idle_timeout,
            keep_events=1000,
            handle_signals=True,
        )
        config.validate()
    except (EndpointError, ConfigError, ProfileError, ApiAddressError, ApiBindError) as exc:
        _fail(str(exc))

    import logging

    logging.basicConfig(level=logging.WARNING, format="faultlab: %(name)s: %(levelname)s: %(message)s")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve_proxy, config)
            for ep, addr in running.listeners:
                target = config.upstream_for(ep.transport) or "original destination (transparent)"
                typer.echo(f"faultlab: listening on {ep.transport}:{_hp(addr)} -> {target}", err=True)
            if running.ca_cert_path:
                typer.echo(f"faultlab: TLS certificates from the lab CA {running.ca_cert_path}", err=True)
            name = config.profile.name if config.profile else "none (faithful relay)"
            typer.echo(f"faultlab: profile {name}; seed {running.seed} (--seed {running.seed} repeats it)", err=True)
            if running.api_address:
                typer.echo(f"faultlab: control API on http://{_hp(running.api_address)}", err=True)

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
    typer.echo("faultlab: stopped", err=True)


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one error inside nested nursery groups, so it can be reported plainly."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _hp(addr: tuple[str, int]) -> str:
    from faultlab.net.addr import format_hostport

    return format_hostport(*addr)


@ca_app.command("init")
def ca_init(
    confdir: ConfdirOption = None,
    force: Annotated[bool, typer.Option(help="Replace an existing CA (devices must trust the new one).")] = False,
) -> None:
    """Create the lab CA (ca.key is written with mode 0600)."""
    from faultlab.ca import CAError, LabCA, default_confdir

    try:
        ca = LabCA.init(confdir or default_confdir(), force=force)
    except CAError as exc:
        _fail(str(exc))
    typer.echo(f"lab CA created: {ca.cert_path}")
    typer.echo(f"sha256 fingerprint: {ca.fingerprint}")


@ca_app.command("export")
def ca_export(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the CA certificate (PEM) here "
                                                "instead of standard output.", dir_okay=False)] = None,
    mobileconfig: Annotated[Optional[Path], typer.Option(
        "--mobileconfig", metavar="FILE", dir_okay=False,
        help="Write an iOS configuration profile (.mobileconfig, unsigned) carrying the CA here. After "
             "installing it, enable full trust in Settings > General > About > Certificate Trust Settings. "
             "Without --out, nothing goes to standard output.")] = None,
    confdir: ConfdirOption = None,
) -> None:
    """Write the lab CA certificate (PEM), or an iOS profile carrying it, for devices to trust."""
    from faultlab.ca import CAError, LabCA, default_confdir

    try:
        ca = LabCA.load(confdir or default_confdir())
        if mobileconfig is not None:
            ca.export_mobileconfig(mobileconfig)
            typer.echo(f"wrote {mobileconfig} (iOS profile \"faultlab lab CA\"; then enable full trust for "
                       f"\"{ca.common_name}\" in Settings > General > About > Certificate Trust Settings)", err=True)
        if out is not None:
            ca.export(out)
            typer.echo(f"wrote {out}", err=True)
    except CAError as exc:
        _fail(str(exc))
    if out is None and mobileconfig is None:
        typer.echo(ca.cert_pem.decode("ascii"), nl=False)


# -- profiles -----------------------------------------------------------------

@profiles_app.command("list")
def profiles_list() -> None:
    """List the profile library with each one-line summary and where it comes from: built-in, or a team library
    (faultlab --library DIR, FAULTLAB_PATH), whose profiles replace built-ins of the same name."""
    from faultlab.faults import ProfileError, profile_entries
    from faultlab.library import where

    try:
        entries = profile_entries()
    except ProfileError as exc:
        _fail(str(exc))
    if not entries:
        _fail(f"no profiles found; looked in: {where('profiles')}")
    width = max(len(e.item.name) for e in entries)
    origin_width = max(len(e.origin) for e in entries)
    for e in entries:
        typer.echo(f"{e.item.name:<{width}}  {e.origin:<{origin_width}}  {e.item.summary}")
    for e in entries:
        if e.hides:
            typer.echo(f"note: {e.item.name} from {e.origin} replaces the {' and '.join(e.hides)} profile of that "
                       "name", err=True)


@profiles_app.command("show")
def profiles_show(name: Annotated[str, typer.Argument(metavar="NAME|FILE")]) -> None:
    """Print a profile's TOML (example: faultlab profiles show register-503)."""
    from faultlab.faults import ProfileError, load_profile

    try:
        profile = load_profile(name)
    except ProfileError as exc:
        _fail(str(exc))
    typer.echo(f"# {profile.source}")
    typer.echo(profile.text, nl=not profile.text.endswith("\n"))


@profiles_app.command("check")
def profiles_check(files: Annotated[list[Path], typer.Argument(metavar="FILE...")]) -> None:
    """Validate profile files; exit 1 if any is bad (example: faultlab profiles check my.toml)."""
    from faultlab.faults import ProfileError, load_profile

    bad = 0
    for path in files:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            bad += 1
            typer.secho(f"FAIL {exc}", err=True, fg=typer.colors.RED)
        else:
            typer.echo(f"ok   {path}: {profile.name}: {len(profile.rules)} rule(s)"
                       f"{', link' if profile.link else ''} — {profile.summary}")
    if bad:
        raise typer.Exit(1)


ApiUrl = Annotated[str, typer.Option("--api", metavar="URL", envvar="FAULTLAB_API",
                                     help="The proxy's control API, e.g. http://127.0.0.1:5099")]
ApiToken = Annotated[Optional[str], typer.Option("--api-token", envvar="FAULTLAB_API_TOKEN",
                                                 help="Bearer token, if the API requires one.")]


@profile_app.command("set")
def profile_set(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Profile name, or 'none' for no faults.")],
    api: ApiUrl = "http://127.0.0.1:5099",
    device: Annotated[Optional[str], typer.Option(help="Only for this device: IP or IP:PORT.")] = None,
    api_token: ApiToken = None,
) -> None:
    """Switch the running proxy's profile (example: faultlab profile set register-drop --api http://127.0.0.1:5099)."""
    from faultlab.api.client import ApiClientError, set_profile

    try:
        active = set_profile(api, None if name == "none" else name, device=device, token=api_token)
    except ApiClientError as exc:
        _fail(str(exc), 1)
    where = f" for {device}" if device else ""
    typer.echo(f"profile{where}: {active['name'] if active else 'none'}")


@profile_app.command("active")
def profile_active(api: ApiUrl = "http://127.0.0.1:5099", api_token: ApiToken = None) -> None:
    """Show the running proxy's active profiles (global and per device)."""
    from faultlab.api.client import ApiClientError, get_active

    try:
        active = get_active(api, token=api_token)
    except ApiClientError as exc:
        _fail(str(exc), 1)
    glob = active.get("global")
    typer.echo(f"global: {glob['name'] if glob else 'none'}")
    for device, entry in active.get("devices", {}).items():
        typer.echo(f"{device}: {entry['name'] if entry else 'none'}")


@profile_app.command("release")
def profile_release(
    hold_id: Annotated[Optional[str], typer.Argument(help="The hold to release; all when omitted.")] = None,
    api: ApiUrl = "http://127.0.0.1:5099",
    api_token: ApiToken = None,
) -> None:
    """Release messages a `hold` rule keeps back."""
    from faultlab.api.client import ApiClientError, release

    try:
        count = release(api, hold_id, token=api_token)
    except ApiClientError as exc:
        _fail(str(exc), 1)
    typer.echo(f"released {count} message(s)")


def main() -> None:
    app()
