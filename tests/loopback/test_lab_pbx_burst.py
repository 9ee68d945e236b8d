"""The embedded PBX over real UDP sockets takes a burst of outstanding requests without dropping any: its socket
buffers are large. And when the kernel gives it less than it asks, it says so at start."""

from __future__ import annotations

import socket

import pytest
import trio

from faultlab.lab.pbx import PBX
from faultlab.lab.timeline import Timeline
from faultlab.net.udp import enlarge_buffers


def _register(i: int, me: int) -> bytes:
    return (f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bKburst{i}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:u{i}@127.0.0.1>;tag={i}\r\nTo: <sip:u{i}@127.0.0.1>\r\n"
            f"Call-ID: burst-{i}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:u{i}@127.0.0.1:{me}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("outstanding", [200, 1000])
async def test_a_burst_of_outstanding_registers_is_answered_in_full(outstanding):
    async with trio.open_nursery() as nursery:
        pbx = PBX(["udp:127.0.0.1:0"], timeline=Timeline())
        await nursery.start(pbx.run)
        assert pbx.warnings == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            enlarge_buffers(sock)  # the test's own socket must hold every answer too
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            me = sock.getsockname()[1]
            # one burst: every REGISTER is in the PBX's socket before it reads the first
            for i in range(outstanding):
                sock.sendto(_register(i, me), pbx.address("udp"))
            answered: dict[str, bytes] = {}
            with trio.move_on_after(20):
                while len(answered) < outstanding:
                    await trio.lowlevel.wait_readable(sock)
                    while True:
                        try:
                            data, _ = sock.recvfrom(65535)
                        except BlockingIOError:
                            break
                        branch = data.split(b"branch=", 1)[1].split(b"\r\n", 1)[0].decode()
                        answered[branch] = data
        nursery.cancel_scope.cancel()
    assert len(answered) == outstanding, f"{outstanding - len(answered)} of {outstanding} REGISTERs unanswered"
    assert all(data.startswith(b"SIP/2.0 200 OK\r\n") for data in answered.values())
    assert set(answered) == {f"z9hG4bKburst{i}" for i in range(outstanding)}


async def test_a_receive_buffer_smaller_than_asked_is_said_at_start(monkeypatch):
    """Without root, the kernel caps the buffer at net.core.rmem_max; the PBX then says what to change."""
    import faultlab.lab.pbx.driver as driver

    monkeypatch.setattr(driver, "enlarge_buffers", lambda sock, size: None)  # the kernel's default stays
    timeline = Timeline()
    async with trio.open_nursery() as nursery:
        pbx = PBX(["udp:127.0.0.1:0"], timeline=timeline)
        await nursery.start(pbx.run)
        nursery.cancel_scope.cancel()
    [warning] = pbx.warnings
    assert f"udp:127.0.0.1:{pbx.address('udp')[1]}" in warning and "not the 4096 KiB asked" in warning
    assert "sysctl -w net.core.rmem_max=4194304" in warning
    assert [e.summary for e in timeline.events if e.kind == "warning"] == [warning]
