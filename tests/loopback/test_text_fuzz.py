"""Bytes that are not UTF-8, in every header, against a real `faultlab proxy --trace FILE --api ... -v` over UDP, TCP
and TLS, and hostile JSON against its API: the process stays up and keeps relaying, the bad bytes reach the PBX
(and its answers the device) exactly as sent, the trace is JSONL that faultlab's own readers read back with the raw
bytes exact and the text escaped (``\\xbd``), the console prints escapes and nothing that is not UTF-8, /api/ladder
and /events answer 200, and device events with such strings are accepted or refused with a 4xx, never a 500.

The cases come from a seeded generator (``FAULTLAB_FUZZ_SEED`` picks another seed; the seed is in the failure
message): one message per header with an invalid sequence put somewhere in its value, and some with one in every
header at once."""

from __future__ import annotations

import json
import os
import random
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio
import trustme

from faultlab.sip import SipError, StreamFramer, build_response, parse_datagram
from faultlab.sip._errors import NEED_DATA
from faultlab.trace import ladder_rows, read_jsonl, render_ladder, wire_messages, write_pcap
from tests.actors import Actors, actor_env, open_actors
from tests.loopback.test_api import Http, request

SEED = int(os.environ.get("FAULTLAB_FUZZ_SEED", "13"))
# Not UTF-8: a lone continuation byte, bytes UTF-8 never uses, an overlong "/", an encoded surrogate, a cut
# sequence, a code point past U+10FFFF, Latin-1 text; and, valid but hostile on a terminal, ESC and a bidi override.
BAD = [b"\xbd", b"\xff", b"\xfe\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80\x80\x80", b"\xf4\x90\x80\x80",
       b"caf\xe9", b"\xbd\x1b[31m", b"\xe2\x80\xae\xbd"]
# Every part of the message a value can be put in ("uri": the Request-URI's user part; "header name": the name
# of a header, which then is not a token).
PARTS = ["uri", "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact", "User-Agent", "Subject",
         "Content-Type", "X-Note", "header name", "body"]
TRANSPORTS = ("udp", "tcp", "tls")
JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class Case:
    id: str
    data: bytes
    bad_parts: tuple[str, ...]


def make_message(case_id: str, transport: str, rng: random.Random, bad_parts: tuple[str, ...]) -> bytes:
    def bad(value: bytes, part: str, keep: int = 0) -> bytes:
        """``value`` with an invalid sequence put in at a random place after its first ``keep`` bytes."""
        if part not in bad_parts:
            return value
        at = rng.randint(keep, len(value))
        return value[:at] + rng.choice(BAD) + value[at:]

    body = bad(b"hello from the fuzzer", "body")
    head = [
        b"MESSAGE sip:" + bad(b"bob", "uri") + b"@pbx.test SIP/2.0",
        b"Via: SIP/2.0/" + transport.upper().encode() + b" 127.0.0.1:5999;branch=z9hG4bK" + case_id.encode()
        + bad(b";rport;x=y", "Via"),
        b"Max-Forwards: " + bad(b"70", "Max-Forwards"),
        b"From: " + bad(b'"Alice" <sip:alice@pbx.test>;tag=a1', "From"),
        b"To: " + bad(b"<sip:bob@pbx.test>", "To"),
        b"Call-ID: " + bad(case_id.encode() + b"@fuzz.test", "Call-ID", keep=len(case_id)),
        b"CSeq: " + bad(b"1 MESSAGE", "CSeq"),
        b"Contact: " + bad(b"<sip:alice@127.0.0.1:5999>", "Contact"),
        b"User-Agent: " + bad(b"fuzz/1.0", "User-Agent"),
        b"Subject: " + bad(b"a subject", "Subject"),
        b"Content-Type: " + bad(b"text/plain", "Content-Type"),
        b"X-Note: " + bad(b"free text", "X-Note"),
        bad(b"X-Name", "header name", keep=1) + b": a header whose name is not a token",
        b"Content-Length: " + str(len(body)).encode(),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def make_cases(transport: str, seed: int) -> list[Case]:
    """One case per part, and three with every part at once. A header name that is not a token only over UDP: on
    a stream faultlab cannot frame what follows it, and relays the rest of that connection raw (as it says in a
    warning), which is not what this test is about."""
    rng = random.Random(f"{seed}-{transport}")
    parts = PARTS if transport == "udp" else [p for p in PARTS if p != "header name"]
    cases = []
    for i, part in enumerate(parts):
        case_id = f"fz-{transport}-{i}"
        cases.append(Case(case_id, make_message(case_id, transport, rng, (part,)), (part,)))
    for i in range(3):
        case_id = f"fz-{transport}-all{i}"
        cases.append(Case(case_id, make_message(case_id, transport, rng, tuple(parts)), tuple(parts)))
    return cases


def case_of(data: bytes) -> str | None:
    found = re.search(rb"Call-ID: (fz-[a-z]+-(?:all)?\d+|clean-[a-z]+)", data)
    return found.group(1).decode() if found else None


@dataclass
class Pbx:
    """The PBX side: what reached it per case, and an answer to each request with a reason phrase and a To tag
    that are not UTF-8 either."""

    seen: dict[str, bytes] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    def got(self, data: bytes) -> bytes | None:
        case = case_of(data)
        if case is not None:
            self.seen[case] = data
            self.changed.set()
            self.changed = trio.Event()
        try:
            request = parse_datagram(data)
            if request.method is None:
                return None
            return build_response(request, 200, "Fine \udcbd\udcff", to_tag="t\udcbd1")
        except (SipError, ValueError):
            return None  # a request it cannot answer: it still reached the PBX

    async def wait_for(self, cases: set[str]) -> None:
        while not cases <= self.seen.keys():
            await self.changed.wait()

    async def udp(self, sock: trio.socket.SocketType) -> None:
        while True:
            data, addr = await sock.recvfrom(65535)
            answer = self.got(data)
            if answer is not None:
                await sock.sendto(answer, addr)

    async def stream(self, stream: trio.abc.Stream) -> None:
        framer = StreamFramer()
        try:
            while data := await stream.receive_some(65536):
                framer.receive_data(data)
                while (event := framer.next_event()) is not NEED_DATA:
                    raw = getattr(event, "raw", None)
                    if raw is not None:
                        answer = self.got(raw)
                        if answer is not None:
                            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, SipError):
            pass


async def start_pbx(nursery: trio.Nursery, tmp_path: Path) -> tuple[Pbx, dict[str, int], Path]:
    pbx = Pbx()
    udp = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await udp.bind(("127.0.0.1", 0))
    nursery.start_soon(pbx.udp, udp)
    tcp = await nursery.start(partial(trio.serve_tcp, pbx.stream, 0, host="127.0.0.1"))
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "pbx-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def tls_pbx(stream: trio.SocketStream) -> None:
        await pbx.stream(trio.SSLStream(stream, server_ctx, server_side=True))

    tls = await nursery.start(partial(trio.serve_tcp, tls_pbx, 0, host="127.0.0.1"))
    ports = {"udp": udp.getsockname()[1], "tcp": tcp[0].socket.getsockname()[1],
             "tls": tls[0].socket.getsockname()[1]}
    return pbx, ports, ca_file


class Device:
    """One device per transport: sends the cases, keeps the answers faultlab passes back."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.answers: list[bytes] = []
        self.changed = trio.Event()
        self.sock: trio.socket.SocketType | None = None
        self.stream: trio.abc.Stream | None = None

    def _got(self, data: bytes) -> None:
        self.answers.append(data)
        self.changed.set()
        self.changed = trio.Event()

    async def open(self, nursery: trio.Nursery, address: tuple[str, int], ca_file: Path) -> None:
        if self.transport == "udp":
            self.sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await self.sock.connect(address)
            nursery.start_soon(self._read_udp)
            return
        stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
        if self.transport == "tls":
            stream = trio.SSLStream(stream, ssl.create_default_context(cafile=str(ca_file)),
                                    server_hostname="pbx.lab.test")
        self.stream = stream
        nursery.start_soon(self._read_stream)

    async def _read_udp(self) -> None:
        try:
            while True:
                self._got(await self.sock.recv(65535))
        except (OSError, trio.ClosedResourceError):
            pass  # closed

    async def _read_stream(self) -> None:
        framer = StreamFramer()
        try:
            while data := await self.stream.receive_some(65536):
                framer.receive_data(data)
                while (event := framer.next_event()) is not NEED_DATA:
                    if getattr(event, "raw", None) is not None:
                        self._got(event.raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the proxy stopped

    async def send(self, data: bytes) -> None:
        if self.sock is not None:
            await self.sock.send(data)
        else:
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            await self.stream.aclose()

    async def wait_answer(self, case: str) -> bytes:
        while True:
            for data in self.answers:
                if case_of(data) == case:
                    return data
            await self.changed.wait()


async def start_proxy(actors: Actors, tmp_path: Path, ports: dict[str, int], ca_file: Path):
    trace = tmp_path / "fuzz.jsonl"
    proxy = await actors.spawn(
        "proxy", "proxy", *(a for t in TRANSPORTS for a in ("--listen", f"{t}:127.0.0.1:0")),
        "--upstream", f"udp:127.0.0.1:{ports['udp']}", "--upstream", f"tcp:127.0.0.1:{ports['tcp']}",
        "--upstream", f"tls:localhost:{ports['tls']}", "--upstream-ca", str(ca_file),
        "--trace", str(trace), "--api", "127.0.0.1:0", "--verbose")
    listening = {}
    for t in TRANSPORTS:
        found = await proxy.wait_line("stderr", rf"listening on {t}:127\.0\.0\.1:(\d+)")
        listening[t] = ("127.0.0.1", int(found.group(1)))
    lab_ca = Path((await proxy.wait_line("stderr", r"TLS certificates from the lab CA (\S+)$")).group(1))
    api_port = int((await proxy.wait_line("stderr", r"control API on http://127\.0\.0\.1:(\d+)")).group(1))
    return proxy, trace, listening, lab_ca, api_port


async def test_bytes_that_are_not_utf8_in_every_header_over_udp_tcp_and_tls(tmp_path: Path):
    cases = {t: make_cases(t, SEED) for t in TRANSPORTS}
    why = f"(FAULTLAB_FUZZ_SEED={SEED})"
    async with trio.open_nursery() as nursery:
        async with open_actors(actor_env(tmp_path / "home")) as actors:
            with trio.fail_after(60):
                pbx, ports, pbx_ca = await start_pbx(nursery, tmp_path)
                proxy, trace, listening, lab_ca, api_port = await start_proxy(actors, tmp_path, ports, pbx_ca)
                devices = {t: Device(t) for t in TRANSPORTS}
                for t, device in devices.items():
                    await device.open(nursery, listening[t], lab_ca)
                for t in TRANSPORTS:
                    for case in cases[t]:
                        await devices[t].send(case.data)
                for t in TRANSPORTS:  # still relaying: a clean message after all the others gets through, and back
                    clean = make_message(f"clean-{t}", t, random.Random(0), ())
                    await devices[t].send(clean)
                    await pbx.wait_for({f"clean-{t}"})
                    await devices[t].wait_answer(f"clean-{t}")
                assert proxy.process.returncode is None, proxy.output()
                await check_api(api_port)
                assert proxy.process.returncode is None, proxy.output()
                for device in devices.values():
                    await device.aclose()
                assert await actors.stop(proxy) == 0, proxy.output()  # SIGTERM: a clean stop, the trace complete
        nursery.cancel_scope.cancel()
    relayed = check_relayed(cases, pbx, why)
    call_ids = check_trace(trace, cases, relayed, why)
    check_console(proxy.lines["stdout"], why)
    check_trace_commands(trace, call_ids, why)


def check_relayed(cases: dict[str, list[Case]], pbx: Pbx, why: str) -> set[str]:
    """Every message reached the PBX with its bytes as sent (faultlab's Via added); the ones it could not parse
    (a CSeq that is not a number...) are relayed as they are, still not lost."""
    relayed = set()
    for t in TRANSPORTS:
        for case in cases[t]:
            assert case.id in pbx.seen, f"{case.id} ({case.bad_parts}) never reached the PBX {why}"
            got = pbx.seen[case.id]
            for line in case.data.split(b"\r\n")[2:]:  # after the start line and the device's Via
                assert line in got, f"{case.id}: {line!r} did not reach the PBX as sent {why}"
            relayed.add(case.id)
    return relayed


def check_trace(trace: Path, cases: dict[str, list[Case]], relayed: set[str], why: str) -> list[str]:
    """The trace file, read by faultlab's readers; the Call-IDs with an escape in them."""
    lines = trace.read_bytes().splitlines()
    for line in lines:
        json.loads(line.decode("utf-8"))  # each line UTF-8 JSON, strictly
    events = list(read_jsonl(trace))  # faultlab's reader
    assert events[0].kind == "start" and events[-1].kind == "stop"
    sent = {c.id: c.data for t in TRANSPORTS for c in cases[t]}
    received = {}
    for e in events:
        if e.kind == "received" and e.direction == "to-pbx" and e.raw is not None and case_of(e.raw) in sent:
            received[case_of(e.raw)] = e
        for text in (e.call_id, e.summary, e.method, e.cseq_method):
            assert text is None or not re.search("[\ud800-\udfff]", text), (e, why)
    assert relayed <= received.keys(), why
    for case_id, e in received.items():
        assert e.raw == sent[case_id], f"{case_id}: the trace's raw bytes differ from what was sent {why}"
    call_id_cases = [c for t in TRANSPORTS for c in cases[t] if c.bad_parts == ("Call-ID",)]
    for case in call_id_cases:
        e = received[case.id]
        assert e.call_id is not None and e.call_id.startswith(case.id) and "\\x" in e.call_id, (e.call_id, why)
        rows = ladder_rows(events, e.call_id)
        assert rows and render_ladder(rows)
    assert wire_messages(events)
    assert write_pcap(events, trace.with_suffix(".pcap")) > 0
    return [received[c.id].call_id for c in call_id_cases]


def check_trace_commands(trace: Path, call_ids: list[str], why: str) -> None:
    """`faultlab trace ...` reads the file back: exit 0, output that is UTF-8 with the escapes in it."""
    env = actor_env(trace.parent / "home")
    commands = [["ladder", str(trace)], ["ladder", str(trace), "--json"], ["follow", str(trace)],
                ["pcap", str(trace), "-o", str(trace.with_suffix(".cli.pcap"))],
                *(["ladder", str(trace), "--call", call_id] for call_id in call_ids)]
    for args in commands:
        done = subprocess.run([sys.executable, "-m", "faultlab", "trace", *args], capture_output=True, env=env,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr.decode(errors="replace"), why)
        out = done.stdout.decode("utf-8")  # strictly UTF-8
        assert "\\x" in out or "wrote" in out, (args, out[:500], why)
    assert trace.with_suffix(".cli.pcap").stat().st_size > 0


def check_console(stdout: list[str], why: str) -> None:
    text = "\n".join(stdout)
    assert "\ufffd" not in text, f"the console printed bytes that are not UTF-8 {why}"  # read with "replace"
    assert "\\xbd" in text and "\x1b" not in text, why
    assert re.search(r"received .*call=fz-udp-5\S*\\x", text), why  # the Call-ID case, escaped


async def check_api(port: int) -> None:
    ladder = await request(port, "GET", "/api/ladder")
    assert ladder.status == 200, ladder.body
    body = ladder.json()
    calls = [c["call_id"] for c in body["calls"]]
    assert any("\\x" in c for c in calls), calls
    for call in calls:
        reply = await request(port, "GET", "/api/ladder?call=" + _quote(call))
        assert reply.status == 200 and reply.json()["rows"], (call, reply.body)
    http = Http(port)
    try:
        reply = await http.start("GET", "/events?since=0")
        assert reply.status == 200
        header = json.loads(await http.read_until(b"\n"))
        for _ in range(header["detail"]["replayed"]):
            json.loads((await http.read_until(b"\n")).decode("utf-8"))
    finally:
        await http.aclose()
    await check_device_events(port)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def device_event(**fields) -> dict:
    return {"device": "fuzz-phone", "event": "reported", "call_id": "fz-udp-5", "client_time": 1764166500.0,
            **fields}


async def check_device_events(port: int) -> None:
    """Device events: hostile JSON is refused with a 4xx that says why; nothing gives a 500."""
    good = json.dumps(device_event(detail={"note": "caf\u00e9 \u2603 \U0001f600"}), ensure_ascii=True).encode()
    refused = [
        (b'{"device": "fuzz-phone", "event": "reported", "call_id": "a\\udcbd", "client_time": 1}', 400,
         "lone surrogate \\udcbd"),
        (json.dumps(device_event(detail={"x": "\ud800"})).encode(), 400, "lone surrogate \\ud800"),
        (json.dumps(device_event(call_id="\udfff\ud800")).encode(), 400, "lone surrogate"),
        (b'{"device": "fuzz-phone", "call_id": "a\xbd"}', 400, "not UTF-8"),
        (b'{"device": "fuzz-phone", "event": ', 400, "not valid JSON"),
        (b"[" * 30000 + b"]" * 30000, 400, "nested deeper than 32 levels"),
        (json.dumps(device_event(client_time=float("nan"))).encode(), 400, "NaN"),
        (b"[" + b"1," * 40000 + b"1]", 413, "over 65536 bytes"),
    ]
    for body, status, says in refused:
        reply = await request(port, "POST", "/events", body=body, headers=JSON_HEADERS)
        assert reply.status == status and says in reply.json()["error"], (body[:80], reply.status, reply.body)
    reply = await request(port, "POST", "/events", body=good, headers=JSON_HEADERS)
    assert reply.status == 200 and reply.json() == {"accepted": 1}, reply.body
    for path, body in (("/rules", b'{"rule": {"name": "r", "match": {"call_id": "\\udcbd"}, "action": {"drop": true}}}'),
                       ("/active", b'{"profile": "\\ud800"}'), ("/active", b"[" * 5000 + b"]" * 5000)):
        reply = await request(port, "PUT" if path == "/active" else "POST", path, body=body, headers=JSON_HEADERS)
        assert reply.status == 400, (path, reply.body)
    assert (await request(port, "GET", "/api/ladder")).status == 200


def test_the_generator_puts_bad_bytes_in_every_part():
    for t in TRANSPORTS:
        cases = make_cases(t, SEED)
        assert {c.bad_parts[0] for c in cases if len(c.bad_parts) == 1} == set(PARTS) - (
            set() if t == "udp" else {"header name"})
        for case in cases:
            try:
                case.data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            raise AssertionError(f"{case.id} is valid UTF-8")


