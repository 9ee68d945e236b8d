"""``faultlab profiles``: the fault profile library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faultlab.cli._common import failing

app = typer.Typer(help="The fault profile library: list, show, check.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
_fail = failing("faultlab")


@app.command("list")
def profiles_list() -> None:
    """List the profile library with each one-line summary and where it comes from: built-in, or a team library
    (faultlab --library DIR, FAULTLAB_PATH), whose profiles replace built-ins of the same name."""
    from faultlab.faults import ProfileError, profile_entries
    from faultlab.library import where

    try:
        entries = profile_entries()
    except ProfileError as exc:
        _fail(str(exc))
    if not entries:
        _fail(f"no profiles found; looked in: {where('profiles')}")
    width = max(len(e.item.name) for e in entries)
    origin_width = max(len(e.origin) for e in entries)
    for e in entries:
        typer.echo(f"{e.item.name:<{width}}  {e.origin:<{origin_width}}  {e.item.summary}")
    for e in entries:
        if e.hides:
            typer.echo(f"note: {e.item.name} from {e.origin} replaces the {' and '.join(e.hides)} profile of that "
                       "name", err=True)


@app.command("show")
def profiles_show(name: Annotated[str, typer.Argument(metavar="NAME|FILE")]) -> None:
    """Print a profile's TOML (example: faultlab profiles show register-503)."""
    from faultlab.faults import ProfileError, load_profile

    try:
        profile = load_profile(name)
    except ProfileError as exc:
        _fail(str(exc))
    typer.echo(f"# {profile.source}")
    typer.echo(profile.text, nl=not profile.text.endswith("\n"))


@app.command("check")
def profiles_check(files: Annotated[list[Path], typer.Argument(metavar="FILE...")]) -> None:
    """Validate profile files; exit 1 if any is bad (example: faultlab profiles check my.toml)."""
    from faultlab.faults import ProfileError, load_profile

    bad = 0
    for path in files:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            bad += 1
            typer.secho(f"FAIL {exc}", err=True, fg=typer.colors.RED)
        else:
            typer.echo(f"ok   {path}: {profile.name}: {len(profile.rules)} rule(s)"
                       f"{', link' if profile.link else ''} — {profile.summary}")
    if bad:
        raise typer.Exit(1)
