"""``faultlab profile``: switch a running proxy's faults through its control API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from faultlab.cli._common import failing

app = typer.Typer(help="Switch a running proxy's faults through its control API.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
_fail = failing("faultlab")


ApiUrl = Annotated[str, typer.Option("--api", metavar="URL", envvar="FAULTLAB_API",
                                     help="The proxy's control API, e.g. http://127.0.0.1:5099")]
ApiToken = Annotated[Optional[str], typer.Option("--api-token", envvar="FAULTLAB_API_TOKEN",
                                                 help="Bearer token, if the API requires one.")]


@app.command("set")
def profile_set(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Profile name, or 'none' for no faults.")],
    api: ApiUrl = "http://127.0.0.1:5099",
    device: Annotated[Optional[str], typer.Option(help="Only for this device: IP or IP:PORT.")] = None,
    api_token: ApiToken = None,
) -> None:
    """Switch the running proxy's profile (example: faultlab profile set register-drop --api http://127.0.0.1:5099)."""
    from faultlab.api.client import ApiClientError, set_profile

    try:
        active = set_profile(api, None if name == "none" else name, device=device, token=api_token)
    except ApiClientError as exc:
        _fail(str(exc), 1)
    where = f" for {device}" if device else ""
    typer.echo(f"profile{where}: {active['name'] if active else 'none'}")


@app.command("active")
def profile_active(api: ApiUrl = "http://127.0.0.1:5099", api_token: ApiToken = None) -> None:
    """Show the running proxy's active profiles (global and per device)."""
    from faultlab.api.client import ApiClientError, get_active

    try:
        active = get_active(api, token=api_token)
    except ApiClientError as exc:
        _fail(str(exc), 1)
    glob = active.get("global")
    typer.echo(f"global: {glob['name'] if glob else 'none'}")
    for device, entry in active.get("devices", {}).items():
        typer.echo(f"{device}: {entry['name'] if entry else 'none'}")


@app.command("release")
def profile_release(
    hold_id: Annotated[Optional[str], typer.Argument(help="The hold to release; all when omitted.")] = None,
    api: ApiUrl = "http://127.0.0.1:5099",
    api_token: ApiToken = None,
) -> None:
    """Release messages a `hold` rule keeps back."""
    from faultlab.api.client import ApiClientError, release

    try:
        count = release(api, hold_id, token=api_token)
    except ApiClientError as exc:
        _fail(str(exc), 1)
    typer.echo(f"released {count} message(s)")
