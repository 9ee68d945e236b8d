"""The HEP options shared by `proxy`, `pbx` and `lab run`: where to send HEP v3, as which capture agent, with
which password (docs/hep.md). Imports nothing heavy: `faultlab --help` loads it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

HepOption = Annotated[Optional[str], typer.Option(
    "--hep", metavar="udp:HOST:PORT|tcp:HOST:PORT",
    help="Also send every SIP message (both hops, TLS decrypted) and faultlab's fault decisions as HEP v3 to "
         "this collector (Homer's heplify-server, sngrep -L): e.g. udp:127.0.0.1:9060. Never slows the "
         "relay: what the collector cannot take is dropped and counted.")]
HepIdOption = Annotated[int, typer.Option(
    "--hep-id", metavar="N", min=0, max=2**32 - 1,
    help="--hep: the capture agent id the collector shows for faultlab's packets.")]
HepPasswordOption = Annotated[Optional[str], typer.Option(
    "--hep-password", envvar="FAULTLAB_HEP_PASSWORD",
    help="--hep: the collector's password (HEP auth key), if it asks for one.")]


def hep_target(value: str | None, hep_id: int, password: str | None):
    """The parsed --hep target (None without --hep); exits with what to write when it is wrong."""
    from faultlab.trace.hep import parse_target

    from ._common import fail

    if value is None:
        if password is not None or hep_id != 1:
            fail("--hep-id and --hep-password go with --hep udp:HOST:PORT (or tcp:HOST:PORT)")
        return None
    try:
        return parse_target(value)
    except ValueError as exc:
        fail(f"--hep: {exc}")


def open_sender(target, hep_id: int, password: str | None, warn, *, option: str = "--hep"):
    """A :class:`~faultlab.net.hep.HepSender` to ``target`` (a HepTarget, or the text of ``option`` to parse);
    exits with the reason, naming ``option``, when it cannot be made (a host that does not resolve)."""
    from faultlab.net.hep import HepSender
    from faultlab.trace.hep import parse_target

    from ._common import fail

    try:
        return HepSender(parse_target(target) if isinstance(target, str) else target, capture_id=hep_id,
                         password=password, warn=warn)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def send_case(sender, case) -> None:
    """Every run of a lab case (its events, recorded in virtual or real time) to ``sender``, each run on its own:
    a lab run sends each case when it has run."""
    for run in case.runs:
        sender.new_run()
        for event in run.events:
            sender(event)
