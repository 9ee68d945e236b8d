"""``faultlab call``: the lab's caller as a process (being written; see issue 5)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Call a SIP user through a PBX with the lab's scripted caller.", add_completion=False,
                  pretty_exceptions_enable=False)
