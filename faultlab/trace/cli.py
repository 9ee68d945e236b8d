"""``faultlab trace``: views of a trace JSONL file (being written; see issue 6)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Views of a trace file: pcap for Wireshark, ladder diagrams.", add_completion=False,
                  pretty_exceptions_enable=False)
