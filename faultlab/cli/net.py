"""``faultlab net``: the lab network (namespaces for devices, gateway and PBX). Thin: parse, call, print.

Mounted by faultlab/cli/__init__.py as ``app.add_typer(net_app, name="net")``. Everything here needs root.
Exit codes: 0 done, 1 runtime failure (including not root), 2 bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

from faultlab.cli._common import failing

from faultlab.labnet.names import MAX_NAME, NOT_ROOT, LabError, exec_argv, find_tool, netns_name

if TYPE_CHECKING:
    from faultlab.labnet.topology import Lab

app = typer.Typer(
    help="The lab network: device, gateway and PBX namespaces joined through the gateway (needs root).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

NameOption = Annotated[str, typer.Option(
    "--name", help=f"Lab name (letters, digits, '_'; at most {MAX_NAME} characters): "
                         "every namespace and interface is called fl-<name>-...")]


_fail = failing("faultlab")


def _lab_error(e: LabError) -> NoReturn:
    _fail(str(e), 2 if e.usage else 1)


def _need_root() -> None:
    if os.geteuid() != 0:
        _fail(NOT_ROOT, 1)


def _print_lab(lab: Lab) -> None:
    rows = [("ROLE", "NAMESPACE", "ADDRESS", "INTERFACES")]
    for r in lab.roles.values():
        ifaces = ", ".join(f"{i.name} {' '.join(i.addresses) or '-'}" for i in r.interfaces) or "-"
        rows.append((r.role, r.netns, r.address or "-", ifaces))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    subnet = lab.subnet or "unknown"
    state = "" if lab.complete else "  (incomplete: faultlab net down --name " + lab.name + " removes it)"
    typer.echo(f"lab {lab.name}: subnet {subnet}{state}")


@app.command()
def up(
    name: NameOption = "lab",
    subnet: Annotated[str, typer.Option(
        help="IPv4 network cut into /24s: the first joins gateway and PBX, one more per device.")] = "10.213.0.0/16",
    devices: Annotated[int, typer.Option(help="Number of device namespaces.", min=1, max=255)] = 1,
) -> None:
    """Create the lab: namespaces, veth pairs, addresses, routes via the gateway, forwarding on."""
    from faultlab.labnet.topology import lab_up

    _need_root()
    try:
        lab = lab_up(name, subnet, devices)
    except LabError as e:
        _lab_error(e)
    _print_lab(lab)


@app.command()
def down(name: NameOption = "lab") -> None:
    """Remove everything the lab made (also after a crash); doing it twice is fine."""
    from faultlab.labnet.topology import lab_down

    _need_root()
    try:
        removed = lab_down(name)
    except LabError as e:
        _lab_error(e)
    for line in removed:
        typer.echo(f"removed {line}")
    if not removed:
        typer.echo(f"lab {name}: nothing to remove")


@app.command()
def status(
    name: NameOption = "lab",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print JSON: each role with its namespace, interfaces and addresses.")] = False,
) -> None:
    """Show what exists of the lab; exit 1 if nothing does."""
    from faultlab.labnet.impair import lab_impairment
    from faultlab.labnet.topology import lab_status

    _need_root()
    try:
        lab = lab_status(name)
    except LabError as e:
        _lab_error(e)
    if lab is None:
        if as_json:
            typer.echo("null")
            raise typer.Exit(1)
        _fail(f"lab {name} does not exist (faultlab net up --name {name} creates it)", 1)
    impairment = lab_impairment(name)
    if as_json:
        typer.echo(json.dumps({**lab.to_dict(), "impairment": impairment}, indent=2))
    else:
        _print_lab(lab)
        typer.echo(_air_line(lab, impairment))


def _air_line(lab: Lab, impairment: dict | None) -> str:
    """What the air (between the devices and the gateway) does to every packet crossing it."""
    where = f"air {lab.air.netns}" if lab.air else "air: none (a lab from an older faultlab: net down, net up)"
    if impairment is None:
        return f"{where}: clean (faultlab net impair --name {lab.name} --profile NAME impairs it)"
    how = ("sch_netem" if impairment.get("mode") == "netem"
           else f"TUN wire pid {impairment.get('pid')}, seed {impairment.get('seed')}")
    if impairment.get("mode") == "wire" and not impairment.get("running"):
        how += ", NOT RUNNING: faultlab net impair --clear, then impair again"
    line = f"{where}: profile {impairment.get('profile')} ({how}): {impairment.get('description', '?')}"
    from faultlab.labnet.impair import proxies_with_link

    for pid, profile in proxies_with_link(lab.name):
        line += (f"\nwarning: faultlab proxy pid {pid} runs profile {profile}, whose [link] comes on top of the "
                 "air's: its SIP messages are impaired twice")
    return line


@app.command(
    "exec",
    context_settings={"ignore_unknown_options": True},
)
def exec_(
    role: Annotated[str, typer.Argument(metavar="ROLE", help="gateway, pbx or device<N>.")],
    command: Annotated[list[str], typer.Argument(metavar="-- CMD...", help="The command and its arguments.")],
    name: NameOption = "lab",
) -> None:
    """Run a command inside a role's namespace; it takes this process's place.

    Put the command after `--` so its options stay its own: faultlab net exec device1 --name lab -- ip route

    It runs as this very process (via `ip netns exec`): a signal sent to it (TERM, INT, HUP, QUIT) reaches the command.

    The exit status is the command's (a shell shows death by signal N as 128+N); 127: command not found.
    """
    from faultlab.labnet.topology import lab_status

    _need_root()
    if find_tool("ip") is None:
        _fail("the 'ip' command (iproute2) is missing: install iproute2", 1)
    if command and command[0] == "--":
        command = command[1:]
    try:
        argv = exec_argv(name, role, list(command))
        lab = lab_status(name)
    except LabError as e:
        _lab_error(e)
    if lab is None or role not in lab.roles:
        known = ", ".join(lab.roles) if lab else "none: faultlab net up --name " + name + " creates the lab"
        _fail(f"lab {name} has no role {role!r} (roles: {known})", 2)
    if shutil.which(command[0]) is None:
        _fail(f"{command[0]}: command not found (not on PATH, or not an executable file)", 127)
    _exec(argv, command[0], role)


def _exec(argv: list[str], command: str, role: str) -> NoReturn:
    """Replace this process with ``argv`` (``ip netns exec NS CMD...``, which execs CMD in turn).

    No process stays in between to forward or swallow signals. Python ignores SIGPIPE and SIGXFSZ for
    itself; the command gets them back at their defaults, as a shell would start it (subprocess does the same).
    Every other disposition and the signal mask pass on as inherited.
    """
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        _fail(f"could not run {command!r} in {role}: {e.strerror or e}", 1)


@app.command()
def impair(
    name: NameOption = "lab",
    profile: Annotated[Optional[str], typer.Option(
        "--profile", "-p", metavar="NAME|FILE",
        help="Apply this profile's \\[link] section on the air between the devices and the gateway: to-pbx on "
             "what devices send, to-device on what they receive.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every impairment from the lab.")] = False,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the impairment's random choices (loss, jitter). Default: drawn and printed.", min=0)] = None,
) -> None:
    """Impair every packet a device sends or receives (delay, jitter, loss, ...) from a profile, or --clear it.

    The impairment sits on the air: a forwarding-only namespace between the devices and the gateway, so it \
applies once to every packet (SIP over UDP, TCP and TLS, RTP, DNS), before the gateway's interception and \
faultlab see it, whether faultlab relays or intercepts.
    """
    if (profile is None) == (not clear):
        _fail("give exactly one of --profile NAME or --clear", 2)
    if clear and seed is not None:
        _fail("--seed goes with --profile, not --clear", 2)
    _need_root()
    loaded = None
    if profile is not None:
        from faultlab.faults import ProfileError, load_profile

        try:
            loaded = load_profile(profile)
        except ProfileError as e:
            _fail(str(e), 2)
    try:
        from faultlab.labnet.impair import clear_lab, impair_lab
    except ImportError as e:
        _fail(f"link impairment is not available: {e}", 1)
    try:
        if loaded is None:
            text = clear_lab(name)
        else:
            text = impair_lab(name, loaded, seed=seed)
    except LabError as e:
        _lab_error(e)
    except LookupError as e:  # no such lab, or no air in it: the message says what to run
        _fail(str(e).strip("'\""), 1)
    except Exception as e:  # noqa: BLE001 - one red line, never a traceback
        _fail(f"impair failed: {type(e).__name__}: {e}", 1)
    typer.echo(text)


@app.command()
def intercept(
    name: NameOption = "lab",
    pbx: Annotated[Optional[str], typer.Option(
        help="The PBX address whose SIP traffic the gateway hands to faultlab (default: the lab's PBX).")] = None,
    ports: Annotated[str, typer.Option(help="SIP ports to intercept, comma-separated.")] = "5060,5061",
    tls_ports: Annotated[str, typer.Option(help="Which of them carry TLS (TCP only).")] = "5061",
    proxy_port: Annotated[int, typer.Option(
        help="Where faultlab proxy --transparent listens in the gateway for UDP and TCP.", min=1, max=65535)] = 5060,
    proxy_tls_port: Annotated[int, typer.Option(help="... and for TLS.", min=1, max=65535)] = 5061,
    spoof_source: Annotated[bool, typer.Option(
        help="Also route the PBX's answers back to faultlab (for faultlab proxy --spoof-source).")] = False,
    off: Annotated[bool, typer.Option("--off", help="Remove the interception.")] = False,
) -> None:
    """Send the lab's SIP traffic for the PBX to faultlab in the gateway (nftables REDIRECT / TPROXY).

    Then run the relay there: faultlab net exec gateway -- faultlab proxy --transparent
    --listen udp:0.0.0.0:5060 --listen tcp:0.0.0.0:5060 --listen tls:0.0.0.0:5061
    """
    from faultlab.labnet.intercept import InterceptError, intercept_off, intercept_on
    from faultlab.labnet.topology import lab_status

    _need_root()
    try:
        lab = lab_status(name)
    except LabError as e:
        _lab_error(e)
    if lab is None or lab.gateway is None:
        _fail(f"no lab {name!r}: run faultlab net up --name {name} first", 1)
    gateway = netns_name(name, "gateway")
    table = f"faultlab_{name}"
    try:
        if off:
            intercept_off(gateway, table)
            typer.echo(f"lab {name!r}: interception off")
            return
        port_list = [int(p) for p in ports.split(",") if p.strip()]
        tls_list = [int(p) for p in tls_ports.split(",") if p.strip()]
    except ValueError:
        _fail(f"--ports and --tls-ports take comma-separated numbers, e.g. 5060,5061 (got {ports!r}, {tls_ports!r})", 2)
    except InterceptError as e:
        _fail(str(e), 1)
    target = pbx or (lab.pbx.address if lab.pbx else None)
    if target is None:
        _fail(f"lab {name!r} has no PBX: give --pbx ADDRESS", 2)
    try:
        intercept_on(gateway, pbx=target, ports=port_list, tls_ports=tls_list, proxy_udp_port=proxy_port,
                     proxy_tcp_port=proxy_port, proxy_tls_port=proxy_tls_port, table=table,
                     spoof_source=spoof_source)
    except (InterceptError, ValueError) as e:
        _fail(str(e), 2 if isinstance(e, ValueError) and not isinstance(e, InterceptError) else 1)
    typer.echo(f"lab {name!r}: SIP for {target} ports {','.join(map(str, port_list))} now goes to faultlab in "
               f"{gateway} (UDP/TCP :{proxy_port}, TLS :{proxy_tls_port}); run there: "
               f"faultlab net exec gateway --name {name} -- faultlab proxy --transparent "
               f"--listen udp:0.0.0.0:{proxy_port} --listen tcp:0.0.0.0:{proxy_port} "
               f"--listen tls:0.0.0.0:{proxy_tls_port}")
