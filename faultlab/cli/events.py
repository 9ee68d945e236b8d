"""``faultlab events``: device-event logs, as an app posts them to the lab's event collector."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from faultlab.cli._common import failing

app = typer.Typer(help="Device events as an app posts them to the lab (POST /events): lint a log of them.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
_fail = failing("faultlab events lint")


@app.callback()
def events() -> None:
    # No docstring: the group's help is the Typer's.
    pass


@app.command("lint")
def lint(
    file: Annotated[Path, typer.Argument(metavar="FILE.ndjson", help="The log: one event per line, as posted "
                                         "(a JSON object, or an array of them), or a faultlab trace (JSON lines); "
                                         "- for standard input.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the counts and every finding) "
                                          "instead of lines for people.")] = False,
) -> None:
    """Check a log of device events against the event schema (GET /schema/events.json) and the order a call's
    events come in: one reported and one ended per call, nothing after ended, answer-fulfilled / answer-failed
    only after answer-tapped, client_time not going backwards on a device. Calls are told apart per device by
    uuid (any case) or call_id. Prints each finding (line, call, rule, how to fix it) and a summary; exit 0 when
    clean, 1 with findings, 2 when the file cannot be read.

    Example: faultlab events lint app-events.ndjson (each line e.g. {"device": "alice-iphone", "event": "reported",
    "uuid": "6F1C0A4E-0D0B-4C77-9B6E-2F3A0E5B1D10", "client_time": 1764166500.125})"""
    from faultlab.lab.eventlint import lint_stream
    from faultlab.text import printable

    name = str(file)
    try:
        if name == "-":
            report = lint_stream(sys.stdin.buffer)
        else:
            with open(file, "rb") as stream:
                report = lint_stream(stream)
    except OSError as exc:
        _fail(f"cannot read {printable(name)}: {exc.strerror or exc}")
    if as_json:
        typer.echo(json.dumps({"file": name, **report.to_json()}, ensure_ascii=True))
    else:
        for f in report.findings:
            call = f"call {printable(f.call)}: " if f.call else ""
            typer.echo(f"{printable(name)}:{f.line}: {call}{f.rule}: {printable(f.message)}")
            typer.echo(f"    fix: {printable(f.fix)}")
        typer.echo(_summary(report))
    if not report.clean:
        raise typer.Exit(1)


def _summary(report) -> str:
    plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
    read = (f"{plural(report.lines, 'line')}, {plural(report.events, 'event')}, {plural(report.calls, 'call')} on "
            f"{plural(report.devices, 'device')}")
    if report.skipped:
        read += f" ({report.skipped} trace lines of other kinds skipped)"
    if report.clean:
        return f"{read}: clean"
    counts = ", ".join(f"{rule}: {n}" for rule, n in sorted(report.counts().items()))
    return f"{read}: {plural(len(report.findings), 'finding')} ({counts})"
