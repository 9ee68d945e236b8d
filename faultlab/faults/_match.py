"""The stateless part of matching: does a message satisfy a rule's conditions?

Occurrence, probability and windows need state and live in the engine.
Nothing here raises on a malformed message: a header faultlab cannot parse
simply does not match a condition on it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..sip import MAGIC_COOKIE, Message, SipError, parse_uri
from ._model import DeviceSpec, Match

__all__ = ["MessageFacts", "static_match", "device_address_match", "transaction_key"]


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except (SipError, ValueError):
        return None


class MessageFacts:
    """The facts about one message that rules look at, each computed once.

    ``message`` is not None (rules only look at parsed SIP messages).
    """

    __slots__ = ("message", "direction", "transport", "device", "flow", "raw", "_cache")

    def __init__(self, message: Message, raw: bytes, direction: str, transport: str, device: tuple[str, int], flow: str):
        self.message = message
        self.raw = raw
        self.direction = direction
        self.transport = transport
        self.device = device
        self.flow = flow
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, fn: Any) -> Any:
        cache = self._cache
        if name not in cache:
            cache[name] = _safe(fn)
        return cache[name]

    @property
    def cseq_method(self) -> str | None:
        cseq = self._get("cseq", lambda: self.message.cseq)
        return None if cseq is None else cseq.method

    @property
    def call_id(self) -> str | None:
        return self._get("call_id", lambda: self.message.call_id)

    @property
    def in_dialog(self) -> bool | None:
        msg = self.message
        return self._get("in_dialog", lambda: None if msg.to_addr is None else msg.to_tag is not None)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self._get("ip", lambda: _ip(self.device[0]))

    @property
    def device_party(self) -> tuple[str | None, str, int | None] | None:
        """The device's side of this message's transaction as ``(user, host, port)``:
        From for a request to the PBX or a response to the device (the device
        sent the request), To for a request to the device or its response."""
        return self._get("party", self._party)

    def _party(self) -> tuple[str | None, str, int | None] | None:
        msg = self.message
        device_sent_request = msg.is_request == (self.direction == "to-pbx")
        addr = msg.from_addr if device_sent_request else msg.to_addr
        if addr is None:
            return None
        uri = parse_uri(addr.uri)
        return (uri.user, uri.host.lower(), uri.port)

    @property
    def transaction(self) -> tuple[Any, ...]:
        """See :func:`transaction_key`."""
        key = self._cache.get("tkey")
        if key is None:
            key = self._cache["tkey"] = transaction_key(self.message, self.direction, self.raw)
        return key


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def transaction_key(msg: Message, direction: str, raw: bytes = b"") -> tuple[Any, ...]:
    """What all transmissions of one message have in common (RFC 3261 §17.2.3).

    Requests: the top Via branch (RFC 3261 magic cookie), CSeq number and
    method, and the method (so a CANCEL or the ACK of a non-2xx, which share
    the INVITE's branch, are their own). Responses: the same with the status
    code instead of the method, so a retransmitted 200 is the same
    transmission but the 180 before it is not. Without an RFC 3261 branch:
    Call-ID, From tag, top Via value and CSeq; if even those cannot be read,
    the bytes themselves.
    """
    ident: Any = msg.method if msg.is_request else msg.status
    try:
        cseq = msg.cseq
        via = msg.top_via
        cseq_t = (cseq.number, cseq.method) if cseq is not None else None
        branch = via.branch if via is not None else None
        if branch and branch.startswith(MAGIC_COOKIE):
            return (direction, "branch", branch, cseq_t, ident)
        return (direction, "legacy", msg.call_id, msg.from_tag, via.raw if via else None, cseq_t, ident)
    except SipError:
        return (direction, "raw", raw or msg.raw)


def device_address_match(spec: DeviceSpec, ip: Any, port: int) -> bool:
    if spec.network is None or ip is None:
        return False
    if ip.version != spec.network.version or ip not in spec.network:
        return False
    return spec.port is None or spec.port == port


def _device_match(match: Match, facts: MessageFacts) -> bool:
    for spec in match.device:
        if spec.is_aor:
            party = facts.device_party
            if (
                party is not None
                and party[0] == spec.aor_user
                and party[1] == spec.aor_host
                and (spec.port is None or spec.port == party[2])
            ):
                return True
        elif device_address_match(spec, facts.ip, facts.device[1]):
            return True
    return False


def static_match(match: Match, facts: MessageFacts) -> bool:
    """All conditions of ``match`` that need no state (everything but
    occurrence, probability and window), for a parsed message."""
    msg = facts.message
    if match.direction is not None and match.direction != facts.direction:
        return False
    if match.transport is not None and facts.transport not in match.transport:
        return False
    if match.method is not None and (not msg.is_request or msg.method not in match.method):
        return False
    if match.status is not None and (msg.is_request or msg.status not in match.status):
        return False
    if match.cseq_method is not None and facts.cseq_method not in match.cseq_method:
        return False
    if match.in_dialog is not None and facts.in_dialog is not match.in_dialog:
        return False
    for test in match.headers:
        fields = msg.header_fields(test.key)
        if not test.present:
            if fields:
                return False
            continue
        if not fields:
            return False
        if test.pattern is not None:
            values = _safe(lambda: msg.get_all(test.key)) or [h.value for h in fields]
            if not any(test.pattern.search(v) for v in values):
                return False
    if match.body is not None and not match.body.search(msg.body.decode("utf-8", "surrogateescape")):
        return False
    if match.device and not _device_match(match, facts):
        return False
    return True
