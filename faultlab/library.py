"""Where profiles and scenarios are found by name: the built-in library and a team's own libraries.

The built-in library ships inside the package (``faultlab/profiles`` and ``faultlab/scenarios``, package data read
through :mod:`importlib.resources`; in the source tree they are the top-level ``profiles/`` and ``scenarios/``).
A team adds its own with a search path: ``FAULTLAB_PATH`` (directories separated by ``os.pathsep``, ``:`` on
Linux) or ``faultlab --library DIR`` (repeatable; :func:`add_to_path` puts those first in ``FAULTLAB_PATH``, so
child processes such as a sweep's workers search the same way).

A library DIR holds ``DIR/profiles/*.toml`` and/or ``DIR/scenarios/*.toml``. A DIR with neither folder may hold
its TOML files directly: a file with a top-level ``id`` or ``slug`` key is a scenario, any other a profile. When
either folder exists, only the folders are read.

Search order: the libraries in path order (``--library`` ones first), then the built-in library. The first entry
of a name wins (a profile by its name, a scenario by its id or slug): a team's ``register-drop.toml`` replaces
the built-in one, and :attr:`Entry.hides` says which entries it hides, so listings can say so.

Pure apart from reading ``os.environ`` and the file system: no trio, no printing.
"""

from __future__ import annotations

import importlib.resources
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["BUILTIN", "ENV", "KINDS", "Entry", "LibraryError", "Source", "add_to_path", "builtin_dir", "check_dir",
           "files", "layer", "search_path", "where"]

ENV = "FAULTLAB_PATH"
BUILTIN = "built-in"
KINDS = ("profiles", "scenarios")
LAYOUT = "DIR/profiles/*.toml and/or DIR/scenarios/*.toml (or the .toml files directly in DIR)"
_SNIFF_LIMIT = 1 << 20  # a loose TOML file larger than this is not read to tell its kind (it counts as a profile)

T = TypeVar("T")


class LibraryError(ValueError):
    """A library directory that cannot be used: ``str()`` is ``"<where>: <problem>"``."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # pickles with its two arguments (e.g. back from a sweep worker)
        return (LibraryError, (self.where, self.problem))


@dataclass(frozen=True)
class Source:
    """One TOML file of a library: where it comes from (:data:`BUILTIN` or the library directory) and its path."""

    origin: str
    path: Path


@dataclass(frozen=True)
class Entry(Generic[T]):
    """The entry that a name finds: the item, its source, and the origins of same-named entries it hides."""

    item: T
    source: Source
    hides: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        return self.source.origin


def builtin_dir(kind: str) -> Path:
    """The built-in library's folder of ``kind`` (``"profiles"`` or ``"scenarios"``) inside the installed package."""
    _kind(kind)
    return Path(str(importlib.resources.files("faultlab") / kind)).resolve()


def check_dir(path: str | Path, where: str) -> Path:
    """``path`` as an absolute library directory, or :class:`LibraryError` (``where`` names the setting) when it
    is not a directory or holds nothing faultlab reads."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.is_dir():
        what = "is not a directory" if p.exists() else "no such directory"
        raise LibraryError(f"{where} {path}", f"{what}; a library directory holds {LAYOUT}")
    if not any(_kind_files(p, kind) for kind in KINDS):
        raise LibraryError(f"{where} {path}", f"holds no profiles or scenarios; a library directory holds {LAYOUT}")
    return p


def search_path(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The team libraries of ``FAULTLAB_PATH``, in order, each checked (:class:`LibraryError` if one is unusable)."""
    env = os.environ if environ is None else environ
    out: list[Path] = []
    for item in env.get(ENV, "").split(os.pathsep):
        if item.strip():
            p = check_dir(item, ENV)
            if p not in out:
                out.append(p)
    return out


def add_to_path(dirs: Iterable[str | Path], environ: MutableMapping[str, str] | None = None) -> list[Path]:
    """Check ``dirs`` (``--library DIR``) and put them, in order, at the front of ``FAULTLAB_PATH`` in
    ``environ`` (default: this process's environment, which child processes inherit). Returns them."""
    env = os.environ if environ is None else environ
    added = [check_dir(d, "--library") for d in dirs]
    rest = [item for item in env.get(ENV, "").split(os.pathsep) if item.strip()]
    env[ENV] = os.pathsep.join([str(p) for p in added] + rest)
    return added


def files(kind: str, environ: Mapping[str, str] | None = None) -> list[Source]:
    """Every TOML file of ``kind``, in search order: each team library's, then the built-in library's."""
    out = [Source(str(d), p) for d in search_path(environ) for p in _kind_files(d, kind)]
    builtin = builtin_dir(kind)
    if builtin.is_dir():
        out += [Source(BUILTIN, p) for p in sorted(builtin.glob("*.toml"))]
    return out


def where(kind: str, environ: Mapping[str, str] | None = None) -> str:
    """Where ``kind`` is looked up, for messages: ``"built-in (/…/faultlab/profiles), /team/lib"``."""
    try:
        team = [str(d) for d in search_path(environ)]
    except LibraryError as exc:
        team = [str(exc)]
    builtin = builtin_dir(kind)
    state = "" if builtin.is_dir() else ", missing: a broken installation, reinstall faultlab"
    env = team or [f"no {ENV}, no --library"]
    return ", ".join(env + [f"{BUILTIN} ({builtin}{state})"])


def layer(found: Iterable[tuple[Source, T]], keys: Callable[[T], Iterable[str]]) -> list[Entry[T]]:
    """The entries that win, in the order found: an item whose key (any of ``keys(item)``) an earlier library
    already gave is hidden (recorded in the winner's ``hides``). Two items of one key in the same library are a
    :class:`LibraryError`."""
    winners: list[list] = []  # [item, source, hides]
    taken: dict[str, int] = {}
    for source, item in found:
        item_keys = list(dict.fromkeys(keys(item)))
        index = next((taken[k] for k in item_keys if k in taken), None)
        if index is None:
            for k in item_keys:
                taken[k] = len(winners)
            winners.append([item, source, []])
            continue
        winner = winners[index]
        if winner[1].origin == source.origin:
            key = next(k for k in item_keys if k in taken)
            raise LibraryError(str(source.path), f"{key} is already given by {winner[1].path} in the same library: "
                               "rename one of the two (or remove it)")
        if source.origin not in winner[2]:
            winner[2].append(source.origin)
    return [Entry(item, source, tuple(hides)) for item, source, hides in winners]


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    return kind


def _kind_files(directory: Path, kind: str) -> list[Path]:
    _kind(kind)
    if any((directory / k).is_dir() for k in KINDS):
        sub = directory / kind
        return sorted(sub.glob("*.toml")) if sub.is_dir() else []
    return [p for p in sorted(directory.glob("*.toml")) if _sniff(p) == kind]


def _sniff(path: Path) -> str:
    """A loose TOML file's kind: a scenario has a top-level ``id`` or ``slug``; anything else (including a file
    that does not read or parse, so that the profile loader reports it) is a profile."""
    try:
        if not path.is_file() or path.stat().st_size > _SNIFF_LIMIT:
            return "profiles"
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "profiles"
    return "scenarios" if "id" in data or "slug" in data else "profiles"
