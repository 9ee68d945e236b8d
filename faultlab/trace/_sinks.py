"""Where events go: a JSONL file, the console (the hub that fans them out, :class:`Trace`, is in ``_trace``)."""

from __future__ import annotations

import binascii
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from faultlab.text import printable, readable

from ._event import Event

#: Buffered events reach the trace file within this many seconds.
FLUSH_INTERVAL = 0.1


class JsonlWriter:
    """Appends one JSON object per line, so the file can be read while it is written.

    Events are buffered and flushed by one rule: when something is buffered and the
    last flush is at least ``flush_interval`` seconds old. A write checks it (so an
    event after a quiet spell reaches the file at once, and a burst costs one write
    per interval, not one per event); :meth:`flush_if_due` lets a timer check it
    when no further event comes (``on_pending`` is called each time the buffer goes
    from empty to not empty, to start one). Every event is then in the file, for a
    reader or after a ``kill -9``, within ``flush_interval`` of being written.

    ``clock`` gives the time in seconds (``time.monotonic``; tests pass their own).
    A write error (disk full...) is logged once and the trace stops there: the run
    it records goes on.
    """

    def __init__(self, path: Path, *, flush_interval: float = FLUSH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, buffer_size: int = 1 << 16) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.on_pending: Callable[[], None] | None = None
        self.error: str | None = None
        self._clock = clock
        # Events hold no lone surrogates (Event keeps its text readable); "backslashreplace" is the last guard.
        self._file: IO[str] = open(path, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                                   buffering=buffer_size)
        self._last_flush: float | None = None  # never: the first event goes out at once
        self._pending = False

    def __call__(self, event: Event) -> None:
        if self.error is not None or self._file.closed:
            return
        line = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"), default=_as_text) + "\n"
        try:
            self._file.write(line)
        except OSError as exc:
            self._failed(exc)
            return
        if not self.flush_if_due() and not self._pending:
            self._pending = True
            if self.on_pending is not None:
                self.on_pending()

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until buffered events are due in the file (0: now); None when nothing is buffered."""
        if not self._pending:
            return None
        if self._last_flush is None:
            return 0.0
        now = self._clock() if now is None else now
        return max(0.0, self._last_flush + self.flush_interval - now)

    def flush_if_due(self, now: float | None = None) -> bool:
        """Flush if the last flush is at least ``flush_interval`` old; True if it did."""
        now = self._clock() if now is None else now
        if self._last_flush is not None and now - self._last_flush < self.flush_interval:
            return False
        self.flush(now)
        return True

    def flush(self, now: float | None = None) -> None:
        """Write what is buffered to the file now."""
        self._last_flush = self._clock() if now is None else now
        self._pending = False
        if self.error is not None or self._file.closed:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.error = f"{self.path}: cannot write the trace: {exc.strerror or exc}; it stops here"
        logging.getLogger("faultlab.trace").error("%s", self.error)
        try:
            self._file.close()
        except OSError:
            pass

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as exc:
                self._failed(exc)


def _as_text(value: Any) -> str:
    """What JSON cannot hold (an object in an event's detail), as readable text."""
    return readable(str(value))


def parse_event_line(line: bytes) -> Event:
    """One line of a trace file as an :class:`Event`; ``ValueError`` saying what is wrong with it."""
    try:
        obj = json.loads(line.decode("utf-8"))  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        if not isinstance(obj, dict):
            raise ValueError(f"a JSON {type(obj).__name__}, not an object")
        event = Event.from_json(obj)
    except (TypeError, AttributeError, binascii.Error) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if isinstance(event.t, bool) or not isinstance(event.t, (int, float)) or not isinstance(event.kind, str):
        raise ValueError("'t' must be a number and 'kind' a string")
    if not isinstance(event.source, str) or not isinstance(event.detail, dict):
        raise ValueError("'source' must be a string and 'detail' an object")
    return event


def still_being_written(line: bytes) -> bool:
    """True for the last line of a file when it has no newline yet and looks like the start of an event:
    a writer is still on it, so readers skip it (it is read whole next time)."""
    return not line.endswith(b"\n") and line.lstrip().startswith(b"{")


def read_jsonl(path: Path) -> Iterator[Event]:
    """Read a trace back, also while it is written (a last line without its newline yet is skipped);
    ``ValueError`` naming the line on bad input."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield parse_event_line(line)
            except ValueError as exc:
                if still_being_written(line):
                    return
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(f"{path}:{lineno}: not a faultlab trace event: {reason}") from None


_ARROWS = {"to-pbx": "->pbx", "to-device": "->dev"}
# The console shows what crossed, what faultlab did to it and what went wrong; "received" is implied by
# "sent" (both are in the JSONL trace), and shown with --verbose.
_CONSOLE_KINDS = frozenset({
    "sent", "warning", "flow-open", "flow-close", "closed", "listening", "fault", "dropped", "responded", "held",
    "released", "stalled", "profile", "rule-added", "rule-removed", "abandoned"})
# What a line's text looks like on a terminal: faults stand out, losses most.
_STYLES = {"loss": "bold red", "fault": "yellow", "answer": "magenta", "profile": "bold cyan", "warning": "red",
           "flow": "dim"}


def wants_color(stream: TextIO) -> bool:
    """Colour on this stream? Only on a terminal, and never when ``NO_COLOR`` is set."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _seconds(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:g}s"


def _tag(rule: Any) -> str:
    return f" [{rule}]" if rule else ""


def _rules(detail: dict[str, Any]) -> str:
    rules = detail.get("rules")
    return f" [{', '.join(map(str, rules))}]" if isinstance(rules, list) and rules else ""


def _what(e: Event) -> str:
    """The message an event is about, in a word: ``INVITE``, ``200/INVITE``, or its summary."""
    from .ladder import _label

    return _label(e) if (e.method or e.status is not None or e.raw) else (e.summary or "message")


def _first_line(raw: bytes | None) -> str | None:
    if not raw:
        return None
    return readable(raw.split(b"\n", 1)[0].rstrip(b"\r")[:200].decode("utf-8", "surrogateescape"))


def write_escaped(stream: TextIO, text: str) -> None:
    """Write ``text``; on a stream whose encoding cannot take a character of it (a terminal in Latin-1, ASCII),
    that character as an escape instead."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))


class ConsolePrinter:
    """One line per relayed message, per thing a fault profile did, and per flow change or warning::

          3.512 fault      u1     ->dev  INVITE dropped [drop-invite]
          4.020 fault      u1     ->pbx  REGISTER answered 503 [register-503]
          9.000 profile                  profile → bye-drop (device 10.0.0.7)

    ``verbose`` adds the messages faultlab received and, under each message, its first line as on the wire.
    Colours only when ``color`` (default: ``stream`` is a terminal and ``NO_COLOR`` is not set); plain text
    otherwise. Text that came off the network is printed with its control characters escaped.
    """

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False, color: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self._console = None
        if color if color is not None else wants_color(self.stream):
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True, highlight=False, markup=False,
                                    emoji=False, soft_wrap=True)
        self._said_dropped: tuple | None = None  # the message whose drop a fault line has already told
        self._hold: dict[str, Any] = {}  # the hold rule just fired (its timeout), for the "held" line

    def __call__(self, event: Event) -> None:
        if event.kind not in _CONSOLE_KINDS and not (self.verbose and event.kind == "received"):
            return
        said = self.describe(event)
        if said is None:
            return
        text, style, arrow = said
        line = f"{event.t:10.3f} {event.kind:<10} {printable(event.flow or '-'):<6} {arrow:<6} "
        text = printable(text)
        first = _first_line(event.raw) if self.verbose else None
        if self._console is None:
            out = line + text + "\n"
            if first is not None:
                out += f"{'':>10} {'':<10} {'':<6} {'':<6} | {printable(first)}\n"
            write_escaped(self.stream, out)
            self.stream.flush()
            return
        from rich.text import Text

        look = _STYLES.get(style or "", "")
        out = Text()
        out.append(f"{event.t:10.3f} ", style="dim")
        out.append(line[11:], style=look if style == "flow" else "")
        out.append(text, style=look)
        if first is not None:
            out.append(f"\n{'':>10} {'':<10} {'':<6} {'':<6} | {printable(first)}", style="dim")
        try:
            self._console.print(out)
        except UnicodeEncodeError:  # a terminal whose encoding lacks a character ("→"): plain, escaped
            write_escaped(self.stream, out.plain + "\n")
        self.stream.flush()

    def describe(self, e: Event) -> tuple[str, str | None, str] | None:
        """(text, style, arrow) of the line for ``e``; None when it has none (a drop a fault line told)."""
        arrow = _ARROWS.get(e.direction or "", "")
        key = (e.flow, e.direction, e.call_id, e.cseq, e.summary)
        if e.kind in ("sent", "received"):
            text = e.summary or ""
            if "copy" in e.detail:
                text += f" (duplicate {e.detail['copy']})"
            elif "released" in e.detail:
                text += f" (held {e.detail['released']}, released)"
            return text, None, arrow
        if e.kind == "fault":
            return self._fault(e, key, arrow)
        if e.kind == "dropped":
            if self._said_dropped == key:
                self._said_dropped = None
                return None
            how = str(e.detail.get("how", "dropped"))
            if e.call_id is None and "hold" in e.detail and how.startswith("hold timed out"):
                return f"{_what(e)} dropped: hold {e.detail['hold']} timed out", "loss", arrow
            return f"{_what(e)} {how}{_rules(e.detail)}", "loss", arrow
        if e.kind == "responded":
            return f"{_what(e)} sent by faultlab", "answer", arrow
        if e.kind == "held":
            hold, self._hold = self._hold, {}
            timeout = hold.get("timeout")
            until = (f", up to {_seconds(timeout)} then {hold.get('then', 'drop')}" if timeout is not None
                     else ", until released")
            return f"{_what(e)} held as {e.detail.get('hold', '?')}{_rules(e.detail)}{until}", "fault", arrow
        if e.kind == "released":
            how = e.detail.get("how")
            return (f"{e.summary or 'message'} released from hold {e.detail.get('hold', '?')}"
                    + (f" ({how})" if how else ""), "fault", arrow)
        if e.kind == "stalled":
            return f"connection stalled {_seconds(e.detail.get('for', ''))}".rstrip(), "fault", arrow
        if e.kind == "profile":
            name = e.detail.get("profile")
            device = e.detail.get("device")
            return (f"profile → {name if name else 'none (faithful relay)'}"
                    + (f" (device {device})" if device else ""), "profile", "")
        if e.kind in ("rule-added", "rule-removed"):
            device = e.detail.get("device")
            verb = "added" if e.kind == "rule-added" else "removed"
            return (f"rule {e.detail.get('rule', '?')} {verb}" + (f" (device {device})" if device else ""),
                    "profile", "")
        if e.kind == "abandoned":  # given up unsent: held or delayed when the proxy stopped or the connection closed
            return f"{_what(e)} abandoned ({e.detail.get('reason', '?')})", "loss", arrow
        if e.kind == "warning":
            text = str(e.detail.get("message", ""))
            if e.summary:
                text += f" [{e.summary}]"
            return text, "warning", arrow
        return " ".join(filter(None, [e.transport, e.peer, *(f"{k}={v}" for k, v in e.detail.items())])), \
            "flow", arrow

    def _fault(self, e: Event, key: tuple, arrow: str) -> tuple[str, str | None, str] | None:
        d = e.detail
        action, rule = d.get("action"), d.get("rule")
        link = rule == "link"
        tag = "" if link else _tag(rule)
        what = _what(e) if (e.summary or e.method or e.status is not None) else None
        subject = what or "connection"
        if action == "drop":
            self._said_dropped = key
            return f"{subject} dropped{tag}", "loss", arrow
        if action == "respond":
            return f"{subject} answered {d.get('status', '?')}{tag}", "answer", arrow
        if action == "delay":
            queued = f", {_seconds(d['queued'])} queued" if "queued" in d else ""
            return f"{subject} delayed {_seconds(d.get('delay'))}{' on the link' if link else tag}{queued}", \
                "fault", arrow
        if action == "hold":
            self._hold = dict(d)
            return None  # the "held" line that follows says it, with the hold's id
        if action == "duplicate":
            if link:
                return f"{subject} duplicated on the link ({d.get('packet', 'message')})", "fault", arrow
            return f"{subject} duplicated x{d.get('copies', 1)}{tag}", "fault", arrow
        if action == "loss":
            packet = d.get("packet", "message")
            name = subject if packet == "message" else f"{subject} {packet}"
            if "added" in d:
                return (f"{name} lost on the link, resent {d.get('tcp_retransmissions', '?')}x "
                        f"(+{_seconds(d['added'])})", "fault", arrow)
            if packet == "message":
                self._said_dropped = key
            return f"{name} lost on the link", "loss", arrow
        if action in ("close", "reset"):
            when = d.get("when", "after")
            verb = "reset" if action == "reset" else "closed"
            if what is None:
                return f"connection {verb} on connect{tag}", "loss", arrow
            if when == "before":
                self._said_dropped = key
                return f"connection {verb} instead of sending {what}{tag}", "loss", arrow
            return f"connection {verb} after {what}{tag}", "loss", arrow
        if action == "stall":
            how = f" {d['for']}" if d.get("for") else ""
            return (f"connection stalled{how} {'on connect' if what is None else 'after ' + what}{tag}",
                    "fault", arrow)
        if action == "edit":
            changes = [f"set {', '.join(map(str, d['set']))}"] if d.get("set") else []
            if d.get("removed"):
                changes.append(f"removed {', '.join(map(str, d['removed']))}")
            if d.get("edit_error"):
                changes.append(f"not edited: {d['edit_error']}")
            return f"{subject} edited{tag}" + (f" ({'; '.join(changes)})" if changes else ""), "fault", arrow
        if action == "reorder":
            return f"{subject} reordered on the link", "fault", arrow
        if action == "error":
            return f"rule{tag} failed on {subject}: {d.get('error', '?')}", "warning", arrow
        return f"{subject}: {action}{tag}", "fault", arrow
