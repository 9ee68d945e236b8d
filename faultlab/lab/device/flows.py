"""The reference device's flow upkeep (RFC 5626): CRLF keep-alives on its TCP/TLS connection, and a move to a new
address. A part of :class:`~faultlab.lab.device.driver.Device` (mixed in; shares its state).

* **Keep-alives** (§4.4.1): on TCP/TLS the device sends a ping (CRLF CRLF) every ``keepalive_interval`` seconds
  while it has a connection; when no pong (CRLF) comes back within ``keepalive_timeout`` seconds (10 s), the flow
  has failed: the device closes that connection, says so on the timeline (a ``warning``), and recovers the flow.
* **A new address** (:meth:`Flows.move`, Wi-Fi -> cellular): the device's old socket or connection is gone with
  its old address; the device binds its new address and recovers the flow there.
* **Recovering the flow** (§4.5): every call hears it (a call waiting for its INVITE re-REGISTERs at once, a
  REGISTER in flight from the old address starts again); when no call re-REGISTERs, the device refreshes its
  binding itself, so that the PBX reaches it on the new flow.

Known-bad behaviours: ``ignores-dead-flow`` keeps pinging a dead flow and never notices; ``ignores-path-change``
keeps its old address and flow.
"""

from __future__ import annotations

import trio

from faultlab.addr import format_hostport
from faultlab.lab.device.logic import Output, SendRegister
from faultlab.lab.ua import Link

__all__ = ["Flows", "PING", "PONG"]

PING, PONG = b"\r\n\r\n", b"\r\n"


class Flows:
    """Keep-alives and moves of :class:`~faultlab.lab.device.driver.Device` (mixed in; shares its state)."""

    def _on_keep_alive(self, link: Link, raw: bytes) -> None:
        if raw == PONG and link is self._flow and self._pong is not None:
            self._pong.set()

    async def _keep_alive(self) -> None:
        """Ping the open connection every ``keepalive_interval`` s; no pong in ``keepalive_timeout`` s: failed."""
        interval, timeout = self.config.keepalive_interval, self.config.keepalive_timeout
        while True:
            await trio.sleep(interval)
            flow = self._flow
            if flow is None:
                continue  # no connection: nothing to keep alive (the next request opens one)
            self._pong = pong = trio.Event()
            try:
                async with flow.send_lock:
                    await flow.stream.send_all(PING)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                continue  # the connection is going: its loss is heard where it is read
            with trio.move_on_after(timeout):
                await pong.wait()
            if pong.is_set() or flow is not self._flow or self.config.behaviour == "ignores-dead-flow":
                continue
            self._warn(f"keep-alive: no pong {timeout:g} s after the ping: the flow failed (RFC 5626 §4.4.1); "
                       "closing it and registering on a new one")
            self._flow = None
            await self.wire.close(flow)
            await self._recover("keep-alive")

    async def move(self, host: str) -> None:
        """The device's address changes to ``host`` (the old one is gone: Wi-Fi -> cellular): bind it and recover
        the flow there. The change is on the timeline (kind ``network``, ``detail.event = "address-change"``)."""
        old = self.host
        assert self.timeline is not None
        self.timeline.emit("network", source=self.source, transport=self.proxy.transport,
                           summary=f"address change {old} -> {host}",
                           detail={"event": "address-change", "from": old, "to": host})
        if self.config.behaviour == "ignores-path-change":
            return
        self.host = self.wire.host = host
        self.wire.bind_connections = True
        if self._udp is not None:
            old_udp = self._udp
            self._udp = self.wire.main = await self.wire.bind()
            self._local = self._udp.local
            await self.wire.close(old_udp)
        else:
            flow, self._flow = self._flow, None
            if flow is not None:
                await self.wire.close(flow)
        await self._recover("address-change")

    async def _recover(self, why: str) -> None:
        """Tell every call the flow is gone; with no call re-REGISTERing, refresh the binding on a new flow."""
        now = trio.current_time()
        registering = False
        for call in list(self.calls):
            outputs: list[Output] = (call.logic.path_changed(now) if why == "address-change"
                                     else call.logic.flow_lost(now))
            registering = registering or any(isinstance(o, SendRegister) for o in outputs)
            await self._feed(call, outputs)
        if not registering and self._nursery is not None:
            self._nursery.start_soon(self._refresh_binding)

    async def _refresh_binding(self) -> None:
        result = await self._register_transaction()
        if result[0] != "response" or not 200 <= result[1] < 300:
            self._warn(f"the binding refresh on the new flow failed: {result}")

    def _warn(self, summary: str) -> None:
        assert self.timeline is not None
        self.timeline.emit("warning", source=self.source, transport=self.proxy.transport,
                           peer=format_hostport(*self.proxy_address), summary=summary)
