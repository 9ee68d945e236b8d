"""The profile's dialect of the TOML kit (:mod:`faultlab.tables`): its errors are :class:`ProfileError`."""

from __future__ import annotations

from ..tables import Table
from ._errors import MISSING, ProfileError

__all__ = ["ProfileTable"]


class ProfileTable(Table):
    """A profile table (TOML or API JSON): errors name the file, the key path, the value and what is allowed."""

    error_type = ProfileError
    missing = MISSING
    not_a_table = "a table (e.g. { key = value })"
    allowed_label = "allowed here"
    unknown_shows_value = True
    quote_keys = True
