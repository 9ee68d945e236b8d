"""``faultlab gateway``: transparent interception on a real Linux gateway, in this network namespace.

``faultlab net intercept`` installs the interception in the gateway namespace of faultlab's own lab; a QA
lab's real gateway (the Vagrant VM of deploy/, or any Linux router the test Wi-Fi's phones use) needs the
same in its own namespace, restricted to the interface toward the phones. This is the same table
(:func:`faultlab.labnet.intercept.ruleset` with ``iface`` and ``counter``) and the same policy route for
TPROXY, applied and removed by :mod:`faultlab.labnet.intercept`. Thin: parse, call, print.

Mounted by faultlab/cli/__init__.py as ``app.add_typer(gateway_app, name="gateway")``. Applying, removing and
showing need root; ``--dry-run`` does not. Exit codes: 0 done, 1 runtime failure (including not root),
2 bad input.
"""

from __future__ import annotations

import os
import shlex
import socket
from typing import Annotated, Optional

import typer

from faultlab.cli._common import failing

from faultlab.labnet.intercept import (
    DEFAULT_MARK,
    DEFAULT_ROUTE_TABLE,
    DEFAULT_TLS_PORTS,
    InterceptError,
    InterceptSpec,
    apply,
    apply_argv,
    check_table_name,
    delete_table_argv,
    has_route,
    has_rule,
    intercept_off,
    list_table,
    needs_policy_route,
    route_argv,
    rule_argv,
    ruleset,
)

DEFAULT_TABLE = "faultlab_gw"

app = typer.Typer(
    help="Transparent interception on a real Linux gateway, in this network namespace (needs root).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TableOption = Annotated[str, typer.Option(
    "--table", help="The nftables table (inet family) faultlab owns here.")]
MarkOption = Annotated[int, typer.Option(
    "--mark", help="Firewall mark of the TPROXY'd datagrams (change it if this machine already uses 1).",
    min=1, max=0xFFFFFFFF)]
RouteTableOption = Annotated[int, typer.Option(
    "--route-table", help="Routing table of the policy route for TPROXY (change it if 100 is taken).",
    min=1, max=0xFFFFFFFF)]


_fail = failing("faultlab")


def _need_root(command: str, dry_run_hint: bool = True) -> None:
    if os.geteuid() != 0:
        hint = ", or add --dry-run to print what it would do" if dry_run_hint else ""
        _fail(f"faultlab gateway {command} needs root (nftables and policy routing in this network namespace): "
              f"run it with sudo{hint}", 1)


def _ports(value: str, option: str) -> list[int]:
    if value.strip().lower() == "none":
        return []
    try:
        return [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        _fail(f"{option} takes comma-separated port numbers, e.g. 5060,5061 (got {value!r})", 2)


def _iface_exists(iface: str) -> bool:
    try:
        socket.if_nametoindex(iface)
    except OSError:
        return False
    return True


def _known_ifaces() -> str:
    return ", ".join(name for _, name in socket.if_nameindex()) or "none"


def _on_commands(spec: InterceptSpec) -> list[str]:
    """What applying ``spec`` runs, as shell lines (the same argv lists :func:`apply` runs)."""
    lines = []
    if needs_policy_route(spec):
        lines.append(shlex.join(rule_argv(None, "add", spec.mark, spec.route_table))
                     + "    # unless it is there already")
        lines.append(shlex.join(route_argv(None, "replace", spec.route_table)))
    lines.append(f"{shlex.join(apply_argv(None))} <<'EOF'\n{ruleset(spec)}EOF")
    return lines


def _off_commands(table: str, mark: int, route_table: int) -> list[str]:
    return [shlex.join(delete_table_argv(None, table)),
            shlex.join(rule_argv(None, "del", mark, route_table)) + "    # while there is one",
            shlex.join(route_argv(None, "del", route_table))]


def _off(table: str, mark: int, route_table: int, dry_run: bool) -> None:
    if dry_run:
        typer.echo("# faultlab gateway intercept --off --dry-run: nothing was run; --off runs (ignoring "
                   "what is not there):")
        typer.echo("\n".join(_off_commands(table, mark, route_table)))
        return
    _need_root("intercept --off")
    try:
        present = [
            what for what, there in (
                (f"nftables table inet {table}", list_table(None, table) is not None),
                (f"ip rule fwmark {mark} lookup {route_table}", has_rule(None, mark, route_table)),
                (f"route local 0.0.0.0/0 dev lo table {route_table}", has_route(None, route_table)),
            ) if there
        ]
        intercept_off(None, table, mark=mark, route_table=route_table)
    except InterceptError as e:
        _fail(str(e), 1)
    for what in present:
        typer.echo(f"removed {what}")
    if not present:
        typer.echo(f"interception off: nothing to remove (no table inet {table}, ip rule or route)")


@app.command()
def intercept(
    pbx: Annotated[Optional[str], typer.Option(
        help="The PBX's IPv4 address, as the phones reach it: its SIP traffic is handed to faultlab here.")] = None,
    ports: Annotated[str, typer.Option(help="The PBX's SIP ports to intercept, comma-separated.")] = "5060,5061",
    tls_ports: Annotated[str, typer.Option(
        help="Which of them carry TLS (TCP only), comma-separated, or none.")] = ",".join(map(str, DEFAULT_TLS_PORTS)),
    iface: Annotated[Optional[str], typer.Option(
        help="The interface toward the phones (the Wi-Fi side): only what arrives there is intercepted.")] = None,
    proxy_udp_port: Annotated[int, typer.Option(
        help="Where faultlab proxy --transparent listens for UDP on this machine; 0: do not intercept UDP.",
        min=0, max=65535)] = 5060,
    proxy_tcp_port: Annotated[int, typer.Option(
        help="... for TCP; 0: do not intercept TCP (other than TLS).", min=0, max=65535)] = 5060,
    proxy_tls_port: Annotated[int, typer.Option(
        help="... for TLS; 0: do not intercept TLS.", min=0, max=65535)] = 5061,
    spoof_source: Annotated[bool, typer.Option(
        "--spoof-source", help="Also hand the PBX's answers to faultlab (for faultlab proxy --spoof-source).")] = False,
    table: TableOption = DEFAULT_TABLE,
    mark: MarkOption = DEFAULT_MARK,
    route_table: RouteTableOption = DEFAULT_ROUTE_TABLE,
    off: Annotated[bool, typer.Option(
        "--off", help="Remove the table, the ip rule and the route (doing it twice is fine).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the nftables ruleset and the ip commands; apply nothing (no root needed).")] = False,
) -> None:
    """Hand SIP the phones on IFACE send to the PBX to faultlab on this machine (nftables REDIRECT / TPROXY).

    The same table faultlab net intercept installs in a namespace lab, with each rule for traffic to the PBX
    restricted to --iface and counted; plus the policy route TPROXY needs (ip rule fwmark MARK lookup TABLE,
    a local route in TABLE). Replaces a table of the same name. Then run the relay here:
    faultlab proxy --transparent --listen udp:0.0.0.0:5060 --listen tcp:0.0.0.0:5060 --listen tls:0.0.0.0:5061
    and see the counters with: faultlab gateway status
    """
    try:
        check_table_name(table)
    except InterceptError as e:
        _fail(str(e), 2)
    if off:
        _off(table, mark, route_table, dry_run)
        return
    if pbx is None or iface is None:
        _fail("give --pbx ADDRESS (the PBX's IPv4 address) and --iface IFACE (the interface toward the phones, "
              "see 'ip -br link'), or --off to remove the interception", 2)
    try:
        spec = InterceptSpec.make(
            pbx=pbx, ports=_ports(ports, "--ports"), tls_ports=_ports(tls_ports, "--tls-ports"),
            proxy_udp_port=proxy_udp_port or None, proxy_tcp_port=proxy_tcp_port or None,
            proxy_tls_port=proxy_tls_port or None, table=table, mark=mark, route_table=route_table,
            spoof_source=spoof_source, iface=iface, counter=True)
    except InterceptError as e:
        _fail(str(e), 2)
    if dry_run:
        if not _iface_exists(iface):
            typer.secho(f"faultlab: note: there is no interface {iface!r} here (interfaces: {_known_ifaces()}); "
                        "applying would be refused", err=True, fg=typer.colors.YELLOW)
        typer.echo("# faultlab gateway intercept --dry-run: nothing was run; applying runs, in this order:")
        typer.echo("\n".join(_on_commands(spec)))
        return
    if not _iface_exists(iface):
        _fail(f"there is no interface {iface!r} in this network namespace (interfaces: {_known_ifaces()}): "
              "give the one toward the phones with --iface, see 'ip -br link'", 2)
    _need_root("intercept")
    try:
        apply(None, spec)
    except InterceptError as e:
        _fail(f"{e} (nothing of the interception was left in place)", 1)
    transports = [f"{name} :{port}" for name, port in (
        ("UDP", spec.proxy_udp_port), ("TCP", spec.proxy_tcp_port), ("TLS", spec.proxy_tls_port)) if port]
    typer.echo(f"SIP for {spec.pbx} ports {','.join(map(str, spec.ports))} arriving on {iface} now goes to "
               f"faultlab on this machine ({', '.join(transports)}; nftables table inet {table}).")
    typer.echo("Run the relay here: faultlab proxy --transparent "
               + " ".join(f"--listen {name.lower()}:0.0.0.0:{port}" for name, port in (
                   ("UDP", spec.proxy_udp_port), ("TCP", spec.proxy_tcp_port), ("TLS", spec.proxy_tls_port))
                   if port)
               + (" --spoof-source" if spec.spoof_source else ""))
    typer.echo(f"Counters: faultlab gateway status --table {table}; remove: faultlab gateway intercept --off"
               + ("" if table == DEFAULT_TABLE else f" --table {table}"))


@app.command()
def status(
    table: TableOption = DEFAULT_TABLE,
    mark: MarkOption = DEFAULT_MARK,
    route_table: RouteTableOption = DEFAULT_ROUTE_TABLE,
) -> None:
    """Show whether the interception's table, ip rule and route are here, with the rules' counters.

    Exit 0 when the interception is complete, 1 when it is missing or incomplete.
    """
    try:
        check_table_name(table)
    except InterceptError as e:
        _fail(str(e), 2)
    _need_root("status", dry_run_hint=False)
    try:
        listing = list_table(None, table)
        rule = has_rule(None, mark, route_table)
        route = has_route(None, route_table)
    except InterceptError as e:
        _fail(str(e), 1)
    marks = listing is not None and "meta mark set" in listing

    def state(there: bool, needed: bool) -> str:
        return "present" if there else ("MISSING" if needed else "absent")

    typer.echo(f"nftables table inet {table}: {'present' if listing is not None else 'absent'}")
    typer.echo(f"ip rule fwmark {mark} lookup {route_table}: {state(rule, marks)}")
    typer.echo(f"route local 0.0.0.0/0 dev lo table {route_table}: {state(route, marks)}")
    if listing is not None:
        typer.echo("")
        typer.echo(listing.rstrip("\n"))
    if listing is None:
        if rule or route:
            _fail(f"incomplete: no table inet {table} (faultlab gateway intercept --off --table {table} "
                  "removes the rest)", 1)
        _fail("no interception here (faultlab gateway intercept --pbx ADDRESS --iface IFACE sets it up)", 1)
    if marks and not (rule and route):
        _fail("incomplete: UDP (TPROXY) needs the ip rule and the route; run faultlab gateway intercept again", 1)
