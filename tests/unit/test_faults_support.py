"""Builders shared by the fault-engine tests: SIP messages, views and engines.

No test lives here except the checks that the builders make valid SIP.
"""

from __future__ import annotations

import random
from typing import Iterable

from faultlab.faults import Engine, MessageView, Profile, parse_profile
from faultlab.sip import Message, parse_message

DEVICE = ("192.0.2.10", 5060)


def request(
    method: str = "REGISTER",
    *,
    branch: str | None = "z9hG4bK-1",
    cseq: int = 1,
    cseq_method: str | None = None,
    call_id: str = "call-1",
    from_uri: str = "sip:alice@example.com",
    to_uri: str | None = None,
    to_tag: str | None = None,
    uri: str | None = None,
    headers: Iterable[str] = (),
    body: bytes = b"",
) -> Message:
    to_uri = to_uri or from_uri
    uri = uri or ("sip:example.com" if method == "REGISTER" else to_uri)
    via = "SIP/2.0/UDP 192.0.2.10:5060" + (f";branch={branch}" if branch else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag=ft1",
        f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def response(
    status: int = 200,
    *,
    method: str = "REGISTER",
    branch: str | None = "z9hG4bK-1",
    cseq: int = 1,
    call_id: str = "call-1",
    from_uri: str = "sip:alice@example.com",
    to_uri: str | None = None,
    to_tag: str | None = "tt1",
    headers: Iterable[str] = (),
    reason: str = "OK",
) -> Message:
    to_uri = to_uri or from_uri
    via = "SIP/2.0/UDP 192.0.2.10:5060" + (f";branch={branch}" if branch else "")
    lines = [
        f"SIP/2.0 {status} {reason}",
        f"Via: {via}",
        f"From: <{from_uri}>;tag=ft1",
        f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *headers,
        "Content-Length: 0",
    ]
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


def view(
    msg: Message | None,
    direction: str = "to-pbx",
    transport: str = "udp",
    device: tuple[str, int] = DEVICE,
    flow: str = "u1",
    raw: bytes | None = None,
) -> MessageView:
    if raw is None:
        raw = msg.raw if msg is not None else b"\r\n\r\n"
    return MessageView(message=msg, raw=raw, direction=direction, transport=transport, device=device, flow=flow)


def profile(text: str, name: str = "test") -> Profile:
    if "name =" not in text.split("[", 1)[0]:
        text = f'name = "{name}"\n' + text
    return parse_profile(text)


def rule_profile(match: str, action: str, *, extra: str = "", name: str = "r") -> Profile:
    """A profile with one rule: ``match`` and ``action`` are TOML inline-table bodies."""
    return profile(f'[[rules]]\nname = "{name}"\nmatch = {{ {match} }}\naction = {{ {action} }}\n{extra}')


def engine(prof: Profile | str, seed: int = 1, activated_at: float = 0.0) -> Engine:
    if isinstance(prof, str):
        prof = profile(prof)
    return Engine(prof, random.Random(seed), activated_at=activated_at)


def test_builders_make_valid_sip():
    req = request("INVITE", to_uri="sip:bob@example.com", body=b"v=0\r\n")
    assert req.is_request and req.method == "INVITE" and req.cseq.method == "INVITE"
    assert req.top_via.branch == "z9hG4bK-1" and req.to_tag is None and req.body == b"v=0\r\n"
    resp = response(180, method="INVITE", reason="Ringing")
    assert resp.status == 180 and resp.to_tag == "tt1"
