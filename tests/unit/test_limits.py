"""Bounded resources, on trio's MockClock: which UDP flow makes room for a new device, how often the accept loop
says it is out of descriptors, and what happens to connections over --max-connections."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from faultlab.addr import parse_endpoint
from faultlab.net import memnet
from faultlab.net.limits import (
    RESERVED,
    Slots,
    default_max_connections,
    default_max_flows,
    serve_bounded,
)
from faultlab.net.udp import FlowTable
from faultlab.proxy import ConfigError, ProxyConfig, serve_proxy
from faultlab.relay import Relay

REGISTER = (b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr%d;rport\r\n"
            b"From: <sip:bob@pbx>;tag=b\r\nTo: <sip:bob@pbx>\r\nCall-ID: reg%d\r\nCSeq: 1 REGISTER\r\n"
            b"Content-Length: 0\r\n\r\n")


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


def test_the_defaults_split_the_descriptors_after_the_reserve_between_flows_and_connections() -> None:
    assert RESERVED == 64
    assert default_max_flows(1024) == 480  # (1024 - 64) / 2, one socket each
    assert default_max_connections(1024) == 240  # the other half, two sockets each
    assert default_max_flows(1024, transparent=True) == 240  # two sockets each
    # both full at once still leave the reserve
    assert default_max_flows(256) + 2 * default_max_connections(256) + RESERVED <= 256
    assert default_max_flows(10) == default_max_connections(10) == 1


def test_the_flow_idle_longest_is_first_and_traffic_moves_a_flow_last() -> None:
    flows = {key: object() for key in "abc"}
    table: FlowTable[str, object] = FlowTable(limit=3)
    for key, flow in flows.items():
        table.add(key, flow)
    assert table.full
    assert table.idlest() == ("a", flows["a"])
    table.touch("a")
    assert table.idlest() == ("b", flows["b"])
    table.remove("b", flows["b"])
    table.remove("c", object())  # only the flow itself: a newer flow under the same key is kept
    assert list(table) == [flows["c"], flows["a"]] and not table.full


@pytest.mark.parametrize("limits", [dict(max_flows=0), dict(max_connections=-1), dict(max_message_size=100),
                                    dict(max_message_size=True)])
def test_limits_out_of_range_are_refused_with_the_option_to_fix(limits) -> None:
    config = ProxyConfig(listen=[parse_endpoint("udp:127.0.0.1:0")], upstream=[parse_endpoint("udp:127.0.0.1:9")],
                         **limits)
    with pytest.raises(ConfigError, match="--max-"):
        config.validate()


async def test_a_new_device_at_max_flows_closes_the_flow_idle_longest(clock) -> None:
    memnet.install()
    pbx = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await pbx.bind(("10.0.0.1", 5060))
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(serve_proxy, ProxyConfig(
            listen=[parse_endpoint("udp:10.0.0.9:5060")], upstream=[parse_endpoint("udp:10.0.0.1:5060")],
            max_flows=2))
        devices = []
        for n in range(3):
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await sock.bind((f"10.0.1.{n}", 5060))
            devices.append(sock)

        async def send(n: int) -> None:
            await devices[n].sendto(REGISTER % (n, n), ("10.0.0.9", 5060))
            await pbx.recvfrom(65535)
            await trio.sleep(1)

        await send(0)
        await send(1)
        await send(0)  # device 1 is now the one idle longest
        await send(2)
        nursery.cancel_scope.cancel()
    closes = [e for e in proxy.events if e.kind == "flow-close"]
    assert [e.peer for e in closes][:1] == ["10.0.1.1:5060"]
    assert closes[0].detail["reason"].startswith("max-flows: 2 flows open")
    warnings = [e.detail["message"] for e in proxy.events if e.kind == "warning"]
    assert any("--max-flows" in w for w in warnings)
    assert sum(e.kind == "sent" and e.direction == "to-pbx" for e in proxy.events) == 4  # every REGISTER relayed


class StarvedListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with ``error`` until ``starved`` is cleared, then hands out memory streams."""

    def __init__(self, error: int, connections: int | None = None) -> None:
        self.error = error
        self.starved = True
        self.accepts = 0
        self.connections = connections  # how many clients connect (None: without end)
        self.clients: list[trio.abc.Stream] = []

    async def accept(self) -> trio.abc.Stream:
        await trio.sleep(0)
        if not self.starved and self.connections is not None and len(self.clients) >= self.connections:
            await trio.sleep_forever()
        self.accepts += 1
        if self.starved:
            raise OSError(self.error, "Too many open files")
        client, server = trio.testing.memory_stream_pair()
        self.clients.append(client)
        return server

    async def aclose(self) -> None:
        pass


def relay_for_test() -> Relay:
    return Relay(ProxyConfig(listen=[parse_endpoint("tcp:127.0.0.1:0")], upstream=[]), clock=trio.current_time)


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
async def test_accept_out_of_descriptors_backs_off_with_one_warning_a_second_and_no_traceback(
        clock, caplog, error) -> None:
    relay = relay_for_test()
    listener = StarvedListener(error)
    handled = trio.Event()

    async def handler(stream) -> None:
        handled.set()

    slots = Slots(relay, 10)
    with caplog.at_level(logging.DEBUG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_bounded, relay, "tcp", handler, [listener], slots, nursery)
            await trio.sleep(9.95)
            listener.starved = False  # descriptors free again: the loop accepts on its own
            await handled.wait()
            nursery.cancel_scope.cancel()
    events = [e for e in relay.events if e.kind == "warning"]
    warnings = [e.detail["message"] for e in events]
    assert listener.accepts > 90  # it kept trying, every 0.1 s
    assert len(warnings) >= 9  # about ten seconds: about one a second ...
    assert all(b.t - a.t >= 1.0 for a, b in zip(events, events[1:]))  # ... and never two within a second
    assert "Too many open files" in warnings[0] and "ulimit -n" in warnings[0]
    assert "more like it in the last 1 s not shown" in warnings[1]
    assert caplog.records == []  # nothing logged (trio's serve_listeners logs a traceback each time)


async def test_connections_over_max_connections_are_closed_at_once_with_a_trace_event(clock) -> None:
    relay = relay_for_test()
    listener = StarvedListener(errno.EMFILE, connections=5)
    listener.starved = False
    release = trio.Event()
    running = []

    async def handler(stream) -> None:
        running.append(stream)
        await release.wait()

    slots = Slots(relay, 2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_bounded, relay, "tcp", handler, [listener], slots, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert len(running) == 2 and slots.used == 2
        for client in listener.clients[2:]:  # the three over the limit: closed without a byte
            assert await client.receive_some() == b""
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert slots.used == 0
        nursery.cancel_scope.cancel()
    refused = [e for e in relay.events if e.kind == "refused"]
    assert len(refused) == 3 and refused[0].detail == {"reason": "max-connections", "limit": 2}
    warnings = [e for e in relay.events if e.kind == "warning"]
    assert len(warnings) == 1 and "--max-connections" in warnings[0].detail["message"]


async def test_a_connection_whose_handler_fails_with_an_os_error_ends_alone(clock) -> None:
    relay = relay_for_test()
    listener = StarvedListener(errno.EMFILE, connections=5)
    listener.starved = False
    handled = []

    async def handler(stream) -> None:
        handled.append(stream)
        if len(handled) == 1:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")  # reset while in the backlog
        await trio.sleep_forever()

    slots = Slots(relay, 5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_bounded, relay, "tcp", handler, [listener], slots, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert len(handled) == 5 and slots.used == 4  # the listener went on; the failed one gave its slot back
        nursery.cancel_scope.cancel()
    warning = next(e for e in relay.events if e.kind == "warning")
    assert "not connected" in warning.detail["message"]
