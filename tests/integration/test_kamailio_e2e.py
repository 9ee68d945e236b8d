"""End to end with a real PBX: two scripted softphones, Kamailio, and faultlab's relay between them.

Rules for these tests: loopback only (127.0.0.1), free ports, every wait under ``trio.fail_after`` on trio's clock
(inside :mod:`faultlab.lab.ua`), one Kamailio per test, a few seconds at most per test.

The UAs behave like real softphones with faultlab as their outbound proxy: only REGISTER and the INVITE are sent to
faultlab by configuration; ACK, BYE and responses follow Record-Route and Via. So a call that completes with every
message seen by faultlab shows that faultlab's Via and Record-Route keep the whole dialog on the relay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.integration.conftest import Kamailio
from faultlab.addr import format_hostport
from faultlab.lab.ua import TRANSPORTS, Address, CallFailed, Dialog, Record, SipUA

pytestmark = pytest.mark.integration


def kamailio_address(kam: Kamailio, transport: str) -> Address:
    return kam.host, kam.tls_port if transport == "tls" else kam.sip_port


async def register(*uas: SipUA) -> None:
    for ua in uas:
        response = await ua.register()
        assert response.status == 200, f"{ua.user}: REGISTER got {response.status}\n{ua.ladder()}"


async def establish(caller: SipUA, callee: SipUA) -> tuple[Dialog, Dialog]:
    """``caller`` calls ``callee``, who rings and answers; both dialogs once the ACK has arrived."""
    dialogs: dict[str, Dialog] = {}

    async def answer() -> None:
        dialogs["callee"] = await callee.answer()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        dialogs["caller"] = await caller.call(callee.aor)
    return dialogs["caller"], dialogs["callee"]


async def hang_up(by: Dialog, other: Dialog) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other.expect_bye)
        response = await by.bye()
    assert response.status == 200, f"{by.ua.user}: BYE got {response.status}\n{by.ua.ladder()}"


def summaries(records: list[Record]) -> list[str]:
    """What the records were, without provisional responses: Kamailio may let a 200 overtake a 180 over UDP."""
    return [r.summary for r in records if r.message.is_request or r.message.status >= 200]


def assert_call_flow(alice: SipUA, bob: SipUA, hangup_by: str) -> None:
    """What each phone sent and received, in order: register, alice calls bob, one of them hangs up."""
    hangup, answer = ["BYE"], ["200 BYE"]
    alice_end, bob_end = (hangup, answer) if hangup_by == "alice" else (answer, hangup)
    expected = {
        (alice, "sent"): ["REGISTER", "INVITE", "ACK", *alice_end],
        (alice, "received"): ["200 REGISTER", "200 INVITE", *bob_end],
        (bob, "sent"): ["REGISTER", "200 INVITE", *bob_end],
        (bob, "received"): ["200 REGISTER", "INVITE", "ACK", *alice_end],
    }
    for (ua, direction), want in expected.items():
        got = summaries(ua.sent() if direction == "sent" else ua.received())
        assert got == want, f"{ua.user} {direction} {got}, want {want}\n{ua.ladder()}"


def assert_one_path(ua: SipUA, peer: Address, names: dict[Address, str]) -> None:
    """Every message of ``ua`` went to / came from ``peer``, through its one socket or connection."""
    stray = [
        f"{r}   ({names.get(r.peer, 'unknown peer')})" for r in ua.log if r.peer != peer or r.local != ua.address
    ]
    assert not stray, (
        f"{ua.user} ({format_hostport(*ua.address)}): messages not exchanged with {names[peer]} "
        f"at {format_hostport(*peer)} over its own socket/connection:\n" + "\n".join(stray)
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ua_direct_with_kamailio(kamailio: Kamailio, transport: str, nursery: trio.Nursery) -> None:
    """The test UA against Kamailio alone: register, call, hang up, everything to and from Kamailio."""
    pbx = kamailio_address(kamailio, transport)
    alice = SipUA("alice", transport, pbx, ca_file=kamailio.ca_file)
    bob = SipUA("bob", transport, pbx, ca_file=kamailio.ca_file)
    for ua in (alice, bob):
        await ua.start(nursery)
    await register(alice, bob)

    caller, callee = await establish(alice, bob)
    # Kamailio record-routes itself; both sides route in-dialog requests through it.
    assert caller.route_set and callee.route_set
    await hang_up(caller, callee)

    assert_call_flow(alice, bob, "alice")
    names = {pbx: "Kamailio"}
    assert_one_path(alice, pbx, names)
    assert_one_path(bob, pbx, names)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ua_call_rejected_by_kamailio(kamailio: Kamailio, transport: str, nursery: trio.Nursery) -> None:
    """A call to nobody: Kamailio answers 404, the UA ACKs it in the INVITE transaction."""
    pbx = kamailio_address(kamailio, transport)
    alice = SipUA("alice", transport, pbx, ca_file=kamailio.ca_file)
    await alice.start(nursery)
    with pytest.raises(CallFailed) as failed:
        await alice.call("sip:nobody@127.0.0.1")
    assert failed.value.response.status == 404
    invite, ack = alice.sent()
    assert (ack.summary, ack.message.top_via.branch) == ("ACK", invite.message.top_via.branch)
    assert ack.message.to_tag == failed.value.response.to_tag is not None


@pytest.mark.parametrize("hangup_by", ["alice", "bob"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_through_relay(
    kamailio: Kamailio, transport: str, hangup_by: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """alice and bob use faultlab as outbound proxy in front of Kamailio; every message of the call crosses it."""
    from faultlab.addr import parse_endpoint
    from faultlab.proxy import ProxyConfig, serve_proxy

    pbx = kamailio_address(kamailio, transport)
    config = ProxyConfig(
        listen=[parse_endpoint(f"{transport}:127.0.0.1:0")],
        upstream=[parse_endpoint(f"{transport}:{pbx[0]}:{pbx[1]}")],
        upstream_ca=kamailio.ca_file,
        confdir=tmp_path / "faultlab",
        quiet=True,
    )
    proxy = await nursery.start(serve_proxy, config)
    relay: Address = tuple(proxy.bound[transport])  # type: ignore[assignment]
    ca_file = proxy.ca_cert_path if transport == "tls" else None
    alice = SipUA("alice", transport, relay, ca_file=ca_file)
    bob = SipUA("bob", transport, relay, ca_file=ca_file)
    for ua in (alice, bob):
        await ua.start(nursery)
    await register(alice, bob)

    caller, callee = await establish(alice, bob)
    await hang_up(caller if hangup_by == "alice" else callee, callee if hangup_by == "alice" else caller)

    assert_call_flow(alice, bob, hangup_by)
    # The phones talked to faultlab only: bob got Kamailio's INVITE, ACK and BYE from faultlab's address, and
    # alice sent ACK and BYE there (a relay that did not Record-Route would have sent them to Kamailio).
    names = {relay: "faultlab's listen address", pbx: "Kamailio"}
    assert_one_path(alice, relay, names)
    assert_one_path(bob, relay, names)

    # faultlab saw every message of the call on both legs, as received and as sent.
    seen: dict[str, set[tuple[str, str]]] = {}
    for event in proxy.events:
        if event.call_id == caller.call_id and event.kind in ("received", "sent"):
            name = event.method if event.method else f"{event.status} {event.cseq_method}"
            seen.setdefault(name, set()).add((event.kind, event.direction))
    both_legs = {(kind, direction) for kind in ("received", "sent") for direction in ("to-pbx", "to-device")}
    for name in ("INVITE", "ACK", "BYE", "200 INVITE", "200 BYE"):
        assert seen.get(name) == both_legs, (
            f"{name}: faultlab recorded {sorted(seen.get(name, ()))}, want {sorted(both_legs)}\n"
            f"alice:\n{alice.ladder()}\nbob:\n{bob.ladder()}"
        )
