"""TOML (or API JSON) -> validated :class:`Profile`; the profile library.

Everything is checked before anything runs: unknown keys, values of the
wrong type or unit, regexes that do not compile, actions that cannot go
together. Each problem is a :class:`ProfileError` naming the file, the key
path (``rules[2].action.delay``), the value and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import library
from ..tables import boolean
from ..tables import text as _text
from ._errors import MISSING, ProfileError
from ._load_link import LINK_TOP_KEYS, parse_link
from ._load_match import KNOWN_METHODS, MATCH_KEYS, parse_match
from ._model import Match, Profile, Rule
from ._table import ProfileTable
from .actions import ACTION_KEYS, parse_action

__all__ = [
    "parse_profile",
    "parse_rule",
    "load_profile",
    "list_profiles",
    "profile_entries",
    "profiles_dir",
    "KNOWN_METHODS",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_ALLOWED = "a name of letters, digits, '.', '_' and '-', starting with a letter or digit"

PROFILE_KEYS = ("name", "summary", "description", "rules", "link")
RULE_KEYS = ("name", "match", "action", "continue")


# ---------------------------------------------------------------------------
# rules


def parse_rule(
    data: Mapping[str, Any], *, source: str = "<api>", key: str = "rule", default_name: str | None = None
) -> Rule:
    """One rule from a table (TOML ``[[rules]]`` entry or API JSON object).

    ``name`` is required unless ``default_name`` is given. Raises :class:`ProfileError`.
    """
    t = ProfileTable(data, key, source, RULE_KEYS)
    if default_name is None:
        name = t.require("name", _name, _NAME_ALLOWED)
    else:
        name = t.get("name", _name, _NAME_ALLOWED, default_name)
    match = parse_match(t.sub("match", MATCH_KEYS)) if "match" in t else Match()
    if "action" not in t:
        raise t.error("action", "required: a table, e.g. action = { drop = true }")
    action = parse_action(t.sub("action", ACTION_KEYS), match)
    cont = t.get("continue", boolean, "true or false", False)
    if cont and action.terminal:
        raise t.error("continue", f"{action.kind!r} ends the message's way: no later rule can apply; remove continue")
    return Rule(name=name, match=match, action=action, continue_=cont, spec=_plain(data))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError
    return value


# ---------------------------------------------------------------------------
# link


# ---------------------------------------------------------------------------
# profiles


def parse_profile(text: str, *, source: str = "<string>") -> Profile:
    """A profile from TOML text. ``source`` names it in errors; when it is a
    ``.toml`` path, the profile's name defaults to (and must equal) the file's
    stem, otherwise to ``"unnamed"``."""
    t = ProfileTable.read(text, source, PROFILE_KEYS)
    stem = Path(source).stem if source.endswith(".toml") else None
    name = t.get("name", _name, _NAME_ALLOWED, stem or "unnamed")
    if stem is not None and name != stem:
        raise t.error("name", f"the file's name without .toml, {stem!r} (profiles are found by file name)")
    summary = t.get("summary", _text, "one line of text", "")
    if "\n" in summary:
        raise t.error("summary", "one line of text (put more in description)")
    description = t.get("description", _text, "text", "")
    rules: list[Rule] = []
    if "rules" in t:
        value = t.data["rules"]
        if not isinstance(value, list):
            raise t.error("rules", "an array of tables: [[rules]]")
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            rule = parse_rule(item, source=source, key=f"rules[{i}]", default_name=f"rule-{i + 1}")
            if rule.name in seen:
                raise ProfileError(
                    source, f"rules[{i}].name", rule.name, f"a unique name (rules[{seen[rule.name]}] has it already)"
                )
            seen[rule.name] = i
            rules.append(rule)
    link = parse_link(t.sub("link", LINK_TOP_KEYS)) if "link" in t else None
    return Profile(
        name=name,
        summary=summary,
        rules=tuple(rules),
        link=link,
        source=source,
        text=text,
        description=description,
    )


def profiles_dir() -> Path:
    """The built-in profile library: ``profiles/`` inside the installed package (the top-level ``profiles/`` of
    the source tree). A team's own libraries come first: :mod:`faultlab.library`."""
    return library.builtin_dir("profiles")


def list_profiles() -> list[Profile]:
    """Every profile a name finds (the team libraries' and the built-in ones they do not replace), loaded and
    validated, sorted by name."""
    return [entry.item for entry in profile_entries()]


def profile_entries() -> list[library.Entry[Profile]]:
    """:func:`list_profiles` with where each profile comes from (``entry.origin``: ``"built-in"`` or the library
    directory) and which same-named profiles it replaces (``entry.hides``)."""
    try:
        winners = library.layer(((s, s) for s in library.files("profiles")), lambda s: [s.path.stem])
    except library.LibraryError as exc:
        raise ProfileError(exc.where, "", MISSING, exc.problem) from None
    entries = [library.Entry(_load_file(e.item.path), e.source, e.hides) for e in winners]
    return sorted(entries, key=lambda e: e.item.name)


def _load_file(path: Path) -> Profile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(str(path), "", MISSING, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(str(path), "", MISSING, f"cannot read it: {e}") from None
    return parse_profile(text, source=str(path))


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by library name (``"register-drop"``) or by file path.

    A string with a ``/`` or ending in ``.toml``, or a :class:`~pathlib.Path`,
    is a file; anything else is a name looked up in the team libraries, then
    the built-in library (:mod:`faultlab.library`). An unknown name raises
    :class:`ProfileError` listing the available names (or, when there are
    none, where it looked).
    """
    if isinstance(name_or_path, Path) or "/" in name_or_path or name_or_path.endswith(".toml"):
        return _load_file(Path(name_or_path))
    try:
        sources = library.files("profiles")
    except library.LibraryError as exc:
        raise ProfileError(exc.where, "", MISSING, exc.problem) from None
    found = next((s for s in sources if s.path.stem == name_or_path), None)
    if found is None or not _NAME_RE.fullmatch(name_or_path):
        names = sorted({s.path.stem for s in sources})
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        available = ", ".join(names) or f"none found; looked in: {library.where('profiles')}"
        raise ProfileError(
            "profile library",
            "profile",
            name_or_path,
            f"{hint}a profile name ({available}) or a .toml file path",
        )
    return _load_file(found.path)
