"""What every command shares: failing with a message, the lab CA's --confdir option, running trio with its
errors unwrapped, stopping on a signal, and printing addresses. Imports nothing heavy: `faultlab --help`
loads it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional, TypeVar

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


E = TypeVar("E", bound=BaseException)


def find_in_group(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` error in ``exc`` or anywhere inside its (nested) exception groups, else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_in_group(inner, kind)
            if found is not None:
                return found
    return None


@asynccontextmanager
async def stopped_by(*signals: int, on_signal: Callable[[int], object] | None = None) -> AsyncIterator:
    """A trio nursery that the first of ``signals`` stops: it calls ``on_signal(signum)``, or by default
    cancels the nursery. The signals are caught from before the nursery opens until it has closed, so a
    second one while the command tidies up does not interrupt it. The nursery also waits for the signal:
    a command that ends by itself cancels its nursery."""
    import trio

    with trio.open_signal_receiver(*signals) as receiver:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in receiver:
                    if on_signal is None:
                        nursery.cancel_scope.cancel()
                    else:
                        on_signal(signum)
                    return

            nursery.start_soon(watch)
            yield nursery


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
