"""Scenarios as data: the call script, the faults, and what a correct device does (``scenarios/*.toml``).

A scenario is one TOML file in ``scenarios/`` (the catalogue in docs/integrating-your-app.md §6), named by
its id (``S04``) or its slug (``cancel-before-register``)::

    id = "S04"
    slug = "cancel-before-register"
    title = "The caller cancels 1 s after the push, before the REGISTER completes"
    transports = ["udp", "tcp", "tls"]          # where it applies (default: all three)

    [faults]                                     # faultlab's profile for the call: a library name ...
    profile = "register-delay-2s"                # ... and/or inline rules/[link] in the profile format
    # [[faults.rules]] ... / [faults.link] ...

    [call]                                       # the script, times from the caller's INVITE (= the push)
    cancel_at = "1s"                             # the caller CANCELs (if no final response yet)
    cancel_reason = 'SIP;cause=486'              # ... with this Reason header
    answer_at = "1s"                             # the user taps Answer this long after the report
    decline_at = "1s"                            # ... or Decline
    elsewhere = "answered"                       # a second device "answered" / "declined" / "declined-603" ...
    elsewhere_at = "0.5s"                        # ... this long after the caller's 180
    hang_up_after = "10s"                        # after a 2xx, the caller hangs up this much later
    duration = "30s"                             # the run ends this long after the push at the latest
    call_again = false                           # then the caller calls once more (its INVITE: push-side checks)
    media = false                                # the call carries RTP both ways once it connects (S21)
    move_at = "2s"                               # the device's address changes (Wi-Fi -> cellular), S26

    [push]                                       # push gateway faults
    duplicate = 1                                # extra deliveries of each push
    drop_cancel = false
    delay = "0s"
    offline = "45s"                              # phone out of reach: pushes with apns-expiration != 0 stored
    refuse = "410 Unregistered"                  # APNs refuses every push with this status and reason

    [pbx]
    hold = "8s"                                  # how long the PBX holds an INVITE for the REGISTER
    cancel_push = true                           # the PBX sends a cancel push on CANCEL
    apns_expiration = "60s"                      # pushes sent with apns-expiration now + 60 s (default: 0)
    payload_size = 5121                          # the call push's payload padded to this many bytes

    [device]                                     # the reference device: deadlines and connection habits
    register_deadline = "8s"
    invite_deadline = "5s"
    total_deadline = "15s"
    new_connection = false                       # TCP/TLS: a fresh connection for the push's REGISTER
    media_timeout = "30s"                        # connected, no RTP for this long: the call ends failed
    keepalive_interval = "90s"                   # TCP/TLS: a CRLF keep-alive ping this often (0s: none)
    keepalive_timeout = "10s"                    # no pong this long after a ping: the flow failed

    [network]                                    # the in-memory network of virtual-time runs
    rtt = "40ms"                                 # round trip of every hop (device-faultlab, faultlab-PBX, ...)

    [expect]
    end = ["unanswered"]                         # accepted CallKit end reasons
    by = [{ after = "register-ok", within = "5s" }, { after = "push", within = "15s" }]   # deadline: the min
    not_before = [{ after = "register-ok", deadline = "invite" }, { after = "push", deadline = "total" }]  # earliest
    tolerance = "100ms"                          # slack on every bound (real-time runs)
    early_answer = false                         # check 2 applies (the user answers before the INVITE)
    cancel_push = "auto"                         # check 3: true (must run), false, auto = when the PBX sends one
    milestones = [{ event = "register-ok", after = "push", within = "4.5s" }]
    late_invite = [480, 410]                     # accepted answers to an INVITE after the device gave up ([]: off)

Anchors (``after`` / ``event``) are named timeline events of the call (see :data:`ANCHORS`). A bound gives
``within`` (a duration) or ``deadline`` (``register``, ``invite``, ``total``, ``ring``): the app's declared deadline
of that name, the reference's by default (:mod:`faultlab.lab.deadlines`). Every field can be overridden from outside
(``faultlab lab run --set expect.end=failed``): :func:`faultlab.lab.scenario_set.override`.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from faultlab import library, tables
from faultlab.faults import Profile, ProfileError, load_profile, parse_duration, parse_profile
from faultlab.lab.deadlines import REFERENCE as DEADLINES
from faultlab.lab.scenario_toml import profile_toml, merge_profiles
from faultlab.lab.device.logic import REASONS
from faultlab.lab.push.faults import parse_refusal

__all__ = ["ANCHORS", "Bound", "Scenario", "ScenarioError", "list_scenarios", "load_scenario",
           "parse_scenario", "scenario_entries", "scenarios_dir"]

TRANSPORTS = ("udp", "tcp", "tls")
ANCHORS: dict[str, str] = {
    "push": "the call push delivered to the device (t0)",
    "reported": "the device reported the call to CallKit",
    "register-sent": "the first REGISTER faultlab received from the device after the push",
    "register-ok": "the first REGISTER 2xx faultlab delivered to the device after the push (tR)",
    "register-final": "the first final response to a REGISTER delivered to the device after the push",
    "invite": "the call's INVITE delivered to the device by faultlab (tI)",
    "ok": "the device's 200 OK to the INVITE, as faultlab received it",
    "invite-rejected": "the device's 4xx-6xx final response to the INVITE, as faultlab received it",
    "ack": "the ACK delivered to the device",
    "cancel": "the caller's CANCEL (sent by the caller)",
    "cancel-at-device": "a CANCEL delivered to the device",
    "bye": "the caller's BYE (sent by the caller)",
    "bye-at-device": "the first BYE delivered to the device by faultlab",
    "flow-lost": "faultlab closed or reset the device's connection after the push",
    "reregister": "the first REGISTER faultlab received from the device after flow-lost",
    "answer-tapped": "the user tapped Answer",
    "end": "the device's end of the call",
    "media-stopped": "the caller's RTP stopped (it hung up); with no lab caller, its BYE as faultlab received it",
    "ping": "the first CRLF keep-alive ping faultlab received from the device after the push",
    "address-change": "the device's address changed (Wi-Fi -> cellular: call.move_at)",
    "register-new-flow": "the first REGISTER faultlab received from the device after the push on another flow than "
                         "register-sent's (a new connection, or a new address)",
    "invite-new-flow": "the call's first INVITE faultlab sent to the device on register-new-flow's flow",
}
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
_ID = re.compile(r"S\d\d[a-z]?")
_TOP = {"id", "slug", "title", "summary", "reference", "transports", "faults", "call", "push", "pbx", "device",
        "expect", "network"}
_CALL = {"cancel_at", "cancel_reason", "answer_at", "decline_at", "elsewhere", "elsewhere_at", "hang_up_after",
         "duration", "call_again", "media", "move_at"}
_PUSH = {"duplicate", "drop_cancel", "delay", "offline", "refuse"}
_PBX = {"hold", "cancel_push", "apns_expiration", "payload_size"}
_DEVICE = {"register_deadline", "invite_deadline", "total_deadline", "ring_timeout", "new_connection", "media_timeout",
           "keepalive_interval", "keepalive_timeout"}
_NETWORK = {"rtt"}
DEFAULT_RTT = 0.04  # seconds: the round trip of each hop of the in-memory network (20 ms each way)
MAX_RTT = 10.0
_EXPECT = {"end", "by", "not_before", "tolerance", "early_answer", "cancel_push", "milestones", "late_invite"}
LATE_INVITE = (480, 410)  # an INVITE after the device gave up: 480 Temporarily Unavailable or 410 Gone
_ELSEWHERE = '"answered" (cause 200), "declined" (cause 600) or "declined-603"'
_DURATION_HELP = "a duration with a unit: 500ms, 1s, 2.5s"


class ScenarioError(ValueError):
    """A scenario that is not valid: ``"<file>: <key>: <value> — <what is allowed>"``."""

    def __init__(self, source: str, key: str, value: Any, allowed: str) -> None:
        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {value!r} — {allowed}" if value is not None else f"{where}: {allowed}")

    def __reduce__(self):  # pickle (e.g. back from a sweep worker process) with the 4 arguments __init__ takes
        return (ScenarioError, (self.source, self.key, self.value, self.allowed))


@dataclass(frozen=True)
class Bound:
    """``event`` happens within ``within`` seconds after the anchor ``after``; ``deadline``: ``within`` is the app's
    deadline of that name (:mod:`faultlab.lab.deadlines`)."""

    after: str
    within: float
    event: str = "end"
    deadline: str | None = None

    def describe(self) -> str:
        named = f" (the {self.deadline} deadline)" if self.deadline else ""
        return f"{self.event} ≤ {self.after} + {self.within:g} s{named}"


@dataclass(frozen=True)
class Scenario:
    id: str
    slug: str
    title: str
    summary: str = ""
    reference: str = ""
    transports: tuple[str, ...] = TRANSPORTS
    faults: Profile | None = None
    # the call script
    cancel_at: float | None = None
    cancel_reason: str | None = None
    answer_at: float | None = None
    decline_at: float | None = None
    elsewhere: str | None = None
    elsewhere_at: float = 0.5
    hang_up_after: float | None = 10.0
    duration: float = 30.0
    call_again: bool = False
    media: bool = False  # RTP both ways while the call is connected
    move_at: float | None = None  # the device's address changes this long after the push (S26)
    # push gateway, PBX, device
    push_duplicate: int = 0
    push_drop_cancel: bool = False
    push_delay: float = 0.0
    push_offline: float = 0.0
    push_refuse: tuple[int, str] | None = None
    pbx_hold: float = 8.0
    pbx_cancel_push: bool = True
    pbx_apns_expiration: float = 0.0  # seconds after sending; 0: apns-expiration 0
    pbx_payload_size: int | None = None
    device: dict[str, float] = field(default_factory=dict)
    new_connection: bool = False
    rtt: float | None = None  # [network] rtt: each hop's round trip on the in-memory network; None: not set
    # expectations
    end: tuple[str, ...] = ()
    by: tuple[Bound, ...] = ()
    not_before: tuple[Bound, ...] = ()
    tolerance: float = 0.1
    early_answer: bool = False
    cancel_push_check: bool = False
    milestones: tuple[Bound, ...] = ()
    late_invite: tuple[int, ...] = LATE_INVITE
    source: str = "<string>"
    app_deadlines: dict[str, float] = field(default_factory=dict)  # declared by the app (empty: the reference's)
    cancel_push_required: bool = False  # expect.cancel_push = true: a run with no cancel push fails check 3

    @property
    def name(self) -> str:
        return f"{self.id} {self.slug}"

    @property
    def network_rtt(self) -> float:
        """The round trip of each hop of a lab run's in-memory network: ``[network] rtt``, else :data:`DEFAULT_RTT`
        (a sweep, whose link profile is the network, runs with 0 when the scenario sets none)."""
        return DEFAULT_RTT if self.rtt is None else self.rtt

    @property
    def cancels(self) -> bool:
        """The caller or a second device cancels the call (so the PBX sends a cancel push when it does that)."""
        return self.cancel_at is not None or self.elsewhere is not None


class _Table(tables.Table):
    """A scenario table (:mod:`faultlab.tables`): errors are :class:`ScenarioError`."""

    error_type = ScenarioError

    def duration(self, name: str, default: float | None = None) -> float | None:
        return self.get(name, _seconds, _DURATION_HELP, default)

    def bool(self, name: str, default: bool) -> bool:
        return self.get(name, tables.boolean, "true or false", default)

    def text(self, name: str, default: str | None = None, pattern: re.Pattern | None = None,
             allowed: str = "a string") -> str | None:
        return self.get(name, functools.partial(_text, pattern=pattern), allowed, default)

    def bounds(self, name: str, *, with_event: bool) -> tuple[Bound, ...]:
        value = self.data.get(name, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise self.error(name, "a list of { after = ANCHOR, within = DURATION or deadline = NAME } tables")
        out = []
        keys = {"after", "within", "deadline"} | ({"event"} if with_event else set())
        for i, item in enumerate(value):
            t = _Table(item, f"{self.key(name)}[{i}]", self.source, keys)
            anchors = f"one of {', '.join(ANCHORS)}"
            after = t.text("after", allowed=anchors)
            if after not in ANCHORS:
                raise t.error("after", anchors)
            within = t.duration("within")
            deadline = t.text("deadline", allowed=f"one of {', '.join(DEADLINES)}")
            if deadline is not None and (deadline not in DEADLINES or within is not None):
                raise t.error("deadline", f"one of {', '.join(DEADLINES)}, instead of within (not both)")
            if within is None and deadline is None:
                raise t.error("within", f"{_DURATION_HELP}; or deadline = one of {', '.join(DEADLINES)}")
            event = t.text("event", "end", allowed=anchors)
            if event not in ANCHORS:
                raise t.error("event", anchors)
            out.append(Bound(after, DEADLINES[deadline] if deadline else within, event, deadline))
        return tuple(out)


def _seconds(value: Any) -> float:
    """A duration of at least 0 (any refusal is reported as _DURATION_HELP)."""
    if not isinstance(value, str):
        raise ValueError
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError
    return seconds


def _text(value: Any, pattern: re.Pattern | None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise ValueError
    return value


def parse_scenario(text: str, *, source: str = "<string>") -> Scenario:
    """A scenario from TOML text; :class:`ScenarioError` names the key that is wrong and what is allowed."""
    top = _Table.read(text, source, _TOP)
    sid = top.text("id", allowed="S followed by two digits and an optional letter: S04, S12b", pattern=_ID)
    slug = top.text("slug", allowed="lower-case letters, digits and dashes: cancel-before-register", pattern=_SLUG)
    title = top.text("title")
    for name, value in (("id", sid), ("slug", slug), ("title", title)):
        if value is None:
            raise top.error(name, "required")
    transports = top.data.get("transports", list(TRANSPORTS))
    if (not isinstance(transports, list) or not transports
            or any(t not in TRANSPORTS for t in transports)):
        raise top.error("transports", f"a non-empty list of {', '.join(TRANSPORTS)}")

    faults = _faults(top.sub("faults", {"profile", "rules", "link"}), source, slug)

    call = top.sub("call", _CALL)
    elsewhere = call.text("elsewhere", allowed=_ELSEWHERE)
    if elsewhere not in (None, "answered", "declined", "declined-603"):
        raise call.error("elsewhere", _ELSEWHERE)
    answer_at, decline_at = call.duration("answer_at"), call.duration("decline_at")
    if answer_at is not None and decline_at is not None:
        raise call.error("decline_at", "either answer_at or decline_at, not both")
    push = top.sub("push", _PUSH)
    duplicate = push.data.get("duplicate", 0)
    if not isinstance(duplicate, int) or isinstance(duplicate, bool) or not 0 <= duplicate <= 5:
        raise push.error("duplicate", "a whole number of extra deliveries, 0 to 5")
    refusal = push.get("refuse", parse_refusal, 'an APNs error status and reason, e.g. "410 Unregistered"')
    pbx = top.sub("pbx", _PBX)
    size = pbx.data.get("payload_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 64 <= size <= 65536):
        raise pbx.error("payload_size", "a whole number of bytes, 64 to 65536")
    device_t = top.sub("device", _DEVICE)
    device = {k: device_t.duration(k) for k in sorted(_DEVICE - {"new_connection"}) if k in device_t.data}
    network = top.sub("network", _NETWORK)
    rtt = network.duration("rtt")
    if rtt is not None and rtt > MAX_RTT:
        raise network.error("rtt", f"a round trip of at most {MAX_RTT:g}s, e.g. 40ms")

    expect = top.sub("expect", _EXPECT)
    end = expect.data.get("end", [])
    if isinstance(end, str):
        end = [end]
    allowed_reasons = [r for r in REASONS if r != "declined"] + ["declined"]
    if not isinstance(end, list) or any(r not in allowed_reasons for r in end):
        raise expect.error("end", f"a list of CallKit end reasons: {', '.join(allowed_reasons)}")
    by = expect.bounds("by", with_event=False)
    not_before = expect.bounds("not_before", with_event=False)
    if end and not by:
        raise expect.error("by", "required with end: the deadline, e.g. [{ after = \"push\", within = \"15s\" }]")
    cancel_push = expect.data.get("cancel_push", "auto")
    if cancel_push not in (True, False, "auto"):
        raise expect.error("cancel_push", 'true, false or "auto" (when the caller or a second device cancels)')
    scenario = Scenario(
        id=sid, slug=slug, title=title, summary=top.text("summary", "") or "", reference=top.text("reference", "") or "",
        transports=tuple(transports), faults=faults,
        cancel_at=call.duration("cancel_at"), cancel_reason=call.text("cancel_reason"),
        answer_at=answer_at, decline_at=decline_at, elsewhere=elsewhere,
        elsewhere_at=call.duration("elsewhere_at", 0.5), hang_up_after=call.duration("hang_up_after", 10.0),
        duration=call.duration("duration", 30.0), call_again=call.bool("call_again", False),
        media=call.bool("media", False), move_at=call.duration("move_at"),
        push_duplicate=duplicate, push_drop_cancel=push.bool("drop_cancel", False),
        push_delay=push.duration("delay", 0.0), push_offline=push.duration("offline", 0.0), push_refuse=refusal,
        pbx_hold=pbx.duration("hold", 8.0), pbx_cancel_push=pbx.bool("cancel_push", True),
        pbx_apns_expiration=pbx.duration("apns_expiration", 0.0), pbx_payload_size=size,
        device=device, new_connection=device_t.bool("new_connection", False), rtt=rtt,
        end=tuple(end), by=by, not_before=not_before, tolerance=expect.duration("tolerance", 0.1),
        early_answer=expect.bool("early_answer", False), cancel_push_check=False,
        milestones=expect.bounds("milestones", with_event=True), late_invite=_codes(expect, "late_invite"),
        source=source,
    )
    check3 = scenario.cancels and scenario.pbx_cancel_push if cancel_push == "auto" else cancel_push
    return replace(scenario, cancel_push_check=bool(check3), cancel_push_required=cancel_push is True)


def _codes(t: _Table, name: str) -> tuple[int, ...]:
    value = t.data.get(name, list(LATE_INVITE))
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or not 300 <= v <= 699
                                          for v in value):
        raise t.error(name, "a list of final response codes 300-699, e.g. [480, 410] (empty: not judged)")
    return tuple(value)


def _faults(t: _Table, source: str, slug: str) -> Profile | None:
    name = t.text("profile", allowed="a profile name from the library (faultlab profiles list)")
    base = None
    if name is not None:
        try:
            base = load_profile(name)
        except ProfileError as exc:
            raise ScenarioError(source, "faults.profile", name, str(exc)) from None
    inline = None
    if "rules" in t.data or "link" in t.data:
        body = {k: t.data[k] for k in ("rules", "link") if k in t.data}
        try:
            inline = parse_profile(profile_toml(body, name=f"{slug}-faults"), source=f"{source} [faults]")
        except ProfileError as exc:
            raise ScenarioError(source, "faults", None, str(exc)) from None
    if base is None:
        return inline
    if inline is None:
        return base
    return merge_profiles(inline, base)


def scenarios_dir() -> Path:
    """The built-in catalogue: ``scenarios/`` inside the installed package (the top-level ``scenarios/`` of the
    source tree, beside ``profiles/``). A team's own libraries come first: :mod:`faultlab.library`."""
    return library.builtin_dir("scenarios")


def list_scenarios() -> list[Scenario]:
    """The whole catalogue, in id order: the team libraries' scenarios and the built-in ones they do not replace
    (parsed again only when a file changed)."""
    return [entry.item for entry in scenario_entries()]


def scenario_entries() -> list[library.Entry[Scenario]]:
    """:func:`list_scenarios` with where each scenario comes from (``entry.origin``: ``"built-in"`` or the
    library directory) and which scenarios of the same id or slug it replaces (``entry.hides``)."""
    try:
        sources = library.files("scenarios")
        stamps = tuple((s.origin, str(s.path), s.path.stat().st_mtime_ns) for s in sources)
    except library.LibraryError as exc:
        raise ScenarioError(exc.where, "", None, exc.problem) from None
    except OSError as exc:
        raise ScenarioError(str(exc.filename or "scenarios"), "", None, f"cannot read it: {exc.strerror or exc}") \
            from None
    return list(_catalogue(stamps))


@functools.lru_cache(maxsize=4)
def _catalogue(files: tuple[tuple[str, str, int], ...]) -> tuple[library.Entry[Scenario], ...]:
    found = []
    for origin, path, _ in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(path, "", None, f"cannot read it: {exc}") from None
        found.append((library.Source(origin, Path(path)), parse_scenario(text, source=path)))
    try:
        entries = library.layer(found, lambda s: (s.id.upper(), s.slug))
    except library.LibraryError as exc:
        raise ScenarioError(exc.where, "", None, exc.problem) from None
    return tuple(sorted(entries, key=lambda e: (int(e.item.id[1:3]), e.item.id)))


def load_scenario(name: str) -> Scenario:
    """A scenario by id (``S04``, case-insensitive), slug, ``ID-slug`` file name, or path to a TOML file."""
    if "/" in name or name.endswith(".toml"):
        path = Path(name)
        try:
            return parse_scenario(path.read_text(encoding="utf-8"), source=str(path))
        except FileNotFoundError:
            raise ScenarioError(str(path), "", None, "no such file") from None
    catalogue = list_scenarios()
    if not catalogue:
        raise ScenarioError("scenario catalogue", "", name, f"no scenarios found; looked in: {library.where('scenarios')}")
    for s in catalogue:
        if name.upper() == s.id.upper() or name == s.slug or name == f"{s.id}-{s.slug}":
            return s
    names = [s.id for s in catalogue] + [s.slug for s in catalogue]
    near = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ScenarioError("scenarios", "", name, f"no such scenario; {hint}`faultlab lab scenarios` lists them")


def _duration(source: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ScenarioError(source, "", text, _DURATION_HELP) from None
