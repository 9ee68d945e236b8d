#!/usr/bin/env python3
"""An independent instrumented "iPhone app" for ``faultlab lab run --device external``.

It does not use faultlab at all: its own SIP stack (extsip.py, extflow.py), its own HTTP (exthttp.py) and the
app's CallKit logic (extcall.py), written from the lab's published contract (docs/device-events.md,
docs/lab-runs.md "A real device"). What it does, as a real app would:

* registers through the lab's relay (``--sip udp:HOST:PORT``, tcp: or tls: trusting ``--ca``) as ``--user`` with
  RFC 8599 Contact parameters (``pn-provider=apns;pn-prid=TOKEN;pn-param=TEAM.BUNDLE.voip``);
* reads its VoIP pushes from the push gateway's stream (``GET /devices/TOKEN/pushes``, NDJSON);
* on a call push reports the call at once (posts ``reported``), opens a new connection (TCP/TLS) and REGISTERs;
  then ends the call by its own rules (extcall.py), never depending on the cancel push;
* taps Answer / Decline when the lab prompts for its call: ``GET /prompts`` on the collector (NDJSON), prompts on
  the push stream, or (``--prompt-source stdout-file``) the lab's console lines ``>>> S17: tap Answer now ...``;
* posts every CallKit milestone to ``--events`` (``POST /events``) as it happens.

``--bug wrong-reason|waits-for-cancel-push|no-487`` plants a known bug (to show the lab catches it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exthttp  # noqa: E402
import extsip  # noqa: E402
from extcall import Call  # noqa: E402
from extflow import StreamFlow, UDPFlow  # noqa: E402

T1, T2, TIMER_F = 0.5, 4.0, 32.0
BUGS = ("wrong-reason", "waits-for-cancel-push", "no-487")
PROMPT_LINE = re.compile(r">>> (\S+): tap (Answer|Decline) now")


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} device: {text}", file=sys.stderr, flush=True)


class Device:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        transport, _, rest = args.sip.partition(":")
        host, _, port = rest.rpartition(":")
        self.transport, self.relay = transport, (host.strip("[]"), int(port))
        self.bugs = set(args.bug)
        self.token = args.token or secrets.token_hex(32)
        self.flow = None
        self.calls: list[Call] = []
        self.clients: dict[str, asyncio.Queue] = {}  # branch -> responses of our REGISTER transaction
        self.servers: dict[tuple[str, str], bytes] = {}  # (branch, method) -> last response we sent
        self.reg_call_id = secrets.token_hex(10)
        self.cseq = 0
        self.register_tasks: dict[int, asyncio.Task] = {}
        self.events: asyncio.Queue = asyncio.Queue()
        self.seen_prompts: set = set()
        self.last_seq = 0  # the last prompt seen (a reconnect asks only for later ones)
        self.registered_once = asyncio.Event()

    # -- SIP transport ------------------------------------------------------------------------------

    async def connect(self):
        """A fresh flow for a REGISTER: the UDP socket, or a new TCP/TLS connection (the old one is closed)."""
        if self.transport == "udp":
            if self.flow is None:
                self.flow = await UDPFlow.open(self.relay, self.on_data)
            return self.flow
        if self.flow is not None:
            self.flow.close()
            self.flow = None
        self.flow = await StreamFlow.open(self.transport, self.relay, self.on_data, self.on_lost,
                                          ca=self.args.ca, keepalive=self.args.keepalive)
        return self.flow

    def flow_dead(self) -> bool:
        return self.flow is None or not self.flow.alive

    def on_lost(self, flow) -> None:
        log(f"{flow.transport} connection lost")
        for queue in self.clients.values():
            queue.put_nowait(None)
        for call in self.calls:
            call.flow_lost()

    def contact_uri(self, flow) -> str:
        host, port = flow.local
        uri = f"sip:{self.args.user}@{host}:{port}"
        if self.transport != "udp":
            uri += f";transport={self.transport}"
        return f"<{uri};pn-provider=apns;pn-prid={self.token};pn-param={self.args.team}.{self.args.bundle}.voip>"

    # -- REGISTER -----------------------------------------------------------------------------------

    async def register(self, expires: int) -> tuple[str, int, float | None]:
        """One REGISTER transaction: ("response", status, retry_after), ("timeout", 0, None) or ("transport",...)."""
        try:
            flow = await asyncio.wait_for(self.connect(), TIMER_F)
        except (OSError, asyncio.TimeoutError, Exception) as exc:
            log(f"cannot connect to {self.args.sip}: {exc}")
            return ("transport", 0, None)
        self.cseq += 1
        branch = extsip.new_branch()
        aor = f"sip:{self.args.user}@{self.args.domain}"
        host, port = flow.local
        msg = extsip.Msg(method="REGISTER", uri=f"sip:{self.args.domain}", headers=[
            ("Via", f"SIP/2.0/{self.transport.upper()} {host}:{port};branch={branch};rport"),
            ("Max-Forwards", "70"), ("From", f"<{aor}>;tag={secrets.token_hex(4)}"), ("To", f"<{aor}>"),
            ("Call-ID", self.reg_call_id), ("CSeq", f"{self.cseq} REGISTER"), ("Contact", self.contact_uri(flow)),
            ("Expires", str(expires)), ("User-Agent", "extdevice/1")])
        data = extsip.serialize(msg)
        queue: asyncio.Queue = asyncio.Queue()
        self.clients[branch] = queue
        deadline = time.monotonic() + TIMER_F
        interval = T1
        try:
            flow.send(data)
            while time.monotonic() < deadline:
                wait = min(interval, deadline - time.monotonic()) if flow.transport == "udp" else \
                    deadline - time.monotonic()
                try:
                    response = await asyncio.wait_for(queue.get(), max(0.0, wait))
                except asyncio.TimeoutError:
                    if flow.transport == "udp":
                        flow.send(data)
                        interval = min(2 * interval, T2)
                    continue
                if response is None:
                    return ("transport", 0, None)
                if response.status >= 200:
                    retry = response.get("retry-after")
                    m = re.match(r"\s*(\d+)", retry or "")
                    return ("response", response.status, float(m.group(1)) if m else None)
                interval = T2
            return ("timeout", 0, None)
        finally:
            del self.clients[branch]

    def register_for(self, call: Call) -> None:
        async def go() -> None:
            result = await self.register(self.args.expires)
            log(f"REGISTER for call {call.call_id}: {result[0]} {result[1]}")
            call.register_result(*result)

        self.stop_register(call)
        self.register_tasks[id(call)] = asyncio.ensure_future(go())

    def stop_register(self, call: Call) -> None:
        task = self.register_tasks.pop(id(call), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def keep_registered(self) -> None:
        """The first registration (retried until it works), then a refresh at half the expiry when idle."""
        while True:
            kind, status, _ = await self.register(self.args.expires)
            if kind == "response" and 200 <= status < 300:
                log(f"registered {self.args.user} over {self.transport}, token {self.token[:8]}...")
                self.registered_once.set()
                await asyncio.sleep(self.args.expires / 2)
                while any(not c.ended for c in self.calls):
                    await asyncio.sleep(5)
            else:
                log(f"REGISTER failed ({kind} {status}); again in 60 s")
                await asyncio.sleep(60 if self.registered_once.is_set() else 2)

    # -- incoming SIP -------------------------------------------------------------------------------

    def reply(self, request: extsip.Msg, status: int, path, **kw) -> bytes:
        data = extsip.serialize(extsip.response(request, status, **kw))
        flow, addr = path
        flow.send(data, addr)
        if request.method != "ACK":
            self.servers[(request.branch, request.method)] = data
            if len(self.servers) > 2000:
                self.servers.pop(next(iter(self.servers)))
        return data

    def retransmit_final(self, call: Call) -> None:
        """UDP: a final response to the INVITE goes again (T1, doubling to T2) until the ACK, for 32 s."""
        flow, addr = call.invite_path
        if flow.transport != "udp":
            return

        async def go() -> None:
            interval, begun = T1, time.monotonic()
            while not call.acked and time.monotonic() - begun < TIMER_F:
                await asyncio.sleep(interval)
                if not call.acked:
                    flow.send(call.final_bytes, addr)
                interval = min(2 * interval, T2)

        asyncio.ensure_future(go())

    def find(self, call_id: str | None = None, uuid: str | None = None) -> Call | None:
        for call in reversed(self.calls):
            if call.matches(call_id, uuid):
                return call
        return None

    def on_data(self, data: bytes, flow, addr) -> None:
        try:
            msg = extsip.parse(data)
        except extsip.ParseError as exc:
            log(f"unreadable SIP dropped: {exc}")
            return
        try:
            self.handle(msg, flow, addr)
        except Exception as exc:  # a message this app cannot handle must not take its connection down
            log(f"cannot handle {msg.method or msg.status}: {type(exc).__name__}: {exc}")

    def handle(self, msg: extsip.Msg, flow, addr) -> None:
        if msg.status is not None:
            queue = self.clients.get(msg.branch)
            if queue is not None and msg.cseq[1] == "REGISTER":
                queue.put_nowait(msg)
            return
        path = (flow, addr)
        if msg.method == "ACK":
            call = self.find(msg.call_id)
            if call is not None:
                call.ack_received()
            return
        cached = self.servers.get((msg.branch, msg.method))
        if cached is not None:
            flow.send(cached, addr)  # a retransmission: the same answer again
            return
        call = self.find(msg.call_id)
        if msg.method == "INVITE":
            if msg.to_tag is not None:  # a re-INVITE: keep the call as it is
                self.reply(msg, 200 if call else 481, path)
                return
            if call is None:  # no push came for it (the app is in the foreground): report now
                call = Call(self, None, msg.call_id)
                self.calls.append(call)
                call.post("reported", via="invite")
            call.invite_received(msg, path)
        elif msg.method == "CANCEL":
            if call is None:
                self.reply(msg, 481, path)
            else:
                call.cancel_received(msg, path)
        elif msg.method == "BYE":
            self.reply(msg, 200 if call else 481, path)
            if call is not None:
                call.bye_received()
        elif msg.method in ("OPTIONS", "NOTIFY", "INFO", "UPDATE"):
            self.reply(msg, 200, path)
        else:
            self.reply(msg, 405, path)

    # -- pushes, prompts, events --------------------------------------------------------------------

    def on_push(self, push: dict) -> None:
        if push.get("kind") == "prompt":
            self.on_prompt(push)
            return
        payload = push.get("payload") if isinstance(push.get("payload"), dict) else {}
        kind = payload.get("type") or push.get("kind")
        if payload.get("cancel") is True:
            kind = "cancel"
        call_id, uuid = payload.get("call-id"), payload.get("uuid")
        call_id = call_id if isinstance(call_id, str) else None
        uuid = uuid if isinstance(uuid, str) else None
        log(f"{kind} push for {call_id} ({uuid})")
        call = self.find(call_id, uuid)
        if kind == "cancel":
            if call is not None:
                call.cancel_push()
            return
        if call is not None:
            return  # a duplicate push: reported once
        call = Call(self, uuid, call_id)
        self.calls = [c for c in self.calls[-50:]] + [call]
        call.pushed(payload)

    def on_prompt(self, prompt: dict) -> None:
        key = prompt.get("seq") if prompt.get("seq") is not None else prompt.get("text")
        if key in self.seen_prompts:
            return
        self.seen_prompts.add(key)
        if isinstance(prompt.get("seq"), int):
            self.last_seq = max(self.last_seq, prompt["seq"])
        deadline = prompt.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            log(f"prompt {prompt.get('seq')} is past its deadline (a replay): not acted on")
            return
        action = prompt.get("action")
        call = self.find(prompt.get("call_id"), prompt.get("uuid")) if (prompt.get("call_id") or
                                                                        prompt.get("uuid")) else None
        if call is None and not (prompt.get("call_id") or prompt.get("uuid")):
            call = next((c for c in reversed(self.calls) if not c.ended), None)
        log(f"prompt {action} for {prompt.get('scenario')}: {'call ' + str(call.call_id) if call else 'no call'}")
        if call is None:
            return
        if action == "answer":
            call.tap_answer()
        elif action == "decline":
            call.tap_decline()

    def post(self, event: str, call: Call, reason: str | None, detail: dict) -> None:
        body = {"device": self.args.device_name, "event": event, "client_time": time.time()}
        if call.uuid:
            body["uuid"] = call.uuid
        if call.call_id:
            body["call_id"] = call.call_id
        if reason:
            body["reason"] = reason
        if detail:
            body["detail"] = {k: v for k, v in detail.items() if v is not None}
        log(f"{event} {reason or ''} {call.call_id}")
        self.events.put_nowait(body)

    async def poster(self) -> None:
        url = self.args.events.rstrip("/") + "/events"
        while True:
            body = await self.events.get()
            if self.args.events_log:
                with open(self.args.events_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(body) + "\n")
            try:
                status, answer = await exthttp.post_json(url, body)
                if status != 200:
                    log(f"the collector refused {body['event']}: {status} {answer[:200]!r}")
            except (OSError, asyncio.TimeoutError, exthttp.HTTPError) as exc:
                log(f"cannot post {body['event']}: {exc}")

    async def follow(self, url: str, handle, what: str) -> None:
        """Follow an NDJSON stream for ever (reconnecting after 1 s)."""
        while True:
            try:
                async for obj in exthttp.ndjson(url):
                    handle(obj)
            except (OSError, asyncio.IncompleteReadError, exthttp.HTTPError, ValueError) as exc:
                log(f"{what} stream: {exc}")
            await asyncio.sleep(1.0)

    async def prompts(self) -> None:
        """The user's taps: ``GET /prompts`` on the collector; ``auto`` falls back to the lab's console output
        (``--lab-output``) when the collector has no /prompts (404)."""
        source = self.args.prompt_source
        url = self.args.events.rstrip("/") + "/prompts"
        while source in ("auto", "prompts"):
            try:
                async for obj in exthttp.ndjson(url + (f"?since={self.last_seq + 1}" if self.last_seq else "")):
                    self.on_prompt(obj)
            except exthttp.HTTPError as exc:
                if source == "auto" and exc.status in (404, 405) and self.args.lab_output:
                    log(f"the collector has no /prompts ({exc.status}): prompts from {self.args.lab_output}")
                    source = "stdout-file"
                    break
                log(f"prompts stream: {exc}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                log(f"prompts stream: {exc}")
            await asyncio.sleep(1.0)
        if source == "stdout-file":
            await self.tail(self.args.lab_output)

    async def tail(self, path: str) -> None:
        """The lab's console output: each ``>>> SNN: tap Answer now`` line is a prompt for the ringing call."""
        while not os.path.exists(path):
            await asyncio.sleep(0.05)
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            pending = b""
            while True:
                chunk = f.read(65536)
                if not chunk:
                    await asyncio.sleep(0.02)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    m = PROMPT_LINE.search(line.decode("utf-8", "replace"))
                    if m:
                        self.on_prompt({"action": m.group(2).lower(), "scenario": m.group(1),
                                        "text": f"{time.monotonic()}"})

    async def run(self) -> None:
        tasks = [self.poster(), self.prompts(), self.keep_registered()]
        push_url = self.args.push.rstrip("/") + f"/devices/{self.token}/pushes"
        tasks.append(self.follow(push_url, self.on_push, "push"))
        await asyncio.gather(*(self.guarded(t) for t in tasks))

    @staticmethod
    async def guarded(coro) -> None:
        try:
            await coro
        except Exception as exc:  # one broken part must not take the app down; say what broke
            log(f"internal error: {type(exc).__name__}: {exc}")
            raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sip", required=True, help="the lab's relay: udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT")
    p.add_argument("--push", required=True, help="the push gateway, http://HOST:PORT")
    p.add_argument("--events", required=True, help="the event collector, http://HOST:PORT")
    p.add_argument("--user", default="alice")
    p.add_argument("--domain", default="lab.test")
    p.add_argument("--token", help="the VoIP push token (hex); default: a random one")
    p.add_argument("--team", default="ABCDE12345")
    p.add_argument("--bundle", default="org.example.extdevice")
    p.add_argument("--device-name", default="ext-iphone")
    p.add_argument("--ca", help="the lab CA certificate (PEM) to trust over TLS")
    p.add_argument("--expires", type=int, default=3600)
    p.add_argument("--keepalive", type=float, default=90.0, help="TCP/TLS CRLF keep-alive interval, s (0: none)")
    p.add_argument("--prompt-source", choices=("auto", "prompts", "stdout-file", "none"), default="auto",
                   help="where the user's taps come from: the collector's GET /prompts (auto: when it exists), "
                        "or the lab's console output in --lab-output")
    p.add_argument("--lab-output", help="a file the lab's console output goes to (--prompt-source stdout-file)")
    p.add_argument("--events-log", help="also append each posted event to this NDJSON file")
    p.add_argument("--bug", action="append", default=[], choices=BUGS, help="plant a known bug")
    args = p.parse_args(argv)
    if not re.fullmatch(r"(udp|tcp|tls):\[?[^\]]+\]?:\d+", args.sip):
        p.error(f"--sip {args.sip!r}: expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT")
    if args.sip.startswith("tls:") and not args.ca:
        p.error("--sip tls:... needs --ca: the lab CA certificate to trust")
    try:
        asyncio.run(Device(args).run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
