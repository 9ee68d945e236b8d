"""Fault profiles applied by the running relay, on real loopback sockets:
what each profile's summary says happens on the wire, with its timeline events.
Timed behaviour runs on trio's MockClock (jumped by hand: the sockets are real)."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trio.testing

from faultlab.proxy import ProxyControl
from faultlab.faults import load_profile, parse_profile
from faultlab.addr import parse_endpoint
from faultlab.api.run import serve_proxy_with_api
from faultlab.proxy import ProxyConfig
from faultlab.sip import build_response, parse_datagram

REGISTER = (b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr1;rport\r\n"
            b"From: <sip:bob@pbx>;tag=b\r\nTo: <sip:bob@pbx>\r\nCall-ID: reg1\r\nCSeq: 1 REGISTER\r\n"
            b"Contact: <sip:bob@10.0.0.2:5060>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n")
INVITE = (b"INVITE sip:bob@10.0.0.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP pbx:5060;branch=z9hG4bKi1\r\n"
          b"From: <sip:alice@pbx>;tag=a\r\nTo: <sip:bob@pbx>\r\nCall-ID: call1\r\nCSeq: 1 INVITE\r\n"
          b"Contact: <sip:alice@pbx>\r\nContent-Length: 0\r\n\r\n")


async def udp_setup(nursery, profile=None, **config):
    pbx = trio.socket.socket(type=socket.SOCK_DGRAM)
    await pbx.bind(("127.0.0.1", 0))
    proxy = await nursery.start(serve_proxy_with_api, ProxyConfig(
        listen=[parse_endpoint("udp:127.0.0.1:0")],
        upstream=[parse_endpoint(f"udp:127.0.0.1:{pbx.getsockname()[1]}")],
        profile=load_profile(profile) if isinstance(profile, str) else profile, seed=7, **config))
    device = trio.socket.socket(type=socket.SOCK_DGRAM)
    await device.bind(("127.0.0.1", 0))
    await device.connect(proxy.bound["udp"])
    return proxy, pbx, device


def kinds(proxy, *wanted):
    return [e for e in proxy.events if e.kind in wanted]


settle = trio.testing.wait_all_tasks_blocked  # let the relay finish recording what it just did


def nothing_waiting(sock) -> bool:
    try:
        sock.socket.recv(65535, socket.MSG_DONTWAIT) if hasattr(sock, "socket") else sock._sock.recv(
            65535, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


async def test_register_drop_loses_every_transmission(nursery):
    proxy, pbx, device = await udp_setup(nursery, "register-drop")
    for _ in range(3):  # the first transmission and two retransmissions
        await device.send(REGISTER)
    options = REGISTER.replace(b"REGISTER sip", b"OPTIONS sip").replace(b"1 REGISTER", b"2 OPTIONS")
    await device.send(options)
    with trio.fail_after(5):
        got, _ = await pbx.recvfrom(65535)
    assert parse_datagram(got).method == "OPTIONS"  # only what the profile does not name gets through
    await settle()
    dropped = kinds(proxy, "dropped")
    assert len(dropped) == 3 and all(e.method == "REGISTER" for e in dropped)
    assert dropped[0].detail == {"how": "dropped", "rules": ["drop-register"]}
    fired = kinds(proxy, "fault")
    assert {(e.detail["rule"], e.detail["action"]) for e in fired} == {("drop-register", "drop")}


async def test_register_503_is_answered_by_faultlab(nursery):
    proxy, pbx, device = await udp_setup(nursery, "register-503")
    await device.send(REGISTER)
    with trio.fail_after(5):
        data, src = await device.recvfrom(65535)
    resp = parse_datagram(data)
    assert src[:2] == proxy.bound["udp"]
    assert (resp.status, resp.get("Retry-After"), resp.call_id, resp.cseq.method) == (503, "30", "reg1", "REGISTER")
    assert resp.top_via.branch == "z9hG4bKr1" and resp.to_tag
    assert nothing_waiting(pbx)
    await settle()
    responded = kinds(proxy, "responded")
    assert len(responded) == 1 and responded[0].status == 503 and responded[0].direction == "to-device"


async def test_invite_delay_3s_arrives_exactly_3s_late(nursery, mock_clock):
    proxy, pbx, device = await udp_setup(nursery, "invite-delay-3s")
    with trio.fail_after(5):
        await device.send(REGISTER)
        _, flow = await pbx.recvfrom(65535)
    await pbx.sendto(INVITE, flow)
    # the INVITE reaches faultlab at once (real socket) but is held for 3 s of trio time
    while not kinds(proxy, "fault"):
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0)
    mock_clock.jump(2.999)
    await trio.testing.wait_all_tasks_blocked()
    assert nothing_waiting(device)
    mock_clock.jump(0.002)
    got = await device.recv(65535)
    assert parse_datagram(got).method == "INVITE"
    await trio.testing.wait_all_tasks_blocked()  # let the relay record what it sent
    received = next(e for e in kinds(proxy, "received") if e.method == "INVITE")
    sent = next(e for e in kinds(proxy, "sent") if e.method == "INVITE")
    assert sent.t - received.t == pytest.approx(3.0, abs=0.002)


async def test_duplicate_and_drop_of_copies_are_on_the_timeline(nursery):
    profile = parse_profile('''
        [[rules]]
        name = "twice"
        match = { method = "OPTIONS" }
        action = { duplicate = 2, spacing = "10ms" }
    ''')
    proxy, pbx, device = await udp_setup(nursery, profile)
    options = REGISTER.replace(b"REGISTER sip", b"OPTIONS sip").replace(b"1 REGISTER", b"2 OPTIONS")
    await device.send(options)
    with trio.fail_after(5):
        copies = [await pbx.recv(65535) for _ in range(3)]
    assert copies[0] == copies[1] == copies[2]
    await settle()
    assert sorted(e.detail.get("copy", 0) for e in kinds(proxy, "sent")) == [0, 1, 2]


async def test_hold_until_released_through_the_control(nursery):
    profile = parse_profile('''
        [[rules]]
        name = "hold-invite"
        match = { direction = "to-device", method = "INVITE" }
        action = { hold = true }
    ''')
    proxy, pbx, device = await udp_setup(nursery, profile)
    control = ProxyControl(proxy)
    with trio.fail_after(5):
        await device.send(REGISTER)
        _, flow = await pbx.recvfrom(65535)
        await pbx.sendto(INVITE, flow)
        while not control.holds():
            await trio.sleep(0.001)
    [held] = control.holds()
    assert held["summary"].startswith("INVITE") and nothing_waiting(device)
    assert control.release(held["id"]) == 1
    with trio.fail_after(5):
        assert parse_datagram(await device.recv(65535)).method == "INVITE"
    await settle()
    assert [e.kind for e in proxy.events if e.kind in ("held", "released")] == ["held", "released"]


async def test_live_switch_changes_behaviour_mid_run(nursery):
    proxy, pbx, device = await udp_setup(nursery)
    control = ProxyControl(proxy)
    with trio.fail_after(5):
        await device.send(REGISTER)
        await pbx.recv(65535)  # clean: through
        control.set_profile("register-503")
        await device.send(REGISTER.replace(b"z9hG4bKr1", b"z9hG4bKr2"))
        assert parse_datagram(await device.recv(65535)).status == 503
        control.set_profile(None)
        await device.send(REGISTER.replace(b"z9hG4bKr1", b"z9hG4bKr3"))
        await pbx.recv(65535)  # clean again
    switches = [e.detail["profile"] for e in kinds(proxy, "profile")]
    assert switches == ["register-503", None]


async def test_per_device_profile_leaves_other_devices_alone(nursery):
    proxy, pbx, device = await udp_setup(nursery)
    other = trio.socket.socket(type=socket.SOCK_DGRAM)
    await other.bind(("127.0.0.1", 0))
    await other.connect(proxy.bound["udp"])
    control = ProxyControl(proxy)
    control.set_profile("register-503", device="%s:%d" % device.getsockname())
    with trio.fail_after(5):
        await device.send(REGISTER)
        assert parse_datagram(await device.recv(65535)).status == 503
        await other.send(REGISTER)
        await pbx.recv(65535)


async def test_same_seed_same_decisions(nursery):
    """Two runs of a lossy profile with one seed: the same messages lost, the same delays."""
    def outcomes(proxy):
        return [(e.call_id, e.detail.get("action"), e.detail.get("delay"))
                for e in proxy.events if e.kind == "fault"]

    results = []
    for _ in range(2):
        async with trio.open_nursery() as n:
            proxy, pbx, device = await udp_setup(n, "lossy-wifi")
            for i in range(100):
                await device.send(REGISTER.replace(b"reg1", b"reg%d" % i).replace(b"z9hG4bKr1", b"z9hG4bKr%d" % i))
            with trio.fail_after(5):
                while len(kinds(proxy, "sent", "dropped")) < 100:
                    await trio.sleep(0.01)
            results.append(outcomes(proxy))
            n.cancel_scope.cancel()
    assert results[0] == results[1]
    lost = sum(1 for _, action, _ in results[0] if action == "loss")
    assert 1 <= lost <= 25  # 10% of 100, within a generous binomial bound


async def test_api_control_activates_library_names_only(nursery, tmp_path):
    from faultlab.faults import ProfileError

    proxy, pbx, device = await udp_setup(nursery)
    control = ProxyControl(proxy)
    secret = tmp_path / "secret.toml"
    secret.write_text('name = "secret"\n')
    for bad in (str(secret), "/etc/passwd", "../profiles/clean", "clean.toml"):
        with pytest.raises(ProfileError, match="from the library"):
            control.set_profile(bad)
    with pytest.raises(ProfileError, match="register-drop"):  # unknown names list what exists
        control.set_profile("no-such-profile")
    assert control.active() == {"global": None, "devices": {}}


async def test_switching_through_the_http_api_changes_behaviour_mid_run(nursery):
    from faultlab.api import client

    proxy, pbx, device = await udp_setup(nursery, api=("127.0.0.1", 0))
    url = "http://%s:%d" % proxy.api_address
    with trio.fail_after(10):
        await device.send(REGISTER)
        await pbx.recv(65535)  # no profile: through
        active = await trio.to_thread.run_sync(client.set_profile, url, "register-503")
        assert active["name"] == "register-503"
        await device.send(REGISTER.replace(b"z9hG4bKr1", b"z9hG4bKr2"))
        assert parse_datagram(await device.recv(65535)).status == 503
        await trio.to_thread.run_sync(client.set_profile, url, None)
        await device.send(REGISTER.replace(b"z9hG4bKr1", b"z9hG4bKr3"))
        await pbx.recv(65535)
        with pytest.raises(client.ApiClientError, match="register-drop"):  # unknown: lists what exists
            await trio.to_thread.run_sync(client.set_profile, url, "no-such-profile")
    assert [e.detail["profile"] for e in kinds(proxy, "profile")] == ["register-503", None]


async def test_rules_added_and_removed_live(nursery):
    from faultlab.faults import ProfileError

    proxy, pbx, device = await udp_setup(nursery)
    control = ProxyControl(proxy)
    stored = control.add_rule({"name": "no-options", "match": {"method": "OPTIONS"}, "action": {"drop": True}})
    assert stored["name"] == "no-options" and [r["name"] for r in control.rules()] == ["no-options"]
    with pytest.raises(ProfileError, match="exists already"):
        control.add_rule({"name": "no-options", "action": {"drop": True}})
    with pytest.raises(ProfileError, match="dealy"):
        control.add_rule({"name": "typo", "action": {"dealy": "1s"}})
    options = REGISTER.replace(b"REGISTER sip", b"OPTIONS sip").replace(b"1 REGISTER", b"2 OPTIONS")
    with trio.fail_after(5):
        await device.send(options)
        await device.send(REGISTER)
        got = parse_datagram(await pbx.recv(65535))
    assert got.method == "REGISTER"  # the OPTIONS before it was dropped by the live rule
    await settle()
    assert [e.method for e in kinds(proxy, "dropped")] == ["OPTIONS"]
    control.remove_rule("no-options")
    with pytest.raises(KeyError):
        control.remove_rule("no-options")
    with trio.fail_after(5):
        await device.send(options.replace(b"z9hG4bKr1", b"z9hG4bKo2"))
        assert parse_datagram(await pbx.recv(65535)).method == "OPTIONS"
    assert [e.kind for e in proxy.events if e.kind.startswith("rule-")] == ["rule-added", "rule-removed"]
