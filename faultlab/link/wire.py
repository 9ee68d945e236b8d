"""faultlab's own link impairment, for kernels without sch_netem: the TUN wire.

Run inside the lab's gateway namespace (``python -m faultlab.link.wire``).
Steering, all in that namespace:

- a TUN device ``fltun0`` (IFF_TUN | IFF_NO_PI), held open by this process;
- routing table :data:`TABLE` with one route, ``default dev fltun0`` (IPv4
  and IPv6), and a policy rule ``iif <if> lookup TABLE`` (priority
  :data:`PRIORITY`) for each of the gateway's device-side and PBX-side
  interfaces.

So every packet the gateway would forward between the device side and the PBX
side (SIP, RTP, DNS, TCP, ICMP, ...) is routed into the TUN instead. This
process reads it, decides its fate with the profile's
:class:`~faultlab.faults.LinkState` for its direction, exactly as the proxy
does per SIP message (loss, Gilbert-Elliott, duplicate, delay + jitter,
reorder, rate; one seeded ``random.Random``), and writes it back to the TUN
when its time comes. A packet written to the TUN enters the stack as
received on ``fltun0``; no rule matches that interface, so the main table
forwards it to its destination. Packets addressed to the gateway itself are
delivered by the ``local`` table (priority 0) before the rules and are not
impaired, nor is traffic the gateway sends itself (e.g. a transparent faultlab
proxy, which applies the profile's link per SIP message on its own).

The direction is the one netem would see, the egress side: a packet whose
destination is in a device-side subnet goes ``to-device``, any other
``to-pbx``. When the process ends (SIGTERM/SIGINT) it removes its rules and
routes and closes the TUN, which removes it; if it is killed, the TUN (and
the route through it) vanishes with it and the leftover rules point to an
empty table, which the kernel skips; :func:`faultlab.link.clear_lab` removes
them.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import ipaddress
import logging
import os
import random
import signal
import socket
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..faults import Link, LinkState, load_profile

__all__ = [
    "TUN_NAME",
    "TABLE",
    "PRIORITY",
    "WireCore",
    "direction_of",
    "is_dns_answer",
    "open_tun",
    "steer",
    "unsteer",
    "main",
]

TUN_NAME = "fltun0"
TABLE = 2160
"""The policy-routing table that sends steered packets into the TUN."""
PRIORITY = 2160
"""The priority of faultlab's ``iif`` rules: after ``local`` (0), before ``main`` (32766)."""

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_MAX_PACKET = 65535

log = logging.getLogger("faultlab.link.wire")

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def direction_of(packet: bytes, device_nets: list[Net]) -> str | None:
    """``"to-device"`` when the IP packet's destination is in ``device_nets``,
    ``"to-pbx"`` otherwise; None if it is not IPv4/IPv6."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(packet[16:20])
    elif version == 6 and len(packet) >= 40:
        dst = ipaddress.IPv6Address(packet[24:40])
    else:
        return None
    return "to-device" if any(dst in net for net in device_nets if net.version == dst.version) else "to-pbx"


_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}


def _proto(packet: bytes) -> str:
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        number = packet[9]
    elif version == 6 and len(packet) >= 40:
        number = packet[6]
    else:
        return "other"
    return _PROTOS.get(number, f"ip-proto-{number}")


def _transport(packet: bytes) -> tuple[int, int] | None:
    """(IP protocol number, offset of the transport header), IPv4 or IPv6
    without extension headers; None for anything else."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        return packet[9], (packet[0] & 0x0F) * 4
    if version == 6 and len(packet) >= 40:
        return packet[6], 40
    return None


def is_dns_answer(packet: bytes) -> bool:
    """A UDP datagram from port 53, or a TCP segment from port 53 that carries
    data (not a bare SYN-ACK or ACK): what the profile's ``dns_delay`` holds back."""
    found = _transport(packet)
    if found is None:
        return False
    proto, off = found
    if len(packet) < off + 4 or packet[off : off + 2] != b"\x00\x35":
        return False
    if proto == 17:
        return True
    if proto == 6 and len(packet) >= off + 13:
        return len(packet) > off + (packet[off + 12] >> 4) * 4
    return False


def describe(packet: bytes) -> str:
    """A one-line scapy summary of an IP packet, for the per-packet log."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    try:
        return (IPv6 if packet[0] >> 4 == 6 else IP)(packet).summary()
    except Exception as e:  # scapy fails on some malformed packets: log them anyway
        return f"{len(packet)} bytes ({e})"


@dataclass
class WireCore:
    """The wire's decisions, without I/O: one :class:`LinkState` per impaired
    direction (sharing ``rng``, as the proxy's engine does), and counters.
    DNS answers toward the device (:func:`is_dns_answer`) wait the link's
    ``dns_delay`` on top, as NLC's "DNS delay" does."""

    link: Link
    device_nets: list[Net]
    rng: random.Random
    states: dict[str, LinkState] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for direction in ("to-pbx", "to-device"):
            spec = self.link.for_direction(direction)
            if not spec.is_clean:
                self.states[direction] = LinkState(spec, self.rng)

    def packet(self, data: bytes, now: float) -> tuple[str | None, list[float]]:
        """The direction of ``data`` and the delays (seconds from ``now``) of
        the copies to write back: ``[]`` if lost, two entries if duplicated."""
        direction = direction_of(data, self.device_nets)
        key = f"{direction or 'other'} {_proto(data)}"
        self.stats[f"{key} in"] += 1
        extra = 0.0
        if self.link.dns_delay and direction == "to-device" and is_dns_answer(data):
            extra = self.link.dns_delay
            self.stats[f"{key} dns-delayed"] += 1
        state = self.states.get(direction) if direction else None
        if state is None:
            self.stats[f"{key} out"] += 1
            return direction, [extra]
        fate = state.packet(len(data), now)
        if fate.lost:
            self.stats[f"{key} lost"] += 1
            return direction, []
        delays = [fate.delay + extra, *(c + extra for c in fate.copies)]
        self.stats[f"{key} out"] += len(delays)
        if fate.copies:
            self.stats[f"{key} duplicated"] += 1
        if fate.reordered:
            self.stats[f"{key} reordered"] += 1
        return direction, delays


# ---------------------------------------------------------------------------
# the TUN and the routing that steers packets into it (current namespace)


def open_tun(name: str = TUN_NAME) -> int:
    """Create the TUN ``name`` (IFF_TUN | IFF_NO_PI) and return its
    non-blocking fd; the device goes away when the fd is closed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _sysctl(path: str, value: str) -> None:
    try:
        Path("/proc/sys", path).write_text(value)
    except OSError as e:
        log.debug("sysctl %s=%s: %s", path, value, e)


def _rule_kwargs(family: int, ifname: str) -> dict:
    return {"family": family, "iifname": ifname, "table": TABLE, "priority": PRIORITY}


def steer(ifnames: list[str], tun: str = TUN_NAME) -> None:
    """Bring ``tun`` up and route everything arriving on ``ifnames`` into it."""
    from pyroute2 import IPRoute

    # A reply written to the TUN arrives "on" fltun0 from an address routed
    # elsewhere: reverse-path filtering would drop it.
    for conf in ("all", "default", tun):
        _sysctl(f"net/ipv4/conf/{conf}/rp_filter", "0")
    _sysctl(f"net/ipv6/conf/{tun}/addr_gen_mode", "1")  # no link-local address, no router solicitations
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=tun)[0]
        ipr.link("set", index=idx, state="up")
        ipr.route("replace", dst="0.0.0.0/0", oif=idx, table=TABLE)
        try:
            ipr.route("replace", family=socket.AF_INET6, dst="::/0", oif=idx, table=TABLE)
        except Exception as e:  # IPv6 disabled in this namespace
            log.info("no IPv6 route into %s: %s", tun, e)
        for ifname in ifnames:
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    ipr.rule("add", **_rule_kwargs(family, ifname))
                except Exception as e:
                    if family == socket.AF_INET:
                        raise
                    log.info("no IPv6 rule for %s: %s", ifname, e)


def unsteer(netns: str | None = None) -> int:
    """Remove every rule pointing to :data:`TABLE` and that table's routes
    (in ``netns``, default the current namespace); the number of rules
    removed. Idempotent."""
    from pyroute2 import IPRoute

    removed = 0
    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                rules = ipr.get_rules(family=family)
            except Exception:
                continue
            for rule in rules:
                table = rule.get_attr("FRA_TABLE") or rule["table"]
                if table == TABLE and rule.get_attr("FRA_PRIORITY") == PRIORITY:
                    try:
                        ipr.rule(
                            "del", family=family, table=TABLE, priority=PRIORITY, iifname=rule.get_attr("FRA_IFNAME")
                        )
                        removed += 1
                    except Exception as e:
                        log.debug("rule del: %s", e)
            try:
                ipr.flush_routes(table=TABLE, family=family)
            except Exception as e:
                log.debug("route flush: %s", e)
    return removed


# ---------------------------------------------------------------------------
# the trio driver


class _Wire:
    def __init__(self, fd: int, core: WireCore, *, packets_log: bool = False) -> None:
        self.fd = fd
        self.core = core
        self.packets_log = packets_log
        self.heap: list[tuple[float, int, bytes]] = []
        self.seq = 0
        self.wake = trio.Event()

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as e:  # e.g. no route back: the kernel refuses it, as it would drop it
            self.core.stats["write errors"] += 1
            log.debug("write to TUN: %s", e)

    async def reader(self) -> None:
        fd = self.fd
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = trio.current_time()
            while True:
                try:
                    data = os.read(fd, _MAX_PACKET)
                except BlockingIOError:
                    break
                direction, delays = self.core.packet(data, now)
                for delay in delays:
                    if delay <= 0.0 and not self.heap:
                        self._write(data)
                    else:
                        self.seq += 1
                        heapq.heappush(self.heap, (now + delay, self.seq, data))
                        self.wake.set()
                if self.packets_log:
                    fate = "lost" if not delays else " + ".join(f"{d * 1000:.1f} ms" for d in delays)
                    log.info("%.6f %s %s: %s", now, direction, describe(data), fate)

    async def writer(self) -> None:
        heap = self.heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                self._write(heapq.heappop(heap)[2])
            self.wake = trio.Event()
            if heap:
                with trio.move_on_at(heap[0][0]):
                    await self.wake.wait()
            else:
                await self.wake.wait()


async def run(fd: int, core: WireCore, *, packets_log: bool = False, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Impair packets from the TUN ``fd`` until SIGTERM/SIGINT or cancellation."""
    wire = _Wire(fd, core, packets_log=packets_log)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.reader)
            nursery.start_soon(wire.writer)
            task_status.started()
            async for signum in signals:
                log.info("signal %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _device_nets(ifnames: list[str]) -> list[Net]:
    from pyroute2 import IPRoute

    nets: list[Net] = []
    with IPRoute() as ipr:
        for ifname in ifnames:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise LookupError(f"no interface {ifname!r} in this namespace")
            for msg in ipr.get_addr(index=found[0]):
                addr = msg.get_attr("IFA_ADDRESS")
                net = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}").network
                if not net.is_link_local:
                    nets.append(net)
    return nets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faultlab.link.wire", description=__doc__.split("\n")[0])
    p.add_argument("--lab", required=True, help="the lab's name (for the log and the process list)")
    p.add_argument("--profile-file", required=True, help="the profile's TOML file; its [link] section is applied")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--device-if", action="append", default=[], help="a device-side interface of this namespace")
    p.add_argument("--pbx-if", action="append", default=[], help="a PBX-side interface of this namespace")
    p.add_argument("--ready-file", help="written once packets are steered through the wire")
    p.add_argument("--log-packets", action="store_true", help="log every packet (scapy summary and fate)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s wire[%(process)d] %(message)s", stream=sys.stdout)

    profile = load_profile(Path(args.profile_file))
    link = profile.link or Link()
    core = WireCore(link, _device_nets(args.device_if), random.Random(args.seed))
    log.info(
        "lab %r profile %r seed %d: device side %s (%s), PBX side %s",
        args.lab,
        profile.name,
        args.seed,
        ",".join(args.device_if),
        ", ".join(map(str, core.device_nets)),
        ",".join(args.pbx_if),
    )
    def _stop(signum, frame):  # until trio takes the signals over: still clean up
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    fd = open_tun()
    try:
        steer(args.device_if + args.pbx_if)
        if args.ready_file:
            Path(args.ready_file).write_text(f"{os.getpid()}\n")
        log.info("ready: every packet between the device and PBX sides goes through %s", TUN_NAME)
        trio.run(lambda: run(fd, core, packets_log=args.log_packets))
    finally:
        try:
            unsteer()
        finally:
            os.close(fd)
        for key in sorted(core.stats):
            log.info("%s: %d", key, core.stats[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
