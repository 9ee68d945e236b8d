"""faultlab.labnet's link impairment without root: the netem request, the wire's decisions, the texts."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from pyroute2.netlink.rtnl.tcmsg import sched_netem

from faultlab.faults import GilbertElliott, Link, LinkSpec, LinkState, parse_profile
from faultlab.labnet.impair import describe_spec
from faultlab.labnet.netem import NETEM_LIMIT, NetemUnsupported, netem_request, netem_unsupported
from faultlab.labnet.wire import WireCore, direction_of, is_dns_answer
from faultlab.labnet.wire_process import wire_counts


def test_request_units_microseconds_and_percent() -> None:
    spec = LinkSpec(delay=0.1, jitter=0.03, loss=0.015, duplicate=0.01, reorder=0.25, rate_bps=780_000)
    assert netem_request(spec) == {
        "limit": NETEM_LIMIT,
        "delay": 100_000,
        "jitter": 30_000,
        "loss": 1.5,
        "duplicate": 1.0,
        "prob_reorder": 25.0,
        "rate": 97_500,  # bytes per second
    }


def test_request_of_a_clean_spec_is_only_the_limit() -> None:
    assert netem_request(LinkSpec()) == {"limit": NETEM_LIMIT}


def test_request_from_a_profile_per_direction() -> None:
    profile = parse_profile(
        '[link]\ndelay = "100ms"\nloss = "8%"\n[link.to-device]\nrate = "780kbit"\n[link.to-pbx]\nrate = "330kbit"\n'
    )
    assert profile.link is not None
    down = netem_request(profile.link.for_direction("to-device"))
    up = netem_request(profile.link.for_direction("to-pbx"))
    assert (down["delay"], down["loss"], down["rate"]) == (100_000, 8.0, 97_500)
    assert (up["delay"], up["loss"], up["rate"]) == (100_000, 8.0, 41_250)


def test_request_encodes_with_pyroute2() -> None:
    """pyroute2 turns the request into the netlink options without complaint:
    percent to u32, the reorder attribute with gap 1, the rate attribute."""
    opts = sched_netem.get_parameters(netem_request(LinkSpec(delay=0.05, loss=0.2, reorder=0.1, rate_bps=1e6)))
    assert opts["loss"] == int((2**32 - 1) * 0.2)
    assert opts["gap"] == 1
    attrs = dict(opts["attrs"])
    assert attrs["TCA_NETEM_REORDER"]["prob_reorder"] == int((2**32 - 1) * 0.1)
    assert attrs["TCA_NETEM_RATE"]["rate"] == 125_000


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (LinkSpec(loss_model=GilbertElliott(p=0.01, r=0.3)), "Gilbert-Elliott"),
        (LinkSpec(delay=0.1, jitter=0.01, distribution="normal"), "normal jitter"),
        (LinkSpec(rate_bps=2**32 * 8.0), "2**32 bytes/s"),
    ],
)
def test_unsupported_bits_are_named(spec: LinkSpec, words: str) -> None:
    assert any(words in reason for reason in netem_unsupported(spec))
    with pytest.raises(NetemUnsupported, match="netem through pyroute2 cannot do"):
        netem_request(spec)


def test_normal_distribution_without_jitter_is_fine() -> None:
    assert netem_unsupported(LinkSpec(delay=0.1, distribution="normal")) == []


# -- the wire's decisions ----------------------------------------------------------------------------

DEVICE_NETS = [ipaddress.ip_network("10.213.1.0/24"), ipaddress.ip_network("fd00:1::/64")]


def ipv4(src: str, dst: str, size: int = 100, proto: int = 17) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + bytes(size - 20)


def ipv6(src: str, dst: str, size: int = 100) -> bytes:
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, size - 40, 17, 64, ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    )
    return header + bytes(size - 40)


def test_direction_is_the_egress_side() -> None:
    assert direction_of(ipv4("10.213.2.2", "10.213.1.2"), DEVICE_NETS) == "to-device"
    assert direction_of(ipv4("10.213.1.2", "10.213.2.2"), DEVICE_NETS) == "to-pbx"
    assert direction_of(ipv4("10.213.1.2", "8.8.8.8"), DEVICE_NETS) == "to-pbx"
    assert direction_of(ipv6("fd00:2::2", "fd00:1::2"), DEVICE_NETS) == "to-device"
    assert direction_of(ipv6("fd00:1::2", "fd00:2::2"), DEVICE_NETS) == "to-pbx"
    assert direction_of(b"", DEVICE_NETS) is None
    assert direction_of(b"\x10" * 40, DEVICE_NETS) is None


def test_wire_makes_the_proxys_decisions_with_the_same_seed() -> None:
    """Per packet the wire asks LinkState exactly what the proxy asks it per
    message: same spec, same seed, same sizes and times -> same fates."""
    link = Link(
        to_pbx=LinkSpec(delay=0.05, jitter=0.01, loss=0.2, duplicate=0.05, reorder=0.05, rate_bps=1e6),
        to_device=LinkSpec(delay=0.04, loss_model=GilbertElliott(p=0.1, r=0.3)),
    )
    core = WireCore(link, DEVICE_NETS, random.Random(42))
    rng = random.Random(42)
    states = {d: LinkState(link.for_direction(d), rng) for d in ("to-pbx", "to-device")}
    for i in range(500):
        up = i % 3 != 0
        packet = ipv4("10.213.1.2", "10.213.2.2", 60 + i) if up else ipv4("10.213.2.2", "10.213.1.2", 60 + i)
        now = i * 0.001
        direction, delays = core.packet(packet, now)
        assert direction == ("to-pbx" if up else "to-device")
        fate = states[direction].packet(len(packet), now)
        assert delays == ([] if fate.lost else [fate.delay, *fate.copies])
    assert core.stats["to-pbx udp in"] == 333
    assert core.stats["to-pbx udp lost"] > 0 and core.stats["to-device udp lost"] > 0


def test_clean_direction_passes_untouched_without_drawing() -> None:
    rng = random.Random(1)
    core = WireCore(Link(to_pbx=LinkSpec(delay=0.1)), DEVICE_NETS, rng)
    state = rng.getstate()
    for _ in range(10):
        assert core.packet(ipv4("10.213.2.2", "10.213.1.2"), 0.0) == ("to-device", [0.0])
        assert core.packet(b"\x00junk", 0.0) == (None, [0.0])
    assert rng.getstate() == state
    assert core.packet(ipv4("10.213.1.2", "10.213.2.2", proto=6), 0.0) == ("to-pbx", [0.1])
    assert core.stats["to-pbx tcp out"] == 1


# -- texts -------------------------------------------------------------------------------------------


def test_describe_spec() -> None:
    assert describe_spec(LinkSpec()) == "clean"
    assert describe_spec(LinkSpec(delay=0.1, jitter=0.03, loss=0.1)) == "100 ms ±30 ms, 10% loss"
    assert describe_spec(LinkSpec(delay=0.1, rate_bps=780_000, duplicate=0.01)) == "100 ms, 1% duplicate, 780 kbit/s"
    assert "Gilbert-Elliott" in describe_spec(LinkSpec(loss_model=GilbertElliott(p=0.01, r=0.3)))


def test_wire_counts_from_its_log(tmp_path) -> None:
    log = tmp_path / "wire.log"
    log.write_text(
        "2026-01-01 00:00:00,000 wire[12] ready\n"
        "2026-01-01 00:00:09,000 wire[12] to-pbx udp in: 300\n"
        "2026-01-01 00:00:09,000 wire[12] to-pbx udp lost: 61\n"
        "2026-01-01 00:00:09,000 wire[12] to-pbx tcp in: 10\n"
        "2026-01-01 00:00:09,000 wire[12] to-device udp out: 200\n"
    )
    assert wire_counts(log) == {"to-pbx": {"in": 310, "lost": 61}, "to-device": {"out": 200}}
    assert wire_counts(tmp_path / "missing.log") == {}


def udp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    packet = bytearray(ipv4(src, dst, 60))
    packet[20:24] = struct.pack("!HH", sport, dport)
    return bytes(packet)


def tcp4(src: str, dst: str, sport: int, dport: int, payload: int) -> bytes:
    packet = bytearray(ipv4(src, dst, 40 + payload, proto=6))
    packet[20:24] = struct.pack("!HH", sport, dport)
    packet[32] = 5 << 4  # data offset: 20 bytes
    return bytes(packet)


def test_dns_answers() -> None:
    assert is_dns_answer(udp4("10.213.2.2", "10.213.1.2", 53, 40000))
    assert not is_dns_answer(udp4("10.213.1.2", "10.213.2.2", 40000, 53))  # the query
    assert is_dns_answer(tcp4("10.213.2.2", "10.213.1.2", 53, 40000, payload=30))
    assert not is_dns_answer(tcp4("10.213.2.2", "10.213.1.2", 53, 40000, payload=0))  # SYN-ACK, ACK
    assert not is_dns_answer(udp4("10.213.2.2", "10.213.1.2", 5060, 5060))
    assert not is_dns_answer(b"")


def test_dns_delay_adds_to_the_link() -> None:
    core = WireCore(Link(to_device=LinkSpec(delay=0.05), dns_delay=3.0), DEVICE_NETS, random.Random(0))
    assert core.packet(udp4("10.213.2.2", "10.213.1.2", 53, 40000), 0.0) == ("to-device", [3.05])
    assert core.packet(udp4("10.213.2.2", "10.213.1.2", 5060, 5060), 0.0) == ("to-device", [0.05])
    assert core.packet(udp4("10.213.1.2", "10.213.2.2", 40000, 53), 0.0) == ("to-pbx", [0.0])
    only_dns = WireCore(Link(dns_delay=3.0), DEVICE_NETS, random.Random(0))
    assert only_dns.packet(udp4("10.213.2.2", "10.213.1.2", 53, 40000), 0.0) == ("to-device", [3.0])


def test_the_tun_a_packet_came_from_decides_its_direction() -> None:
    """In the air, packets from a device come up one TUN and packets toward a device down the other: a
    packet from device 1 to device 2 on its way up is to-pbx (the uplink's impairment), whatever its
    destination says."""
    core = WireCore(Link(to_pbx=LinkSpec(delay=0.2), to_device=LinkSpec(delay=0.01)), [], random.Random(3))
    device_to_device = ipv4("10.213.1.2", "10.213.2.2")
    assert core.packet(device_to_device, 0.0, "to-pbx") == ("to-pbx", [0.2])
    assert core.packet(device_to_device, 0.0, "to-device") == ("to-device", [0.01])
    assert core.stats["to-pbx udp in"] == 1 and core.stats["to-device udp in"] == 1
