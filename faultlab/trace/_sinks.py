"""Where events go: memory, a JSONL file, the console."""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TextIO

from ._event import Event

Sink = Callable[[Event], None]


class Trace:
    """Fans every event out to its sinks, and keeps the recent ones in memory.

    ``keep`` bounds the in-memory buffer (``None``: keep all, for tests and
    short runs).
    """

    def __init__(self, *, keep: int | None = None) -> None:
        self.events: collections.deque[Event] = collections.deque(maxlen=keep)
        self._sinks: list[Sink] = []
        self._closers: list[Callable[[], None]] = []

    def add_sink(self, sink: Sink, close: Callable[[], None] | None = None) -> None:
        self._sinks.append(sink)
        if close is not None:
            self._closers.append(close)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        for sink in self._sinks:
            sink(event)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


class JsonlWriter:
    """Appends one JSON object per line. Buffered; flushed on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = open(path, "w", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def __call__(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":")))
        self._file.write("\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_jsonl(path: Path) -> Iterator[Event]:
    """Read a trace back; raises ``ValueError`` naming the line on bad input."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Event.from_json(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a faultlab trace event: {exc}") from None


_ARROWS = {"to-pbx": "->pbx", "to-device": "->dev"}
# The console shows what crossed and what went wrong; "received" is implied
# by "sent" (both are in the JSONL trace).
_CONSOLE_KINDS = {"sent", "warning", "flow-open", "flow-close", "closed", "listening"}


class ConsolePrinter:
    """One line per relayed message and per flow change or warning."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        if event.kind not in _CONSOLE_KINDS:
            return
        arrow = _ARROWS.get(event.direction or "", "")
        if event.kind == "sent":
            text = event.summary or ""
        elif event.kind == "warning":
            text = event.detail.get("message", "")
            if event.summary:
                text += f" [{event.summary}]"
        else:
            text = " ".join(filter(None, [event.transport, event.peer,
                                          *(f"{k}={v}" for k, v in event.detail.items())]))
        line = f"{event.t:10.3f} {event.kind:<10} {event.flow or '-':<6} {arrow:<6} {text}\n"
        self.stream.write(line)
        self.stream.flush()
