"""faultlab.faults.actions: one class per kind of action, found through the registry :data:`KINDS`.

Each module holds one kind (``drop``, ``delay``, ``respond``, ``duplicate``, ``hold``, ``close``/``reset``,
``stall``, and ``forward`` for header edits alone): how its keys of a rule's ``action`` table are read and
checked, and what it does to a message or a new connection. A new kind is a new module here with an
:class:`ActionKind` subclass, imported below (the order of the imports is the order of the docs and the
error messages), a spec field on :class:`faultlab.faults.Action` if it needs one, and a section in
docs/profiles.md. :func:`parse_action` reads an action table through the registry.
"""

from __future__ import annotations

from typing import Any

from ...tables import Table
from .._kind import KINDS, NEXT_RULE, ActionKind, primary_kinds
from .._model import Action, Match
from ._headers import EDIT_KEYS, apply_edits, check_edits, parse_edits

# the kinds register themselves, in this order
from .drop import Drop
from .delay import Delay
from .respond import Respond
from .duplicate import Duplicate
from .hold import Hold
from .close import Close, Reset
from .stall import Stall
from .forward import Forward

__all__ = ["ActionKind", "KINDS", "NEXT_RULE", "PRIMARY_ACTIONS", "ACTION_KEYS", "kind_of", "parse_action",
           "apply_edits", "Drop", "Delay", "Respond", "Duplicate", "Hold", "Close", "Reset", "Stall", "Forward"]

PRIMARY_ACTIONS = primary_kinds()
"""The primary actions; a rule has at most one (none: forward, possibly with header edits)."""


def _modifiers() -> dict[str, tuple[str, ...]]:
    """Each kind's own keys (``jitter``, ``when``, ...) -> the kinds they go with."""
    out: dict[str, tuple[str, ...]] = {}
    for name, kind in KINDS.items():
        for key in kind.keys:
            out[key] = out.get(key, ()) + (name,)
    return out


MODIFIERS = _modifiers()
ACTION_KEYS = PRIMARY_ACTIONS + tuple(MODIFIERS) + EDIT_KEYS
"""Every key an action table may have."""


def kind_of(action: Action) -> ActionKind:
    return KINDS[action.kind]


def parse_action(t: Table, match: Match) -> Action:
    """The action of a rule from its ``action`` table ``t`` (keys checked against :data:`ACTION_KEYS`)."""
    primaries = [k for k in PRIMARY_ACTIONS if k in t]
    if len(primaries) > 1:
        raise t.error_at(
            t.path,
            {k: t.data[k] for k in primaries},
            "exactly one of " + ", ".join(PRIMARY_ACTIONS)
            + " (to combine effects, write two rules and set continue = true on the first)",
        )
    name = primaries[0] if primaries else "forward"
    for key, owners in MODIFIERS.items():
        if key in t and name not in owners:
            raise t.error(key, f"{key} goes with {' or '.join(owners)}, and this action is {name!r}")
    kind = KINDS[name]
    fields: dict[str, Any] = {"kind": name, **kind.parse(t, match), **parse_edits(t)}
    action = Action(**fields)
    check_edits(action, kind.forwards(action), t, match.on)
    if match.on == "connect" and not kind.connect:
        raise t.whole("a connect rule can only stall, close or reset")  # the kinds with connect = True
    if match.on == "keep-alive" and not kind.keep_alive:
        raise t.whole("a keep-alive rule can only drop or delay")  # the kinds with keep_alive = True
    kind.check(action, t, match)
    return action
