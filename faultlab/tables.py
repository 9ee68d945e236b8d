"""Reading TOML tables with errors a person can act on: the one kit for profiles and scenarios.

Pure (no I/O beyond ``tomllib``): a :class:`Table` wraps one table of a parsed TOML document. Values are
taken by key and converted by small callables that raise ``ValueError``/``TypeError`` (or :class:`Refused`,
which says itself what is allowed); the table turns every failure into the domain's own error, naming the
file, the key path and what is allowed. Unknown keys are refused when the table is opened, with a "did you
mean" hint.

Each domain subclasses :class:`Table` and sets ``error_type`` (its error factory, called as
``error_type(source, key, value, allowed)``) and the few words its messages use
(``faultlab.faults`` for profiles, ``faultlab.lab.scenario`` for scenarios).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, TypeVar

__all__ = ["Table", "Refused", "text", "boolean", "true", "integer", "choice", "one_of", "listed", "toml_value"]

T = TypeVar("T", bound="Table")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Refused(ValueError):
    """A converter's refusal that says what is allowed (e.g. a duration without a unit).

    ``value`` is the text given, ``allowed`` replaces the table's own wording in the error.
    """

    def __init__(self, value: Any, allowed: str) -> None:
        self.value = value
        self.allowed = allowed
        super().__init__(f"{value!r} — {allowed}")


class Table:
    """One TOML table being read: values are taken by key and converted; unknown keys are refused at once.

    ``allowed_keys`` as a tuple is listed in its order; as a set, sorted (and the first unknown key in sorted
    order is the one reported). ``path`` is the key path of the table (``""`` at the top of the file).
    """

    error_type: ClassVar[Callable[[str, str, Any, str], Exception]] = ValueError  # type: ignore[assignment]
    """The domain's error factory: ``error_type(source, key, value, allowed)``."""
    missing: ClassVar[Any] = None
    """The ``value`` of an error about a key that is absent."""
    not_a_table: ClassVar[str] = "a table"
    allowed_label: ClassVar[str] = "allowed"
    unknown_shows_value: ClassVar[bool] = False
    """Unknown-key errors carry the key's value (else ``missing``)."""
    quote_keys: ClassVar[bool] = False
    """Key path parts that are not bare TOML keys are written in double quotes."""

    def __init__(self, data: Any, path: str, source: str, allowed_keys: Collection[str]) -> None:
        if not isinstance(data, Mapping):
            raise self.error_type(source, path, data, self.not_a_table)
        self.data = data
        self.path = path
        self.source = source
        self.allowed_keys = allowed_keys
        ordered = isinstance(allowed_keys, (tuple, list))
        listing = list(allowed_keys) if ordered else sorted(allowed_keys)
        unknown = [str(k) for k in data if k not in allowed_keys]
        if unknown:
            name = unknown[0] if ordered else sorted(unknown)[0]
            close = difflib.get_close_matches(name, listing, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            value = data[name] if self.unknown_shows_value else self.missing
            raise self.error_type(
                source, self.key(name), value, f"unknown key{hint}; {self.allowed_label}: {', '.join(listing)}"
            )

    @classmethod
    def read(cls: type[T], text: str, source: str, allowed_keys: Collection[str]) -> T:
        """The top table of the TOML document ``text``; a syntax error is the domain's error about the file."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise cls.error_type(source, "", cls.missing, f"TOML syntax error: {e}") from None
        return cls(data, "", source, allowed_keys)

    def key(self, name: str) -> str:
        """The key path of ``name`` in this table."""
        if not self.path:
            return name
        if self.quote_keys and not _BARE_KEY.fullmatch(name):
            name = f'"{name}"'
        return f"{self.path}.{name}"

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def error(self, name: str, allowed: str) -> Exception:
        """The domain's error about the key ``name`` of this table (present or not)."""
        return self.error_type(self.source, self.key(name), self.data.get(name, self.missing), allowed)

    def error_at(self, key: str, value: Any, allowed: str) -> Exception:
        """The domain's error about any key path of this file (e.g. inside a value of this table)."""
        return self.error_type(self.source, key, value, allowed)

    def whole(self, allowed: str) -> Exception:
        """The domain's error about this table as a whole."""
        return self.error_type(self.source, self.path, dict(self.data), allowed)

    def get(self, name: str, conv: Callable[[Any], Any], allowed: str, default: Any = None) -> Any:
        """``conv(value)`` of the key ``name``, or ``default`` when absent. A ``ValueError``/``TypeError``
        (or ``re.error``) becomes the domain's error with ``allowed`` (plus the exception's text, if any)."""
        if name not in self.data:
            return default
        try:
            return conv(self.data[name])
        except self.error_type:  # type: ignore[misc]
            raise
        except Refused as e:
            raise self.error_type(self.source, self.key(name), self.data[name], e.allowed) from None
        except (ValueError, TypeError, re.error) as e:
            detail = f" ({e})" if str(e) else ""
            raise self.error(name, allowed + detail) from None

    def require(self, name: str, conv: Callable[[Any], Any], allowed: str) -> Any:
        """:meth:`get` for a key that must be there."""
        if name not in self.data:
            raise self.error(name, "required: " + allowed)
        return self.get(name, conv, allowed)

    def sub(self: T, name: str, allowed_keys: Collection[str]) -> T:
        """The table under ``name`` (an empty one when absent), checked the same way."""
        return type(self)(self.data.get(name, {}), self.key(name), self.source, allowed_keys)


# ---------------------------------------------------------------------------
# converters: raise ValueError/TypeError without text (the table adds what is allowed) or with a detail


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def true(value: Any) -> bool:
    if value is not True:
        raise ValueError
    return True


def integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    """A whole number (not a boolean) from ``lo`` to ``hi`` (None: no upper bound)."""

    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        if value < lo or (hi is not None and value > hi):
            raise ValueError
        return value

    return conv


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in choices:
            raise ValueError
        return value

    return conv


def one_of(choices: tuple[str, ...]) -> str:
    """``one of "a", "b"``: the words for what :func:`choice` allows."""
    return "one of " + ", ".join(f'"{c}"' for c in choices)


def listed(value: Any) -> list[Any]:
    """A value or a non-empty list of values, as a list."""
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list matches nothing")
        return value
    return [value]


def toml_value(value: Any) -> str:
    """``value`` (bool, number, string, list, table) as TOML text: what a TOML file would say for it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")
