"""``faultlab device``: run the reference device (a simulated iOS VoIP app) from the command line.

Mounted by ``faultlab/cli/__init__.py`` with ``app.add_typer(device_app, name="device")``. Thin: parse the options, build a
:class:`~faultlab.lab.device.Device`, print its device events as JSON lines.
"""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import trio
import typer

from faultlab.cli._common import failing, stopped_by

from faultlab.faults import parse_duration
from faultlab.lab.device import Device
from faultlab.lab.device.logic import BEHAVIOURS, DeviceConfig
from faultlab.lab.timeline import Timeline
from faultlab.addr import EndpointError, is_ip, parse_endpoint

_MEDIA_HELP = ("A connected call with media (RTP) and no RTP for this long ends 'failed' (the far end hung up and "
               "its BYE was lost).")
_BEHAVIOUR_HELP = " ".join(f"'{name}': {text}" for name, text in BEHAVIOURS.items())

app = typer.Typer(
    help="Run the reference device: a simulated, well-behaved iOS VoIP app (CallKit rules, tunable deadlines), "
    "or one of its known-bad behaviours.",
    add_completion=False,
    pretty_exceptions_enable=False,
    invoke_without_command=True,
)


_fail = failing("faultlab device")


def _seconds(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)  # a bare number: seconds
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError:
        _fail(f"{option} {text!r}: expected a duration such as 2s, 500ms or 1.5")
    return None


def push_from_line(line: str) -> SimpleNamespace | None:
    """One NDJSON line of the gateway's push stream -> a push object (``.kind``, ``.payload``), or None.

    Accepted: ``{"kind": "call"|"cancel", "payload": {...}}``, or a bare payload whose ``"type"`` is the kind.
    """
    line = line.strip()
    if not line:
        return None
    obj = json.loads(line)
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("payload"), dict):
        return SimpleNamespace(kind=obj.get("kind") or obj["payload"].get("type"), payload=obj["payload"])
    return SimpleNamespace(kind=obj.get("type"), payload=obj)


async def stream_pushes(url: str, send: trio.MemorySendChannel) -> None:
    """Read the NDJSON push stream at ``url`` (urllib, in a thread) into ``send``; reconnect after 1 s on error."""

    def read() -> None:
        with urllib.request.urlopen(url) as response:
            for raw in response:
                push = push_from_line(raw.decode("utf-8", "replace"))
                if push is not None:
                    trio.from_thread.run(send.send, push)

    while True:
        try:
            await trio.to_thread.run_sync(read, abandon_on_cancel=True)
        except (OSError, ValueError) as exc:
            typer.secho(f"faultlab device: push stream {url}: {exc}; retrying in 1 s", err=True,
                        fg=typer.colors.YELLOW)
        await trio.sleep(1)


def collector_event(name: str, event: dict) -> dict:
    """A device event (the reference device's ``on_event`` dict) in the event collector's schema
    (docs/device-events.md): device, event, call_id, uuid, reason (``ended`` only), client_time."""
    body = {"device": name, "event": event["event"]}
    for key in ("call_id", "uuid", "reason"):
        if event.get(key) is not None:
            body[key] = event[key]
    body["client_time"] = time.time()
    return body


def events_url(url: str) -> str:
    """``http://HOST:PORT`` -> its ``/events`` endpoint; a URL with a path is kept as it is."""
    if urllib.parse.urlsplit(url).path in ("", "/"):
        return url.rstrip("/") + "/events"
    return url


async def post_events(url: str, receive: trio.MemoryReceiveChannel, token: str | None = None) -> None:
    """POST each event from ``receive`` to the collector at ``url``, one at a time in their order (urllib, in a
    thread), with ``Authorization: Bearer <token>`` when a token is given (faultlab's control API). A failed post
    is reported on stderr and skipped: the collector never changes what the device does."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def post(body: dict) -> None:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    async for body in receive:
        try:
            await trio.to_thread.run_sync(post, body, abandon_on_cancel=True)
        except (OSError, ValueError) as exc:
            typer.secho(f"faultlab device: posting {body['event']} to {url}: {exc}", err=True,
                        fg=typer.colors.YELLOW)


_CaFileOption = Annotated[Optional[Path], typer.Option(
    "--ca-file", help="CA certificates to verify a tls: proxy with (e.g. faultlab's lab CA) "
                      "(default: the system's).", dir_okay=False)]

_TlsServerNameOption = Annotated[Optional[str], typer.Option(
    "--tls-server-name", help="TLS server name (SNI and verification) (default: the proxy's HOST).")]

_HostOption = Annotated[Optional[str], typer.Option(
    "--host", metavar="ADDRESS",
    help="The device's own address: its socket and connections leave from it (default: the address that "
         "reaches the proxy).")]

_MoveToOption = Annotated[Optional[str], typer.Option(
    "--move-to", metavar="ADDRESS",
    help="On SIGUSR1 the device moves to this address (a network change, Wi-Fi -> cellular): it drops its "
         "old socket or connection, binds ADDRESS and REGISTERs again from there (RFC 5626 flow recovery).")]

_KeepaliveOption = Annotated[str, typer.Option(
    "--keepalive-interval", metavar="DURATION",
    help="tcp:/tls: a CRLF keep-alive ping this often; no pong within 10 s and the flow has failed: the "
         "device connects anew and REGISTERs again (RFC 5626 §4.4.1). 0s: no pings.")]


@app.callback(invoke_without_command=True)
def device(
    proxy: Annotated[str, typer.Option(
        "--proxy", metavar="TRANSPORT:HOST:PORT",
        help="The outbound proxy the device sends all SIP to (faultlab's address): udp:HOST:PORT, tcp:HOST:PORT "
             "or tls:HOST:PORT (IPv6 in brackets). HOST must be an IP address.")],
    user: Annotated[str, typer.Option("--user", help="The SIP user: the AOR is sip:USER@DOMAIN.")],
    domain: Annotated[str, typer.Option("--domain", help="The SIP domain (registrar) of the AOR.")],
    token: Annotated[str, typer.Option(
        "--token", metavar="HEX",
        help="The APNs VoIP device token: sent as pn-prid in the REGISTER Contact (RFC 8599); the push "
             "gateway delivers pushes for this token.")],
    push_url: Annotated[Optional[str], typer.Option(
        "--push-url", metavar="URL",
        help="Stream pushes from the push gateway: its address (http://HOST:PORT, the device's stream "
             "/devices/<token>/pushes is then used) or the full stream URL; one "
             "JSON push per line ({\"kind\": \"call\"|\"cancel\", \"payload\": {...}} or a bare payload with "
             "\"type\"). Without it the device gets no pushes and only answers INVITEs (as an app in the "
             "foreground).")] = None,
    answer_after: Annotated[Optional[str], typer.Option(
        "--answer-after", metavar="DURATION",
        help="The scripted user taps answer this long after the call is reported (e.g. 2s). Before the INVITE "
             "the answer is held; it is fulfilled after the 200 OK.")] = None,
    decline_after: Annotated[Optional[str], typer.Option(
        "--decline-after", metavar="DURATION",
        help="The scripted user taps decline this long after the report: 603 to the INVITE (at once or when "
             "it arrives), ended reason 'declined'.")] = None,
    no_answer: Annotated[bool, typer.Option(
        "--no-answer", help="The user never acts (the default): a ringing call ends after the 45 s ring "
                            "timeout with 480, unanswered.")] = False,
    register_deadline: Annotated[str, typer.Option(
        "--register-deadline", metavar="DURATION",
        help="D_register: push -> REGISTER 2xx. Past it the call ends 'failed'.")] = "8s",
    invite_deadline: Annotated[str, typer.Option(
        "--invite-deadline", metavar="DURATION",
        help="D_invite: REGISTER 2xx -> INVITE. Past it the call ends 'unanswered'.")] = "5s",
    total_deadline: Annotated[str, typer.Option(
        "--total-deadline", metavar="DURATION",
        help="D_total: push -> INVITE, a hard cap on both deadlines above.")] = "15s",
    media_timeout: Annotated[str, typer.Option("--media-timeout", metavar="DURATION", help=_MEDIA_HELP)] = "30s",
    behaviour: Annotated[Optional[str], typer.Option(
        "--behaviour", metavar="NAME",
        help="A known-bad behaviour instead of the well-behaved app. " + _BEHAVIOUR_HELP)] = None,
    team_id: Annotated[str, typer.Option(
        "--team-id", help="Apple Team ID in pn-param (<TEAMID>.<bundle>.voip).")] = "ABCDE12345",
    bundle: Annotated[str, typer.Option("--bundle", help="App bundle ID in pn-param.")] = "org.faultlab.device",
    expires: Annotated[int, typer.Option("--expires", help="Expires proposed in each REGISTER (seconds).")] = 600,
    name: Annotated[Optional[str], typer.Option(
        "--name", help="The device's name in the timeline (source device:NAME) (default: USER).")] = None,
    events_url_: Annotated[Optional[str], typer.Option(
        "--events-url", metavar="URL",
        help="Also POST each device event to this event collector (http://HOST:PORT, whose /events is then "
             "used, or the full URL), as an instrumented app does (docs/device-events.md): device (--name), "
             "event, call_id, uuid, reason, client_time. A failed post is reported and skipped.")] = None,
    events_token: Annotated[Optional[str], typer.Option(
        "--events-token", envvar="FAULTLAB_API_TOKEN", metavar="TOKEN",
        help="Bearer token for --events-url when it is faultlab's control API started with --api-token "
             "(POST /events there); also read from $FAULTLAB_API_TOKEN.")] = None,
    ca_file: _CaFileOption = None,
    tls_server_name: _TlsServerNameOption = None,
    no_initial_register: Annotated[bool, typer.Option(
        "--no-initial-register",
        help="Do not REGISTER at start (by default the device registers once, as an app does at launch, "
             "so that the PBX has its push binding).")] = False,
    new_connection_on_push: Annotated[bool, typer.Option(
        "--new-connection-on-push",
        help="tcp:/tls: proxy only. On a call push (with no other call in progress) close the connection to the "
             "proxy first, so that the push's REGISTER opens a new one (TCP connect and TLS handshake), as an app "
             "woken in the background does. A connect or handshake that fails ends the call 'failed' at once; "
             "one that never completes, at the register deadline.")] = False,
    host: _HostOption = None,
    move_to: _MoveToOption = None,
    keepalive_interval: _KeepaliveOption = "90s",
) -> None:
    """Run the reference device until interrupted; print each device event as a JSON line.

    On a call push it reports the call at once, REGISTERs (binding refresh), waits for the INVITE within the
    deadlines, follows the scripted user, maps CANCEL Reason causes to CallKit end reasons and ends exactly once
    (docs/reference-device.md)."""
    _run(SimpleNamespace(**locals()))  # the options, by name


def _checked(o: SimpleNamespace) -> tuple:
    """The proxy's endpoint and the device's config from the options; fails on a bad or clashing one."""
    try:
        endpoint = parse_endpoint(o.proxy, allow_port_zero=False)
    except EndpointError as exc:
        _fail(f"--proxy: {exc}")
    if not endpoint.is_ip:
        _fail(f"--proxy: HOST must be an IP address, not {endpoint.host!r}")
    for option, value in (("--host", o.host), ("--move-to", o.move_to)):
        if value is not None and not is_ip(value):
            _fail(f"{option}: an IP address of this host, not {value!r}")
    if sum(x is not None and x is not False for x in (o.answer_after, o.decline_after, o.no_answer or None)) > 1:
        _fail("--answer-after, --decline-after and --no-answer are exclusive")
    if o.behaviour is not None and o.behaviour not in BEHAVIOURS:
        _fail(f"--behaviour {o.behaviour!r}: use one of {', '.join(BEHAVIOURS)}")
    try:
        config = DeviceConfig(
            register_deadline=_seconds("--register-deadline", o.register_deadline),
            invite_deadline=_seconds("--invite-deadline", o.invite_deadline),
            total_deadline=_seconds("--total-deadline", o.total_deadline),
            media_timeout=_seconds("--media-timeout", o.media_timeout),
            answer_after=_seconds("--answer-after", o.answer_after),
            decline_after=_seconds("--decline-after", o.decline_after),
            behaviour=o.behaviour,
            keepalive_interval=_seconds("--keepalive-interval", o.keepalive_interval),
        )
    except ValueError as exc:
        _fail(str(exc))
    return endpoint, config


def _media_line(event) -> None:
    """RTP progress on stderr: a stream started, first heard, stopped (with its packet counts)."""
    if event.kind == "media":
        typer.echo(f"faultlab device: {event.summary} (call {event.call_id})", err=True)


async def _move_on_signal(dev: Device, host: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """At the first SIGUSR1, move the device to ``host`` (``--move-to``)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        task_status.started()
        async for _ in signals:
            await dev.move(host)
            typer.echo(f"faultlab device: moved to {host}", err=True)
            return


def _run(o: SimpleNamespace) -> None:
    """Run the device with the command's options until SIGTERM or Ctrl-C, printing its events."""
    endpoint, config = _checked(o)
    post_send, post_receive = trio.open_memory_channel(math.inf)

    def print_event(event: dict) -> None:
        print(json.dumps(event), flush=True)
        if o.events_url_ is not None:
            post_send.send_nowait(collector_event(o.name or o.user, event))

    push_url = o.push_url
    if push_url is not None and urllib.parse.urlsplit(push_url).path in ("", "/"):
        push_url = push_url.rstrip("/") + f"/devices/{o.token}/pushes"

    async def main() -> None:
        async with stopped_by(signal.SIGTERM) as nursery:
            if o.events_url_ is not None:
                nursery.start_soon(post_events, events_url(o.events_url_), post_receive, o.events_token)
            pushes = None
            if push_url is not None:
                send, pushes = trio.open_memory_channel(16)
                nursery.start_soon(stream_pushes, push_url, send)
            timeline = Timeline()
            timeline.trace.add_sink(_media_line)
            dev = Device(proxy=endpoint, user=o.user, domain=o.domain, token=o.token, pushes=pushes,
                         timeline=timeline, config=config, name=o.name, team_id=o.team_id, bundle=o.bundle,
                         expires=o.expires, ca_file=o.ca_file, tls_server_name=o.tls_server_name,
                         register_at_start=not o.no_initial_register, on_event=print_event,
                         new_connection_on_push=o.new_connection_on_push, host=o.host, bind=o.host is not None)
            if o.move_to is not None:
                await nursery.start(_move_on_signal, dev, o.move_to)
            await nursery.start(dev.run)
            if dev.initial_register is not None:
                typer.echo(f"faultlab device: initial REGISTER: {dev.initial_register}", err=True)

    try:
        trio.run(main)
    except* KeyboardInterrupt:  # Ctrl-C: a normal way to stop the device
        pass
