"""The ``faultlab`` command. Thin: parse arguments, call the library, print."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from faultlab import __version__
from faultlab.cli._common import fail

# The subcommands that live in modules of their own, loaded only when run: `faultlab --help` and `faultlab
# version` import none of them (docs/PERFORMANCE.md, bench/startup.py). The one-line help shown by
# `faultlab --help` is written here; tests/unit/test_cli_lazy.py checks it against each command's own.
LAZY: dict[str, tuple[str, str, str]] = {
    "demo": ("faultlab.cli.lab", "demo",
             "Run the whole scenario catalogue against the embedded PBX and the reference device (no root, nothing "
             "outside this process in virtual time) and print the verdicts."),
    "sweep": ("faultlab.cli.sweep", "sweep_command",
              "Sweep a scenario over device deadlines, link and fault parameters, each point run --runs times in "
              "virtual time on every core; write results.csv, results.json, charts and report.html and print the "
              "smallest deadline that passes."),
    "proxy": ("faultlab.cli.proxy", "proxy",
              "Relay SIP between devices and a PBX, applying a fault profile and recording every message."),
    "ca": ("faultlab.cli.ca", "app", "The lab CA that signs faultlab's TLS certificates for devices."),
    "profiles": ("faultlab.cli.profiles", "app", "The fault profile library: list, show, check."),
    "profile": ("faultlab.cli.profile", "app", "Switch a running proxy's faults through its control API."),
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
    "trace": ("faultlab.cli.trace", "app", "Views of a trace file: pcap for Wireshark, ladder diagrams, HEP to Homer or sngrep."),
    "lab": ("faultlab.cli.lab", "app",
            "Lab runs: the scenario catalogue, and runs that give a pass/fail verdict per check."),
    "events": ("faultlab.cli.events", "app",
               "Device events as an app posts them to the lab (POST /events): lint a log of them."),
}
ORDER = ("demo", "sweep", "version", "proxy", "ca", "profiles", "profile", "net", "gateway", "push-gateway",
         "device", "pbx", "call", "trace", "lab", "events")


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
            fail(str(exc))


@app.command()
def version() -> None:
    """Print faultlab's version."""
    typer.echo(f"faultlab {__version__}")


def main() -> None:
    app()
