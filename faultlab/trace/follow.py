"""Following a trace file while it is written (``faultlab trace follow``): read what was appended, draw its rows.

Two pieces, no event loop of their own (the command polls; tests drive them directly):

* :class:`TraceTail` returns the events appended to a file since the last call: whole lines only (a last line
  without its newline waits for the next call), a bad whole line is an error naming it, and a file truncated
  or replaced (a new run with the same ``--trace``) is noticed and read again from its start.
* :class:`LadderPrinter` draws :class:`~faultlab.trace.ladder.LiveLadder` rows one line at a time: a
  ``Call-ID`` line whenever the call changes, the column header again when a new party appears.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO

from ._event import Event
from ._sinks import parse_event_line, printable, write_escaped
from .ladder import PARTY_ORDER, LadderLayout

__all__ = ["LadderPrinter", "TraceFileError", "TraceTail"]

READ_SIZE = 1 << 20  # bytes read per call: a long trace is caught up with in bounded steps
MAX_LINE = 64 << 20  # a "line" longer than this is not a trace event
_DEFAULT_PARTIES = ("device", "faultlab", "pbx")


class TraceFileError(Exception):
    """A file that cannot be read as a faultlab trace; the message names the file and, where it applies, the line."""


class TraceTail:
    """The events appended to ``path`` since the last :meth:`read`.

    After a read, ``more`` says whether the file has more bytes already there (read again at once), and
    ``restarted`` whether the file was truncated or replaced since the previous read (what came before is
    from another run: start over).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.more = False
        self.restarted = False
        self._file = self._open()
        self._buf = b""
        self._offset = 0  # bytes of the file consumed into _buf
        self._lineno = 0

    def _open(self):
        try:
            return open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise TraceFileError(f"{self.path}: no such file (--wait waits for it)") from None
        except IsADirectoryError:
            raise TraceFileError(f"{self.path}: is a directory, not a trace file") from None
        except OSError as exc:
            raise TraceFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._file.close()

    def _start_over(self, reopen: bool) -> None:
        if reopen:
            try:
                new = self._open()
            except TraceFileError:
                return  # gone for now: keep the old one, look again next time
            self._file.close()
            self._file = new
        self._file.seek(0)
        self._buf, self._offset, self._lineno = b"", 0, 0
        self.restarted = True

    def read(self) -> list[Event]:
        self.restarted = False
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < self._offset:  # truncated: a new run writes it from the start
                self._start_over(reopen=False)
            elif size == self._offset:
                try:
                    st = os.stat(self.path)
                except OSError:
                    st = None
                if st is not None and st.st_ino != os.fstat(self._file.fileno()).st_ino:
                    self._start_over(reopen=True)  # replaced by a new file of the same name
            data = self._file.read(READ_SIZE)
        except OSError as exc:
            raise TraceFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self._offset += len(data)
        self.more = len(data) == READ_SIZE
        buf = self._buf + data
        events: list[Event] = []
        start = 0
        while (end := buf.find(b"\n", start)) != -1:
            line = buf[start:end + 1]
            start = end + 1
            self._lineno += 1
            if not line.strip():
                continue
            try:
                events.append(parse_event_line(line))
            except ValueError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TraceFileError(
                    f"{self.path}: line {self._lineno} is not a faultlab trace event ({reason})") from None
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE:
            raise TraceFileError(f"{self.path}: line {self._lineno + 1} is longer than {MAX_LINE >> 20} MiB "
                                 "without a newline: not a faultlab trace")
        return events


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """Row text safe for a terminal (labels and notes can carry what came off the network)."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}


class LadderPrinter:
    """Writes ladder rows to ``stream`` as they come, in ``width`` columns; ``color``: faults in colour
    (red for what was lost, yellow for the rest), through rich."""

    def __init__(self, stream: TextIO, *, width: int = 100, color: bool = False) -> None:
        self.stream = stream
        self.width = width
        self._console = None
        if color:
            from rich.console import Console

            self._console = Console(file=stream, force_terminal=True, highlight=False, markup=False, emoji=False,
                                    soft_wrap=True)
        self.reset()

    def reset(self) -> None:
        """Start again (a new run in the same file): the next row prints the header and its Call-ID."""
        self._names: list[str] = list(_DEFAULT_PARTIES)
        self._layout: LadderLayout | None = None
        self._call: str | None = None

    def _order(self, names: list[str]) -> list[str]:
        return sorted(names, key=lambda p: (PARTY_ORDER.index(p) if p in PARTY_ORDER else len(PARTY_ORDER),
                                            names.index(p)))

    def rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        for call_id, row in rows:
            row = _clean(row)
            new = [p for p in (row["from"], row["to"]) if p is not None and p not in self._names]
            if new or self._layout is None:
                self._names = self._order(self._names + new)
                self._layout = LadderLayout(self._names, self.width)
                self._write(self._layout.header(), "bold")
                self._call = None
            if call_id != self._call:
                self._call = call_id
                self._write(f"Call-ID {printable(call_id)}"[: self.width], "bold cyan")
            line = self._layout.line(row)
            fault = row.get("fault")
            style = None if not fault else "bold red" if fault.startswith("✗") else "yellow"
            self._write(line, None, split=self._layout.right if style else None, tail_style=style)
        self.stream.flush()

    def note(self, text: str) -> None:
        self._write(text, "dim")
        self.stream.flush()

    def _write(self, line: str, style: str | None, *, split: int | None = None, tail_style: str | None = None) -> None:
        if self._console is None:
            write_escaped(self.stream, line + "\n")
            return
        from rich.text import Text

        if split is None:
            self._console.print(Text(line, style=style or ""))
            return
        text = Text(line[:split])
        text.append(line[split:], style=tail_style or "")
        self._console.print(text)
