"""The timeline: one event model, JSONL on disk, console lines; pcap and ladder views of it."""

from ._event import Event
from ._sinks import ConsolePrinter, JsonlWriter, read_jsonl
from ._trace import Trace
from .ladder import call_ids, ladder_rows, render_ladder
from .pcap import wire_messages, write_pcap

__all__ = ["ConsolePrinter", "Event", "JsonlWriter", "Trace", "call_ids", "ladder_rows", "read_jsonl",
           "render_ladder", "wire_messages", "write_pcap"]
