"""The one error type of :mod:`faultlab.faults`: a profile that cannot run."""

from __future__ import annotations

from typing import Any

from ..tables import Refused

__all__ = ["ProfileError", "UnitError", "MISSING"]


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()
"""``ProfileError.value`` when a required key is absent."""


class ProfileError(ValueError):
    """A profile that is not valid, named so that a person can fix it.

    ``str(err)`` is one line: ``"<file>: <key path>: <bad value!r> — <what is allowed>"``,
    e.g. ``profiles/x.toml: rules[2].action.delay: '3' — a duration with a unit: 250ms, 3s, 1.5s, 2m``.
    The parts are kept as attributes: ``source`` (file or ``"<string>"``), ``key``
    (the TOML key path; ``""`` for the whole file), ``value`` (the offending value,
    :data:`MISSING` for a missing key) and ``allowed``.
    """

    def __init__(self, source: str, key: str, value: Any, allowed: str) -> None:
        self.source = source
        self.key = key
        self.value = value
        self.allowed = allowed
        if not key and value is MISSING:  # about the whole file
            super().__init__(f"{source}: {allowed}")
            return
        parts = [source]
        if key:
            parts.append(key)
        parts.append("missing" if value is MISSING else repr(value))
        super().__init__(f"{': '.join(parts)} — {allowed}")


class UnitError(Refused):
    """A value with a missing or unknown unit (from ``parse_duration`` & co).

    ``value`` is the text given, ``allowed`` says what is accepted; the loader
    turns it into a :class:`ProfileError` that adds the file and key. A ``ValueError``
    (through :class:`faultlab.tables.Refused`, which says what is allowed).
    """
