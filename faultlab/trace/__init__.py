"""The timeline: one event model, JSONL on disk, console lines."""

from ._event import Event
from ._sinks import ConsolePrinter, JsonlWriter, Trace, read_jsonl

__all__ = ["ConsolePrinter", "Event", "JsonlWriter", "Trace", "read_jsonl"]
