"""The contract between the control API and the running proxy: the :class:`Control` protocol the API
is served over (:class:`faultlab.proxy.ProxyControl` is the proxy's implementation).

The API holds no state of its own: every request is one call on a :class:`Control`, which the relay
implements. All methods are called from the trio thread that runs the proxy (the API's endpoints are
``async`` and never use a thread pool), so an implementation needs no locking.

Errors an implementation raises, and what the API answers with:

- :class:`ProfileError` from :meth:`Control.set_profile`: 404 when the name is not one of
  :meth:`Control.list_profiles`, else 400 (the profile's file is bad; the message names file and key).
- :class:`ProfileError` from :meth:`Control.add_rule`: 400 (the rule is invalid).
- :class:`ValueError`: 400 (a bad device spec, or other bad input; the message is shown as it is).
- :class:`KeyError` from :meth:`Control.remove_rule` / :meth:`Control.release`: 404, listing the rules
  or holds that do exist.

Optional: ``history() -> (first_seq, events, lost_t)``, the events the control still holds (oldest first), the
sequence number of the first, and the trace time of the newest event no longer held (None: none dropped). With
it, ``GET /events`` replays (``?since=T``, ``?after=SEQ``, ``Last-Event-ID``) and numbers SSE records; the API
calls it right after :meth:`Control.subscribe`, with no checkpoint between, so the subscription's first event
must be number ``first_seq + len(events)``. Without it, a replay is answered 501.
:class:`faultlab.proxy.ProxyControl` implements it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import trio

    from faultlab.trace import Event

from faultlab.faults import ProfileError

__all__ = ["Control", "ProfileError"]


@runtime_checkable
class Control(Protocol):
    """What the proxy offers the control API (see the module docstring for errors)."""

    def list_profiles(self) -> list[dict[str, Any]]:
        """The profile library: ``[{"name", "summary", "source"}]``."""
        ...

    def active(self) -> dict[str, Any]:
        """``{"global": {"name", "summary", "activated_at"} | None, "devices": {DEVICE: {...}}}``."""
        ...

    def set_profile(self, name: str | None, device: str | None = None) -> dict[str, Any] | None:
        """Activate profile ``name`` (``None``: no profile) globally or for ``device`` ("IP" or "IP:PORT").

        Returns the new entry of :meth:`active`. Raises :class:`ProfileError` or :class:`ValueError`.
        """
        ...

    def add_rule(self, rule: dict[str, Any], device: str | None = None, index: int | None = None) -> dict[str, Any]:
        """Add one rule (as the TOML table would be); returns it as stored. Raises :class:`ProfileError`."""
        ...

    def remove_rule(self, name: str, device: str | None = None) -> None:
        """Remove the rule ``name``; :class:`KeyError` if there is none."""
        ...

    def rules(self, device: str | None = None) -> list[dict[str, Any]]:
        """The rules in force, in the order they are tried."""
        ...

    def holds(self) -> list[dict[str, Any]]:
        """Held messages: ``[{"id", "flow", "direction", "summary", "held_at"}]``."""
        ...

    def release(self, hold_id: str | None = None) -> int:
        """Release one held message (``None``: all); returns how many. :class:`KeyError` for an unknown id."""
        ...

    def flows(self) -> list[dict[str, Any]]:
        """Open flows: ``[{"id", "transport", "device", "pbx_side", "opened_at", "messages"}]``."""
        ...

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        """A channel of the timeline's events from now on; closing it unsubscribes."""
        ...

    def seed(self) -> int:
        """The run's random seed."""
        ...
