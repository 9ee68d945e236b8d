"""``faultlab ca``: the lab CA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from faultlab.cli._common import ConfdirOption, failing

app = typer.Typer(help="The lab CA that signs faultlab's TLS certificates for devices.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
_fail = failing("faultlab")


def _warnings_to_stderr() -> None:
    """What the CA says it did (a key made private) goes to stderr as one ``faultlab:`` line."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="faultlab: %(message)s")


@app.command("init")
def ca_init(
    confdir: ConfdirOption = None,
    force: Annotated[bool, typer.Option(help="Replace an existing CA (devices must trust the new one).")] = False,
) -> None:
    """Create the lab CA (ca.key is written with mode 0600)."""
    from faultlab.ca import CAError, LabCA, default_confdir

    _warnings_to_stderr()
    try:
        ca = LabCA.init(confdir or default_confdir(), force=force)
    except CAError as exc:
        _fail(str(exc))
    typer.echo(f"lab CA created: {ca.cert_path}")
    typer.echo(f"sha256 fingerprint: {ca.fingerprint}")


@app.command("export")
def ca_export(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the CA certificate (PEM) here "
                                                "instead of standard output.", dir_okay=False)] = None,
    mobileconfig: Annotated[Optional[Path], typer.Option(
        "--mobileconfig", metavar="FILE", dir_okay=False,
        help="Write an iOS configuration profile (.mobileconfig, unsigned) carrying the CA here. After "
             "installing it, enable full trust in Settings > General > About > Certificate Trust Settings. "
             "Without --out, nothing goes to standard output.")] = None,
    confdir: ConfdirOption = None,
) -> None:
    """Write the lab CA certificate (PEM), or an iOS profile carrying it, for devices to trust."""
    from faultlab.ca import CAError, LabCA, default_confdir

    _warnings_to_stderr()
    try:
        ca = LabCA.load(confdir or default_confdir())
        if mobileconfig is not None:
            ca.export_mobileconfig(mobileconfig)
            typer.echo(f"wrote {mobileconfig} (iOS profile \"faultlab lab CA\"; then enable full trust for "
                       f"\"{ca.common_name}\" in Settings > General > About > Certificate Trust Settings)", err=True)
        if out is not None:
            ca.export(out)
            typer.echo(f"wrote {out}", err=True)
    except CAError as exc:
        _fail(str(exc))
    if out is None and mobileconfig is None:
        typer.echo(ca.cert_pem.decode("ascii"), nl=False)
