"""``faultlab push-gateway``: run the lab's APNs-compatible push gateway from the command line.

Mounted by the main CLI with ``app.add_typer(push_app, name="push-gateway")``.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from faultlab.cli._common import failing, hostport, run_trio, stopped_by

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

DEFAULT_LISTEN = "127.0.0.1:2197"


_fail = failing("faultlab")


def parse_listen(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; ``ValueError`` saying what is wrong."""
    text = spec.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{spec!r}: expected [IPv6]:PORT, e.g. [::1]:2197")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{spec!r}: expected HOST:PORT, e.g. 127.0.0.1:2197")
        if ":" in host:
            raise ValueError(f"{spec!r}: an IPv6 address needs brackets, e.g. [::1]:2197")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{spec!r}: port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _line(event) -> str | None:
    d = event.detail
    if event.kind == "push":
        token = (d.get("token") or "-")[:16]
        status = f"{d.get('status')}" + (f" {d['reason']}" if d.get("reason") else "")
        extra = ""
        if d.get("delay"):
            extra += f" delay={d['delay']:g}s"
        if d.get("copies", 1) > 1:
            extra += f" copies={d['copies']}"
        return (f"{event.t:10.3f} push      {d.get('push_kind') or '?':<6} {d.get('outcome'):<10} {status:<18} "
                f"token={token} call-id={event.call_id or '-'}{extra}")
    if event.kind == "push-delivered":
        return f"{event.t:10.3f} delivered {d.get('push_kind'):<6} late       {d.get('status')} token={d['token'][:16]}"
    if event.kind in ("push-subscribe", "push-unsubscribe"):
        verb = "connected" if event.kind == "push-subscribe" else "gone"
        return f"{event.t:10.3f} device    {verb} token={d['token'][:16]}"
    if event.kind == "warning":
        return f"{event.t:10.3f} lint      {d.get('message')}"
    if event.kind == "device":
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"{event.t:10.3f} {event.source:<9} {d.get('event')}{reason} call-id={event.call_id or '-'} uuid={d.get('uuid') or '-'}"
    return None


# the push faults a PBX's side of push is judged by (docs/push-gateway.md)
_Offline = Annotated[str, typer.Option(
    "--offline", metavar="DURATION",
    help="The device is out of APNs's reach this long after each push: a push with a non-zero "
         "apns-expiration (or none) is stored and delivered then, unless expired; one with apns-expiration 0 "
         "is discarded, as APNs does. Shows a PBX whose stored pushes ring stale calls.")]
_Refuse = Annotated[Optional[str], typer.Option(
    "--refuse", metavar="'STATUS REASON'",
    help="Refuse every push with this APNs error, e.g. '410 Unregistered', '400 BadDeviceToken', "
         "'413 PayloadTooLarge': shows whether the PBX drops the token, answers the caller 480 at once "
         "and does not retry.")]


@app.callback(invoke_without_command=True)
def run(
    listen: Annotated[str, typer.Option(
        "--listen", metavar="HOST:PORT",
        help="Where to listen for APNs requests (POST /3/device/<token>) and device streams "
             "(GET /devices/<token>/pushes). Port 0 picks a free one. Without --tls: HTTP/2 with prior "
             "knowledge (h2c) and HTTP/1.1 on the same port.")] = DEFAULT_LISTEN,
    tls: Annotated[bool, typer.Option(
        "--tls", help="Serve TLS (HTTP/2 by ALPN, as APNs does). Uses --cert/--key, or else a certificate "
                      "for the listen host from the lab CA in --confdir (install that CA on the PBX).")] = False,
    cert: Annotated[Optional[Path], typer.Option(
        "--cert", help="PEM certificate (chain) for --tls.", dir_okay=False, exists=True)] = None,
    key: Annotated[Optional[Path], typer.Option(
        "--key", help="PEM private key for --tls (may be the same file as --cert).", dir_okay=False,
        exists=True)] = None,
    confdir: Annotated[Optional[Path], typer.Option(
        "--confdir", help="Config directory holding the lab CA, for --tls without --cert "
                          "(default: $FAULTLAB_HOME, else ~/.faultlab).", file_okay=False)] = None,
    drop_cancel: Annotated[bool, typer.Option(
        "--drop-cancel", help="Accept cancel pushes (200) but never deliver them: shows whether the app "
                              "depends on a cancel push.")] = False,
    drop_all: Annotated[bool, typer.Option(
        "--drop-all", help="Accept every push (200) and deliver none: a device that never wakes.")] = False,
    delay: Annotated[str, typer.Option(
        "--delay", metavar="DURATION",
        help="Deliver each accepted push this long after it arrives, e.g. 500ms, 2s. The sender still "
             "gets 200 at once.")] = "0s",
    duplicate: Annotated[int, typer.Option(
        "--duplicate", metavar="N", min=0,
        help="Deliver each push N extra times (same apns-id): the app must not report the call twice.")] = 0,
    offline: _Offline = "0s",
    refuse: _Refuse = None,
    relay: Annotated[Optional[str], typer.Option(
        "--relay", metavar="URL",
        help="Forward accepted pushes for tokens with no device connected here to this APNs URL over "
             "HTTP/2 (e.g. https://api.sandbox.push.apple.com, or http://HOST:PORT for an h2c mock), after "
             "validation, lints and faults; APNs's answer is passed back.")] = None,
    relay_ca: Annotated[Optional[Path], typer.Option(
        "--relay-ca", help="CA file (PEM) to verify the --relay server with, instead of the system CAs.",
        dir_okay=False, exists=True)] = None,
    apns_key: Annotated[Optional[Path], typer.Option(
        "--apns-key", metavar="FILE",
        help="--relay: the team's APNs auth key (the .p8 file from Apple Developer > Keys: PKCS#8 PEM, EC P-256). "
             "With --apns-key-id and --apns-team-id the gateway signs every relayed push with its own provider "
             "token (authorization: bearer <JWT>, ES256, renewed every 50 minutes), replacing any authorization "
             "header the PBX sent; without them the PBX's authorization header is passed on as it came (a PBX "
             "that sends none, like faultlab pbx, is refused by Apple: 403 MissingProviderToken).",
        dir_okay=False)] = None,
    apns_key_id: Annotated[Optional[str], typer.Option(
        "--apns-key-id", metavar="KEYID",
        help="--apns-key: its Key ID (10 characters; the KEYID of AuthKey_KEYID.p8).")] = None,
    apns_team_id: Annotated[Optional[str], typer.Option(
        "--apns-team-id", metavar="TEAMID",
        help="--apns-key: the Team ID of the app's developer team (10 characters).")] = None,
    topic_suffix: Annotated[str, typer.Option(
        "--topic-suffix", help="apns-topic must end with this (400 BadTopic otherwise).")] = ".voip",
    device: Annotated[Optional[list[str]], typer.Option(
        "--device", metavar="TOKEN",
        help="Accept pushes for this hex token here and just print them (repeatable); handy with curl or a "
             "PBX under test when no device is connected.")] = None,
    events: Annotated[Optional[str], typer.Option(
        "--events", metavar="HOST:PORT",
        help="Also run the device-event collector (POST /events, see docs/device-events.md) there, and "
             "print the events on the same timeline.")] = None,
    trace: Annotated[Optional[Path], typer.Option(
        "--trace", help="Write the timeline (pushes, lints, device events) to this JSONL file.",
        dir_okay=False)] = None,
) -> None:
    """Run an APNs-compatible push gateway: validate VoIP pushes as APNs would, lint them, apply push
    faults, and deliver them to devices (or relay them to APNs). Prints each push as it arrives."""
    host, port = parse_listen_or_fail(listen)
    events_at = parse_listen_or_fail(events) if events else None
    faults = _faults(drop_cancel, drop_all, delay, duplicate, offline, refuse)
    signer = _checked(tls, cert, key, relay, apns_key, apns_key_id, apns_team_id, device)
    logging.basicConfig(level=logging.WARNING, format="faultlab: %(name)s: %(levelname)s: %(message)s")
    tmp, certfile, keyfile = _tls_files(tls, cert, key, confdir, host)
    _run(functools.partial(
        _serve, faults=faults, topic_suffix=topic_suffix, relay=relay, relay_ca=relay_ca, signer=signer,
        trace=trace, device=device, host=host, port=port, tls=tls, certfile=certfile, keyfile=keyfile,
        events_at=events_at, duplicate=duplicate, drop_cancel=drop_cancel, drop_all=drop_all), tmp)


def _run(serve, tmp: tempfile.TemporaryDirectory | None) -> None:
    """Run the gateway until Ctrl-C or SIGTERM; remove the certificate's temporary directory after."""
    try:
        run_trio(serve)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _fail(f"cannot start the push gateway: {exc.strerror or exc}", 1)
    finally:
        if tmp is not None:
            tmp.cleanup()
    typer.echo("faultlab: push gateway stopped", err=True)


def _checked(tls: bool, cert: Path | None, key: Path | None, relay: str | None, apns_key: Path | None,
             apns_key_id: str | None, apns_team_id: str | None, device: list[str] | None):
    """Fail on options that do not go together or a bad --device token; the APNs signer (or None)."""
    if (cert is None) != (key is None):
        _fail("--cert and --key go together")
    if cert is not None and not tls:
        _fail("--cert/--key need --tls")
    signer = _signer(relay, apns_key, apns_key_id, apns_team_id)
    for token in device or []:
        if not token or len(token) % 2 or any(c not in "0123456789abcdefABCDEF" for c in token):
            _fail(f"--device {token!r}: a device token is an even number of hex digits")
    return signer


def _tls_files(tls: bool, cert: Path | None, key: Path | None, confdir: Path | None, host: str):
    """(temporary directory to remove or None, certfile, keyfile): --cert/--key, else one from the lab CA."""
    if not tls:
        return None, None, None
    if cert is not None:
        return None, str(cert), str(key)
    tmp, pem = _lab_certificate(confdir, host)
    return tmp, pem, pem


def parse_listen_or_fail(spec: str) -> tuple[str, int]:
    try:
        return parse_listen(spec)
    except ValueError as exc:
        _fail(str(exc))


def _faults(drop_cancel: bool, drop_all: bool, delay: str, duplicate: int, offline: str = "0s",
            refuse: str | None = None):
    from faultlab.faults import parse_duration
    from faultlab.lab.push import PushFaults
    from faultlab.lab.push.faults import parse_refusal

    try:
        return PushFaults(drop_cancel=drop_cancel, drop_all=drop_all, delay=parse_duration(delay),
                          duplicate=duplicate, offline=parse_duration(offline),
                          refuse=parse_refusal(refuse) if refuse is not None else None)
    except ValueError as exc:
        _fail(str(exc))


def _signer(relay: str | None, apns_key: Path | None, apns_key_id: str | None, apns_team_id: str | None):
    """The APNs signer of --apns-key/--apns-key-id/--apns-team-id (all three, with --relay), or None."""
    given = [name for name, value in (("--apns-key", apns_key), ("--apns-key-id", apns_key_id),
                                      ("--apns-team-id", apns_team_id)) if value is not None]
    if not given:
        return None
    if len(given) < 3:
        _fail("--apns-key, --apns-key-id and --apns-team-id go together (APNs token authentication); "
              f"only {', '.join(given)} given")
    if not relay:
        _fail("--apns-key signs the pushes the gateway relays: it needs --relay URL (e.g. "
              "--relay https://api.sandbox.push.apple.com)")
    from faultlab.lab.push.auth import ApnsAuthError, ApnsSigner

    try:
        signer = ApnsSigner.from_file(apns_key, apns_key_id, apns_team_id)
        signer.token()  # signs once now: a key that cannot sign fails here, not at the first push
    except ApnsAuthError as exc:
        _fail(str(exc))
    return signer


def _lab_certificate(confdir: Path | None, host: str) -> tuple[tempfile.TemporaryDirectory, str]:
    """A certificate and key (one PEM file, in a temporary directory) for ``host`` from the lab CA."""
    from faultlab.ca import CAError, LabCA, default_confdir

    try:
        ca = LabCA.load_or_init(confdir or default_confdir())
        leaf, leaf_key = ca.issue_leaf([host if host not in ("0.0.0.0", "::") else "localhost"])
    except (CAError, ValueError, OSError) as exc:
        _fail(f"cannot issue a certificate from the lab CA: {exc}")
    tmp = tempfile.TemporaryDirectory(prefix="faultlab-push-")
    pem = str(Path(tmp.name) / "gateway.pem")
    Path(pem).write_bytes(leaf + leaf_key)
    typer.echo(f"faultlab: TLS certificate from the lab CA {ca.cert_path}", err=True)
    return tmp, pem


async def _serve(*, faults, topic_suffix, relay, relay_ca, signer, trace, device, host, port, tls, certfile,
                 keyfile, events_at, duplicate, drop_cancel, drop_all) -> None:
    """Serve the gateway (and the event collector) until SIGTERM or Ctrl-C, printing each push."""
    from faultlab.trace import JsonlWriter

    from faultlab.lab.collector import serve_collector
    from faultlab.lab.push import PushGateway, serve_push_gateway
    from faultlab.lab.timeline import Timeline

    timeline = Timeline()

    def show(event) -> None:
        line = _line(event)
        if line:
            print(line, flush=True)

    timeline.trace.add_sink(show)
    if trace is not None:
        writer = JsonlWriter(trace)
        timeline.trace.add_sink(writer, writer.close)
    gateway = PushGateway(timeline, faults=faults, topic_suffix=topic_suffix, relay_url=relay,
                          relay_ca=str(relay_ca) if relay_ca else None, relay_auth=signer)
    try:
        async with stopped_by(signal.SIGTERM) as nursery:  # SIGTERM stops it as Ctrl-C does
            if trace is not None:
                from faultlab.proxy import keep_flushed

                nursery.start_soon(keep_flushed, writer)  # the trace is readable as it is written
            for token in device or []:
                nursery.start_soon(_drain, gateway.channel(token))
            bound = await nursery.start(lambda task_status: serve_push_gateway(
                gateway, host, port, tls=tls, certfile=certfile, keyfile=keyfile, task_status=task_status))
            scheme = "https" if tls else "http"
            typer.echo(f"faultlab: push gateway on {scheme}://{hostport(bound)} "
                       f"(POST /3/device/<token>; devices: GET /devices/<token>/pushes)", err=True)
            active = [name for name, on in (("drop-cancel", drop_cancel), ("drop-all", drop_all),
                                            (f"delay {faults.delay:g}s", faults.delay > 0),
                                            (f"duplicate {duplicate}", duplicate > 0),
                                            (f"offline {faults.offline:g}s", faults.offline > 0),
                                            (f"refuse {' '.join(map(str, faults.refuse or ()))}",
                                             faults.refuse is not None)) if on]
            typer.echo(f"faultlab: push faults: {', '.join(active) or 'none'}"
                       + (f"; relaying to {relay}" if relay else "")
                       + (f", signed with APNs key {signer.key_id} of team {signer.team_id}" if signer
                          else ", with the sender's authorization" if relay else ""), err=True)
            if events_at is not None:
                ebound = await nursery.start(serve_collector, timeline, *events_at)
                typer.echo(f"faultlab: event collector on http://{hostport(ebound)}/events", err=True)
    finally:
        timeline.trace.close()


async def _drain(channel) -> None:
    async for _ in channel:
        pass


if __name__ == "__main__":  # pragma: no cover
    app(sys.argv[1:])
