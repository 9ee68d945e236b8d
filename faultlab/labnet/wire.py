"""faultlab's own link impairment, for kernels without sch_netem: the TUN wire.

Run inside the lab's **air** namespace (``python -m faultlab.labnet.wire``), the
hop between the devices and the gateway that only forwards (see
:mod:`faultlab.labnet.topology`). Steering, all in that namespace
(:mod:`faultlab.labnet.tun`): two TUN devices held open by this process,
``fltun0`` for packets on their way up (from a device toward the gateway) and
``fltun1`` for packets on their way down, and policy rules that route what
arrives on the device-side interfaces into the first and what arrives on the
gateway-side interfaces into the second.

So every packet that crosses the air (SIP over UDP, TCP and TLS, RTP, DNS,
ICMP, ..., whatever the gateway later does with it: forward it, or hand it
to faultlab by interception) is routed into a TUN first. This process reads
it, decides its fate with the profile's :class:`~faultlab.faults.LinkState`
for its direction (``to-pbx`` from the up TUN, ``to-device`` from the down
TUN), exactly as the proxy does per SIP message (loss, Gilbert-Elliott,
duplicate, delay + jitter, reorder, rate; one seeded ``random.Random``), and
writes it back to the same TUN when its time comes. A packet written to a
TUN enters the stack as received on it; the air's own rules then send it on
(up: its device's uplink to the gateway; down: the device's /32 route).

The gateway itself has no rule of the wire's, so the gateway's interception
(TPROXY, REDIRECT) and the packets faultlab sends from there meet nothing of
the impairment: they are impaired on their way across the air, once.

When the process ends (SIGTERM/SIGINT) it removes its rules and routes and
closes the TUNs, which removes them; if it is killed, the TUNs (and the
routes through them) vanish with it and the leftover rules point to empty
tables, which the kernel skips; :func:`faultlab.labnet.impair.clear_lab` removes them.
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import logging
import os
import random
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..faults import Link, LinkState, load_profile
from .names import DOWN_TUN, UP_TUN
from .tun import open_tun, steer, unsteer

__all__ = [
    "UP_TUN",
    "DOWN_TUN",
    "WireCore",
    "direction_of",
    "is_dns_answer",
    "open_tun",
    "steer",
    "unsteer",
    "main",
]

_MAX_PACKET = 65535

log = logging.getLogger("faultlab.labnet.wire")

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
    # only with --log-packets: loading scapy takes about a second the wire need not wait otherwise
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

    def packet(self, data: bytes, now: float, direction: str | None = None) -> tuple[str | None, list[float]]:
        """The direction of ``data`` and the delays (seconds from ``now``) of
        the copies to write back: ``[]`` if lost, two entries if duplicated.
        ``direction`` (``"to-pbx"``/``"to-device"``) is the TUN's; without it,
        it is found from the destination (:func:`direction_of`)."""
        if direction is None:
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
# the trio driver


class _Wire:
    """Reads each TUN (``fds``: fd -> direction), holds packets until their time, writes each back to the
    TUN it came from."""

    def __init__(self, fds: dict[int, str | None], core: WireCore, *, packets_log: bool = False) -> None:
        self.fds = fds
        self.core = core
        self.packets_log = packets_log
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.wake = trio.Event()

    def _write(self, fd: int, data: bytes) -> None:
        try:
            os.write(fd, data)
        except OSError as e:  # e.g. no route back: the kernel refuses it, as it would drop it
            self.core.stats["write errors"] += 1
            log.debug("write to TUN: %s", e)

    async def reader(self, fd: int) -> None:
        tun_direction = self.fds[fd]
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = trio.current_time()
            while True:
                try:
                    data = os.read(fd, _MAX_PACKET)
                except BlockingIOError:
                    break
                direction, delays = self.core.packet(data, now, tun_direction)
                for delay in delays:
                    if delay <= 0.0 and not self.heap:
                        self._write(fd, data)
                    else:
                        self.seq += 1
                        heapq.heappush(self.heap, (now + delay, self.seq, fd, data))
                        self.wake.set()
                if self.packets_log:
                    fate = "lost" if not delays else " + ".join(f"{d * 1000:.1f} ms" for d in delays)
                    log.info("%.6f %s %s: %s", now, direction, describe(data), fate)

    async def writer(self) -> None:
        heap = self.heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, fd, data = heapq.heappop(heap)
                self._write(fd, data)
            self.wake = trio.Event()
            if heap:
                with trio.move_on_at(heap[0][0]):
                    await self.wake.wait()
            else:
                await self.wake.wait()


async def run(
    fds: int | dict[int, str | None],
    core: WireCore,
    *,
    packets_log: bool = False,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Impair packets from the TUN(s) until SIGTERM/SIGINT or cancellation. ``fds``: one TUN fd (direction
    from each packet's destination) or ``{fd: direction}``."""
    if isinstance(fds, int):
        fds = {fds: None}
    wire = _Wire(fds, core, packets_log=packets_log)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            for fd in fds:
                nursery.start_soon(wire.reader, fd)
            nursery.start_soon(wire.writer)
            task_status.started()
            async for signum in signals:
                log.info("signal %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faultlab.labnet.wire", description=__doc__.split("\n")[0])
    p.add_argument("--lab", required=True, help="the lab's name (for the log and the process list)")
    p.add_argument("--profile-file", required=True, help="the profile's TOML file; its [link] section is applied")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--device-if", action="append", default=[],
                   help="an interface of this namespace facing a device: what arrives there goes to-pbx")
    p.add_argument("--pbx-if", action="append", default=[],
                   help="an interface of this namespace facing the gateway: what arrives there goes to-device")
    p.add_argument("--ready-file", help="written once packets are steered through the wire")
    p.add_argument("--log-packets", action="store_true", help="log every packet (scapy summary and fate)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s wire[%(process)d] %(message)s", stream=sys.stdout)

    profile = load_profile(Path(args.profile_file))
    link = profile.link or Link()
    core = WireCore(link, [], random.Random(args.seed))
    log.info("lab %r profile %r seed %d: device side %s, gateway side %s", args.lab, profile.name, args.seed,
             ",".join(args.device_if), ",".join(args.pbx_if))

    def _stop(signum, frame):  # until trio takes the signals over: still clean up
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    fds: dict[int, str | None] = {}
    try:
        fds[open_tun(UP_TUN)] = "to-pbx"
        fds[open_tun(DOWN_TUN)] = "to-device"
        steer(args.device_if, args.pbx_if)
        if args.ready_file:
            Path(args.ready_file).write_text(f"{os.getpid()}\n")
        log.info("ready: every packet crossing the air goes through %s (up) and %s (down)", UP_TUN, DOWN_TUN)
        trio.run(lambda: run(fds, core, packets_log=args.log_packets))
    finally:
        try:
            unsteer()
        finally:
            for fd in fds:
                os.close(fd)
        for key in sorted(core.stats):
            log.info("%s: %d", key, core.stats[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
