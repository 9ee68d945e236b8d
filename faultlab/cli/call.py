"""``faultlab call``: the lab's caller (:class:`~faultlab.lab.caller.Caller`) as a process: one scripted call.

Mounted by ``faultlab/cli/__init__.py`` with ``app.add_typer(call_app, name="call")``. Thin: parse the options, place the
call, follow the script (cancel, or hang up after the answer), print progress on stderr and the outcome on stdout.

The script and its exit code:

* with ``--cancel-after T``: CANCEL at T after the INVITE if no final response has come by then; the expected
  final response is 487 (override with ``--expect``);
* otherwise the expected final response is a 2xx (``--expect 200``); after it the caller hangs up
  ``--hang-up-after`` later (default 0: at once, right after its ACK) and expects a 2xx to its BYE;
* with ``--media`` the call carries RTP (:class:`~faultlab.lab.media.MediaStream`): a PCMU offer on a real port,
  20 ms packets to the far end's SDP address once answered, until the hang-up; the outcome's ``media`` has the
  packet counts and where the far end's RTP came from.

Exit 0 when the final response is the expected one and, for a 2xx, the BYE got a 2xx; 1 otherwise (no final
response or no BYE response within ``--timeout``, another final response, the far end hung up first, the
connection failed, or the run was interrupted); 2 for bad input.
"""

from __future__ import annotations

import json
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, NoReturn, Optional

import trio
import typer

from faultlab.cli._common import failing, stopped_by

from faultlab.faults import parse_duration
from faultlab.addr import Endpoint, EndpointError, format_hostport, is_ip, parse_endpoint

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    invoke_without_command=True,
    subcommand_metavar="",
    # options after TARGET: with no subcommands, nothing after it can be a command name
    context_settings={"allow_interspersed_args": True},
)

SETTLE = 2.0  # seconds to wait for the far end while tidying up (after a signal or --timeout)


_fail = failing("faultlab call")


def _say(message: str) -> None:
    typer.echo(f"faultlab call: {message}", err=True)


def _seconds(option: str, text: str | None, *, zero: bool = True) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)  # a bare number: seconds
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError:
            _fail(f"{option} {text!r}: expected a duration such as 2s, 500ms or 1.5")
    if value != value or value < 0 or (not zero and value == 0):
        _fail(f"{option} {text!r}: must be {'0 or ' if zero else ''}more than 0")
    return value


def _source_address(endpoint: Endpoint) -> str:
    """The local address the system would send from to reach ``endpoint`` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((endpoint.host, endpoint.port))
        return probe.getsockname()[0]


@dataclass
class Outcome:
    """What happened to the call; ``times`` are seconds after the INVITE was sent."""

    target: str
    expect: int
    call_id: str | None = None
    statuses: list[int] = field(default_factory=list)
    final: int | None = None
    ended: str | None = None  # as CallHandle.ended: local-bye, remote-bye, cancelled, rejected-<status>
    cancel: int | None = None  # status of the response to our CANCEL
    bye: int | None = None  # status of the response to our BYE
    times: dict[str, float] = field(default_factory=dict)
    media: dict | None = None  # with --media: RTP packets sent, received, and where they came from
    ok: bool = False
    reason: str = ""  # why not ok

    def to_dict(self) -> dict:
        return {"call_id": self.call_id, "target": self.target, "statuses": self.statuses, "final": self.final,
                "expected": self.expect, "ended": self.ended, "cancel_status": self.cancel,
                "bye_status": self.bye, "times": {k: round(v, 6) for k, v in self.times.items()},
                "ok": self.ok, "reason": self.reason or None, **({"media": self.media} if self.media else {})}

    def text(self) -> str:
        statuses = " ".join(map(str, self.statuses)) or "none"
        line = f"call {self.call_id}: responses {statuses}; ended {self.ended or '-'}"
        if self.bye is not None:
            line += f"; BYE {self.bye}"
        return line + ("; as scripted" if self.ok else f"; NOT as scripted: {self.reason}")


def _progress(event) -> None:
    """One stderr line per message the caller sends or receives, and per scripted step."""
    if event.source != "caller":
        return
    if event.kind == "sent":
        if event.method:
            _say(f"{event.method} sent to {event.peer}")
        elif event.status is not None:
            _say(f"answered {event.status} to {_cseq_method(event) or 'a request'}")
    elif event.kind == "received":
        if event.method:
            _say(f"{event.method} received from {event.peer}")
            return
        method = _cseq_method(event)
        if method == "INVITE":
            _say(f"{event.status} {_reason(event)}".rstrip())
        else:
            _say(f"{method}: {event.status}")
    elif event.kind == "caller" and event.detail.get("action") == "ended":
        _say(f"ended: {event.detail.get('how')}")
    elif event.kind == "media":
        _say(event.summary)


def _parsed(event):
    from faultlab.sip import Message, SipError, parse_datagram

    try:
        message = parse_datagram(event.raw or b"")
    except SipError:
        return None
    return message if isinstance(message, Message) else None


def _cseq_method(event) -> str | None:
    message = _parsed(event)
    try:
        return message.cseq.method if message is not None and message.cseq else None
    except Exception:  # a malformed CSeq: no method to show
        return None


def _reason(event) -> str:
    message = _parsed(event)
    return (message.reason_phrase or "") if message is not None else ""


async def place_call(endpoint: Endpoint, target: str, *, user: str, domain: str | None, host: str,
                     cancel_after: float | None, cancel_reason: str | None, hang_up_after: float,
                     timeout: float, expect: int, ca_file: Path | None, tls_name: str | None,
                     media: bool = False) -> Outcome:
    """Place one call and follow the script; the outcome (never raises for what the far end does)."""
    from faultlab.lab.caller import Caller
    from faultlab.lab.timeline import Timeline
    from faultlab.trace import Trace

    events = Trace(keep=0)
    events.add_sink(_progress)
    caller = Caller(endpoint.transport, (endpoint.host, endpoint.port), user, Timeline(events), domain=domain,
                    host=host, ca_file=ca_file, tls_server_name=tls_name, timeout=timeout, media=media)
    script = _Script(caller, endpoint, target, expect=expect, cancel_after=cancel_after,
                     cancel_reason=cancel_reason, hang_up_after=hang_up_after, timeout=timeout)
    await script.run()
    return script.verdict()


class _Script:
    """One call placed and followed by its script (cancel, or hang up after a while), until a signal."""

    def __init__(self, caller, endpoint: Endpoint, target: str, *, expect: int, cancel_after: float | None,
                 cancel_reason: str | None, hang_up_after: float, timeout: float) -> None:
        self.caller = caller
        self.endpoint = endpoint
        self.target = target
        self.cancel_after = cancel_after
        self.cancel_reason = cancel_reason
        self.hang_up_after = hang_up_after
        self.timeout = timeout
        self.outcome = Outcome(target, expect)
        self.call = None
        self.t0 = 0.0
        self.interrupted = False
        self.late_answer = False  # a 2xx came after the tidy-up's CANCEL (it crossed the CANCEL)
        self.unreachable = False
        self.work_scope = trio.CancelScope()

    def mark(self, what: str) -> None:
        self.outcome.times.setdefault(what, trio.current_time() - self.t0)

    def record(self) -> None:
        call, outcome = self.call, self.outcome
        if call is not None:
            outcome.call_id = call.call_id
            outcome.statuses = call.statuses
            outcome.final = call.final.status if call.final is not None else None
            outcome.ended = call.ended
            if call.cancel_response is not None:
                outcome.cancel = call.cancel_response.status
            if call.bye_response is not None:
                outcome.bye = call.bye_response.status
            if call.media is not None:
                outcome.media = {"sent": call.media.sent, "received": call.media.received,
                                 "from": call.media.heard_from}

    async def watch(self) -> None:  # times of the responses, as they come
        call = self.call
        seen = 0
        while True:
            for response in call.responses[seen:]:
                self.mark(str(response.status))
            seen = len(call.responses)
            if call.final is not None:
                self.mark("final")
            if call.ended is not None:
                self.mark("ended")
            await call._changed.wait()

    async def hang_up(self) -> None:
        from faultlab.lab.caller import CallerTimeout

        self.mark("bye")
        try:
            await self.call.hang_up()
        except CallerTimeout:
            self.outcome.reason = f"no response to the BYE within {self.timeout:g} s"
        self.mark("bye_response")

    async def script(self) -> None:
        from faultlab.lab.caller import CallerTimeout

        call = self.call
        if self.cancel_after is not None:
            with trio.move_on_after(self.cancel_after):
                await call.wait_final(timeout=float("inf"))
            if call.final is None:
                self.mark("cancel")
                await call.cancel(reason=self.cancel_reason)
        try:
            final = await call.wait_final(timeout=max(0.0, self.timeout - (trio.current_time() - self.t0)))
        except CallerTimeout:
            self.outcome.reason = f"no final response within {self.timeout:g} s of the INVITE"
            return
        if 200 <= final.status < 300:
            if self.hang_up_after:
                with trio.move_on_after(self.hang_up_after):
                    await call.wait_ended(timeout=float("inf"))
            if call.ended is None:
                await self.hang_up()

    def on_signal(self, signum: int) -> None:  # from before the connect: a signal also stops a stalled handshake
        self.interrupted = True
        _say(f"{signal.Signals(signum).name}: stopping")
        self.work_scope.cancel()

    async def run(self) -> None:
        """Connect, call and follow the script until done or a signal, then tidy up."""
        caller = self.caller
        async with stopped_by(signal.SIGINT, signal.SIGTERM, on_signal=self.on_signal) as nursery:
            with self.work_scope:
                try:
                    await caller.start(nursery)
                except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    self.outcome.reason = f"cannot reach the PBX at {self.endpoint}: {exc or 'timed out'}"
                    self.unreachable = True
                if not self.unreachable:
                    self.call = await caller.call(self.target)
                    self.t0 = trio.current_time()  # the INVITE is sent
                    self.outcome.times["invite"] = 0.0
                    nursery.start_soon(self.watch)
                    await self.script()
            if self.call is not None and (self.interrupted or self.call.final is None):
                await self.tidy_up()
            await trio.sleep(0)  # let watch() note the last change
            await caller.close()
            nursery.cancel_scope.cancel()
        self.record()

    async def tidy_up(self) -> None:
        """No call left ringing or up at the far end."""
        call = self.call
        with trio.move_on_after(SETTLE):
            if call.final is None:
                self.mark("cancel")
                await call.cancel(reason=self.cancel_reason)
                await call._wait("final response", lambda: call.final, float("inf"))
                self.late_answer = 200 <= call.final.status < 300
            if 200 <= call.final.status < 300 and call.ended is None:
                await self.hang_up()  # a 2xx (also one that crossed the CANCEL): its dialog is up

    def verdict(self) -> Outcome:
        """The outcome, with the reason the call did not go as scripted (empty if it did)."""
        outcome = self.outcome
        if self.interrupted:
            outcome.reason = "interrupted"
        elif self.unreachable:
            return outcome
        if self.late_answer:
            hung_up = (f"hung up: BYE {outcome.bye}" if outcome.bye is not None
                       else "hung up: no BYE response" if "bye" in outcome.times else "not hung up")
            outcome.reason = (f"{'interrupted: ' if self.interrupted else ''}answered {outcome.final} after the "
                              f"CANCEL ({hung_up})")
        final, expect = outcome.final, outcome.expect
        if outcome.reason:
            pass
        elif final is None:
            outcome.reason = f"no final response within {self.timeout:g} s of the INVITE"
        elif not (final == expect or (expect == 200 and 200 <= final < 300)):
            outcome.reason = f"final response {final}, expected {expect}"
            if 200 <= final < 300 and outcome.bye is not None:
                outcome.reason += f" (hung up: BYE {outcome.bye})"
        elif 200 <= final < 300:
            if outcome.ended == "remote-bye":
                outcome.reason = "the far end hung up first"
            elif outcome.bye is None or not 200 <= outcome.bye < 300:
                outcome.reason = f"BYE answered {outcome.bye}" if outcome.bye is not None else "no BYE response"
        outcome.ok = not outcome.reason
        return outcome


@app.callback(invoke_without_command=True)
def call(
    target: Annotated[Optional[str], typer.Argument(
        metavar="TARGET",
        help="Who to call: a SIP URI such as sip:alice@lab.test (the INVITE's Request-URI and To).",
        show_default=False)] = None,
    pbx: Annotated[Optional[str], typer.Option(
        "--pbx", metavar="TRANSPORT:HOST:PORT",
        help="The PBX (outbound proxy) to send the INVITE to: udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT "
             "(IPv6 in brackets). HOST must be an IP address. Required.", show_default=False)] = None,
    from_user: Annotated[str, typer.Option(
        "--from", metavar="USER", help="The calling user: From is sip:USER@DOMAIN.")] = "caller",
    domain: Annotated[Optional[str], typer.Option(
        "--domain", metavar="DOMAIN", help="The domain of the caller's From URI (default: the PBX's HOST:PORT).",
        show_default=False)] = None,
    bind: Annotated[Optional[str], typer.Option(
        "--bind", metavar="IP",
        help="Local IP address to send from (UDP) and to put in Via/Contact (default: the address the system "
             "routes to the PBX from).", show_default=False)] = None,
    cancel_after: Annotated[Optional[str], typer.Option(
        "--cancel-after", metavar="DURATION",
        help="CANCEL the call this long after the INVITE (e.g. 1s, 500ms, 1.5) if no final response has come "
             "by then; the script then expects 487.", show_default=False)] = None,
    cancel_reason: Annotated[Optional[str], typer.Option(
        "--cancel-reason", metavar="REASON",
        help="Reason header of the CANCEL (RFC 3326), e.g. 'SIP;cause=200;text=\"Call completed elsewhere\"'. "
             "Needs --cancel-after.", show_default=False)] = None,
    hang_up_after: Annotated[str, typer.Option(
        "--hang-up-after", metavar="DURATION",
        help="After a 2xx, hang up (BYE) this long after it. The default 0 hangs up at once, right after the "
             "ACK: the call only checks that it connects.")] = "0",
    timeout: Annotated[str, typer.Option(
        "--timeout", metavar="DURATION",
        help="How long to wait for the final response (counted from the INVITE) and for the response to "
             "the BYE; then the call has failed (exit 1). Longer than the PBX's ring timeout (45s) by default, "
             "so that its 480 is seen.")] = "60s",
    expect: Annotated[Optional[int], typer.Option(
        "--expect", metavar="STATUS",
        help="The final response the script expects (default: 200, meaning any 2xx; 487 with --cancel-after). "
             "E.g. --expect 480 for a call that should not reach the device.", min=200, max=699,
             show_default=False)] = None,
    ca_file: Annotated[Optional[Path], typer.Option(
        "--ca", metavar="FILE",
        help="CA certificates (PEM) to verify a tls: PBX with, e.g. the lab CA (default: the system's).",
        dir_okay=False, show_default=False)] = None,
    tls_name: Annotated[Optional[str], typer.Option(
        "--tls-name", metavar="NAME",
        help="TLS server name (SNI and verification) (default: the PBX's HOST).", show_default=False)] = None,
    media: Annotated[bool, typer.Option(
        "--media", help="Carry RTP: offer a PCMU stream on a real port and, once answered, send 20 ms packets "
                        "to the far end's SDP address until the hang-up (without it the offer is inactive).")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the outcome as one JSON object (call_id, statuses, final, ended, times in "
                       "seconds after the INVITE, ok) instead of a line of text.")] = False,
) -> None:
    """Place one call through a PBX, follow the script, print the outcome; exit 0 if the call went as scripted.

    Progress (each message sent and received) goes to stderr, the outcome to stdout (--json: one object).

    The script: with --cancel-after, CANCEL if still unanswered then and expect 487.

    Otherwise expect a 2xx, and hang up --hang-up-after later (at once by default).

    Exit 0 when the final response is the expected one and, after a 2xx, the BYE got a 2xx.

    Exit 1 otherwise: no final response or no BYE response within --timeout, or another final response.

    Exit 1 too when the far end hung up first, the PBX was unreachable, or on SIGINT/SIGTERM. Exit 2: bad input.

    On --timeout or a signal an unanswered call is CANCELled, an answered one hung up (up to 2 s more).

    A 2xx that crosses that CANCEL is hung up too (exit 1). A signal also stops a connect or TLS handshake.

    Example: faultlab call sip:alice@lab.test --pbx udp:127.0.0.1:5060 --from bob --hang-up-after 2s
    """
    _run(SimpleNamespace(**locals()))  # the options, by name


def _run(o: SimpleNamespace) -> NoReturn:
    """Check the options, place the call, print its outcome and exit 0 if it went as scripted, else 1."""
    endpoint = _checked_target(o.target, o.pbx)
    if o.bind is not None and not is_ip(o.bind):
        _fail(f"--bind {o.bind!r}: expected an IP address such as 127.0.0.1")
    if not o.from_user or any(c in o.from_user for c in "@:<> ;\"\r\n"):
        _fail(f"--from {o.from_user!r}: expected a SIP user name such as bob (no '@', ':', spaces)")
    cancel_s = _seconds("--cancel-after", o.cancel_after)
    if o.cancel_reason is not None and cancel_s is None:
        _fail("--cancel-reason needs --cancel-after (the time to CANCEL at)")
    if o.cancel_reason is not None and any(c in o.cancel_reason for c in "\r\n"):
        _fail("--cancel-reason: must be one line")
    hang_up_s = _seconds("--hang-up-after", o.hang_up_after)
    timeout_s = _seconds("--timeout", o.timeout, zero=False)
    if cancel_s is not None and cancel_s >= timeout_s:
        _fail(f"--cancel-after {o.cancel_after} is not before --timeout {o.timeout}: the call would time out first")
    if o.ca_file is not None and not o.ca_file.is_file():
        _fail(f"--ca {str(o.ca_file)!r}: no such file")
    if endpoint.transport != "tls" and (o.ca_file is not None or o.tls_name is not None):
        _fail("--ca and --tls-name are for a tls: PBX")
    expected = o.expect if o.expect is not None else (487 if cancel_s is not None else 200)
    bind = o.bind
    if bind is None:
        try:
            bind = _source_address(endpoint)
        except OSError as exc:
            _fail(f"no route to the PBX at {format_hostport(endpoint.host, endpoint.port)}: {exc}", 1)

    outcome = trio.run(lambda: place_call(
        endpoint, o.target, user=o.from_user, domain=o.domain, host=bind, cancel_after=cancel_s,
        cancel_reason=o.cancel_reason, hang_up_after=hang_up_s, timeout=timeout_s, expect=expected,
        ca_file=o.ca_file, tls_name=o.tls_name, media=o.media))
    if o.as_json:
        typer.echo(json.dumps(outcome.to_dict()))
    else:
        typer.echo(outcome.text())
    if not outcome.ok:
        _say(f"not as scripted: {outcome.reason}")
    raise typer.Exit(0 if outcome.ok else 1)


def _checked_target(target: str | None, pbx: str | None) -> Endpoint:
    """Fail unless TARGET is a SIP URI and --pbx an IP endpoint; the PBX's endpoint."""
    from faultlab.sip import SipError, parse_uri

    if target is None:
        _fail("give the SIP URI to call, e.g. faultlab call sip:alice@lab.test --pbx udp:127.0.0.1:5060")
    try:
        uri = parse_uri(target)
        if uri.scheme not in ("sip", "sips"):
            raise ValueError
    except (SipError, ValueError):
        _fail(f"TARGET {target!r}: expected a SIP URI such as sip:alice@lab.test")
    if pbx is None:
        _fail("--pbx is required: the PBX's address, e.g. --pbx udp:127.0.0.1:5060")
    try:
        endpoint = parse_endpoint(pbx, allow_port_zero=False)
    except EndpointError as exc:
        _fail(f"--pbx: {exc}")
    if not endpoint.is_ip:
        _fail(f"--pbx: HOST must be an IP address, not {endpoint.host!r}")
    return endpoint
