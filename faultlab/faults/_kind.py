"""The action kinds' contract and registry (the kinds themselves are in :mod:`.actions`, one class each).

An :class:`ActionKind` owns one kind of action from end to end, in the manner of toxiproxy's toxics and
mitmproxy's commands: how the ``action`` table of a rule of that kind is read and checked (:meth:`parse`,
:meth:`check`), which messages it can apply to (:meth:`applies`), and what it does to a message
(:meth:`on_message`) or to a new connection (:meth:`on_connect`). A subclass with a ``name`` registers itself
in :data:`KINDS`; the loader and the engine look kinds up there and never test kind names themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..tables import Table
from ._decision import Decision, Draft

# "Action", "Match" (._model) and "MessageFacts" (._match) appear in annotations only, as names: the model
# imports this module (Action.terminal asks the kind), so importing it here would close a circle.

__all__ = ["ActionKind", "KINDS", "NEXT_RULE", "primary_kinds"]

KINDS: dict[str, ActionKind] = {}
"""Every action kind by name, in the order they were defined (the order of the docs and of error messages)."""

NEXT_RULE: Any = object()
"""Returned by :meth:`ActionKind.on_message` when the rule could not act: go on with the next rule."""


class ActionKind:
    """One kind of action. Subclasses set ``name`` and override what differs from "forward unchanged"."""

    name: ClassVar[str]
    primary: ClassVar[bool] = True
    """Written as its own key in the action table (``drop = true``); False only for plain forwarding."""
    keys: ClassVar[tuple[str, ...]] = ()
    """The other keys of the action table that belong to this kind (``jitter`` for ``delay``, ...)."""
    terminal: ClassVar[bool] = False
    """No later rule runs after this one (see also :meth:`ends`)."""
    connect: ClassVar[bool] = False
    """Rules with ``on = "connect"`` may use it."""
    keep_alive: ClassVar[bool] = False
    """Rules with ``on = "keep-alive"`` may use it (:meth:`on_message` then gets a draft with no message)."""
    streams_only: ClassVar[bool] = False
    """It acts on connections: never on UDP."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is not None:
            if name in KINDS:
                raise TypeError(f"two action kinds named {name!r}")
            KINDS[name] = cls()

    # -- loading --------------------------------------------------------------------------------------

    def parse(self, t: Table, match: Match) -> dict[str, Any]:
        """The :class:`Action` fields of this kind from the action table ``t``; raise ``t.error(...)``."""
        return {}

    def check(self, action: Action, t: Table, match: Match) -> None:
        """Checks that need the whole action and the rule's match (after the generic ones)."""

    def forwards(self, action: Action) -> bool:
        """The message is forwarded (so header edits make sense)."""
        return True

    def ends(self, action: Action) -> bool:
        """True when no later rule runs after ``action``."""
        return self.terminal

    # -- deciding -------------------------------------------------------------------------------------

    def applies(self, facts: MessageFacts) -> bool:
        """Whether a rule of this kind can match this message at all (checked before its conditions)."""
        return not (self.streams_only and facts.transport == "udp")

    def on_message(self, action: Action, rule: str, draft: Draft, detail: dict[str, Any]) -> Decision | None:
        """Apply ``action`` (of rule ``rule``) to the message in ``draft``; ``detail`` holds what its header
        edits did. Return a :class:`Decision` to end the rules here, None to go on (if the rule continues)
        or :data:`NEXT_RULE`."""
        draft.fire(rule, "edit", detail)
        return None

    def on_connect(self, action: Action, rule: str, draft: Draft) -> Decision | None:
        """Apply ``action`` to a new connection (``connect`` kinds only); as :meth:`on_message`."""
        return None


def primary_kinds() -> tuple[str, ...]:
    """The names written as a key of their own in an action table, in order."""
    return tuple(name for name, kind in KINDS.items() if kind.primary)
