"""TOML (or API JSON) -> validated :class:`Profile`; the profile library.

Everything is checked before anything runs: unknown keys, values of the
wrong type or unit, regexes that do not compile, actions that cannot go
together. Each problem is a :class:`ProfileError` naming the file, the key
path (``rules[2].action.delay``), the value and what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import library
from ..sip import SipError, parse_uri
from ..sip._abnf import TOKEN_RE, canonical_key
from ._errors import MISSING, ProfileError, UnitError
from ._model import (
    DIRECTIONS,
    PRIMARY_ACTIONS,
    TRANSPORTS,
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
from ._units import (
    BITRATE_ALLOWED,
    DURATION_ALLOWED,
    RATE_ALLOWED,
    parse_bitrate,
    parse_duration,
    parse_rate,
)

__all__ = [
    "parse_profile",
    "parse_rule",
    "load_profile",
    "list_profiles",
    "profile_entries",
    "profiles_dir",
    "KNOWN_METHODS",
]

KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL REGISTER OPTIONS PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER MESSAGE UPDATE".split()
)
"""Methods of RFC 3261 and its common extensions. Any other token is accepted
too (extension methods), but a lower-case spelling of one of these is refused:
method names are case-sensitive (RFC 3261 §7.1) and would never match."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_ALLOWED = "a name of letters, digits, '.', '_' and '-', starting with a letter or digit"

PROFILE_KEYS = ("name", "summary", "description", "rules", "link")
RULE_KEYS = ("name", "match", "action", "continue")
MATCH_KEYS = (
    "on",
    "direction",
    "transport",
    "method",
    "status",
    "cseq_method",
    "in_dialog",
    "headers",
    "body",
    "device",
    "occurrence",
    "count",
    "probability",
    "window",
)
CONNECT_MATCH_KEYS = ("on", "transport", "device", "occurrence", "probability", "window")
MODIFIERS = {
    "jitter": "delay",
    "distribution": "delay",
    "reason": "respond",
    "headers": "respond",
    "spacing": "duplicate",
    "timeout": "hold",
    "then": "hold",
    "when": ("close", "reset"),
}
EDIT_KEYS = ("set_headers", "remove_headers")
ACTION_KEYS = PRIMARY_ACTIONS + tuple(MODIFIERS) + EDIT_KEYS
LINK_KEYS = ("delay", "jitter", "distribution", "loss", "duplicate", "reorder", "rate")
LINK_TOP_KEYS = LINK_KEYS + ("dns_delay", "to-pbx", "to-device")
GE_KEYS = ("p", "r", "bad_loss", "good_loss")
OCCURRENCE_KEYS = ("first", "every", "after", "per")
WINDOW_KEYS = ("start", "for", "from")
PER_VALUES = ("rule", "device", "flow", "call", "transaction")
DISTRIBUTIONS = ("uniform", "normal")


# ---------------------------------------------------------------------------
# a checked view of one table


class _Table:
    """One TOML table being read: values are taken by key and converted; keys
    never taken are reported as unknown by :meth:`done`."""

    def __init__(self, data: Any, path: str, source: str, allowed_keys: tuple[str, ...]) -> None:
        if not isinstance(data, Mapping):
            raise ProfileError(source, path, data, "a table (e.g. { key = value })")
        self.data = data
        self.path = path
        self.source = source
        self.allowed_keys = allowed_keys
        for key in data:
            if key not in allowed_keys:
                close = difflib.get_close_matches(str(key), allowed_keys, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ProfileError(
                    source,
                    self.key(str(key)),
                    data[key],
                    f"unknown key{hint}; allowed here: {', '.join(allowed_keys)}",
                )

    def key(self, name: str) -> str:
        if not self.path:
            return name
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            name = f'"{name}"'
        return f"{self.path}.{name}"

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def error(self, name: str, allowed: str) -> ProfileError:
        return ProfileError(self.source, self.key(name), self.data.get(name, MISSING), allowed)

    def get(self, name: str, conv: Callable[[Any], Any], allowed: str, default: Any = None) -> Any:
        if name not in self.data:
            return default
        try:
            return conv(self.data[name])
        except ProfileError:
            raise
        except UnitError as e:
            raise ProfileError(self.source, self.key(name), self.data[name], e.allowed) from None
        except (ValueError, TypeError, re.error) as e:
            detail = f" ({e})" if str(e) else ""
            raise self.error(name, allowed + detail) from None

    def require(self, name: str, conv: Callable[[Any], Any], allowed: str) -> Any:
        if name not in self.data:
            raise self.error(name, "required: " + allowed)
        return self.get(name, conv, allowed)

    def sub(self, name: str, allowed_keys: tuple[str, ...]) -> _Table:
        return _Table(self.data[name], self.key(name), self.source, allowed_keys)


# ---------------------------------------------------------------------------
# converters (raise ValueError/TypeError/UnitError; _Table adds the context)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _true(value: Any) -> bool:
    if value is not True:
        raise ValueError
    return True


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        if value < lo or (hi is not None and value > hi):
            raise ValueError
        return value

    return conv


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in choices:
            raise ValueError
        return value

    return conv


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{c}"' for c in choices)


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list matches nothing")
        return value
    return [value]


def _methods(value: Any) -> frozenset[str]:
    out = set()
    for item in _list(value):
        if not isinstance(item, str) or not TOKEN_RE.fullmatch(item):
            raise ValueError(f"{item!r} is not a method token")
        if item not in KNOWN_METHODS and item.upper() in KNOWN_METHODS:
            raise ValueError(f"method names are case-sensitive (RFC 3261 §7.1): write {item.upper()!r}")
        out.add(item)
    return frozenset(out)


_METHOD_ALLOWED = "a method name or a list of them, e.g. \"REGISTER\" or [\"INVITE\", \"CANCEL\"]"


def _transports(value: Any) -> frozenset[str]:
    out = set()
    for item in _list(value):
        if not isinstance(item, str) or item.lower() not in TRANSPORTS:
            raise ValueError
        out.add(item.lower())
    return frozenset(out)


def _status(value: Any) -> StatusSet:
    codes: set[int] = set()
    classes: set[int] = set()
    for item in _list(value):
        if isinstance(item, bool):
            raise TypeError
        if isinstance(item, int):
            if not 100 <= item <= 699:
                raise ValueError
            codes.add(item)
        elif isinstance(item, str) and re.fullmatch(r"[1-6]xx", item.lower()):
            classes.add(int(item[0]))
        elif isinstance(item, str) and re.fullmatch(r"[1-6][0-9][0-9]", item):
            codes.add(int(item))
        else:
            raise ValueError
    return StatusSet(frozenset(codes), frozenset(classes))


_STATUS_ALLOWED = "a status code 100-699, a class like \"5xx\", or a list of them, e.g. [\"4xx\", 503]"


def _regex(value: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise TypeError
    return re.compile(value)


def _header_name(name: str) -> str:
    if not TOKEN_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name (a token)")
    return name


def _header_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError
    text = str(value)
    if "\r" in text or "\n" in text:
        raise ValueError("a header value cannot contain CR or LF")
    return text


def _device(value: Any) -> tuple[DeviceSpec, ...]:
    out = []
    for item in _list(value):
        if not isinstance(item, str):
            raise TypeError
        out.append(_device_one(item))
    return tuple(out)


def _device_one(text: str) -> DeviceSpec:
    s = text.strip()
    if s.lower().startswith(("sip:", "sips:")):
        try:
            uri = parse_uri(s)
        except SipError as e:
            raise ValueError(str(e)) from None
        user = uri.user
        return DeviceSpec(text=text, aor_user=user, aor_host=uri.host.lower(), port=uri.port)
    port = None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?", s)
    if m:
        addr, port_s = m.groups()
    elif s.count(":") == 1:
        addr, port_s = s.split(":")
    else:
        addr, port_s = s, None
    if port_s is not None:
        port = int(port_s)
        if not 0 < port <= 65535:
            raise ValueError("port out of range")
        if "/" in addr:
            raise ValueError("a network takes no port")
    return DeviceSpec(text=text, network=ipaddress.ip_network(addr, strict=False), port=port)


_DEVICE_ALLOWED = (
    "an IP address (\"192.0.2.7\", \"192.0.2.7:5060\", \"[2001:db8::7]:5060\"), a network (\"10.0.0.0/8\") "
    "or a SIP AOR (\"sip:alice@example.com\"), or a list of them"
)


# ---------------------------------------------------------------------------
# match


def _parse_match(t: _Table, *, for_respond: bool = False) -> Match:
    on = t.get("on", _choice(("message", "connect")), _one_of(("message", "connect")), "message")
    if on == "connect":
        for key in t.data:
            if key not in CONNECT_MATCH_KEYS:
                raise t.error(key, "a rule with on = \"connect\" matches only " + ", ".join(CONNECT_MATCH_KEYS[1:]))
    kw: dict[str, Any] = {"on": on}
    kw["direction"] = t.get("direction", _choice(DIRECTIONS), _one_of(DIRECTIONS))
    kw["transport"] = t.get("transport", _transports, _one_of(TRANSPORTS) + ", or a list of them")
    if on == "connect" and kw["transport"] is not None and "udp" in kw["transport"]:
        raise t.error("transport", "connect rules apply to TCP and TLS connections: \"tcp\", \"tls\"")
    kw["method"] = t.get("method", _methods, _METHOD_ALLOWED)
    kw["status"] = t.get("status", _status, _STATUS_ALLOWED)
    if kw["method"] is not None and kw["status"] is not None:
        raise t.error(
            "status",
            "method matches requests and status matches responses: a rule cannot have both "
            "(use cseq_method for the method a response answers)",
        )
    kw["cseq_method"] = t.get("cseq_method", _methods, _METHOD_ALLOWED)
    kw["in_dialog"] = t.get("in_dialog", _bool, "true (the To header has a tag) or false")
    if "headers" in t:
        h = t.data["headers"]
        if not isinstance(h, Mapping) or not h:
            raise t.error("headers", "a table of header name = true | false | \"regex\"")
        tests = []
        for name, cond in h.items():
            key = t.key("headers") + "." + str(name)
            try:
                _header_name(name)
            except ValueError as e:
                raise ProfileError(t.source, key, name, str(e)) from None
            if isinstance(cond, bool):
                tests.append(HeaderTest(name, canonical_key(name), present=cond))
            elif isinstance(cond, str):
                try:
                    pattern = re.compile(cond)
                except re.error as e:
                    raise ProfileError(t.source, key, cond, f"a valid Python regular expression ({e})") from None
                tests.append(HeaderTest(name, canonical_key(name), pattern=pattern))
            else:
                raise ProfileError(
                    t.source, key, cond, "true (present), false (absent) or a regular expression (string)"
                )
        kw["headers"] = tuple(tests)
    kw["body"] = t.get("body", _regex, "a Python regular expression (string), searched in the body")
    kw["device"] = t.get("device", _device, _DEVICE_ALLOWED, ())
    if on == "connect" and any(d.is_aor for d in kw["device"]):
        raise t.error("device", "a connection carries no SIP AOR yet: use an address or a network")
    if "occurrence" in t:
        o = t.sub("occurrence", OCCURRENCE_KEYS)
        if not o.data:
            raise t.error("occurrence", "a table with first, every, after and/or per")
        per_values = ("rule", "device", "flow") if on == "connect" else PER_VALUES
        kw["occurrence"] = Occurrence(
            first=o.get("first", _int(1), "a whole number >= 1 (select the first N occurrences)"),
            every=o.get("every", _int(1), "a whole number >= 1 (select every Nth occurrence)"),
            after=o.get("after", _int(0), "a whole number >= 0 (skip the first N occurrences)", 0),
            per=o.get("per", _choice(per_values), _one_of(per_values), "rule"),
        )
    kw["count"] = t.get(
        "count",
        _choice(("transaction", "transmission")),
        _one_of(("transaction", "transmission"))
        + ": retransmissions count once and share the decision, or every transmission counts",
        "transaction",
    )
    kw["probability"] = t.get("probability", parse_rate, RATE_ALLOWED)
    if "window" in t:
        w = t.sub("window", WINDOW_KEYS)
        kw["window"] = Window(
            start=w.get("start", parse_duration, DURATION_ALLOWED, 0.0),
            duration=w.get("for", parse_duration, DURATION_ALLOWED),
            anchor=w.get("from", _choice(("activation", "first-match")), _one_of(("activation", "first-match")), "activation"),
        )
    return Match(**kw)


# ---------------------------------------------------------------------------
# action


def _stall(value: Any) -> float:
    if value is True:
        return math.inf
    return parse_duration(value)


def _headers_table(t: _Table, name: str) -> tuple[tuple[str, str], ...]:
    value = t.data[name]
    if not isinstance(value, Mapping) or not value:
        raise t.error(name, "a table of header name = \"value\", e.g. { \"Retry-After\" = \"30\" }")
    out = []
    for hname, hvalue in value.items():
        key = t.key(name) + "." + str(hname)
        try:
            _header_name(hname)
        except ValueError as e:
            raise ProfileError(t.source, key, hname, str(e)) from None
        if canonical_key(hname) == "content-length":
            raise ProfileError(t.source, key, hname, "Content-Length is computed by faultlab and cannot be set")
        try:
            out.append((hname, _header_value(hvalue)))
        except (TypeError, ValueError) as e:
            raise ProfileError(t.source, key, hvalue, f"a string (or whole number) {e}".rstrip()) from None
    return tuple(out)


def _parse_action(t: _Table, match: Match) -> Action:
    primaries = [k for k in PRIMARY_ACTIONS if k in t]
    if len(primaries) > 1:
        raise ProfileError(
            t.source,
            t.path,
            {k: t.data[k] for k in primaries},
            "exactly one of " + ", ".join(PRIMARY_ACTIONS)
            + " (to combine effects, write two rules and set continue = true on the first)",
        )
    kind = primaries[0] if primaries else "forward"
    for mod, owner in MODIFIERS.items():
        if mod in t:
            owners = owner if isinstance(owner, tuple) else (owner,)
            if kind not in owners:
                raise t.error(mod, f"{mod} goes with {' or '.join(owners)}, and this action is {kind!r}")
    kw: dict[str, Any] = {"kind": kind}
    if kind == "drop":
        t.get("drop", _true, "true (to not drop, remove the rule)")
    elif kind == "delay":
        kw["delay"] = DelaySpec(
            delay=t.require("delay", parse_duration, DURATION_ALLOWED),
            jitter=t.get("jitter", parse_duration, DURATION_ALLOWED, 0.0),
            distribution=t.get("distribution", _choice(DISTRIBUTIONS), _one_of(DISTRIBUTIONS), "uniform"),
        )
    elif kind == "respond":
        status = t.get("respond", _int(200, 699), "a final status code 200-699, e.g. 503")
        reason = t.get("reason", _str, "a reason phrase (string)")
        if reason is not None and ("\r" in reason or "\n" in reason):
            raise t.error("reason", "a reason phrase without CR or LF")
        headers = _headers_table(t, "headers") if "headers" in t else ()
        kw["respond"] = RespondSpec(status, reason, headers)
    elif kind == "duplicate":
        kw["duplicate"] = DuplicateSpec(
            copies=t.get("duplicate", _int(1, 100), "the number of extra copies, 1-100"),
            spacing=t.get("spacing", parse_duration, DURATION_ALLOWED, 0.0),
        )
    elif kind == "hold":
        t.get("hold", _true, "true")
        kw["hold"] = HoldSpec(
            timeout=t.get("timeout", parse_duration, DURATION_ALLOWED),
            then=t.get("then", _choice(("forward", "drop")), _one_of(("forward", "drop")), "forward"),
        )
        if "then" in t and kw["hold"].timeout is None:
            raise t.error("then", "then applies after a timeout: set timeout too")
    elif kind in ("close", "reset"):
        t.get(kind, _true, "true")
        default_when = "before" if match.on == "connect" else "after"
        when = t.get("when", _choice(("before", "after")), _one_of(("before", "after")), default_when)
        if match.on == "connect" and when != "before":
            raise t.error("when", "a connect rule closes the new connection at once: leave when out")
        kw["close"] = CloseSpec("fin" if kind == "close" else "rst", when)
        if match.transport == frozenset({"udp"}):
            raise t.error(kind, "UDP has no connection to close: match transport = \"tcp\" or \"tls\"")
    elif kind == "stall":
        kw["stall"] = t.get("stall", _stall, DURATION_ALLOWED + ", or true (until the connection ends)")
    if "set_headers" in t:
        kw["set_headers"] = _headers_table(t, "set_headers")
    if "remove_headers" in t:
        names = []
        value = t.data["remove_headers"]
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not TOKEN_RE.fullmatch(item):
                raise t.error("remove_headers", "a header name or a list of them, e.g. [\"Reason\"]")
            if canonical_key(item) == "content-length":
                raise t.error("remove_headers", "Content-Length is computed by faultlab and cannot be removed")
            names.append(item)
        if not names:
            raise t.error("remove_headers", "a header name or a list of them, e.g. [\"Reason\"]")
        kw["remove_headers"] = tuple(names)
    action = Action(**kw)
    if action.edits:
        if match.on == "connect":
            raise t.error(EDIT_KEYS[0] if "set_headers" in t else EDIT_KEYS[1], "a connect rule has no message to edit")
        if kind in ("drop", "respond") or (action.close is not None and action.close.when == "before"):
            raise t.error(
                "set_headers" if "set_headers" in t else "remove_headers",
                f"header edits apply to a forwarded message, and {kind!r} forwards nothing",
            )
        set_keys = {canonical_key(n) for n, _ in action.set_headers}
        for n in action.remove_headers:
            if canonical_key(n) in set_keys:
                raise t.error("remove_headers", f"{n!r} is also in set_headers: set replaces it already")
    if match.on == "connect" and kind not in ("stall", "close", "reset"):
        raise ProfileError(t.source, t.path, dict(t.data), "a connect rule can only stall, close or reset")
    if kind == "respond":
        if match.status is not None or match.on == "connect":
            raise t.error("respond", "respond answers requests: the rule must not match responses (status)")
        if match.method is not None and match.method <= {"ACK"}:
            raise t.error("respond", "an ACK gets no response (RFC 3261 §17.1.1.3)")
    if kind == "forward" and not action.edits:
        raise ProfileError(
            t.source,
            t.path,
            dict(t.data),
            "an action: one of " + ", ".join(PRIMARY_ACTIONS) + ", and/or set_headers / remove_headers",
        )
    return action


# ---------------------------------------------------------------------------
# rules


def parse_rule(
    data: Mapping[str, Any], *, source: str = "<api>", key: str = "rule", default_name: str | None = None
) -> Rule:
    """One rule from a table (TOML ``[[rules]]`` entry or API JSON object).

    ``name`` is required unless ``default_name`` is given. Raises :class:`ProfileError`.
    """
    t = _Table(data, key, source, RULE_KEYS)
    if default_name is None:
        name = t.require("name", _name, _NAME_ALLOWED)
    else:
        name = t.get("name", _name, _NAME_ALLOWED, default_name)
    match = _parse_match(t.sub("match", MATCH_KEYS)) if "match" in t else Match()
    if "action" not in t:
        raise t.error("action", "required: a table, e.g. action = { drop = true }")
    action = _parse_action(t.sub("action", ACTION_KEYS), match)
    cont = t.get("continue", _bool, "true or false", False)
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


def _ge(t: _Table, name: str) -> GilbertElliott:
    g = t.sub(name, GE_KEYS)
    p = g.require("p", parse_rate, RATE_ALLOWED + " (P(good -> bad) per packet)")
    r = g.require("r", parse_rate, RATE_ALLOWED + " (P(bad -> good) per packet)")
    bad = g.get("bad_loss", parse_rate, RATE_ALLOWED + " (loss in the bad state, netem's 1-h)", 1.0)
    good = g.get("good_loss", parse_rate, RATE_ALLOWED + " (loss in the good state, netem's 1-k)", 0.0)
    return GilbertElliott(p=p, r=r, h=1.0 - bad, k=1.0 - good)


def _link_fields(t: _Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "delay" in t:
        out["delay"] = t.get("delay", parse_duration, DURATION_ALLOWED)
    if "jitter" in t:
        out["jitter"] = t.get("jitter", parse_duration, DURATION_ALLOWED)
    if "distribution" in t:
        out["distribution"] = t.get("distribution", _choice(DISTRIBUTIONS), _one_of(DISTRIBUTIONS))
    if "loss" in t:
        if isinstance(t.data["loss"], Mapping):
            out["loss_model"] = _ge(t, "loss")
            out["loss"] = 0.0
        else:
            out["loss"] = t.get(
                "loss", parse_rate, RATE_ALLOWED + ", or a Gilbert-Elliott table { p = \"1%\", r = \"30%\" }"
            )
            out["loss_model"] = None
    if "duplicate" in t:
        out["duplicate"] = t.get("duplicate", parse_rate, RATE_ALLOWED)
    if "reorder" in t:
        out["reorder"] = t.get("reorder", parse_rate, RATE_ALLOWED)
    if "rate" in t:
        out["rate_bps"] = t.get("rate", parse_bitrate, BITRATE_ALLOWED)
    return out


def _parse_link(t: _Table) -> Link:
    base = _link_fields(t)
    dns_delay = t.get("dns_delay", parse_duration, DURATION_ALLOWED, 0.0)
    specs = {}
    for direction in ("to-pbx", "to-device"):
        fields = dict(base)
        if direction in t:
            fields.update(_link_fields(t.sub(direction, LINK_KEYS)))
        spec = LinkSpec(**fields)
        if spec.reorder and not spec.delay:
            where = t.key(direction) if direction in t and "reorder" in t.data[direction] else t.key("reorder")
            raise ProfileError(
                t.source, where, f"{spec.reorder:.0%}", "reorder needs a delay: a reordered message skips the delay"
            )
        specs[direction] = spec
    return Link(to_pbx=specs["to-pbx"], to_device=specs["to-device"], dns_delay=dns_delay)


# ---------------------------------------------------------------------------
# profiles


def parse_profile(text: str, *, source: str = "<string>") -> Profile:
    """A profile from TOML text. ``source`` names it in errors; when it is a
    ``.toml`` path, the profile's name defaults to (and must equal) the file's
    stem, otherwise to ``"unnamed"``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(source, "", MISSING, f"TOML syntax error: {e}") from None
    t = _Table(data, "", source, PROFILE_KEYS)
    stem = Path(source).stem if source.endswith(".toml") else None
    name = t.get("name", _name, _NAME_ALLOWED, stem or "unnamed")
    if stem is not None and name != stem:
        raise t.error("name", f"the file's name without .toml, {stem!r} (profiles are found by file name)")
    summary = t.get("summary", _str, "one line of text", "")
    if "\n" in summary:
        raise t.error("summary", "one line of text (put more in description)")
    description = t.get("description", _str, "text", "")
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
    link = _parse_link(t.sub("link", LINK_TOP_KEYS)) if "link" in t else None
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
