"""S21 and the RTP it needs: real SDP offer/answer, 20 ms PCMU packets between the caller and the reference device,
the device's media-silence timeout; in virtual time on the memory network, and on loopback in real time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from faultlab.lab.rtp import parse_sdp
from faultlab.lab.runner import run_case
from faultlab.lab.scenario import load_scenario
from faultlab.lab.scenario_set import override
from faultlab.sip import parse_datagram

SEEDS = [1, 2, 3, 4, 5]
S21 = load_scenario("S21")


def media(run, source: str, action: str) -> list:
    return [e for e in run.events if e.kind == "media" and e.source == source and e.detail.get("action") == action]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("transport", S21.transports)
def test_the_reference_device_ends_s21_failed_after_its_media_silence_timeout(transport, seed):
    case = run_case(S21, transport=transport, seed=seed)
    failed = [f"{c.check}: {c.message} {c.evidence}" for c in case.checks if not c.passed]
    assert not failed, failed
    run = case.runs[0]
    [stopped] = media(run, "caller", "stopped")
    [end] = [e for e in run.events if e.kind == "device" and e.detail.get("event") == "ended"]
    assert end.detail["reason"] == "failed"
    assert stopped.t + 30 - 0.1 <= end.t <= stopped.t + 30 + 0.1  # 30 s after the last RTP, not after the BYE
    # the BYE was sent, and faultlab dropped it on its way to the device (retransmissions too)
    assert any(e.source == "caller" and e.kind == "sent" and e.method == "BYE" for e in run.events)
    assert not [e for e in run.events if e.source == "proxy" and e.kind == "sent" and e.method == "BYE"
                and e.direction == "to-device"]
    assert [e for e in run.events if e.source == "proxy" and e.kind == "dropped" and e.method == "BYE"]
    # ... and the device hung up itself as its timeout fired: its BYE reached the caller, which answered 200
    [device_bye] = [e for e in run.events if e.source == "proxy" and e.kind == "received" and e.method == "BYE"
                    and e.direction == "to-pbx"]
    assert end.t <= device_bye.t <= end.t + 0.1  # at once (one hop of the network's round trip)
    assert any(e.source == "caller" and e.kind == "received" and e.method == "BYE" for e in run.events)
    assert any(e.source == "proxy" and e.kind == "sent" and e.direction == "to-device" and e.status == 200
               and e.cseq_method == "BYE" for e in run.events)
    # RTP went both ways: 20 ms packets for the 5 s the call was up (the device starts a few hops later, at the ACK)
    device = next(e.source for e in run.events if e.kind == "device")
    assert abs(stopped.detail["sent"] - 250) <= 2 and 240 <= stopped.detail["received"] <= 252
    [device_stopped] = media(run, device, "stopped")
    assert device_stopped.t == end.t  # the device sends until its own end: 30 s more of RTP nobody answers
    assert media(run, device, "first-received") and media(run, "caller", "first-received")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("transport", S21.transports)
def test_a_device_without_a_media_silence_timeout_fails_s21(transport, seed):
    case = run_case(S21, transport=transport, seed=seed, behaviour="no-media-timeout")
    result = next(c for c in case.checks if c.check == "ends-right")
    assert not result.passed and "never ended" in result.message, result.message
    assert "media-stopped" in " ".join(result.evidence)  # the deadline's anchor: when the caller's RTP stopped


def test_sdp_is_real_and_faultlab_relays_it_as_is():
    run = run_case(S21, transport="udp", seed=1).runs[0]
    call_id = run.call_id

    def body(source, kind, what):
        messages = [parse_datagram(e.raw) for e in run.events if e.source == source and e.kind == kind
                    and e.call_id == call_id and e.raw]
        [message] = [m for m in messages if m.cseq.method == "INVITE" and (m.method or m.status) == what]
        return message.body

    offer, answer = body("caller", "sent", "INVITE"), body("proxy", "received", 200)
    assert body("proxy", "sent", "INVITE") == offer  # faultlab's rewriter leaves the SDP alone
    assert body("caller", "received", 200) == answer
    for sdp in (offer, answer):
        assert b"m=audio " in sdp and b"RTP/AVP 0" in sdp and b"a=rtpmap:0 PCMU/8000" in sdp
        assert b"a=sendrecv" in sdp and b"a=ptime:20" in sdp
    # the ports the SDP names are the ones the RTP really came from
    caller_rtp, device_rtp = parse_sdp(offer).address, parse_sdp(answer).address
    device = next(e.source for e in run.events if e.kind == "device")
    [heard_at_device] = media(run, device, "first-received")
    [heard_at_caller] = media(run, "caller", "first-received")
    assert heard_at_device.detail["peer_address"] == f"{caller_rtp[0]}:{caller_rtp[1]}"
    assert heard_at_caller.detail["peer_address"] == f"{device_rtp[0]}:{device_rtp[1]}"


def test_a_call_without_media_offers_an_inactive_stream_and_sends_no_rtp():
    run = run_case(load_scenario("S01"), seed=1).runs[0]
    [invite] = [e for e in run.events if e.source == "caller" and e.kind == "sent" and e.method == "INVITE"]
    offer = parse_sdp(parse_datagram(invite.raw).body)
    assert offer is not None and offer.direction == "inactive" and offer.address is None
    assert not [e for e in run.events if e.kind == "media"]


def test_media_timeout_is_a_device_setting():
    short = override(override(S21, "device.media_timeout", "4s"), "expect.by", "media-stopped+4s")
    case = run_case(short, seed=1)
    assert case.passed, [c.message for c in case.checks]
    # the reference's 30 s deadline judges a device with a longer timeout late, with the numbers
    slow = run_case(override(S21, "device.media_timeout", "40s"), seed=1)
    result = next(c for c in slow.checks if c.check == "ends-right")
    assert not result.passed and "after the deadline" in result.message, result.message


def test_media_everywhere_changes_no_verdict():
    """Any scenario can carry media (``--set call.media=true``): the answered calls of the catalogue pass with it."""
    for sid in ("S01", "S17", "S19"):
        case = run_case(replace(load_scenario(sid), media=True), seed=2)
        assert case.passed, (sid, [c.message for c in case.checks])
        assert [e for e in case.runs[0].events if e.kind == "media" and e.detail.get("action") == "first-received"]


def test_virtual_and_real_time_agree_on_s21():
    # a short media-silence timeout, so that the real-time run takes seconds, not 40
    short = override(override(override(S21, "device.media_timeout", "2s"), "expect.by", "media-stopped+2s"),
                     "call.hang_up_after", "1s")
    for behaviour in (None, "no-media-timeout"):
        bad = replace(short, duration=8.0) if behaviour else short
        real = run_case(bad, seed=7, behaviour=behaviour, virtual=False)
        virtual = run_case(bad, seed=7, behaviour=behaviour, virtual=True)
        assert real.runs[0].network == "loopback" and virtual.runs[0].network == "memory"
        assert [(c.check, c.passed) for c in real.checks] == [(c.check, c.passed) for c in virtual.checks], (
            [c.message for c in real.checks], [c.message for c in virtual.checks])
        assert real.passed is (behaviour is None)
        assert media(real.runs[0], "caller", "first-received")  # RTP flowed on real sockets too


async def test_s21_against_a_pbx_of_ones_own_carries_rtp_beside_it(tmp_path):
    """`--pbx HOST:PORT`: the same S21 through a PBX in another process (faultlab's, here); real time, with a short
    media-silence timeout. The RTP goes between caller and device, not through that PBX."""
    import socket

    import trio

    from tests.actors import actor_env, open_actors

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gateway = s.getsockname()[1]
    short = override(override(override(S21, "device.media_timeout", "2s"), "expect.by", "media-stopped+2s"),
                     "call.hang_up_after", "1s")
    async with open_actors(actor_env(tmp_path / "home")) as actors:
        pbx = await actors.spawn("pbx", "pbx", "--listen", "udp:127.0.0.1:0", "--push-url",
                                 f"http://127.0.0.1:{gateway}", "--push-topic", "org.faultlab.device.voip")
        port = int((await pbx.wait_line("stderr", r"udp on 127\.0\.0\.1:(\d+)$")).group(1))
        own = {"pbx": {"udp": ("127.0.0.1", port)}, "push_listen": ("127.0.0.1", gateway)}
        case = await trio.to_thread.run_sync(lambda: run_case(short, seed=1, virtual=False, **own))
    assert case.passed, [c.message for c in case.checks]
    run = case.runs[0]
    assert not [e for e in run.events if e.source == "pbx"]  # no embedded PBX in this lab
    assert media(run, "caller", "first-received") and media(run, "caller", "stopped")
