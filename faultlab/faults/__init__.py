"""faultlab.faults: fault profiles and the decisions they make, containing no I/O at all.

A profile (TOML, one file per profile in ``profiles/``) is loaded into typed,
validated models (:func:`load_profile`, :func:`parse_profile`); a bad one
raises :class:`ProfileError` naming the file, the key, the value and what is
allowed. An :class:`Engine` applies one profile: the proxy hands it each
message as a :class:`MessageView` with the current time and gets a
:class:`Decision` (forward after a delay, drop, respond, duplicate, hold,
close/reset, stall) plus the events to put on the timeline. Each kind of action
is one class in :mod:`faultlab.faults.actions` (reading its keys of a rule's
``action`` table and making its part of the decision), found through a
registry by the loader and the engine. Time comes in as
``now`` (seconds on the relay's trio clock) and randomness only from the
``random.Random`` given to the engine: no trio, no sockets, no clock here.
See docs/profiles.md for the format.
"""

from ._engine import ConnectView, Decision, Engine, Fired, MessageView
from ._errors import ProfileError, UnitError
from ._link import LinkState, PacketFate, draw_delay
from ._load import (
    KNOWN_METHODS,
    list_profiles,
    load_profile,
    parse_profile,
    parse_rule,
    profile_entries,
    profiles_dir,
)
from ._match import transaction_key
from ._model import (
    Action,
    CloseSpec,
    DelaySpec,
    DeviceSpec,
    DuplicateSpec,
    GilbertElliott,
    HeaderTest,
    HoldSpec,
    Link,
    LinkSpec,
    Match,
    Occurrence,
    Profile,
    RespondSpec,
    Rule,
    StatusSet,
    Window,
)
from ._units import format_duration, parse_bitrate, parse_duration, parse_rate

__all__ = [
    "ProfileError",
    "UnitError",
    "parse_duration",
    "parse_rate",
    "parse_bitrate",
    "format_duration",
    "profiles_dir",
    "list_profiles",
    "profile_entries",
    "load_profile",
    "parse_profile",
    "parse_rule",
    "KNOWN_METHODS",
    "Profile",
    "Rule",
    "Match",
    "Action",
    "StatusSet",
    "HeaderTest",
    "DeviceSpec",
    "Occurrence",
    "Window",
    "DelaySpec",
    "RespondSpec",
    "DuplicateSpec",
    "HoldSpec",
    "CloseSpec",
    "Link",
    "LinkSpec",
    "GilbertElliott",
    "LinkState",
    "PacketFate",
    "draw_delay",
    "Engine",
    "MessageView",
    "ConnectView",
    "Decision",
    "Fired",
    "transaction_key",
]
