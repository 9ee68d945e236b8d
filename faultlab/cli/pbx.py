"""``faultlab pbx``: run the embedded PBX (registrar + proxy with RFC 8599 push) from the command line.

Mounted by the main CLI with::

    from faultlab.cli.pbx import app as pbx_app
    app.add_typer(pbx_app, name="pbx")
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated, Awaitable, Callable, Optional

import typer

from faultlab.cli._common import failing, find_in_group, stopped_by
from faultlab.cli._hep import HepIdOption, HepOption, HepPasswordOption, hep_target, open_sender

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

SendPush = Callable[[str, dict], Awaitable[None]]


_fail = failing("faultlab")


def parse_seconds(text: str, what: str) -> float:
    """``"8s"``, ``"500ms"``, ``"2m"`` or a bare number of seconds -> seconds; ``ValueError`` otherwise."""
    from faultlab.faults._units import parse_duration

    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        try:
            value = parse_duration(s)
        except ValueError:
            raise ValueError(f"{what} {text!r}: expected a duration such as 8s, 500ms or 2m") from None
    if not value > 0:
        raise ValueError(f"{what} {text!r}: must be more than 0")
    return value


def push_sender(url: str, *, topic: str, ca: Optional[str] = None, insecure: bool = False) -> SendPush:
    """``send_push(token, payload)`` over the lab push gateway's APNs client (``apns-push-type: voip``,
    ``apns-expiration: 0``, priority 10). A non-200 answer raises ``PushRejected`` (status and APNs reason), so the
    PBX answers the held INVITE 480, and forgets a token APNs says is gone."""
    from faultlab.lab.push import PushClient  # imported only when a push URL is given

    return PushClient(url, ca=ca, insecure=insecure).sender(topic=topic)


def _line(event) -> str | None:
    if event.kind in ("received", "sent"):
        arrow = "<-" if event.kind == "received" else "->"
        return f"{event.t:10.3f} {arrow} {event.flow or event.peer:<28} {event.summary}"
    if event.kind == "pbx":
        d = {k: v for k, v in event.detail.items() if k not in ("action", "payload")}
        extra = " ".join(f"{k}={v}" for k, v in d.items() if v not in (None, {}, []))
        return f"{event.t:10.3f} pbx {event.detail.get('action'):<14} call={event.call_id or '-'} {extra}"
    if event.kind == "warning":
        return f"{event.t:10.3f} warning {event.summary}"
    return None


@app.callback(invoke_without_command=True)
def pbx(
    listen: Annotated[list[str], typer.Option(
        "--listen", "-l", metavar="TRANSPORT:HOST:PORT",
        help="Address to serve SIP on: udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT (IPv6 in brackets, "
             "e.g. udp:[::1]:5060). Repeat for several. TLS certificates come from the lab CA "
             "(`faultlab ca init`; created on first use).")],
    push_url: Annotated[Optional[str], typer.Option(
        metavar="URL",
        help="The push gateway (APNs-compatible HTTP/2), e.g. http://127.0.0.1:2197 for `faultlab push-gateway`. "
             "Without it, pushes are only written to the timeline (push-unsent) and held INVITEs wait for a "
             "REGISTER as usual.")] = None,
    push_topic: Annotated[str, typer.Option(
        help="apns-topic of the pushes (the app's bundle ID + .voip).")] = "com.example.faultlab.voip",
    push_ca: Annotated[Optional[Path], typer.Option(
        help="CA file (PEM) to verify an https:// push URL.", exists=True, dir_okay=False)] = None,
    push_insecure: Annotated[bool, typer.Option(
        help="Do not verify an https:// push URL's certificate (lab use only).")] = False,
    hold: Annotated[str, typer.Option(
        metavar="DURATION",
        help="How long an INVITE for a push binding is held waiting for the device's binding-refresh REGISTER "
             "after the push; then the caller gets 480 (RFC 8599 §5.6.2).")] = "8s",
    cancel_push: Annotated[bool, typer.Option(
        "--cancel-push/--no-cancel-push",
        help="When the caller CANCELs a held INVITE (or it ends elsewhere), also send a push of type "
             "'cancel' (many PBXs do; a device must not depend on it).")] = True,
    ring_timeout: Annotated[str, typer.Option(
        metavar="DURATION",
        help="After forwarding, how long the device may ring without a final answer; then the PBX CANCELs "
             "toward the device and answers the caller 480.")] = "45s",
    default_expires: Annotated[int, typer.Option(
        help="Registration lifetime (seconds) when a REGISTER proposes none.", min=1)] = 3600,
    advertise: Annotated[Optional[str], typer.Option(
        metavar="HOST",
        help="Host to put in the PBX's Via and Record-Route (default: the listen address; 127.0.0.1 for a "
             "wildcard listen address).")] = None,
    tls_name: Annotated[Optional[str], typer.Option(
        help="Name on the TLS certificate (default: the SNI name the device sends, else the listen address).")]
    = None,
    confdir: Annotated[Optional[Path], typer.Option(
        "--confdir", help="Config directory holding the lab CA (default: $FAULTLAB_HOME or ~/.faultlab)",
        file_okay=False)] = None,
    trace: Annotated[Optional[Path], typer.Option(
        help="Write every event (messages with their bytes, decisions) to this JSONL file.", dir_okay=False)]
    = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No console line per event.")] = False,
    hep: HepOption = None,
    hep_id: HepIdOption = 1,
    hep_password: HepPasswordOption = None,
) -> None:
    """Run the embedded PBX: a registrar and Record-Routing proxy that speaks RFC 8599 push.

    Softphones with no push parameters are served as by any registrar/proxy. For a device that registered
    with pn-provider/pn-prid/pn-param in its Contact, an INVITE triggers a VoIP push and is held until the
    device's fresh REGISTER, then forwarded on that new flow. CANCEL while held: 200 + 487 to the caller,
    nothing to the device, plus a cancel push (--cancel-push).

    Example: faultlab pbx --listen udp:127.0.0.1:5060 --listen tcp:127.0.0.1:5060 --push-url http://127.0.0.1:2197
    """
    from faultlab.addr import EndpointError, parse_endpoint

    try:
        endpoints = [parse_endpoint(spec) for spec in listen]
        hold_s = parse_seconds(hold, "--hold")
        ring_s = parse_seconds(ring_timeout, "--ring-timeout")
    except (EndpointError, ValueError) as exc:
        _fail(str(exc))
    if not endpoints:
        _fail("give at least one --listen")
    hep_to = hep_target(hep, hep_id, hep_password)

    logging.basicConfig(level=logging.WARNING, format="faultlab: %(name)s: %(levelname)s: %(message)s")
    _run(functools.partial(
        _serve, endpoints, trace=trace, quiet=quiet, push_url=push_url, push_topic=push_topic, push_ca=push_ca,
        push_insecure=push_insecure, hold=hold_s, ring_timeout=ring_s, cancel_push=cancel_push,
        default_expires=default_expires, advertise_host=advertise, confdir=confdir, tls_name=tls_name,
        hep=(hep_to, hep_id, hep_password)))


async def _serve(endpoints, *, trace: Path | None, quiet: bool, push_url: str | None, push_topic: str,
                 push_ca: Path | None, push_insecure: bool, hep: tuple, **options) -> None:
    """Serve the PBX (``options`` go to it) until Ctrl-C or SIGTERM, each event on the console unless quiet."""
    import signal

    from faultlab.addr import format_hostport
    from faultlab.lab.pbx import PBX
    from faultlab.lab.timeline import Timeline
    from faultlab.trace import JsonlWriter, Trace

    events = Trace(keep=1000)
    if trace is not None:
        writer = JsonlWriter(trace)
        events.add_sink(writer, writer.close)
    if not quiet:
        def console(event) -> None:
            line = _line(event)
            if line:
                typer.echo(line)
        events.add_sink(console)
    if hep[0] is not None:
        sender = open_sender(*hep, warn=lambda text: typer.echo(f"faultlab pbx: warning: {text}", err=True))
        sender.attach(events, every_kind=True)  # the PBX says its own addresses in notes of its own kind
    send_push = None
    if push_url:
        send_push = push_sender(push_url, topic=push_topic, ca=str(push_ca) if push_ca else None,
                                insecure=push_insecure)
    pbx = PBX(endpoints, timeline=Timeline(events), send_push=send_push, **options)
    try:  # Ctrl-C or SIGTERM: a clean stop
        async with stopped_by(signal.SIGINT, signal.SIGTERM, on_signal=lambda _: pbx.stop()) as nursery:
            await nursery.start(pbx.run)
            for endpoint, addr in pbx.listeners:
                typer.echo(f"faultlab pbx: {endpoint.transport} on {format_hostport(*addr)}", err=True)
            for warning in pbx.warnings:
                typer.echo(f"faultlab pbx: warning: {warning}", err=True)
    finally:
        events.close()


def _run(serve: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve``; a port in use (an EndpointError, maybe inside exception groups) fails with its message."""
    import trio

    from faultlab.addr import EndpointError

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass
    except (EndpointError, BaseExceptionGroup) as exc:
        bad = find_in_group(exc, EndpointError)
        if bad is None:
            raise
        _fail(str(bad), 1)
