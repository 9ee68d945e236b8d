"""The one event model: every SIP message and decision on the timeline."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from faultlab.text import clean, readable

# The fields that hold text; an event keeps them readable (faultlab.text): wire bytes that were not UTF-8 show as
# escapes (a Call-ID "abc\xbd"), in memory as in every view of the timeline, and only ``raw`` keeps the bytes.
_TEXT_FIELDS = ("kind", "source", "flow", "direction", "transport", "peer", "summary", "method", "call_id",
                "cseq_method")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, at trio-clock time ``t`` (seconds since the run started).

    kinds written by the relay: ``start``, ``stop``, ``received``, ``sent``,
    ``flow-open``, ``flow-close``, ``warning``.
    """

    t: float
    kind: str
    source: str = "proxy"
    flow: str | None = None
    direction: str | None = None  # "to-pbx" | "to-device"
    transport: str | None = None  # "udp" | "tcp" | "tls"
    peer: str | None = None  # "host:port" of the other end of this hop
    summary: str | None = None
    method: str | None = None
    status: int | None = None
    call_id: str | None = None
    cseq: int | None = None
    cseq_method: str | None = None
    parsed: bool | None = None  # False: bytes faultlab could not parse, relayed unchanged
    raw: bytes | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if type(value) is str and not value.isascii():
                object.__setattr__(self, name, readable(value))
        if self.detail:
            detail = clean(self.detail)
            if detail is not self.detail:
                object.__setattr__(self, "detail", detail)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``raw`` as text when it is UTF-8, else as ``raw_b64``."""
        out = {}
        for name in _FIELD_NAMES:  # as dataclasses.asdict, without its deep copy of every value (most of a trace's cost)
            value = getattr(self, name)
            if value is not None and value != {}:
                out[name] = _copied(value) if name == "detail" else value
        raw = out.pop("raw", None)
        if raw is not None:
            try:
                out["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                out["raw_b64"] = base64.b64encode(raw).decode("ascii")
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Event:
        obj = dict(obj)
        if "raw" in obj:
            obj["raw"] = obj["raw"].encode("utf-8")
        elif "raw_b64" in obj:
            obj["raw"] = base64.b64decode(obj.pop("raw_b64"))
        return cls(**obj)


_FIELD_NAMES = tuple(f.name for f in fields(Event))


def _copied(value: Any) -> Any:
    """A copy of a JSON-like tree as :func:`dataclasses.asdict` makes it (dicts, lists and tuples copied, dataclasses
    as dicts), sharing its scalars instead of deep-copying each one."""
    if type(value) is dict:
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value
