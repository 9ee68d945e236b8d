"""What every command shares: failing with a message, the lab CA's --confdir option, running trio with its
errors unwrapped, and printing addresses. Imports nothing heavy: `faultlab --help` loads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

ConfdirOption = Annotated[
    Optional[Path],
    typer.Option("--confdir", help="Config directory holding the lab CA (default: $FAULTLAB_HOME or ~/.faultlab)",
                 file_okay=False),
]


def fail(message: str, code: int = 2, *, prefix: str = "faultlab") -> NoReturn:
    """Print ``PREFIX: message`` in red on stderr and exit with ``code`` (a message that already names faultlab
    is printed as it is)."""
    text = message if message.startswith("faultlab") else f"{prefix}: {message}"
    typer.secho(text, err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def failing(prefix: str) -> Callable[..., NoReturn]:
    """A command module's ``_fail``: :func:`fail` with its own prefix (``faultlab call: ...``)."""

    def _fail(message: str, code: int = 2) -> NoReturn:
        fail(message, code, prefix=prefix)

    return _fail


def single(group: BaseExceptionGroup) -> BaseException:
    """The one error inside nested nursery groups, so it can be reported plainly (a group of several stays)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_trio(main: Callable[[], Awaitable[object]]) -> None:
    """``trio.run(main)``, re-raising a lone error from inside exception groups as itself."""
    import trio

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise single(group) from None


def hostport(addr: tuple[str, int]) -> str:
    """``host:port``, IPv6 in brackets."""
    from faultlab.addr import format_hostport

    return format_hostport(*addr)
