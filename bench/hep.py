#!/usr/bin/env python3
"""What HEP costs per message, in-process (no load generator): the relay's own path for one relayed MESSAGE
(received, decided, rewritten, sent) with no sink, with a sink that does nothing, with `--hep` to a port where
nothing listens, and with `--hep` to a socket that takes every packet; and the encoder alone.

    python3 bench/hep.py [--messages 20000] [--rounds 3]

Each figure is the median over the rounds of the wall time per message (µs), the configurations alternating
within each round. The whole-process view under load is `bench/relay.py --paths faultlab,faultlab-hep,...`.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faultlab.addr import parse_endpoint  # noqa: E402
from faultlab.net.hep import HepSender  # noqa: E402
from faultlab.proxy.config import ProxyConfig  # noqa: E402
from faultlab.relay import Relay  # noqa: E402
from faultlab.relay.plan import Hop  # noqa: E402
from faultlab.relay.rewrite import Side  # noqa: E402
from faultlab.sip import parse_message  # noqa: E402
from faultlab.trace import Event  # noqa: E402
from faultlab.trace.hep import HepEncoder, HepTarget  # noqa: E402

RAW = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5555;branch=z9hG4bK1\r\n"
       b"From: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: c1@host\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
       b"Content-Length: 5\r\n\r\nhello")


def relay_path(messages: int, attach) -> float:
    """µs per message through Relay.plan + Relay.sent, with ``attach(relay)`` adding the sink under test."""
    config = ProxyConfig(listen=[parse_endpoint("udp:127.0.0.1:5060")],
                         upstream=[parse_endpoint("udp:127.0.0.1:5070")], keep_events=0)
    relay = Relay(config, clock=time.perf_counter)
    attach(relay)
    hop = Hop("u1", "to-pbx", "udp", ("127.0.0.1", 5555), Side("udp", ("127.0.0.1", 5060), ("127.0.0.1", 40000)),
              ("127.0.0.1", 5555))
    relay.flow_opened("u1", "udp", ("127.0.0.1", 5555), ("127.0.0.1", 40000), ("127.0.0.1", 5060))
    parsed = [parse_message(RAW) for _ in range(messages)]
    start = time.perf_counter()
    for msg in parsed:
        plan = relay.plan(msg, hop)
        relay.sent(plan.forward, ("127.0.0.1", 5070))
    return (time.perf_counter() - start) / messages * 1e6


def encoder_only(messages: int) -> float:
    """µs per packet of HepEncoder.packets for a relayed message event."""
    encoder = HepEncoder()
    encoder.packets(Event(0.0, "start", detail={"wall_clock": time.time()}))
    encoder.packets(Event(0.0, "flow-open", flow="u1", transport="udp", peer="127.0.0.1:5555",
                          detail={"device_side": "127.0.0.1:5060", "pbx_side": "127.0.0.1:40000"}))
    event = Event(1.0, "received", flow="u1", direction="to-pbx", transport="udp", peer="127.0.0.1:5555",
                  call_id="c1@host", raw=RAW)
    start = time.perf_counter()
    for _ in range(messages):
        encoder.packets(event)
    return (time.perf_counter() - start) / messages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    taker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes every packet (its buffer overflows: dropped)
    taker.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]  # closed below: nothing listens there

    def hep_to(port: int):
        return lambda relay: HepSender(HepTarget("udp", "127.0.0.1", port)).attach(relay.trace)

    configs = {
        "relay, no sink": lambda relay: None,
        "relay, a sink that does nothing": lambda relay: relay.trace.add_sink(lambda e: None,
                                                                              kinds=("received", "sent")),
        "relay, --hep to nobody": hep_to(nobody),
        "relay, --hep to a live socket": hep_to(taker.getsockname()[1]),
    }
    results: dict[str, list[float]] = {name: [] for name in [*configs, "encoder alone (per packet)"]}
    for _ in range(args.rounds):
        for name, attach in configs.items():
            results[name].append(relay_path(args.messages, attach))
        results["encoder alone (per packet)"].append(encoder_only(args.messages))
    for name, each in results.items():
        print(f"{name:34} {statistics.median(each):7.2f} µs each  (rounds: "
              f"{', '.join(f'{x:.2f}' for x in each)})")
    taker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
