"""``faultlab trace``: views of a trace JSONL file (``--trace``): a pcap for Wireshark, ladder diagrams per call."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from faultlab.cli._common import failing

from faultlab.trace._event import Event
from faultlab.trace._sinks import parse_event_line, still_being_written
from faultlab.trace.follow import TraceFileError

app = typer.Typer(help="Views of a trace file: pcap for Wireshark, ladder diagrams, HEP to Homer or sngrep.", add_completion=False,
                  no_args_is_help=True, pretty_exceptions_enable=False)

TraceArg = Annotated[Path, typer.Argument(
    metavar="FILE.jsonl", help="A trace written by --trace (faultlab proxy, or a lab run): one JSON event per line.",
    show_default=False)]




def load_trace(path: Path) -> list[Event]:
    """Every event of a trace file, also one still being written (a last line without its newline is left for
    next time); :class:`TraceFileError` naming the line that is not a faultlab event."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TraceFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceFileError(f"{path}: is a directory, not a trace file") from None
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    events: list[Event] = []
    for lineno, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.strip():
            continue
        try:
            events.append(parse_event_line(line))
        except ValueError as exc:
            if still_being_written(line):  # the last line of a trace still being written: read it next time
                break
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TraceFileError(f"{path}: line {lineno} is not a faultlab trace event ({reason})") from None
    if not events:
        raise TraceFileError(f"{path}: empty: no trace events")
    return events


_fail = failing("faultlab")


def _load(path: Path) -> list[Event]:
    try:
        return load_trace(path)
    except TraceFileError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail raises


@app.command()
def pcap(
    trace: TraceArg,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="FILE.pcap",
        help="Where to write the pcap. Default: the trace's name with .pcap instead of .jsonl.",
        show_default=False, dir_okay=False)] = None,
) -> None:
    """Write the trace's SIP messages as a pcap that Wireshark opens and decodes as SIP.

    One packet per message on each hop (device <-> faultlab, faultlab <-> PBX, and lab actors' own messages), \
with the trace's addresses and times; TCP and TLS hops as TCP carrying the SIP text. See docs/traces.md.
    """
    from faultlab.trace.pcap import wire_messages, write_pcap

    events = _load(trace)
    if not wire_messages(events):
        _fail(f"{trace}: no SIP messages with their bytes in this trace: nothing to write")
    out = output if output is not None else trace.with_suffix(".pcap")
    try:
        count = write_pcap(events, out)
    except OSError as exc:
        _fail(f"{out}: cannot write: {exc.strerror or exc}")
    typer.echo(f"wrote {count} packets to {out}")


@app.command()
def hep(
    trace: TraceArg,
    to: Annotated[str, typer.Option(
        "--to", metavar="udp:HOST:PORT|tcp:HOST:PORT", help="The HEP collector: Homer's heplify-server, "
        "sngrep -L, e.g. udp:127.0.0.1:9060.", show_default=False)],
    hep_id: Annotated[int, typer.Option("--hep-id", metavar="N", min=0, max=2**32 - 1,
                                        help="The capture agent id the collector shows.")] = 1,
    hep_password: Annotated[Optional[str], typer.Option(
        "--hep-password", envvar="FAULTLAB_HEP_PASSWORD", help="The collector's password (HEP auth key).")] = None,
    rate: Annotated[float, typer.Option(
        metavar="PACKETS/S", min=0, help="Send at most this many packets per second (0: as fast as the "
        "collector takes them); UDP has no flow control, and a collector flooded drops what it cannot read.")
    ] = 2000.0,
) -> None:
    """Send a recorded trace to a HEP collector, so that it shows up in Homer or sngrep.

    Every SIP message on each hop and every fault decision, as `faultlab proxy --hep` sends them live, with the
    times they had when recorded. See docs/hep.md.

    Example: faultlab trace hep run.jsonl --to udp:127.0.0.1:9060
    """
    from faultlab.cli._hep import open_sender

    events = _load(trace)
    sender = open_sender(to, hep_id, hep_password, lambda text: typer.echo(f"faultlab: {text}", err=True),
                         option="--to")
    gap = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    try:
        for event in events:
            for packet in sender.encoder.packets(event):
                if gap:
                    wait = next_at - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    next_at = max(next_at, time.monotonic() - 1.0) + gap
                sender.send(packet)
                if sender.target.transport == "tcp" and not sender.drain(10.0):
                    break
    finally:
        sender.close(linger=10.0)
    dropped = sum(sender.dropped.values()) + sender.encoder.too_large
    typer.echo(f"sent {sender.sent} HEP packets to {sender.target}" + (f" ({dropped} dropped)" if dropped else ""))
    if dropped or not sender.sent:
        raise typer.Exit(1)


@app.command()
def ladder(
    trace: TraceArg,
    call: Annotated[Optional[str], typer.Option(
        "--call", "-c", metavar="CALL_ID",
        help="Only this call (its Call-ID). Default: every call of the trace, in order.",
        show_default=False)] = None,
    width: Annotated[int, typer.Option(
        "--width", "-w", metavar="N", min=40, help="Draw the ladder in at most N columns (at least 40).")] = 100,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the ladder rows as JSON (one list per call) instead of drawing them.")] = False,
) -> None:
    """Draw a ladder diagram per call: who sent what to whom, when, and what faultlab did to it.

    Columns: device, faultlab, PBX, caller, push gateway (those that appear); faults (dropped, delayed, held, \
answered by faultlab, duplicated, reset) on the row where they happened; pushes and device events as notes.
    """
    from faultlab.trace.ladder import call_ids, ladder_rows, render_ladder

    events = _load(trace)
    calls = call_ids(events)
    if not calls:
        _fail(f"{trace}: no SIP messages with a Call-ID in this trace: no ladder to draw")
    if call is not None:
        if call not in calls:
            shown = ", ".join(calls[:5]) + (f" and {len(calls) - 5} more" if len(calls) > 5 else "")
            _fail(f"{trace}: no call with Call-ID {call!r}; the trace has {shown}")
        calls = [call]
    if as_json:
        typer.echo(json.dumps({c: ladder_rows(events, c) for c in calls}, ensure_ascii=False, indent=1))
        return
    drawings = [render_ladder(ladder_rows(events, c), width=width, title=f"Call-ID {c}") for c in calls]
    typer.echo("\n".join(drawings), nl=False)


POLL_INTERVAL = 0.1  # seconds between looks at a followed file (faultlab flushes its traces every 0.1 s)


@app.command()
def follow(
    trace: TraceArg,
    from_end: Annotated[bool, typer.Option(
        "--from-end", help="Only rows for what is appended from now on (what is there already is read for "
                           "context: addresses, holds, faults waiting for their message).")] = False,
    call: Annotated[Optional[str], typer.Option(
        "--call", "-c", metavar="CALL_ID", help="Only this call (its Call-ID). Default: every call, as they come.",
        show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option(
        "--width", "-w", metavar="N", min=40,
        help="Draw in at most N columns (at least 40). Default: the terminal's width, 100 when not a terminal.",
        show_default=False)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="If the file does not exist yet, wait for it (start this before the proxy).")] = False,
    forever: Annotated[bool, typer.Option(
        "--forever", help="Keep following after the trace's stop event: a new run that writes the same file "
                          "is followed from its start. Default: stop there.")] = False,
) -> None:
    """Follow a trace as it is written, like tail -f: a ladder row per message as it is appended, faults marked.

    Each row comes within about 0.1 s of the event (faultlab flushes its traces that often); a Call-ID line \
whenever the call changes. Stops at the trace's stop event (the proxy stopped) after printing what follows it, \
or on Ctrl-C. See docs/traces.md.
    """
    from faultlab.trace._sinks import wants_color
    from faultlab.trace.follow import LadderPrinter
    from faultlab.trace.ladder import LiveLadder

    if width is None:
        width = max(shutil.get_terminal_size((100, 24)).columns, 40) if _color_capable(sys.stdout) else 100
    try:
        tail = _open_tail(trace, wait)
        printer = LadderPrinter(sys.stdout, width=width, color=wants_color(sys.stdout))
        live = LiveLadder(call)
        typer.echo(f"faultlab: following {trace}" + (" from its end" if from_end else "")
                   + ("" if forever else " until the proxy stops") + " (Ctrl-C to stop)", err=True)
        catching_up = from_end
        stopped_at: float | None = None
        while True:
            events = tail.read()
            if tail.restarted:
                live, stopped_at = LiveLadder(call), None
                printer.reset()
                printer.note(f"-- {trace}: truncated or replaced (a new run?): following it from its start")
            for e in events:
                rows = live.feed(e)
                if not catching_up:
                    printer.rows(rows)
                if e.kind == "stop" and e.source == "proxy":
                    stopped_at = e.t
            if tail.more:
                continue
            catching_up = False
            if stopped_at is not None and not forever:
                printer.rows(live.finish(stopped_at))
                return
            time.sleep(POLL_INTERVAL)
    except TraceFileError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return


def _color_capable(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _open_tail(path: Path, wait: bool):
    from faultlab.trace.follow import TraceTail

    said = False
    while True:
        try:
            return TraceTail(path)
        except TraceFileError:
            if not wait or path.exists():
                raise
        if not said:
            typer.echo(f"faultlab: waiting for {path} to appear", err=True)
            said = True
        time.sleep(POLL_INTERVAL)
